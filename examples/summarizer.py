"""A sub-agent: it starts with only what its parent delegated to it."""

from __future__ import annotations

import sys
from pathlib import Path

from capsup.agents import AccessDenied, connect

WORKSPACE = Path("/tmp/capsup-demo")


def main() -> int:
    client = connect()
    caps = client.list_my_capabilities()
    print(f"[summarizer] I hold {[c.resource for c in caps]}")
    notes = caps[0]
    # An ordinary file object, opened by the supervisor and handed over.
    with client.open(notes, WORKSPACE / "notes" / "readme.txt") as readme:
        text = readme.read().strip()
    print(f"[summarizer] opened readme.txt through the broker: {text!r}")
    written = client.write_bytes(notes, WORKSPACE / "notes" / "summary.txt", b"honest agents\n")
    print(f"[summarizer] wrote summary.txt ({written} bytes)")
    try:
        client.delegate(notes, client.whoami().agent_id, operations=["read", "list"])
    except AccessDenied as error:
        print(f"[summarizer] widening my copy: denied ({error.code})")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
