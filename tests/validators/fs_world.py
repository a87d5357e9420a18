"""A workspace full of symlink traps for the filesystem validator tests.

Layout (``tmp`` is the resolved pytest tmp_path)::

    tmp/ws/                      the capability root
        docs/readme.txt          100 bytes
        docs/big.bin             5000 bytes
        docs/up -> ..            back to ws (stays inside)
        docs/upup -> ../..       to tmp (escapes)
        secrets/key.pem
        .git/config
        notes.key
        %2e%2e/x                 a directory literally named "%2e%2e"
        link_in -> docs          relative, inside
        link_out -> ../outside   relative, escapes
        link_abs -> /etc         absolute, escapes
        link_secret -> secrets/key.pem
        dangling_out -> ../outside/newfile   dangling, escapes
        loop_a -> loop_b, loop_b -> loop_a
    tmp/outside/secret.txt
    tmp/ws-evil/file             shares the root's name as a string prefix
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from capsup.validators import FilesystemValidator


@dataclass(frozen=True)
class Workspace:
    tmp: str
    ws: str
    resource: str

    def fill(self, template: str) -> str:
        return template.replace("{ws}", self.ws).replace("{tmp}", self.tmp)


def build_workspace(base: Path) -> Workspace:
    tmp = Path(os.path.realpath(base))
    ws = tmp / "ws"
    for folder in ("docs", "secrets", ".git", "%2e%2e", "sub dir"):
        (ws / folder).mkdir(parents=True)
    (tmp / "outside").mkdir()
    (tmp / "ws-evil").mkdir()
    (ws / "docs" / "readme.txt").write_bytes(b"r" * 100)
    (ws / "docs" / "big.bin").write_bytes(b"b" * 5000)
    (ws / "secrets" / "key.pem").write_text("key")
    (ws / ".git" / "config").write_text("[core]")
    (ws / "notes.key").write_text("k")
    (ws / "%2e%2e" / "x").write_text("x")
    (tmp / "outside" / "secret.txt").write_text("secret")
    (tmp / "ws-evil" / "file").write_text("evil")
    links = {
        "docs/up": "..",
        "docs/upup": "../..",
        "link_in": "docs",
        "link_out": "../outside",
        "link_abs": "/etc",
        "link_secret": "secrets/key.pem",
        "dangling_out": "../outside/newfile",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
    }
    for name, target in links.items():
        (ws / name).symlink_to(target)
    resource = FilesystemValidator().canonical_resource(f"file://{ws}")
    return Workspace(str(tmp), str(ws), resource)
