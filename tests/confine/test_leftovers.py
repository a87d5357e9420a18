"""The sweep of what dead supervisors left: which runtime directories and
cgroups it takes for dead (and removes, without following what an agent
planted), and which it leaves alone. Real directories, real cgroups, real
processes, living and dead; no supervisor (test_process_hygiene.py has the
whole story with real ones)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from capsup.supervisor.confinement.cgroup import supervisor_places
from capsup.supervisor.confinement.leftovers import (
    RuntimeDir,
    _start_ticks,
    sweep_leftovers,
)
from confine_child import in_child


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def _dead_process() -> tuple[int, int]:
    """The pid and start time of a process that has exited and been reaped."""
    process = _sleeper()
    start = _start_ticks(process.pid)
    process.kill()
    process.wait()
    return process.pid, start


def _trap(directory: Path, outside: Path) -> None:
    """What an agent may leave in its scratch: a symlink out, a directory
    it made unreadable."""
    (directory / "scratch" / "1").mkdir(parents=True)
    (directory / "scratch" / "1" / "out").symlink_to(outside)
    (directory / "scratch" / "1" / "locked").mkdir()
    (directory / "scratch" / "1" / "locked" / "f").write_text("x")
    (directory / "scratch" / "1" / "locked").chmod(0)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "keep").write_text("mine")
    return path


def test_a_dead_supervisors_runtime_directory_is_removed_without_following_links(
    tmp_path: Path, outside: Path
) -> None:
    pid, start = _dead_process()
    parent = tmp_path / "run"
    parent.mkdir()
    dead = parent / f"capsup-{pid}-{start}-abcd1234"
    dead.mkdir(mode=0o700)
    _trap(dead, outside)
    assert sweep_leftovers(parent) == []
    assert not dead.exists()
    assert (outside / "keep").read_text() == "mine"


def test_a_reused_pid_does_not_keep_a_dead_supervisors_directory(tmp_path: Path) -> None:
    living = _sleeper()
    try:
        # The pid runs, but it is not the process that made the directory.
        stale = tmp_path / f"capsup-{living.pid}-{_start_ticks(living.pid) - 1}-abcd1234"
        stale.mkdir()
        assert sweep_leftovers(tmp_path) == []
        assert not stale.exists()
    finally:
        living.kill()
        living.wait()


def test_a_living_supervisors_directory_is_kept(tmp_path: Path) -> None:
    mine = RuntimeDir(tmp_path)
    try:
        assert mine.path.name.startswith(f"capsup-{os.getpid()}-{_start_ticks(os.getpid())}-")
        assert sweep_leftovers(tmp_path) == []
        assert mine.path.is_dir()
    finally:
        mine.remove()
    assert not mine.path.exists()


def test_a_locked_directory_is_kept_whatever_its_name_says(tmp_path: Path) -> None:
    """A supervisor in another pid namespace: its pid means nothing here,
    its lock does; once its holder is gone, the directory goes."""
    pid, start = _dead_process()
    other = tmp_path / f"capsup-{pid}-{start}-abcd1234"
    other.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(other),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert sweep_leftovers(tmp_path) == []
        assert other.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert sweep_leftovers(tmp_path) == []
    assert not other.exists()


def test_another_users_directory_and_a_planted_symlink_are_left_alone(
    tmp_path: Path, outside: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can make another user's directory")
    pid, start = _dead_process()
    theirs = tmp_path / f"capsup-{pid}-{start}-abcd1234"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    link = tmp_path / f"capsup-{pid}-{start}-efgh5678"
    link.symlink_to(outside)
    assert sweep_leftovers(tmp_path) == []
    assert theirs.is_dir() and link.is_symlink()
    assert (outside / "keep").read_text() == "mine"


def test_the_sweep_leaves_what_it_does_not_own_by_name(tmp_path: Path) -> None:
    pid, start = _dead_process()
    names = ["capsup-demo", f"capsup-{pid}", f"capsup-{pid}-{start}", "capsup-x-1-abcd1234"]
    for name in names:
        (tmp_path / name).mkdir()
    assert sweep_leftovers(tmp_path) == []
    assert all((tmp_path / name).is_dir() for name in names)


# -- cgroups ---------------------------------------------------------------


def _places() -> list[Path]:
    try:
        return [
            directory for _, directory, _ in supervisor_places() if os.access(directory, os.W_OK)
        ]
    except OSError:
        return []


PLACES = _places()


@pytest.fixture(params=PLACES or [None], ids=lambda place: str(place))
def place(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where supervisors of this process's cgroup make theirs, in each
    hierarchy this process may write."""
    if request.param is None:
        pytest.skip("no cgroup this process may write")
    yield request.param


def _leftover(place: Path, pid: int, *members: subprocess.Popen[bytes]) -> Path:
    """A cgroup as supervisor ``pid`` makes it, an agent's cgroup in it, and
    ``members`` moved into that."""
    base = place / f"capsup-{pid}"
    (base / "agent-x").mkdir(parents=True)
    for member in members:
        (base / "agent-x" / "cgroup.procs").write_text(str(member.pid))
    return base


def _clean(base: Path, *processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.kill()
        process.wait()
    for directory in (base / "agent-x", base):
        if directory.exists():
            directory.rmdir()


def test_a_dead_supervisors_cgroup_is_killed_and_removed(place: Path) -> None:
    pid, _ = _dead_process()
    daemon = _sleeper()
    base = _leftover(place, pid, daemon)
    try:
        assert sweep_leftovers(None) == []
        assert daemon.wait(timeout=5) < 0, "the daemon in the dead supervisor's cgroup lives"
        assert not base.exists()
    finally:
        _clean(base, daemon)


def test_a_living_supervisors_cgroup_is_kept(place: Path) -> None:
    supervisor = _sleeper()
    time.sleep(0.05)  # a clock tick (10 ms) or more: the agent is younger
    agent = _sleeper()
    base = _leftover(place, supervisor.pid, agent)
    try:
        assert sweep_leftovers(None) == []
        assert agent.poll() is None, "a living supervisor's agent was killed"
        assert base.is_dir()
    finally:
        _clean(base, agent, supervisor)


def test_a_cgroup_whose_pid_was_reused_is_killed(place: Path) -> None:
    """A member older than the process that has the cgroup's pid now: that
    process is not the supervisor that made the cgroup."""
    daemon = _sleeper()
    time.sleep(0.05)
    reused = _sleeper()
    base = _leftover(place, reused.pid, daemon)
    try:
        assert sweep_leftovers(None) == []
        assert daemon.wait(timeout=5) < 0
        assert reused.poll() is None, "the process that has the pid now is no member"
        assert not base.exists()
    finally:
        _clean(base, daemon, reused)


def test_a_tree_deeper_than_pythons_recursion_limit_is_swept(tmp_path: Path) -> None:
    """The review's deep tree: it stopped every later supervisor's start-up
    with a RecursionError, and stayed."""
    pid, start = _dead_process()
    dead = tmp_path / f"capsup-{pid}-{start}-abcd1234"
    dead.mkdir(mode=0o700)
    fd = os.open(dead, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):
        os.mkdir("d", dir_fd=fd)
        below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    assert sweep_leftovers(tmp_path) == []
    assert not dead.exists()


def test_a_directory_that_cannot_go_is_one_line_and_the_others_still_go(tmp_path: Path) -> None:
    """A mount point inside one dead runtime directory (EBUSY): reported in
    one line, and the sweep goes on to the next."""
    if os.geteuid() != 0:
        pytest.skip("mounting takes root")
    pid, start = _dead_process()
    stuck = tmp_path / f"capsup-{pid}-{start}-aaaa1111"
    removable = tmp_path / f"capsup-{pid}-{start}-bbbb2222"
    for directory in (stuck, removable):
        (directory / "scratch" / "1").mkdir(parents=True)

    def sweep_with_a_mount() -> tuple[list[str], bool, bool]:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(0x0002_0000) == 0  # CLONE_NEWNS: the mount stays here
        assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0  # MS_REC|MS_PRIVATE
        target = str(stuck / "scratch" / "1").encode()
        assert libc.mount(b"capsup-test", target, b"tmpfs", 0, None) == 0
        return sweep_leftovers(tmp_path), stuck.exists(), removable.exists()

    problems, stuck_left, removable_left = in_child(sweep_with_a_mount)
    assert (stuck_left, removable_left) == (True, False)
    [problem] = problems
    assert str(stuck) in problem and "EBUSY" in problem and "\n" not in problem
