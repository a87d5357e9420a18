"""The security review's attacks, each by a confined agent under a real
``capsup run``, and where meaningful the same agent under ``--no-confine``
(the control: the attack works there). Every run is bounded, so a
regression fails on a timeout instead of hanging the test session.

- The connect broker's hang: a listener of the agent's own with a full
  backlog, and a child that flips the connecting socket between blocking
  and not. The broker's thread blocked forever, and with it the
  supervisor's clean-up once the agent exited: ``capsup run`` never
  returned, and the child, which holds the listener, outlived it.
- The host's SysV shared memory, read by the agent.
- An abstract socket bound by the agent, reached by a host process.
- A scratch tree deeper than Python's recursion limit: ``capsup run`` ended
  with a RecursionError and left it, and so did every later start-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from capsup.supervisor.confinement.scratch import remove_scratch

CAPSUP = [sys.executable, "-m", "capsup.supervisor"]
POLICY = """
[agents.attack]
allow = []
[supervisor]
grace_period = 1
"""
TIMEOUT = 60


@dataclass
class Run:
    """A ``capsup run`` of one agent script, its output in files (not pipes:
    a process the agent leaves behind would hold a pipe open for good)."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines the agent printed so far."""
        text = self.stdout.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def first(self, key: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The first JSON line with ``key``, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if key in line]
            if found:
                return found[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {key!r} from the agent: {self.output()}")

    def finish(self, timeout: float = TIMEOUT) -> int | None:
        """The exit code; None if it ran past ``timeout`` (it is then killed)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


@contextlib.contextmanager
def capsup_run(
    tmp_path: Path, script: str, *args: str, confined: bool = True, **env: str
) -> Iterator[Run]:
    """``capsup run`` of ``script`` (with ``args``), in the background."""
    run_dir = tmp_path / ("confined" if confined else "unconfined")
    run_dir.mkdir()
    agent = run_dir / "attack.py"
    agent.write_text(script)
    config = run_dir / "policy.toml"
    config.write_text(POLICY)
    stdout, stderr = run_dir / "stdout", run_dir / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [
                *CAPSUP,
                "run",
                "--config",
                str(config),
                "--audit-log",
                str(run_dir / "audit.jsonl"),
                *([] if confined else ["--no-confine"]),
                str(agent),
                *args,
            ],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=run_dir,
            env={**os.environ, **env},
        )
    run = Run(process, stdout, stderr)
    try:
        yield run
    finally:
        run.finish(0)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie has: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


# --- the connect broker's hang ------------------------------------------------------

#: connect() attempts: the broker's old window lost the race a few times in ten.
HANG_TRIES = 20
HANG = """
import ctypes, json, os, socket, sys, threading, time
path = os.path.join(os.environ["TMPDIR"], "l.sock")
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(0)
filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
filler.connect_ex(path)  # the backlog is full
sock = socket.socket(socket.AF_UNIX)
fd = sock.fileno()
toggler = os.fork()
if toggler == 0:  # shares the socket's file, and holds the listener
    libc = ctypes.CDLL(None, use_errno=True)
    forever = (ctypes.c_long * 2)(0, 0)
    while True:
        libc.fcntl(fd, 4, os.O_RDWR | os.O_NONBLOCK)  # F_SETFL
        libc.setsockopt(fd, 1, 21, forever, 16)  # SO_SNDTIMEO: none
        libc.fcntl(fd, 4, os.O_RDWR)
        libc.setsockopt(fd, 1, 21, forever, 16)
print(json.dumps({"toggler": toggler}), flush=True)
stuck_since = [0.0]

def watchdog():  # a connect() stuck for good: leave it to the supervisor
    while True:
        time.sleep(0.2)
        if stuck_since[0] and time.monotonic() - stuck_since[0] > 5:
            print(json.dumps({"stuck": True}), flush=True)
            os._exit(3)

threading.Thread(target=watchdog, daemon=True).start()
libc = ctypes.CDLL(None, use_errno=True)
address = b"\\x01\\x00" + path.encode() + b"\\0"
longest, errors = 0.0, set()
for _ in range(int(sys.argv[1])):
    stuck_since[0] = started = time.monotonic()
    if libc.connect(fd, address, len(address)) != 0:
        errors.add(ctypes.get_errno())
    stuck_since[0] = 0.0
    longest = max(longest, time.monotonic() - started)
print(json.dumps({"longest": longest, "errors": sorted(errors)}), flush=True)
"""  # the agent exits; its child stays


def test_a_full_backlog_and_a_flipped_socket_cannot_hang_the_supervisor(tmp_path: Path) -> None:
    with capsup_run(tmp_path, HANG, str(HANG_TRIES)) as run:
        code = run.finish()
        toggler = next((line["toggler"] for line in run.lines() if "toggler" in line), None)
        if code is None and toggler is not None and not _gone(toggler):
            with contextlib.suppress(ProcessLookupError):  # the attack's child: ours to end
                os.kill(toggler, signal.SIGKILL)
        assert code is not None, f"capsup run hung for {TIMEOUT} s: {run.output()}"
        assert code == 0, run.output()
        [outcome] = [line for line in run.lines() if "longest" in line]
    assert outcome["errors"] == [errno.EAGAIN]
    assert outcome["longest"] < 2  # the broker's bound is 1 s
    assert toggler is not None and _gone(toggler)  # the agent's tree was killed


# --- SysV IPC ---------------------------------------------------------------------

SECRET = b"HOST-SHM-SECRET"
READ_SEGMENT = """
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(int(sys.argv[1]), 0, 0)
if shmid < 0:
    print(json.dumps({"read": errno.errorcode[ctypes.get_errno()]}))
else:
    address = libc.shmat(shmid, None, 0o10000)  # SHM_RDONLY
    print(json.dumps({"read": ctypes.string_at(address, 15).decode()}))
"""


@pytest.fixture
def host_segment() -> Iterator[int]:
    """A SysV segment of the host's, mode 0600, holding SECRET; its key."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    key = 0x5EC2_0000 | (os.getpid() & 0xFFFF)
    shmid = libc.shmget(key, 4096, 0o1000 | 0o600)  # IPC_CREAT
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    address = libc.shmat(shmid, None, 0)
    ctypes.memmove(address, SECRET, len(SECRET))
    libc.shmdt(ctypes.c_void_p(address))
    try:
        yield key
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


@pytest.mark.parametrize("confined", [True, False], ids=["confined", "unconfined"])
def test_the_hosts_sysv_shared_memory_is_out_of_reach(
    tmp_path: Path, host_segment: int, confined: bool
) -> None:
    with capsup_run(tmp_path, READ_SEGMENT, str(host_segment), confined=confined) as run:
        assert run.finish() == 0, run.output()
        [outcome] = run.lines()
    assert outcome["read"] == ("EPERM" if confined else SECRET.decode())


# --- abstract sockets ----------------------------------------------------------------

SQUAT = """
import json, os, signal, socket, sys
signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))  # the host is done trying
server = socket.socket(socket.AF_UNIX)
server.bind("\\0" + sys.argv[1])
server.listen()
print(json.dumps({"bound": sys.argv[1], "pid": os.getpid()}), flush=True)
server.settimeout(30)
connection, _ = server.accept()
connection.sendall(b"FROM-THE-AGENT")
"""


@pytest.mark.parametrize("confined", [True, False], ids=["confined", "unconfined"])
def test_an_abstract_socket_of_the_agents_is_out_of_the_hosts_reach(
    tmp_path: Path, confined: bool
) -> None:
    name = f"capsup-squat-{os.getpid()}-{os.urandom(4).hex()}"
    with capsup_run(tmp_path, SQUAT, name, confined=confined) as run:
        agent = run.first("bound")
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            try:
                client.connect("\0" + name)
                reached = client.recv(64).decode()
            except OSError as error:
                reached = errno.errorcode[error.errno or 0]
        if reached != "FROM-THE-AGENT":
            os.kill(agent["pid"], signal.SIGUSR1)
        assert run.finish() == 0, run.output()
    assert reached == ("ECONNREFUSED" if confined else "FROM-THE-AGENT")


# --- a deep scratch tree -------------------------------------------------------------

DEEP = """
import json, os
os.chdir(os.environ["TMPDIR"])
for _ in range(3000):
    os.mkdir("d")
    os.chdir("d")
open("leftover.txt", "w").write("I survive the agent")
print(json.dumps({"deep": True}), flush=True)
"""


def test_a_deep_scratch_tree_is_removed_and_the_run_ends_cleanly(tmp_path: Path) -> None:
    # Short: the supervisor's endpoint lives in it, and sun_path has 108 bytes.
    runtime_parent = Path(tempfile.mkdtemp(prefix="capsup-deep-"))
    try:
        with capsup_run(tmp_path, DEEP, TMPDIR=str(runtime_parent)) as run:
            code = run.finish()
            assert code == 0, run.output()
            assert run.lines() == [{"deep": True}]
            assert "Traceback" not in run.stderr.read_text()
        assert list(runtime_parent.iterdir()) == []  # the runtime directory, scratch and all
    finally:
        remove_scratch(runtime_parent)
