"""Scheduling policies: libzmq's I/O thread and the agents run under
SCHED_BATCH, the supervisor's loop keeps its policy, and an operator's
choice is never overridden."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from capsup.supervisor.config import parse_config
from capsup.supervisor.runtime import Runtime, RuntimeOptions
from capsup.supervisor.server import _io_thread_policy

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling only")


def thread_policies() -> dict[int, tuple[str, int]]:
    """Every thread of this process: tid -> (name, scheduling policy)."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        found[int(tid)] = (name, os.sched_getscheduler(int(tid)))
    return found


def test_the_supervisors_io_thread_is_batch_scheduled(tmp_path: Path) -> None:
    before = thread_policies()
    runtime = Runtime(
        parse_config({}, source="<test>"),
        RuntimeOptions(endpoint=f"ipc://{tmp_path}/capsup.sock", audit_log=str(tmp_path / "a")),
    )
    try:
        # A thread names itself once it runs, and a batch thread just started
        # on a busy machine may not have run yet.
        deadline = time.monotonic() + 10
        while True:
            started = {tid: got for tid, got in thread_policies().items() if tid not in before}
            io_threads = [
                policy for name, policy in started.values() if name.startswith("ZMQbg/IO")
            ]
            if io_threads or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert io_threads == [os.SCHED_BATCH]
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the loop's own, given back
    finally:
        runtime.close()


def test_threads_started_under_the_policy_inherit_it_and_later_ones_do_not() -> None:
    seen: dict[str, int] = {}

    def note(label: str) -> None:
        seen[label] = os.sched_getscheduler(0)

    with _io_thread_policy():
        inside = threading.Thread(target=note, args=("inside",))
        inside.start()
        inside.join()
    after = threading.Thread(target=note, args=("after",))
    after.start()
    after.join()
    assert seen == {"inside": os.SCHED_BATCH, "after": os.SCHED_OTHER}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_an_operators_policy_is_left_alone() -> None:
    """Started under another policy (``chrt --idle``, say), nothing changes.
    On a thread of its own: without privileges, SCHED_IDLE is for good."""
    seen: list[int] = []

    def under_idle() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        with _io_thread_policy():
            seen.append(os.sched_getscheduler(0))
        seen.append(os.sched_getscheduler(0))

    thread = threading.Thread(target=under_idle)
    thread.start()
    thread.join()
    assert seen == [os.SCHED_IDLE, os.SCHED_IDLE]


# An agent that notes its own policy, spawns a sub-agent that notes its own,
# and waits for it. Policies go to files named after the process's role (in
# the test's directory, which both have as a sandbox write grant: they run
# confined, as by default).
REPORTER = """
import os, sys
from pathlib import Path
out = Path(sys.argv[1])
role = sys.argv[2]
(out / role).write_text(str(os.sched_getscheduler(0)))
if role == "agent":
    from capsup.agents import connect
    client = connect()
    helper = client.spawn([sys.executable, __file__, str(out), "sub-agent"], name="sub-agent")
    assert client.wait(helper, timeout=30) == 0
"""


@pytest.mark.parametrize(
    ("setting", "expected"),
    [({}, os.SCHED_BATCH), ({"agent_scheduling": "inherit"}, os.SCHED_OTHER)],
)
def test_agents_and_their_sub_agents_run_under_the_configured_policy(
    tmp_path: Path, setting: dict[str, str], expected: int
) -> None:
    script = tmp_path / "reporter.py"
    script.write_text(textwrap.dedent(REPORTER))
    grant = {"write": [str(tmp_path)]}
    policy = {
        "agents": {
            "agent": {"may_spawn": ["sub-agent"], "sandbox": grant},
            "sub-agent": {"sandbox": grant},
        },
        "supervisor": setting,
    }
    runtime = Runtime(
        parse_config(policy, source="<test>"),
        RuntimeOptions(endpoint=f"ipc://{tmp_path}/capsup.sock", audit_log=str(tmp_path / "a")),
    )
    try:
        agent = runtime.server.start_agent(
            [sys.executable, str(script), str(tmp_path), "agent"], name="agent"
        )
        for _ in range(600):
            if not agent.running:
                break
            runtime.server.turn(timeout=0.05)
        assert agent.returncode == 0
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the supervisor's own is untouched
    finally:
        runtime.close()
    assert int((tmp_path / "agent").read_text()) == expected
    assert int((tmp_path / "sub-agent").read_text()) == expected
