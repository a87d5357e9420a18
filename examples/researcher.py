"""An agent's whole life under capsup: confined, it asks, reads and writes
through the broker, delegates, revokes, and is refused.

Run it with `make demo`, or:

    rm -rf /tmp/capsup-demo && cp -r examples/workspace /tmp/capsup-demo
    capsup run --config configs/demo.toml examples/researcher.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from capsup.agents import AccessDenied, connect

WORKSPACE = Path("/tmp/capsup-demo")
HERE = Path(__file__).resolve().parent


def main() -> int:
    client = connect()
    me = client.whoami()
    print(f"[researcher] I am {me.agent_id} (policy name {me.principal!r}, pid {me.pid})")
    try:
        (WORKSPACE / "notes" / "readme.txt").read_text()
    except PermissionError:
        print("[researcher] open() of the workspace directly: PermissionError (confined)")

    notes = client.request(
        f"file://{WORKSPACE}",
        ["read", "list", "write", "create"],
        ttl=120,
        constraints={"max_delegation_depth": 2},
    )
    print(
        f"[researcher] granted {notes.resource} {sorted(notes.operations)}, "
        f"depth {notes.delegation_depth}, expires in 120 s"
    )
    names = [entry.name for entry in client.listdir(notes, WORKSPACE / "notes")]
    print(f"[researcher] listdir notes/ through the broker: {names}")
    text = client.read_text(notes, WORKSPACE / "notes" / "readme.txt").strip()
    print(f"[researcher] read notes/readme.txt through the broker: {text!r}")
    for target, why in [
        (WORKSPACE / "notes" / "secret.key", "a denied glob"),
        (WORKSPACE / ".." / "etc" / "passwd", "a path traversal"),
    ]:
        try:
            client.read_bytes(notes, target)
        except AccessDenied as error:
            print(f"[researcher] read {why}: denied ({error.code}, {error.reason})")

    try:
        client.request("file:///etc", ["read"])
    except AccessDenied as error:
        print(f"[researcher] request file:///etc: denied ({error.code})")

    papers = client.request("db://papers", ["select"], ttl=120)
    found = client.query(papers, "SELECT title FROM papers WHERE year >= ? ORDER BY year", [2006])
    print(f"[researcher] query db://papers through the broker: {[row['title'] for row in found]}")
    try:
        client.query(papers, "SELECT email FROM reviewers")
    except AccessDenied as error:
        print(f"[researcher] query another table: denied ({error.code}, {error.reason})")

    helper = client.spawn(
        [sys.executable, str(HERE / "summarizer.py")],
        name="summarizer",
        capabilities=[
            {
                "capability": notes.id,
                "resource": f"file://{WORKSPACE}/notes",
                "operations": ["read", "create"],
            }
        ],
    )
    print(
        f"[researcher] spawned {helper.agent_id} with {helper.capabilities[0].resource} "
        "[create, read]"
    )
    code = client.wait(helper.agent_id, timeout=30)
    print(f"[researcher] summarizer exited with {code}")
    summary = client.read_text(notes, WORKSPACE / "notes" / "summary.txt").strip()
    print(f"[researcher] the summarizer wrote: {summary!r}")

    # The summarizer's copy ended when it exited (a dead holder holds nothing),
    # so revoking the root now revokes just the root.
    revoked = client.revoke(notes)
    print(
        f"[researcher] revoked {len(revoked)} capability; the summarizer's copy "
        "was already revoked when it exited"
    )
    try:
        client.read_bytes(notes, WORKSPACE / "notes" / "readme.txt")
    except AccessDenied as error:
        print(f"[researcher] read after revoke: denied ({error.code})")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
