"""The supervisor as a child subreaper: orphans come back to it and are
killed and reaped, and an agent's own exit status is never taken
(supervisor/confinement/reaper.py).

pytest itself never becomes a subreaper: each scenario runs in a child
python (the "supervisor"), which starts an "agent" that double-forks two
daemons and exits 7. The daemons' pids also go to a file, so that the test
kills them even when the scenario fails halfway.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from daemon_source import DAEMONIZE

#: The agent: starts two daemons, writes their pids to ``argv[1]`` and to
#: stdout, and exits 7.
AGENT = (
    DAEMONIZE
    + r"""
import sys
daemons = [daemonize(), daemonize()]
with open(sys.argv[1], "w") as record:
    record.write(" ".join(map(str, daemons)))
print(*daemons, flush=True)
sys.exit(7)
"""
)

#: The supervisor: ``argv[1]`` is "subreaper" or "plain", ``argv[2]`` the
#: record file, ``argv[3]`` a marker for the agent's command line.
SUPERVISOR = r"""
import json, os, select, signal, subprocess, sys
from capsup.supervisor.confinement.reaper import (
    become_subreaper, is_subreaper, kill_orphans, reap_orphans,
)
from capsup.supervisor.confinement.reaper import _children

result = {"me": os.getpid()}
if sys.argv[1] == "subreaper":
    result["became"] = become_subreaper()
result["is_subreaper"] = is_subreaper()
agent = subprocess.Popen(
    [sys.executable, "-c", sys.argv[4], sys.argv[2], sys.argv[3]], stdout=subprocess.PIPE
)
daemons = [int(pid) for pid in agent.stdout.readline().split()]
select.select([os.pidfd_open(agent.pid)], [], [])  # the agent has exited, unreaped

def parent(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])

# Each middle process was reaped before the agent printed: the daemons have
# been re-parented already.
result["daemons"] = daemons
result["parents"] = [parent(d) for d in daemons]
if sys.argv[1] == "plain":
    print(json.dumps(result))
    sys.exit()

# One daemon dies; it is reaped, while the agent's zombie is left to Popen.
first = os.pidfd_open(daemons[0])
signal.pidfd_send_signal(first, signal.SIGKILL)
select.select([first], [], [])
result["reaped_behind_agent"] = reap_orphans({agent.pid})
result["agent_status"] = agent.wait()
# The other is still running: kill_orphans kills and reaps it.
result["killed"] = kill_orphans(set())
result["exist_after"] = [os.path.exists(f"/proc/{d}") for d in daemons]
# A child exited with nothing ahead of it: the peek finds and reaps it.
if (pid := os.fork()) == 0:
    os._exit(3)
select.select([os.pidfd_open(pid)], [], [])
result["forked"] = pid
result["reaped_peeked"] = reap_orphans(set())
result["children_left"] = sorted(_children())
print(json.dumps(result))
"""


def run_supervisor(mode: str, tmp_path: Path) -> dict[str, Any]:
    record = tmp_path / "daemons"
    marker = f"capsup-reaper-test-{uuid.uuid4().hex}"
    try:
        completed = subprocess.run(
            [sys.executable, "-c", SUPERVISOR, mode, str(record), marker, AGENT],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert completed.returncode == 0, completed.stderr
        result: dict[str, Any] = json.loads(completed.stdout)
        return result
    finally:
        if record.exists():
            for pid in record.read_text().split():
                kill_if_ours(int(pid), marker)


def kill_if_ours(pid: int, marker: str) -> None:
    """SIGKILL a daemon the scenario left, if ``pid`` is still one of its."""
    with contextlib.suppress(ProcessLookupError, FileNotFoundError):
        pidfd = os.pidfd_open(pid)
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_text():
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)


def test_orphans_come_to_the_subreaper_and_are_killed_and_reaped(tmp_path: Path) -> None:
    result = run_supervisor("subreaper", tmp_path)
    assert result["became"] is True
    assert result["is_subreaper"] is True
    first, second = result["daemons"]
    assert result["parents"] == [result["me"], result["me"]]  # re-parented to the subreaper
    # Reaped by pid although the agent's unreaped zombie came first in line.
    assert result["reaped_behind_agent"] == [first]
    assert result["killed"] == [second]
    # The agent's exit status was left for Popen: 7, not a made-up 0.
    assert result["agent_status"] == 7
    assert result["exist_after"] == [False, False]  # dead and reaped: no zombie
    assert result["reaped_peeked"] == [result["forked"]]
    assert result["children_left"] == []


def test_without_the_subreaper_orphans_go_elsewhere(tmp_path: Path) -> None:
    result = run_supervisor("plain", tmp_path)
    assert result["is_subreaper"] is False
    assert all(parent != result["me"] for parent in result["parents"])
