"""An agent's whole life under capsup: ask, use, delegate, revoke, be refused.

Run it with `make demo`, or: capsup run --config configs/demo.toml examples/researcher.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from capsup.agents import AccessDenied, connect

WORKSPACE = Path("/tmp/capsup-demo")
HERE = Path(__file__).resolve().parent


def main() -> int:
    # The demo's files: the policy names /tmp/capsup-demo (absolute URIs only).
    shutil.copytree(HERE / "workspace", WORKSPACE, dirs_exist_ok=True)
    client = connect()
    me = client.whoami()
    print(f"[researcher] I am {me.agent_id} (policy name {me.principal!r}, pid {me.pid})")

    notes = client.request(
        f"file://{WORKSPACE}", ["read", "list"], ttl=120, constraints={"max_delegation_depth": 2}
    )
    print(
        f"[researcher] granted {notes.resource} {sorted(notes.operations)}, "
        f"depth {notes.delegation_depth}, expires in 120 s"
    )

    client.validate(notes, "read", str(WORKSPACE / "notes" / "readme.txt"))
    print("[researcher] validate read notes/readme.txt: allowed")
    for target, why in [
        (str(WORKSPACE / "notes" / "secret.key"), "a denied glob"),
        (str(WORKSPACE / ".." / "etc" / "passwd"), "a path traversal"),
    ]:
        try:
            client.validate(notes, "read", target)
        except AccessDenied as error:
            print(f"[researcher] validate {why}: denied ({error.code}, {error.reason})")

    try:
        client.request("file:///etc", ["read"])
    except AccessDenied as error:
        print(f"[researcher] request file:///etc: denied ({error.code})")

    helper = client.spawn(
        [sys.executable, str(HERE / "summarizer.py")],
        name="summarizer",
        capabilities=[
            {
                "capability": notes.id,
                "resource": f"file://{WORKSPACE}/notes",
                "operations": ["read"],
            }
        ],
    )
    print(f"[researcher] spawned {helper.agent_id} with {helper.capabilities[0].resource} [read]")
    code = client.wait(helper.agent_id, timeout=30)
    print(f"[researcher] summarizer exited with {code}")

    # The summarizer's copy ended when it exited (a dead holder holds nothing),
    # so revoking the root now revokes just the root.
    revoked = client.revoke(notes)
    print(
        f"[researcher] revoked {len(revoked)} capability; the summarizer's copy "
        "was already revoked when it exited"
    )
    try:
        client.validate(notes, "read", str(WORKSPACE / "notes" / "readme.txt"))
    except AccessDenied as error:
        print(f"[researcher] validate after revoke: denied ({error.code})")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
