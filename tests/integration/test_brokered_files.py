"""Brokered files end to end: a confined agent under a real `capsup run`
reaches its capability's files only through the supervisor. Inside works
(every op, and a descriptor handed over); outside is refused however the
path is spelled; a race that swaps a directory for an outbound symlink
while the agent reads never yields a byte from outside. The same agent's
own open() of those files fails: the broker is the only way in."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from runner import CAPSUP, read_audit, write_agent

POLICY = """
[agents.reader]
allow = [
  {{ resource = "file://{ws}", operations = ["read", "write", "create", "list", "stat", "delete"] }},
]
[supervisor]
grace_period = 1
"""

#: The agent: asks for the workspace, then tries each case and prints one
#: JSON line per case, {"case", "ok", "value" or "error", "reason"}.
AGENT = """
import json, os, sys
from capsup.agents import CapsupError, connect

ws, outside = sys.argv[1], sys.argv[2]
client = connect()
cap = client.request("file://" + ws, ["read", "write", "create", "list", "stat", "delete"])

def case(name, action):
    try:
        value = action()
        line = {{"case": name, "ok": True, "value": value}}
    except CapsupError as error:
        line = {{"case": name, "ok": False, "error": error.code,
                "reason": getattr(error, "reason", None)}}
    except OSError as error:
        line = {{"case": name, "ok": False, "error": type(error).__name__}}
    print(json.dumps(line), flush=True)

def with_open(path, mode):
    with client.open(cap, path, mode) as f:
        return f.read() if "r" in mode else f.write("via a descriptor")

{body}
"""

CASES = """
case("read", lambda: client.read_text(cap, ws + "/notes/a.txt"))
case("write", lambda: client.write_bytes(cap, ws + "/notes/new.txt", b"made"))
case("listdir", lambda: sorted(e.name for e in client.listdir(cap, ws + "/notes")))
case("stat", lambda: client.stat(cap, ws + "/notes/a.txt").size)
case("open_read", lambda: with_open(ws + "/notes/a.txt", "r"))
case("open_write", lambda: with_open(ws + "/notes/opened.txt", "w"))
case("delete", lambda: client.delete(cap, ws + "/notes/new.txt"))
case("direct_open", lambda: open(ws + "/notes/a.txt").read())
case("traversal", lambda: client.read_text(cap, ws + "/../outside/secret.txt"))
case("absolute_outside", lambda: client.read_text(cap, outside + "/secret.txt"))
case("prefix_twin", lambda: client.read_text(cap, ws + "-evil/secret.txt"))
case("symlink_out", lambda: client.read_text(cap, ws + "/link-out/secret.txt"))
case("symlink_out_open", lambda: with_open(ws + "/link-out/secret.txt", "r"))
case("write_through_symlink", lambda: client.write_bytes(cap, ws + "/link-out/x", b"x"))
case("magic_link", lambda: client.read_text(cap, ws + "/proc-link/environ"))
"""


def run_reader(root: Path, body: str, timeout: float = 120) -> tuple[dict[str, dict], list]:
    ws, outside = root / "ws", root / "outside"
    config = root / "policy.toml"
    config.write_text(POLICY.format(ws=ws))
    # The agent's code directory is readable to it: keep it apart from ws/.
    code = root / "code"
    code.mkdir()
    agent = write_agent(code, "reader", AGENT.format(body=textwrap.dedent(body)))
    audit = root / "audit.jsonl"
    proc = subprocess.run(
        [
            *CAPSUP,
            "run",
            "--config",
            str(config),
            "--audit-log",
            str(audit),
            str(agent),
            str(ws),
            str(outside),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {line["case"]: line for line in lines}, read_audit(audit)


def make_world(root: Path) -> None:
    ws, outside = root / "ws", root / "outside"
    (ws / "notes").mkdir(parents=True)
    (ws / "notes" / "a.txt").write_text("inside")
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    twin = root / "ws-evil"
    twin.mkdir()
    (twin / "secret.txt").write_text("SECRET")
    (ws / "link-out").symlink_to(outside)
    (ws / "proc-link").symlink_to(f"/proc/{os.getpid()}")


def test_inside_works_outside_is_refused(tmp_path: Path) -> None:
    make_world(tmp_path)
    seen, audit = run_reader(tmp_path, CASES)
    assert seen["read"]["value"] == "inside"
    assert seen["write"]["value"] == 4
    assert seen["listdir"]["value"] == ["a.txt", "new.txt"]
    assert seen["stat"]["value"] == 6
    assert seen["open_read"]["value"] == "inside"
    assert (tmp_path / "ws" / "notes" / "opened.txt").read_text() == "via a descriptor"
    assert seen["delete"]["ok"] and not (tmp_path / "ws" / "notes" / "new.txt").exists()
    # Its own open() is refused by Landlock: the broker is the only way in.
    assert seen["direct_open"] == {"case": "direct_open", "ok": False, "error": "PermissionError"}
    for name in (
        "traversal",
        "absolute_outside",
        "prefix_twin",
        "symlink_out",
        "symlink_out_open",
        "write_through_symlink",
        "magic_link",
    ):
        assert not seen[name]["ok"], (name, seen[name])
        assert seen[name]["error"] == "constraint_violation", (name, seen[name])
    assert not (tmp_path / "outside" / "x").exists()
    ops = [r["operation"] for r in audit if r["event"] == "file_operation"]
    assert {"read", "write", "listdir", "stat", "open", "delete"} <= set(ops)


RACE = """
import subprocess
racer = subprocess.Popen([sys.executable, ws + "/../racer.py", ws, outside])
got = {}
try:
    for _ in range(3000):
        try:
            data = client.read_bytes(cap, ws + "/dir/file")
            got[data.decode()] = got.get(data.decode(), 0) + 1
        except CapsupError as error:
            key = "refused:" + str(getattr(error, "reason", error.code))
            got[key] = got.get(key, 0) + 1
finally:
    racer.kill()
print(json.dumps({"case": "race", "ok": True, "value": got}))
"""

#: Swaps ws/dir between a real directory and a symlink to outside/, as
#: fast as it can (it runs inside the agent: confined, but the workspace is
#: the agent's sandbox write grant here so that it may rename there).
RACER = """
import os, sys
ws, outside = sys.argv[1], sys.argv[2]
real, link, tmp = ws + "/dir", ws + "/dir-link", ws + "/dir-real"
os.makedirs(tmp, exist_ok=True)
while True:
    try:
        os.rename(real, tmp)
        os.rename(link, real)
        os.rename(real, link)
        os.rename(tmp, real)
    except OSError:
        pass
"""


def test_a_race_swapping_a_directory_never_reads_outside(tmp_path: Path) -> None:
    make_world(tmp_path)
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "dir").mkdir()
    (ws / "dir" / "file").write_text("inside")
    (outside / "file").write_text("SECRET")
    (ws / "dir-link").symlink_to(outside)
    (tmp_path / "racer.py").write_text(RACER)
    # The racer needs to rename in the workspace: grant it natively too.
    policy = POLICY.replace(
        "[agents.reader]\n", f'[agents.reader]\nsandbox = {{{{ write = ["{ws}"] }}}}\n'
    )
    config = tmp_path / "policy.toml"
    config.write_text(policy.format(ws=ws))
    agent = write_agent(tmp_path, "reader", AGENT.format(body=textwrap.dedent(RACE)))
    proc = subprocess.run(
        [*CAPSUP, "run", "--config", str(config), str(agent), str(ws), str(outside)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])["value"]
    assert "SECRET" not in got, got
    assert got.get("inside", 0) > 0, got
    assert sum(got.values()) == 3000
