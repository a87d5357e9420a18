"""The agent's own namespaces. A private /dev/shm: each child has its own,
the host's sees nothing of it, it is bounded, and multiprocessing works on
it. A private IPC namespace: the host's SysV IPC is out of sight. A private
network namespace: an abstract socket bound there is out of the host's
reach, and so is the host's loopback."""

from __future__ import annotations

import ctypes
import errno
import functools
import multiprocessing
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from multiprocessing.synchronize import Lock
from pathlib import Path

import pytest
from capsup.agents.confine.namespace import private_namespaces
from capsup.agents.confine.privileges import drop_privileges
from confine_child import collect, fork_child, in_child, outcome

MiB = 1 << 20
SHM = Path("/dev/shm")
NOBODY = 65534
_PR_SET_DUMPABLE = 4


def test_each_child_has_its_own_and_the_host_sees_neither() -> None:
    tag = f"capsup-test-{os.getpid()}"
    ready = [os.pipe() for _ in range(2)]
    go = [os.pipe() for _ in range(2)]

    def child(index: int) -> list[str]:
        private_namespaces(MiB)
        (SHM / f"{tag}-{index}").write_text("mine")
        os.write(ready[index][1], b"r")
        os.read(go[index][0], 1)  # until both have written theirs
        return sorted(os.listdir(SHM))

    children = [fork_child(functools.partial(child, index)) for index in range(2)]
    for read_end, _ in ready:
        assert os.read(read_end, 1) == b"r"
    assert not [name for name in os.listdir(SHM) if name.startswith(tag)]
    for _, write_end in go:
        os.write(write_end, b"g")
    assert [collect(*c) for c in children] == [[f"{tag}-0"], [f"{tag}-1"]]
    for fds in (*ready, *go):
        for fd in fds:
            os.close(fd)


def test_it_is_a_bounded_tmpfs_without_suid_devices_or_exec() -> None:
    def child() -> str:
        private_namespaces(MiB)
        with open("/proc/self/mountinfo") as mounts:
            return [line for line in mounts if f" {SHM} " in line][-1]

    line = in_child(child)
    options = set(line.split(" - ")[0].split()[5].split(","))
    assert {"nosuid", "nodev", "noexec"} <= options
    fs_type, _, super_options = line.split(" - ")[1].split()
    assert fs_type == "tmpfs"
    assert "size=1024k" in super_options.split(",")


def test_a_write_past_the_size_is_enospc() -> None:
    def fill(private: bool) -> str:
        if private:
            private_namespaces(MiB)
        target = SHM / f"capsup-test-{os.getpid()}"
        try:
            return outcome(lambda: target.write_bytes(b"x" * 2 * MiB))
        finally:
            target.unlink(missing_ok=True)

    assert in_child(lambda: fill(True)) == "ENOSPC"
    assert in_child(lambda: fill(False)) == "ok"  # the host's has the room


def _echo(queue: multiprocessing.Queue[str], lock: Lock) -> None:
    with lock:
        queue.put("from the grandchild")


def test_multiprocessing_works_on_the_private_namespaces() -> None:
    def child() -> str:
        private_namespaces(MiB)
        context = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[str] = context.Queue()
        lock = context.Lock()  # a POSIX semaphore, made in /dev/shm
        worker = context.Process(target=_echo, args=(queue, lock))
        worker.start()
        answer = queue.get(timeout=10)
        worker.join(10)
        return answer

    assert in_child(child) == "from the grandchild"


def test_without_cap_sys_admin_a_user_namespace_keeps_the_ids() -> None:
    """A non-root agent: its uid and gid map to themselves, so the supervisor
    sees the same SO_PEERCRED, and it can still drop what the new user
    namespace gave it. (A pathname socket: an abstract one of this network
    namespace is out of the child's reach.)"""
    directory = tempfile.mkdtemp(prefix="capsup-ns-")
    os.chmod(directory, 0o755)
    name = os.path.join(directory, "peer.sock")

    def child() -> object:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        # setuid made the process undumpable (its /proc files root's); an
        # agent started by an unprivileged supervisor is dumpable as usual.
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        private_namespaces(MiB)
        (SHM / "mine").write_text("x")
        owner = os.stat(SHM / "mine").st_uid
        with open("/proc/self/uid_map") as uid_map:
            mapping = uid_map.read().split()
        drop_privileges()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(name)
            sock.recv(1)
        return os.getuid(), owner, mapping

    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(name)
            os.chmod(name, 0o777)
            server.listen()
            server.settimeout(30)
            pid, answers = fork_child(child)
            peer, _ = server.accept()
            with peer:
                credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                peer.send(b"k")
            result = collect(pid, answers)
    finally:
        shutil.rmtree(directory)
    assert result == (NOBODY, NOBODY, [str(NOBODY), str(NOBODY), "1"])
    assert (
        int.from_bytes(credentials[0:4], "little"),
        int.from_bytes(credentials[4:8], "little"),
        int.from_bytes(credentials[8:12], "little"),
    ) == (pid, NOBODY, NOBODY)


@pytest.mark.parametrize("size", [0, -1])
def test_a_size_that_is_no_bound_is_refused(size: int) -> None:
    def child() -> str:
        try:
            private_namespaces(size)
        except ValueError:
            return "refused"
        return "mounted"

    assert in_child(child) == "refused"


# --- IPC and network ------------------------------------------------------------

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.shmat.restype = ctypes.c_void_p
_IPC_CREAT, _IPC_RMID, _SHM_RDONLY = 0o1000, 0, 0o10000
SECRET = b"HOST-SHM-SECRET"


@pytest.fixture
def host_segment() -> Iterator[int]:
    """A SysV shared memory segment of the host's (mode 0600), holding
    SECRET under a key of its own; yields the key."""
    key = 0x5EC0_0000 | (os.getpid() & 0xFFFF)
    shmid = LIBC.shmget(key, 4096, _IPC_CREAT | 0o600)
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    address = LIBC.shmat(shmid, None, 0)
    ctypes.memmove(address, SECRET, len(SECRET))
    LIBC.shmdt(ctypes.c_void_p(address))
    try:
        yield key
    finally:
        LIBC.shmctl(shmid, _IPC_RMID, None)


def _read_segment(key: int) -> str:
    """What the segment under ``key`` holds, or the errno that stopped us."""
    shmid = LIBC.shmget(key, 0, 0)
    if shmid < 0:
        return errno.errorcode[ctypes.get_errno()]
    address = LIBC.shmat(shmid, None, _SHM_RDONLY)
    if address in (None, ctypes.c_void_p(-1).value):
        return errno.errorcode[ctypes.get_errno()]
    return ctypes.string_at(address, len(SECRET)).decode()


def test_the_hosts_sysv_shared_memory_is_out_of_sight(host_segment: int) -> None:
    def child(private: bool) -> str:
        if private:
            private_namespaces(MiB)
        return _read_segment(host_segment)

    assert in_child(lambda: child(True)) == "ENOENT"
    assert in_child(lambda: child(False)) == SECRET.decode()  # the control


def test_a_sysv_message_queue_reaches_nobody_outside() -> None:
    key = 0x5EC1_0000 | (os.getpid() & 0xFFFF)
    queue = LIBC.msgget(key, _IPC_CREAT | 0o600)
    assert queue >= 0, os.strerror(ctypes.get_errno())
    try:

        def child(private: bool) -> str:
            if private:
                private_namespaces(MiB)
            found = LIBC.msgget(key, 0)
            return "found" if found >= 0 else errno.errorcode[ctypes.get_errno()]

        assert in_child(lambda: child(True)) == "ENOENT"
        assert in_child(lambda: child(False)) == "found"
    finally:
        LIBC.msgctl(queue, _IPC_RMID, None)


def test_an_abstract_socket_bound_inside_is_out_of_the_hosts_reach() -> None:
    """Landlock's scope stops the agent's connects out, not the host's in:
    the network namespace does."""
    name = f"\0capsup-test-{os.getpid()}-{os.urandom(4).hex()}"

    def child(private: bool) -> str:
        if private:
            private_namespaces(MiB)
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(name)
            server.listen()
            os.write(ready[1], b"r")
            os.read(done[0], 1)
        return "served"

    for private, expected in ((True, "ECONNREFUSED"), (False, "ok")):
        ready, done = os.pipe(), os.pipe()
        pid, answer = fork_child(lambda private=private: child(private))
        assert os.read(ready[0], 1) == b"r"
        with socket.socket(socket.AF_UNIX) as client:
            assert outcome(lambda client=client: client.connect(name)) == expected
        os.write(done[1], b"d")
        assert collect(pid, answer) == "served"
        for fd in (*ready, *done):
            os.close(fd)


def test_the_network_namespace_has_only_a_loopback_that_is_down() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def child(private: bool) -> tuple[list[str], str]:
            if private:
                private_namespaces(MiB)
            names = [name for _, name in socket.if_nameindex()]
            with socket.socket() as client:
                return names, outcome(lambda: client.connect(("127.0.0.1", port)))

        names, reached = in_child(lambda: child(True))
        assert (names, reached) == (["lo"], "ENETUNREACH")
        with open("/sys/class/net/lo/operstate") as state:
            assert state.read().strip() != "down"  # the host's is up
        assert in_child(lambda: child(False))[1] == "ok"  # the control
