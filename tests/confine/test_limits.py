"""Resource limits: each one stops a child where it should, and the same
work succeeds in a child without it; and the size syntax of the policy."""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

import pytest
from capsup.agents.confine.limits import ResourceLimits, apply_limits, parse_size
from confine_child import ChildKilled, collect, fork_child, in_child, outcome

MiB = 1 << 20


def attempt(limits: ResourceLimits | None, action: object) -> str:
    """``action``'s outcome in a child, under ``limits`` (or the inherited ones)."""
    assert callable(action)

    def child() -> str:
        if limits is not None:
            apply_limits(limits)
        try:
            return outcome(action)
        except MemoryError:
            return "MemoryError"

    return str(in_child(child))


def address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def test_memory_past_the_address_space_limit_is_a_memory_error() -> None:
    def allocate() -> None:
        bytearray(256 * MiB)

    # The forked child's address space is pytest's; 64 MiB more is the bound.
    limits = ResourceLimits(memory=address_space() + 64 * MiB)
    assert attempt(limits, allocate) == "MemoryError"
    assert attempt(None, allocate) == "ok"


def test_open_files_past_the_bound_is_emfile() -> None:
    bound = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 16

    def open_many() -> None:  # as many as the bound: some numbers are taken already
        for _ in range(bound):
            os.open("/dev/null", os.O_RDONLY)  # the child exits: no need to close

    assert attempt(ResourceLimits(open_files=bound), open_many) == "EMFILE"
    assert attempt(None, open_many) == "ok"


def test_a_file_past_the_size_limit_is_efbig(tmp_path: Path) -> None:
    def write(name: str) -> object:
        def go() -> None:
            fd = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT)
            assert os.write(fd, b"x" * 4096) == 4096
            os.write(fd, b"x" * 4096)  # written up to the limit
            os.write(fd, b"x")  # past it: EFBIG, SIGXFSZ being ignored

        return go

    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN  # CPython's own setting
    assert attempt(ResourceLimits(file_size=6000), write("limited")) == "EFBIG"
    assert (tmp_path / "limited").stat().st_size == 6000  # the partial write, up to the limit
    assert attempt(None, write("free")) == "ok"


def burn(seconds: float) -> str:
    """Spin for ``seconds`` of CPU time."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return "ok"


def test_cpu_seconds_past_the_limit_kill_the_process() -> None:
    def child() -> str:
        apply_limits(ResourceLimits(cpu_seconds=1))
        return burn(3)

    # Both at once (two cores): the limited one, and one that outlives its limit.
    limited, free = fork_child(child), fork_child(lambda: burn(1.2))
    with pytest.raises(ChildKilled) as killed:
        collect(*limited)
    assert killed.value.signum == signal.SIGKILL  # soft = hard: no SIGXCPU first
    assert collect(*free) == "ok"


def test_core_dumps_are_always_off() -> None:
    def child() -> object:
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        soft = MiB if hard == resource.RLIM_INFINITY else min(MiB, hard)
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
        before = resource.getrlimit(resource.RLIMIT_CORE)
        apply_limits(ResourceLimits())
        return before[0], resource.getrlimit(resource.RLIMIT_CORE)

    before, after = in_child(child)
    assert before > 0
    assert after == (0, 0)


def test_soft_and_hard_are_both_set_and_never_above_the_hard_limit() -> None:
    def child() -> object:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
        apply_limits(ResourceLimits(open_files=1000, file_size=10 * MiB))
        return (
            resource.getrlimit(resource.RLIMIT_NOFILE),
            resource.getrlimit(resource.RLIMIT_FSIZE),
        )

    assert in_child(child) == ((100, 100), (10 * MiB, 10 * MiB))


def test_processes_is_carried_not_applied_as_rlimit_nproc() -> None:
    def child() -> object:
        before = resource.getrlimit(resource.RLIMIT_NPROC)
        apply_limits(ResourceLimits(processes=1))
        return before == resource.getrlimit(resource.RLIMIT_NPROC)

    assert in_child(child) is True


@pytest.mark.parametrize("bad", [-1, True, 1.5, "64"])
def test_a_limit_must_be_a_non_negative_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="open_files"):
        ResourceLimits(open_files=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("512", 512),
        ("64KiB", 64 << 10),
        ("300MiB", 300 << 20),
        ("2GiB", 2 << 30),
        ("1 TiB", 1 << 40),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "2G", "2GB", "2gib", "1.5GiB", "-1", "2 GiB ", "512 ", "1_000", "GiB", "٣", -5, True],
)
def test_parse_size_refuses_anything_else(text: object) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("\\", "\\\\")):
        parse_size(text)  # type: ignore[arg-type]
