"""A private /dev/shm: each child has its own, the host's sees nothing of
it, it is bounded, and multiprocessing works on it."""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import socket
from multiprocessing.synchronize import Lock
from pathlib import Path

import pytest
from capsup.agents.confine.namespace import private_shm
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
        private_shm(MiB)
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
        private_shm(MiB)
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
            private_shm(MiB)
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


def test_multiprocessing_works_on_the_private_shm() -> None:
    def child() -> str:
        private_shm(MiB)
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
    namespace gave it."""
    name = f"\0capsup-test-{os.getpid()}-{os.urandom(4).hex()}"

    def child() -> object:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        # setuid made the process undumpable (its /proc files root's); an
        # agent started by an unprivileged supervisor is dumpable as usual.
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        private_shm(MiB)
        (SHM / "mine").write_text("x")
        owner = os.stat(SHM / "mine").st_uid
        with open("/proc/self/uid_map") as uid_map:
            mapping = uid_map.read().split()
        drop_privileges()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(name)
            sock.recv(1)
        return os.getuid(), owner, mapping

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(name)
        server.listen()
        pid, answers = fork_child(child)
        peer, _ = server.accept()
        with peer:
            credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            peer.send(b"k")
        result = collect(pid, answers)
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
            private_shm(size)
        except ValueError:
            return "refused"
        return "mounted"

    assert in_child(child) == "refused"
