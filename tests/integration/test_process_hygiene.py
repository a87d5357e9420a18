"""The supervisor's own hygiene, attacked as a local process of the same user
would: its memory and environment are not readable, and what a SIGKILLed
supervisor left (its runtime directory, its cgroup, a daemon of its agent's)
is gone once the next supervisor has started. Real `capsup run`, real
processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from capsup.supervisor.confinement.cgroup import _directory, _own_cgroup
from runner import CAPSUP, alive, capsup_run, start_capsup, wait_for, write_agent, write_idle_agent

SECRET = "s3cr3t-of-the-operator"

#: Runs the rest of its command line without any capability. The tests run
#: as root: a process with capabilities the stranger lacks is out of its
#: reach whatever its dumpable flag, so the supervisor and the peer drop
#: theirs, as an ordinary user's processes have none, and only the flag
#: tells them apart.
WITHOUT_CAPABILITIES = """
import os, sys
from capsup.agents.confine.privileges import drop_privileges
drop_privileges()
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

#: A dumpable process of the test's user, with no capability.
PEER = """
import sys, time
from capsup.agents.confine.privileges import drop_privileges
drop_privileges()
print("ready", flush=True)
time.sleep(60)
"""

#: The stranger: no capability either; tries each way into each process.
STRANGER = """
import ctypes, errno, json, sys
from capsup.agents.confine.privileges import drop_privileges
drop_privileges()
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE = 0x4206
seen = {}
for who, pid in (("supervisor", sys.argv[1]), ("peer", sys.argv[2])):
    for what in ("environ", "mem"):
        try:
            with open(f"/proc/{pid}/{what}", "rb") as f:
                data = f.read() if what == "environ" else b""
            seen[f"{who} {what}"] = "read" + (" the secret" if sys.argv[3].encode() in data else "")
        except OSError as error:
            seen[f"{who} {what}"] = errno.errorcode[error.errno]
    if libc.ptrace(PTRACE_SEIZE, int(pid), None, None) == 0:
        seen[f"{who} ptrace"] = "attached"
    else:
        seen[f"{who} ptrace"] = errno.errorcode[ctypes.get_errno()]
print(json.dumps(seen))
"""


def test_a_stranger_of_the_same_user_cannot_read_the_supervisor(tmp_path: Path) -> None:
    env = {**os.environ, "OPERATOR_TOKEN": SECRET}
    # Without capabilities, capsup cannot have a cgroup or a private /dev/shm
    # here: it confines the agent in part.
    supervisor = start_capsup(
        tmp_path,
        write_idle_agent(tmp_path),
        supervisor='confine = "best-effort"',
        env=env,
        command=[sys.executable, "-c", WITHOUT_CAPABILITIES, *CAPSUP[1:]],
    )
    peer = subprocess.Popen([sys.executable, "-c", PEER], env=env, stdout=subprocess.PIPE)
    try:
        assert peer.stdout is not None and peer.stdout.readline() == b"ready\n"
        wait_for(tmp_path / "endpoint")
        assert (tmp_path / "endpoint").exists(), "the agent did not start"
        stranger = subprocess.run(
            [sys.executable, "-c", STRANGER, str(supervisor.pid), str(peer.pid), SECRET],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert stranger.returncode == 0, stranger.stderr
        seen = json.loads(stranger.stdout)
        # The same attempts succeed on a dumpable process of the same user.
        assert seen["peer environ"] == "read the secret"
        assert seen["peer mem"] == "read"
        assert seen["peer ptrace"] == "attached"
        assert seen["supervisor environ"] == "EACCES"
        assert seen["supervisor mem"] == "EACCES"
        assert seen["supervisor ptrace"] == "EPERM"
        # ... and the agent, started from it by fork and exec, works as before.
        (tmp_path / "done").touch()
        assert supervisor.wait(timeout=30) == 0
    finally:
        for process in (supervisor, peer):
            process.kill()
            process.wait()


DAEMON_AGENT = """
import os, time
root = "{root}"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        open(f"{{root}}/daemon.pid", "w").write(str(os.getpid()))
        time.sleep(120)
    os._exit(0)
os.wait()
while not os.path.exists(f"{{root}}/daemon.pid"):
    time.sleep(0.02)
open(f"{{root}}/endpoint", "w").write(os.environ["CAPSUP_ENDPOINT"])
time.sleep(120)
"""


def _supervisor_cgroup(pid: int, supervisor: int) -> Path:
    """The directory of supervisor ``supervisor``'s cgroup that ``pid`` is
    in (beneath it, in its agent's), in whichever hierarchy holds it."""
    proc_cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    for version in (2, 1):
        path = _own_cgroup(proc_cgroup, version)
        mark = f"/capsup-{supervisor}/"
        if path is not None and mark in path:
            directory = _directory(version, path[: path.index(mark) + len(mark) - 1])
            assert directory is not None
            return directory
    raise AssertionError(f"process {pid} is in no cgroup of supervisor {supervisor}")


def test_what_a_killed_supervisor_left_is_removed_by_the_next(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    agent = write_agent(first, "daemonizer", DAEMON_AGENT.format(root=first))
    supervisor = start_capsup(first, agent)
    daemon = 0
    try:
        wait_for(first / "endpoint")
        daemon = int((first / "daemon.pid").read_text())
        # The agent's own endpoint is in <runtime dir>/agents/.
        runtime_dir = Path((first / "endpoint").read_text().removeprefix("ipc://")).parent.parent
        start = int(Path(f"/proc/{supervisor.pid}/stat").read_text().rpartition(")")[2].split()[19])
        assert re.fullmatch(rf"capsup-{supervisor.pid}-{start}-[a-z0-9_]+", runtime_dir.name)
        cgroup = _supervisor_cgroup(daemon, supervisor.pid)

        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        time.sleep(0.5)  # the agent dies of PDEATHSIG; the daemon does not
        assert alive(daemon), "the daemon should outlive a SIGKILLed supervisor"
        assert runtime_dir.is_dir() and cgroup.is_dir(), "the killed supervisor cleaned up"

        outcome = capsup_run(second, write_agent(second, "noop", "print('ok')"))
        assert outcome.code == 0, outcome.stderr
        assert outcome.stdout == "ok\n"
        assert "warning" not in outcome.stderr, outcome.stderr
        deadline = time.monotonic() + 5
        while alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(daemon), "the dead supervisor's daemon still runs"
        assert not runtime_dir.exists(), "the dead supervisor's runtime directory is left"
        assert not cgroup.exists(), "the dead supervisor's cgroup is left"
    finally:
        supervisor.kill()
        supervisor.wait()
        if daemon and alive(daemon):
            os.kill(daemon, signal.SIGKILL)
