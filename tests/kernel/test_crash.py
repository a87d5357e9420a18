"""A supervisor killed with SIGKILL mid-write loses no acknowledged change and
leaves nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from capsup.supervisor.store import Store

WRITER = textwrap.dedent(
    """
    import sys, time
    from capsup.supervisor.config import parse_config
    from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
    from capsup.supervisor.principal import Principal
    from capsup.supervisor.store import Store

    root, state = sys.argv[1], sys.argv[2]
    config = parse_config({"agents": {"a": {"allow": [
        {"resource": "file://" + root, "operations": ["read"], "max_delegation_depth": 2}]}}})
    kernel = Kernel(store=Store(state), policy=config.policy, validators=config.validators)
    kernel.start(now=time.time(), trace_id="start")
    me = Principal("agent-a", "a")
    kernel.register_principal(me)
    n = 0
    while True:
        now = time.time()
        parent = kernel.request(me, CapabilityRequest("file://" + root, ["read"]),
                                now=now, trace_id="t")
        child = kernel.delegate(me, parent.id, Delegation(to=me.id), now=now, trace_id="t")
        print("G", parent.id, child.id, flush=True)
        if n % 2 == 0:
            kernel.revoke(me, parent.id, now=now, trace_id="t")
            print("R", parent.id, child.id, flush=True)
        n += 1
    """
)


def test_sigkill_loses_no_acknowledged_change(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(state)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[list[str]] = []
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.split())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 300, "the writer did not get going"

    store = Store(state)
    loaded = store.load()
    live = {cap.id: cap for cap in loaded.live}
    store.close()

    granted = [line for line in acked if line[0] == "G"]
    revoked = {line[1] for line in acked if line[0] == "R"}
    for _, parent, child in granted:
        if parent in revoked:
            assert loaded.tombstones[parent].state == "revoked"
            assert loaded.tombstones[child].state == "revoked"
        else:
            # acknowledged, not yet known to be revoked: present, and a
            # revocation in flight is all or nothing over the subtree
            assert (parent in live) == (child in live)
            assert parent in live or loaded.tombstones[parent].state == "revoked"
    for cap in live.values():
        assert cap.parent_id is None or cap.parent_id in live, "an orphan was half-revoked"
