"""The agent's seccomp filter: every rule refuses, and the same attempt works
without the filter (so the test really tried).

The live tests run tests/confine/seccomp_attempts.py twice in a subprocess,
once confined and once not; the program's logic is also checked without a
kernel, by running the compiled BPF in a small interpreter against the rule
table's own meaning, for both architectures.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from capsup.agents.confine import seccomp
from capsup.agents.confine.seccomp import (
    ALLOW,
    ARCHES,
    ERRNO_EPERM,
    KILL_PROCESS,
    RULES,
    SYSCALL_NUMBERS,
    Arg,
    Rule,
    compile_program,
)

RUNNER = Path(__file__).with_name("seccomp_attempts.py")
ROOT = os.geteuid() == 0
X86_64 = os.uname().machine == "x86_64"


def _run(mode: str) -> dict[str, dict[str, str]]:
    done = subprocess.run(
        [sys.executable, str(RUNNER), mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, dict[str, str]] = json.loads(done.stdout)
    return report


@pytest.fixture(scope="module")
def confined() -> dict[str, dict[str, str]]:
    return _run("confined")


@pytest.fixture(scope="module")
def unconfined() -> dict[str, dict[str, str]]:
    return _run("unconfined")


# attempt -> (the syscall whose rule it shows, what it gets when confined)
REFUSED: dict[str, tuple[str, str]] = {
    "socket AF_INET stream": ("socket", "EPERM"),
    "socket AF_INET dgram": ("socket", "EPERM"),
    "socket AF_INET6 stream": ("socket", "EPERM"),
    "socket AF_NETLINK": ("socket", "EPERM"),
    "socket AF_PACKET": ("socket", "EPERM"),
    "socket AF_VSOCK": ("socket", "EPERM"),
    "socket AF_UNIX dgram": ("socket", "EPERM"),
    "socket AF_INET, high bits set": ("socket", "EPERM"),
    "socketpair AF_UNIX dgram": ("socketpair", "EPERM"),
    "io_uring_setup": ("io_uring_setup", "EPERM"),
    "ptrace PTRACE_ATTACH a sibling": ("ptrace", "EPERM"),
    "process_vm_readv": ("process_vm_readv", "EPERM"),
    "bpf BPF_MAP_CREATE": ("bpf", "EPERM"),
    "perf_event_open": ("perf_event_open", "EPERM"),
    "userfaultfd": ("userfaultfd", "EPERM"),
    "unshare CLONE_NEWUSER": ("unshare", "EPERM"),
    "mount tmpfs": ("mount", "EPERM"),
    "keyctl": ("keyctl", "EPERM"),
    "open_by_handle_at": ("open_by_handle_at", "EPERM"),
    "ioctl TIOCSTI": ("ioctl", "EPERM"),
    "ioctl TIOCLINUX": ("ioctl", "EPERM"),
    "ioctl TIOCSPGRP": ("ioctl", "EPERM"),
    "ioctl TIOCSCTTY": ("ioctl", "EPERM"),
    "prctl PR_SET_PDEATHSIG 0": ("prctl", "EPERM"),
    "prctl PR_SET_PDEATHSIG, high bits set": ("prctl", "EPERM"),
    "prctl PR_SET_PTRACER": ("prctl", "EPERM"),
    "prctl PR_SET_MM": ("prctl", "EPERM"),
    "clone CLONE_NEWNS": ("clone", "EPERM"),
    "clone CLONE_NEWUSER": ("clone", "EPERM"),
    "clone CLONE_NEWNET": ("clone", "EPERM"),
    "clone CLONE_NEWPID": ("clone", "EPERM"),
    "clone CLONE_PARENT": ("clone", "EPERM"),
    "clone3": ("clone3", "ENOSYS"),
    "personality ADDR_NO_RANDOMIZE": ("personality", "EPERM"),
    "prlimit64 set a sibling's": ("prlimit64", "EPERM"),
    "setpriority a sibling": ("setpriority", "EPERM"),
    "ioprio_set a sibling": ("ioprio_set", "EPERM"),
    "sched_setscheduler SCHED_IDLE a sibling": ("sched_setscheduler", "EPERM"),
    "sched_setattr a sibling": ("sched_setattr", "EPERM"),
    "i386 getpid through int 0x80": ("(architecture)", "signal:SIGSYS"),
    "x32 getpid": ("(architecture)", "signal:SIGSYS"),
}

# What the attempt gets unconfined where that is not "ok": still not the
# filter's answer, so the filter is what made the difference.
UNCONFINED: dict[str, set[str]] = {
    "ioctl TIOCLINUX": {"ENOTTY", "EINVAL"},  # a pty is not a virtual console
    "prctl PR_SET_PTRACER": {"ok", "EINVAL"},  # EINVAL without Yama
    "socket AF_VSOCK": {"ok", "EAFNOSUPPORT"},
    "x32 getpid": {"ok", "ENOSYS"},  # ENOSYS: a kernel without x32
}
NEEDS_ROOT = {
    "socket AF_PACKET",
    "bpf BPF_MAP_CREATE",
    "perf_event_open",
    "mount tmpfs",
    "open_by_handle_at",
    "clone CLONE_NEWNS",
    "clone CLONE_NEWNET",
    "clone CLONE_NEWPID",
}
X86_64_ONLY = {"i386 getpid through int 0x80", "x32 getpid"}

STILL_WORKS = [
    "syscall -1",
    "fork",
    "subprocess and posix_spawn",
    "a thread",
    "multiprocessing Pool",
    "socket AF_UNIX stream",
    "socket AF_UNIX seqpacket",
    "socketpair AF_UNIX stream",
    "socketpair AF_UNIX seqpacket",
    "clone plain",
    "personality query",
    "personality PER_LINUX",
    "prctl PR_GET_PDEATHSIG",
    "prctl PR_SET_NAME",
    "prlimit64 own",
    "prlimit64 read a sibling's",
    "setpriority own",
    "ioprio_set own",
    "sched_setscheduler own",
    "sched_setscheduler SCHED_IDLE own",
    "sched_setscheduler SCHED_OTHER a thread id",
    "sched_setattr own",
    "ioctl TIOCGWINSZ",
    "seccomp, another filter",
    "landlock_create_ruleset version",
]
STILL_WORKS_UNCONFINED = {"syscall -1": "ENOSYS"}  # the kernel's answer, filter or not


def _skip_unless_applicable(attempt: str) -> None:
    if attempt in X86_64_ONLY and not X86_64:
        pytest.skip("x86_64's other ABIs")


@pytest.mark.parametrize("attempt", REFUSED)
def test_refused_when_confined(attempt: str, confined: dict[str, dict[str, str]]) -> None:
    _skip_unless_applicable(attempt)
    assert confined["attempts"][attempt] == REFUSED[attempt][1]


@pytest.mark.parametrize("attempt", REFUSED)
def test_the_same_attempt_works_unconfined(
    attempt: str, unconfined: dict[str, dict[str, str]]
) -> None:
    _skip_unless_applicable(attempt)
    if attempt in NEEDS_ROOT and not ROOT:
        pytest.skip("the control needs root")
    assert unconfined["attempts"][attempt] in UNCONFINED.get(attempt, {"ok"})


@pytest.mark.parametrize("attempt", STILL_WORKS)
def test_still_works_when_confined(
    attempt: str, confined: dict[str, dict[str, str]], unconfined: dict[str, dict[str, str]]
) -> None:
    expected = STILL_WORKS_UNCONFINED.get(attempt, "ok")
    assert confined["attempts"][attempt] == expected
    assert unconfined["attempts"][attempt] == expected


def test_every_attempt_has_an_expectation(confined: dict[str, dict[str, str]]) -> None:
    assert set(confined["attempts"]) == set(REFUSED) | set(STILL_WORKS)


def _refused_outright() -> list[str]:
    """Syscalls whose only rule is an unconditional EPERM."""
    rules = {
        name: [rule for rule in RULES if rule.syscall == name]
        for name in {r.syscall for r in RULES}
    }
    return sorted(
        name
        for name, own in rules.items()
        if own == [Rule(name, ERRNO_EPERM)] and seccomp.native_arch().number(name) is not None
    )


@pytest.mark.parametrize("syscall", _refused_outright())
def test_every_unconditional_rule_refuses(
    syscall: str, confined: dict[str, dict[str, str]], unconfined: dict[str, dict[str, str]]
) -> None:
    assert confined["probes"][syscall] == "EPERM"
    if ROOT:  # unprivileged, the kernel itself answers EPERM to many
        assert unconfined["probes"][syscall] != "EPERM"


def test_every_rule_is_tried(confined: dict[str, dict[str, str]]) -> None:
    """Each syscall the table restricts is exercised live: outright refusals
    by a probe, the others by a named attempt (connect: test_unix_connect)."""
    tried = set(confined["probes"]) | {syscall for syscall, _ in REFUSED.values()}
    arch = seccomp.native_arch()
    restricted = {
        rule.syscall
        for rule in RULES
        if rule.action not in (ALLOW, seccomp.NOTIFY) and arch.number(rule.syscall) is not None
    }
    assert restricted <= tried


# --- the program, without a kernel ------------------------------------------------


def run_bpf(program: bytes, data: bytes, reads: set[int] | None = None) -> int:
    """Interpret the instructions the assembler emits (and only those)."""
    insns = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            (accumulator,) = struct.unpack_from("=I", data, k)
            if reads is not None:
                reads.add(k)
        elif code == 0x54:  # and #k
            accumulator &= k
        elif code in (0x15, 0x35):  # jeq / jge #k
            holds = accumulator == k if code == 0x15 else accumulator >= k
            pc += jt if holds else jf
        elif code == 0x06:  # ret #k
            return int(k)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def seccomp_data(nr: int, audit_arch: int, args: tuple[int, ...]) -> bytes:
    return struct.pack("=iIQ6Q", nr, audit_arch, 0x4000, *args)


def meaning(syscall: str, args: tuple[int, ...]) -> int:
    """What RULES say, read directly: the first rule that holds, else allow."""
    for rule in RULES:
        if rule.syscall == syscall and all(
            args[a.index] & a.tested_bits == a.value for a in rule.when
        ):
            return rule.action.value
    return ALLOW.value


def _argument_vectors(rng: random.Random) -> list[tuple[int, ...]]:
    """Zeros, each rule's own values (with junk in the upper halves too), and
    random mixes of interesting and arbitrary values."""
    interesting = sorted(
        {a.value for rule in RULES for a in rule.when}
        | {1, 2, 10, 16, 17, 0x0008_0801, 0x1_0000_0001, 0xFFFF_FFFF, 1 << 63}
    )
    vectors = [(0,) * 6]
    for rule in RULES:
        args = [0] * 6
        for a in rule.when:
            args[a.index] = a.value
        vectors.append(tuple(args))
        vectors.append(tuple(v | (0xDEAD << 32) for v in args))
    for _ in range(400):
        vectors.append(
            tuple(
                rng.choice(interesting) if rng.random() < 0.7 else rng.getrandbits(64)
                for _ in range(6)
            )
        )
    return vectors


@pytest.mark.parametrize("arch", ARCHES)
def test_the_program_means_the_table(arch: str) -> None:
    target = ARCHES[arch]
    program = compile_program(RULES, arch)
    vectors = _argument_vectors(random.Random(14))
    for name in {rule.syscall for rule in RULES}:
        nr = target.number(name)
        if nr is None:
            continue
        for args in vectors:
            got = run_bpf(program, seccomp_data(nr, target.audit_arch, args))
            assert got == meaning(name, args), (name, [hex(a) for a in args])


@pytest.mark.parametrize("arch", ARCHES)
def test_other_syscalls_are_allowed_by_arch_and_number_alone(arch: str) -> None:
    """So the kernel's action cache allows them without running the filter."""
    target = ARCHES[arch]
    program = compile_program(RULES, arch)
    named = {target.number(rule.syscall) for rule in RULES}
    for nr in set(range(0, 470)) - named:
        reads: set[int] = set()
        data = seccomp_data(nr, target.audit_arch, (0xFFFF,) * 6)
        assert run_bpf(program, data, reads) == ALLOW.value
        assert reads == {0, 4}  # nr and arch only


@pytest.mark.parametrize("arch", ARCHES)
def test_another_architecture_is_killed(arch: str) -> None:
    program = compile_program(RULES, arch)
    for foreign in (0x4000_0003, 0x4000_0028, 0xC000_003E, 0xC000_00B7):  # i386, arm, ...
        if foreign == ARCHES[arch].audit_arch:
            continue
        assert run_bpf(program, seccomp_data(20, foreign, (0,) * 6)) == KILL_PROCESS.value


def test_x32_numbers_are_killed_but_minus_one_passes() -> None:
    program = compile_program(RULES, "x86_64")
    audit = ARCHES["x86_64"].audit_arch
    for nr in (0x4000_0000, 0x4000_0000 | 41, 0x7FFF_FFFF):
        assert run_bpf(program, seccomp_data(nr, audit, (0,) * 6)) == KILL_PROCESS.value
    assert run_bpf(program, seccomp_data(-1, audit, (0,) * 6)) == ALLOW.value


def test_connect_goes_to_the_supervisor_and_only_connect() -> None:
    for arch, target in ARCHES.items():
        program = compile_program(RULES, arch)
        for name, nr in ((n, target.number(n)) for n in SYSCALL_NUMBERS):
            if nr is None:
                continue
            got = run_bpf(program, seccomp_data(nr, target.audit_arch, (1, 1, 0, 0, 0, 0)))
            assert (got == seccomp.NOTIFY.value) == (name == "connect"), name


def _header_numbers(path: str) -> dict[str, int]:
    text = Path(path).read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\s*$", text, re.M)}


@pytest.mark.parametrize(
    ("arch", "header"),
    [
        ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        ("aarch64", "/usr/include/asm-generic/unistd.h"),  # aarch64 uses the generic table
    ],
)
def test_syscall_numbers_match_the_kernel_headers(arch: str, header: str) -> None:
    if not Path(header).exists():
        pytest.skip(f"{header} not installed")
    known = _header_numbers(header)
    target = ARCHES[arch]
    checked = 0
    for name in SYSCALL_NUMBERS:
        number = target.number(name)
        if number is None:
            assert name not in known, name
        elif name in known:  # headers older than the syscall lack it
            assert known[name] == number, name
            checked += 1
    assert checked >= len(SYSCALL_NUMBERS) - 6


# --- the assembler's own checks -----------------------------------------------------


def test_an_unknown_syscall_is_an_error() -> None:
    with pytest.raises(ValueError, match="not in the syscall table"):
        compile_program([Rule("socket_typo", ERRNO_EPERM)], "x86_64")


def test_a_rule_hidden_by_an_earlier_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="can never apply"):
        compile_program(
            [Rule("ptrace", ERRNO_EPERM), Rule("ptrace", ALLOW, (Arg(0, 1),))], "x86_64"
        )


def test_an_unknown_architecture_is_an_error() -> None:
    with pytest.raises(ValueError, match="no syscall table"):
        compile_program(RULES, "riscv64")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Arg(6, 0),
        lambda: Arg(0, 1 << 32),  # 32 bits
        lambda: Arg(0, 0x10, 0x0F),  # the value outside its mask
    ],
)
def test_impossible_argument_tests_are_errors(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_64_bit_tests_compare_both_halves() -> None:
    rules = [Rule("ptrace", ERRNO_EPERM, (Arg(2, 0x1_0000_0005, bits=64),))]
    program = compile_program(rules, "x86_64")
    nr = ARCHES["x86_64"].number("ptrace")
    assert nr is not None
    audit = ARCHES["x86_64"].audit_arch
    for value, refused in ((0x1_0000_0005, True), (0x5, False), (0x1_0000_0000, False)):
        args = (0, 0, value, 0, 0, 0)
        got = run_bpf(program, seccomp_data(nr, audit, args))
        assert (got == ERRNO_EPERM.value) is refused, hex(value)


def test_the_program_fits_classic_bpf() -> None:
    for arch in ARCHES:
        size = len(compile_program(RULES, arch)) // 8
        assert size < 4096
        jumps = itertools.chain.from_iterable(
            struct.unpack_from("=HBBI", compile_program(RULES, arch), at)[1:3]
            for at in range(0, size * 8, 8)
        )
        assert max(jumps) <= 255


def test_probe_finds_what_this_kernel_offers() -> None:
    support = seccomp.probe()
    assert support.arch_supported
    assert support.filter
    # Linux 5.19+ (this project's CI and development machines run newer).
    assert support.user_notif
    assert support.wait_killable_recv
