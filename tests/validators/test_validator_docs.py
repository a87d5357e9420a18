"""Every reason code a validator can return is documented in docs/capabilities.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# deny("code", ...), _Refused("code", ...), URLError("code", ...), reason="code", return "code"
EMITTED = re.compile(
    r'(?:\b(?:deny|_Refused|URLError|TargetError|ResolveError)\(\s*|reason=|return )"([a-z_]+)"'
)


def test_every_reason_code_is_documented() -> None:
    source = "\n".join(path.read_text() for path in (ROOT / "validators").glob("*.py"))
    codes = set(EMITTED.findall(source))
    assert len(codes) > 40
    documented = set(re.findall(r"`([a-z_]+)`", (ROOT / "docs" / "capabilities.md").read_text()))
    assert sorted(codes - documented) == []
