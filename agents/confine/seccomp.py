"""seccomp: the agent's syscall filter, one table of rules and a small assembler.

:data:`RULES` is the whole policy. :func:`compile_program` turns it into a
classic BPF program for one architecture; :func:`install` loads it with
``seccomp(2)``. No libseccomp binding: libseccomp 2.5 cannot set
``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV``, which the brokered ``connect()``
needs (below), and the assembler that replaces it is short enough to review
in one sitting; the tests run its output through a BPF interpreter as well
as the kernel.

How a rule reads. A syscall that no rule names is allowed (the default is
ALLOW: this filter closes named doors, Landlock and the dropped
capabilities hold the rest). The rules that name one syscall are tried in
table order and the first whose argument tests all hold decides; if none
holds, the syscall is allowed. An argument test is ``(arg & mask) ==
value``, on the argument's low 32 bits when the kernel reads it as an
``int`` (it ignores the upper half of the register, so must we: a test on
all 64 bits would let ``prctl(0x1_00000001, ...)`` through as a
``PR_SET_PDEATHSIG`` it does not recognise) and on both halves, each loaded
and compared in turn, when the kernel reads it as a ``long`` or a pointer.

Architecture. The program first checks ``seccomp_data.arch``: anything but
the one architecture it was compiled for (i386 through ``int 0x80`` on
x86_64, arm32 compat on aarch64) and, on x86_64, x32 syscall numbers (at or
above ``0x40000000``) kill the process. Their syscall numbers differ, so
every rule would be misapplied; no agent needs them; and an error return
would leave a foreign-ABI program looping on failed syscalls (its
``exit`` included) where a kill is immediate and visible (SIGSYS, logged by
the kernel). ``nr == -1`` passes, as in libseccomp: tracers use it to skip a
syscall and the kernel answers it with ENOSYS. A syscall that the filter
allows whatever its arguments costs nothing: for those the program looks
only at ``arch`` and ``nr``, so the kernel's action cache (Linux 5.11+)
marks them allowed when the filter is loaded and skips the filter for them.

``connect()`` is answered by the supervisor (``SECCOMP_RET_USER_NOTIF``,
see :mod:`capsup.supervisor.confinement.unix_connect`): Landlock before ABI 9
cannot tell which pathname unix socket a process connects to. The filter is
loaded with ``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV``: once the supervisor
has received a notification, only a fatal signal interrupts the waiting
``connect()``. Without it, a signal during a brokered connect returns EINTR,
and CPython then polls the still unconnected socket and reports success. A
signal that lands before the supervisor has received the notification still
interrupts it (the kernel cannot know the supervisor will answer); CPython
misreports that EINTR as it does a native blocking connect interrupted on a
full backlog, but the socket is not connected either way.

``seccomp()`` itself stays allowed: when several filters answer, the kernel
takes the most restrictive action (a newer filter wins a tie), so a filter
the agent adds can only refuse more. A tie on the user notification goes to
the agent's filter, which cannot have a listener (the kernel refuses a second
one in a filter chain with EBUSY), so that ``connect()`` fails with ENOSYS:
the agent cannot answer its own connects. The listener fd that
:func:`install` returns must reach the supervisor and be closed in the agent
before the agent's code runs: whoever holds it answers the agent's connects
(the kernel makes it close-on-exec, so an ``exec`` drops it too).

SysV IPC (``shmget``, ``msgget``, ``semget`` and the rest) and POSIX message
queues (``mq_open``) are keyed or named outside the filesystem, so Landlock
does not scope them: without an IPC namespace, an agent reads the host's
segments and talks to anyone through a queue. The agent gets an IPC namespace
of its own (:mod:`~capsup.agents.confine.namespace`), and this filter refuses
them all the same, always: nothing an agent runs needs them (Python's
``multiprocessing`` uses POSIX semaphores and shared memory, ``sem_open`` and
``shm_open``, files in its private ``/dev/shm``; SysV IPC is for the likes of
PostgreSQL's server and X11's MIT-SHM), and so they stay closed where the
namespace could not be had (``confine = "best-effort"`` on a machine without
it).

Not covered here: calls that take a thread id stay allowed for other processes of the same
user where runtimes pass their own threads' ids: ``sched_setaffinity``
(``pthread_setaffinity_np``; at worst it pins the supervisor to one CPU),
``sched_setparam`` (no effect outside real-time policies, which need a
privilege) and ``sched_setscheduler`` to any policy but SCHED_IDLE (libzmq
calls ``pthread_setschedparam`` on each of its threads). A PID namespace
would hide other processes entirely.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from capsup.agents.confine._libc import describe_errno, libc, prctl
from capsup.agents.confine.errors import ConfinementError

__all__ = [
    "ALLOW",
    "ARCHES",
    "ERRNO_ENOSYS",
    "ERRNO_EPERM",
    "KILL_PROCESS",
    "NOTIFY",
    "RULES",
    "Action",
    "Arch",
    "Arg",
    "Rule",
    "SYSCALL_NUMBERS",
    "SeccompSupport",
    "compile_program",
    "install",
    "native_arch",
    "probe",
]


@dataclass(frozen=True)
class Action:
    """What the filter returns: a ``SECCOMP_RET_*`` value, and its name."""

    name: str
    value: int


_RET_ERRNO = 0x0005_0000
ALLOW = Action("allow", 0x7FFF_0000)
ERRNO_EPERM = Action("errno EPERM", _RET_ERRNO | errno.EPERM)
ERRNO_ENOSYS = Action("errno ENOSYS", _RET_ERRNO | errno.ENOSYS)
#: ``SECCOMP_RET_USER_NOTIF``: the supervisor answers (``connect()`` only).
NOTIFY = Action("user notification", 0x7FC0_0000)
KILL_PROCESS = Action("kill process", 0x8000_0000)

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Arg:
    """The test ``(argument[index] & mask) == value``.

    ``bits=32`` (an ``int`` argument) tests the low half only; ``bits=64``
    (a ``long`` or a pointer) tests both halves."""

    index: int
    value: int
    mask: int | None = None  # None: every bit of the width
    bits: Literal[32, 64] = 32

    @property
    def tested_bits(self) -> int:
        """The mask, or every bit of the width."""
        full = _U32 if self.bits == 32 else _U64
        return full if self.mask is None else self.mask

    def __post_init__(self) -> None:
        full = _U32 if self.bits == 32 else _U64
        if not 0 <= self.index < 6:
            raise ValueError(f"a syscall has arguments 0 to 5, not {self.index}")
        if self.tested_bits & ~full or self.value & ~self.tested_bits:
            raise ValueError(f"{self!r}: value and mask must fit the mask and {self.bits} bits")


@dataclass(frozen=True)
class Rule:
    """``syscall`` returns ``action`` when every test in ``when`` holds
    (an empty ``when``: always). Rules on one syscall: the first that holds."""

    syscall: str
    action: Action
    when: tuple[Arg, ...] = ()


# Constants from the uapi headers (the same on x86_64 and aarch64).
_AF_UNIX = 1
_SOCK_STREAM = 1
_SOCK_SEQPACKET = 5
_SOCK_TYPE_MASK = 0xF  # strips SOCK_CLOEXEC and SOCK_NONBLOCK
_CLONE_PARENT = 0x0000_8000
_CLONE_NEW = (
    0x0002_0000  # CLONE_NEWNS
    | 0x0200_0000  # CLONE_NEWCGROUP
    | 0x0400_0000  # CLONE_NEWUTS
    | 0x0800_0000  # CLONE_NEWIPC
    | 0x1000_0000  # CLONE_NEWUSER
    | 0x2000_0000  # CLONE_NEWPID
    | 0x4000_0000  # CLONE_NEWNET
)  # CLONE_NEWTIME (0x80) only exists for clone3: in clone() it is exit-signal bits.
_TIOCSCTTY = 0x540E
_TIOCSPGRP = 0x5410
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
_PR_SET_PDEATHSIG = 1
_PR_SET_MM = 35
_PR_SET_PTRACER = 0x5961_6D61
_PERSONALITY_QUERY = 0xFFFF_FFFF
_PER_LINUX = 0x0000
_PER_LINUX32 = 0x0008
_UNAME26 = 0x2_0000
_PRIO_PROCESS = 0
_IOPRIO_WHO_PROCESS = 1
_SCHED_IDLE = 5
_SCHED_RESET_ON_FORK = 0x4000_0000


def _unix_stream_or_seqpacket(syscall: str) -> tuple[Rule, ...]:
    """Unix stream and seqpacket sockets only. Not unix datagrams: a
    ``sendto()`` with a path reaches any datagram socket without a
    ``connect()`` for the supervisor to see, even from a socketpair."""
    return (
        Rule(syscall, ALLOW, (Arg(0, _AF_UNIX), Arg(1, _SOCK_STREAM, _SOCK_TYPE_MASK))),
        Rule(syscall, ALLOW, (Arg(0, _AF_UNIX), Arg(1, _SOCK_SEQPACKET, _SOCK_TYPE_MASK))),
        Rule(syscall, ERRNO_EPERM),
    )


def _on_self_only(syscall: str, *who: Arg) -> tuple[Rule, ...]:
    """Scheduling and limits of the caller only (pid 0). The kernel lets a
    process lower these for any process of its user: an agent could starve
    the supervisor (SCHED_IDLE, nice 19, the idle I/O class) or kill it
    (``RLIMIT_CPU`` below its CPU time). Landlock does not scope them."""
    return (Rule(syscall, ALLOW, who), Rule(syscall, ERRNO_EPERM))


#: The filter. Reasons are given per group; every rule has a test in
#: tests/confine/test_seccomp.py showing that it denies.
RULES: tuple[Rule, ...] = (
    *_unix_stream_or_seqpacket("socket"),
    *_unix_stream_or_seqpacket("socketpair"),
    Rule("connect", NOTIFY),
    # New namespaces; and CLONE_PARENT, which would make the child the
    # supervisor's instead of a descendant of the agent. (flags: arg 0 on
    # x86_64 and aarch64; the kernel reads their low 32 bits.)
    Rule("clone", ALLOW, (Arg(0, 0, _CLONE_NEW | _CLONE_PARENT),)),
    Rule("clone", ERRNO_EPERM),
    # clone3's flags are in a struct that BPF cannot read. ENOSYS makes glibc
    # (posix_spawn, pthread_create) fall back to clone, checked above.
    Rule("clone3", ERRNO_ENOSYS),
    # Typing into, or pasting onto, the terminal the agent inherited; taking
    # its foreground (setpgid, then tcsetpgrp: the operator's ^C would reach
    # the agent's process group, and the supervisor would be stopped by
    # SIGTTIN/SIGTTOU), or a terminal as its controlling one. (request: the
    # kernel reads an unsigned int.) The only terminal an agent has is the
    # one it inherited: Landlock grants it no /dev/ptmx to make its own.
    Rule("ioctl", ERRNO_EPERM, (Arg(1, _TIOCSTI),)),
    Rule("ioctl", ERRNO_EPERM, (Arg(1, _TIOCLINUX),)),
    Rule("ioctl", ERRNO_EPERM, (Arg(1, _TIOCSPGRP),)),
    Rule("ioctl", ERRNO_EPERM, (Arg(1, _TIOCSCTTY),)),
    # The bootstrap's parent-death signal must stay. PR_SET_PTRACER only
    # ever opens the agent to ptrace by another process; PR_SET_MM rewrites
    # what /proc shows of it (needs CAP_SYS_RESOURCE, refused regardless).
    # PR_SET_DUMPABLE stays allowed: 0 only shuts the supervisor out of the
    # agent's memory, which fails the agent's own brokered connects closed;
    # 1 opens it to ptrace, which Landlock scopes to the agent's domain.
    Rule("prctl", ERRNO_EPERM, (Arg(0, _PR_SET_PDEATHSIG),)),
    Rule("prctl", ERRNO_EPERM, (Arg(0, _PR_SET_PTRACER),)),
    Rule("prctl", ERRNO_EPERM, (Arg(0, _PR_SET_MM),)),
    # Query, and the personalities Docker's default profile allows; refused:
    # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO and the like,
    # which only ever serve to weaken the agent's own exploit mitigations.
    *(
        Rule("personality", ALLOW, (Arg(0, persona),))
        for persona in (
            _PER_LINUX,
            _PER_LINUX32,
            _UNAME26,
            _UNAME26 | _PER_LINUX32,
            _PERSONALITY_QUERY,
        )
    ),
    Rule("personality", ERRNO_EPERM),
    # prlimit64 may still read another process's limits (new_limit NULL).
    Rule("prlimit64", ALLOW, (Arg(0, 0),)),
    Rule("prlimit64", ALLOW, (Arg(2, 0, bits=64),)),
    Rule("prlimit64", ERRNO_EPERM),
    *_on_self_only("setpriority", Arg(0, _PRIO_PROCESS), Arg(1, 0)),
    *_on_self_only("ioprio_set", Arg(0, _IOPRIO_WHO_PROCESS), Arg(1, 0)),
    *_on_self_only("sched_setattr", Arg(0, 0)),
    # SCHED_IDLE for the caller only; other policies: see the module docstring.
    Rule("sched_setscheduler", ALLOW, (Arg(0, 0),)),
    Rule("sched_setscheduler", ERRNO_EPERM, (Arg(1, _SCHED_IDLE, ~_SCHED_RESET_ON_FORK & _U32),)),
    # Refused outright: kernel attack surface no agent needs (io_uring
    # bypasses seccomp for the syscalls it performs; bpf, perf_event_open,
    # userfaultfd), reaching into other processes (ptrace, process_vm_*,
    # process_madvise, pidfd_getfd, kcmp), namespaces and mounts (also the
    # new mount API), keyrings, file handles (which bypass path checks),
    # modules, kexec, reboot, raw I/O, swap, accounting, quotas, the kernel
    # log, the clock, host and domain names, the terminal hang-up, fanotify;
    # SysV IPC and POSIX message queues (see the module docstring).
    *(
        Rule(name, ERRNO_EPERM)
        for name in (
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "process_madvise",
            "pidfd_getfd",
            "kcmp",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "open_tree",
            "open_tree_attr",
            "move_mount",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "keyctl",
            "add_key",
            "request_key",
            "name_to_handle_at",
            "open_by_handle_at",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "reboot",
            "iopl",
            "ioperm",
            "modify_ldt",
            "swapon",
            "swapoff",
            "acct",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "syslog",
            "settimeofday",
            "clock_settime",
            "adjtimex",
            "clock_adjtime",
            "sethostname",
            "setdomainname",
            "vhangup",
            "fanotify_init",
            "shmget",
            "shmat",
            "shmctl",
            "shmdt",
            "msgget",
            "msgsnd",
            "msgrcv",
            "msgctl",
            "semget",
            "semop",
            "semtimedop",
            "semctl",
            "mq_open",
            "mq_unlink",
            "mq_timedsend",
            "mq_timedreceive",
            "mq_notify",
            "mq_getsetattr",
        )
    ),
)

# Syscall numbers: (x86_64, aarch64); None where the architecture lacks the
# call. From 424 on the numbers are the same everywhere. Checked against the
# kernel headers by tests/confine/test_seccomp.py.
SYSCALL_NUMBERS: Mapping[str, tuple[int, int | None]] = {
    "ioctl": (16, 29),
    "shmget": (29, 194),
    "shmat": (30, 196),
    "shmctl": (31, 195),
    "socket": (41, 198),
    "connect": (42, 203),
    "socketpair": (53, 199),
    "clone": (56, 220),
    "semget": (64, 190),
    "semop": (65, 193),
    "semctl": (66, 191),
    "shmdt": (67, 197),
    "msgget": (68, 186),
    "msgsnd": (69, 189),
    "msgrcv": (70, 188),
    "msgctl": (71, 187),
    "ptrace": (101, 117),
    "syslog": (103, 116),
    "personality": (135, 92),
    "setpriority": (141, 140),
    "sched_setscheduler": (144, 119),
    "vhangup": (153, 58),
    "modify_ldt": (154, None),
    "pivot_root": (155, 41),
    "prctl": (157, 167),
    "adjtimex": (159, 171),
    "chroot": (161, 51),
    "acct": (163, 89),
    "settimeofday": (164, 170),
    "mount": (165, 40),
    "umount2": (166, 39),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "iopl": (172, None),
    "ioperm": (173, None),
    "init_module": (175, 105),
    "delete_module": (176, 106),
    "quotactl": (179, 60),
    "lookup_dcookie": (212, 18),
    "semtimedop": (220, 192),
    "clock_settime": (227, 112),
    "mq_open": (240, 180),
    "mq_unlink": (241, 181),
    "mq_timedsend": (242, 182),
    "mq_timedreceive": (243, 183),
    "mq_notify": (244, 184),
    "mq_getsetattr": (245, 185),
    "kexec_load": (246, 104),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "ioprio_set": (251, 30),
    "unshare": (272, 97),
    "perf_event_open": (298, 241),
    "fanotify_init": (300, 262),
    "prlimit64": (302, 261),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "clock_adjtime": (305, 266),
    "setns": (308, 268),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "finit_module": (313, 273),
    "sched_setattr": (314, 274),
    "seccomp": (317, 277),
    "kexec_file_load": (320, 294),
    "bpf": (321, 280),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "clone3": (435, 435),
    "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440),
    "mount_setattr": (442, 442),
    "quotactl_fd": (443, 443),
    "open_tree_attr": (467, 467),
}


@dataclass(frozen=True)
class Arch:
    """An architecture the filter supports."""

    name: str
    #: ``AUDIT_ARCH_*``, what the kernel puts in ``seccomp_data.arch``.
    audit_arch: int
    #: Syscall numbers at or above this belong to another ABI (x32).
    foreign_from: int | None
    #: Index of this architecture's column in the syscall table.
    column: int

    def number(self, syscall: str) -> int | None:
        """The syscall's number here; None if it does not exist here."""
        try:
            return SYSCALL_NUMBERS[syscall][self.column]
        except KeyError:
            raise ValueError(f"syscall {syscall!r} is not in the syscall table") from None


ARCHES: Mapping[str, Arch] = {
    "x86_64": Arch("x86_64", 0xC000_003E, 0x4000_0000, 0),
    "aarch64": Arch("aarch64", 0xC000_00B7, None, 1),
}


def native_arch() -> Arch:
    """This process's architecture; :class:`ConfinementError` if the filter
    cannot describe it (another machine, a 32-bit or big-endian process)."""
    machine = os.uname().machine
    arch = ARCHES.get(machine)
    if arch is None or ctypes.sizeof(ctypes.c_void_p) != 8 or sys.byteorder != "little":
        raise ConfinementError(
            "seccomp",
            f"no syscall table for {machine} ({8 * ctypes.sizeof(ctypes.c_void_p)}-bit, "
            f"{sys.byteorder}-endian); supported: 64-bit little-endian {', '.join(ARCHES)}",
        )
    return arch


# Classic BPF (include/uapi/linux/filter.h) over struct seccomp_data.
_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARGS = 16  # 6 x u64; little-endian: the low half first
_MAX_INSNS = 4096
_MAX_JUMP = 255

_Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _stmt(code: int, k: int) -> _Insn:
    return (code, 0, 0, k)


def _rule_block(rule: Rule) -> list[_Insn]:
    """Each 32-bit half under test: load it, mask it, and on a mismatch jump
    past the block's final ``ret``; all halves equal: return the action."""
    halves: list[tuple[int, int, int]] = []  # offset, mask, value
    for arg in rule.when:
        offset = _OFFSET_ARGS + 8 * arg.index
        halves.append((offset, arg.tested_bits & _U32, arg.value & _U32))
        if arg.bits == 64:
            halves.append((offset + 4, arg.tested_bits >> 32, arg.value >> 32))
    block: list[_Insn] = []
    mismatches: list[int] = []
    for offset, mask, value in halves:
        if mask == 0:  # nothing of this half is tested
            continue
        block.append(_stmt(_LD_W_ABS, offset))
        if mask != _U32:
            block.append(_stmt(_ALU_AND_K, mask))
        mismatches.append(len(block))
        block.append((_JEQ_K, 0, 0, value))
    block.append(_stmt(_RET_K, rule.action.value))
    for at in mismatches:  # jf counts from the next instruction
        block[at] = (_JEQ_K, 0, len(block) - at - 1, block[at][3])
    return block


def compile_program(rules: Iterable[Rule], arch: str) -> bytes:
    """The filter for ``arch`` (a key of :data:`ARCHES`) as an array of
    ``struct sock_filter``, ready for ``seccomp(SECCOMP_SET_MODE_FILTER)``.

    Raises ValueError for an unknown architecture or syscall, a rule that an
    earlier unconditional rule on the same syscall hides, or a program that
    does not fit classic BPF's limits."""
    target = ARCHES.get(arch)
    if target is None:
        raise ValueError(f"no syscall table for {arch!r}; known: {', '.join(ARCHES)}")
    groups: dict[int, list[Rule]] = {}
    for rule in rules:
        number = target.number(rule.syscall)
        if number is None:  # no such syscall here, nothing to filter
            continue
        group = groups.setdefault(number, [])
        if group and not group[-1].when:
            raise ValueError(f"{rule} can never apply: an earlier rule always does")
        group.append(rule)
    kill = _stmt(_RET_K, KILL_PROCESS.value)
    program: list[_Insn] = [
        _stmt(_LD_W_ABS, _OFFSET_ARCH),
        (_JEQ_K, 1, 0, target.audit_arch),
        kill,
        _stmt(_LD_W_ABS, _OFFSET_NR),
    ]
    if target.foreign_from is not None:
        program += [(_JGE_K, 0, 2, target.foreign_from), (_JEQ_K, 1, 0, _U32), kill]
    for number, group in groups.items():
        body = [insn for rule in group for insn in _rule_block(rule)]
        if group[-1].when:  # no rule held: the default
            body.append(_stmt(_RET_K, ALLOW.value))
        if len(body) > _MAX_JUMP:
            raise ValueError(f"the rules on {group[0].syscall} need {len(body)} instructions")
        program.append((_JEQ_K, 0, len(body), number))
        program += body
    program.append(_stmt(_RET_K, ALLOW.value))
    if len(program) > _MAX_INSNS:
        raise ValueError(f"the filter needs {len(program)} instructions, BPF allows 4096")
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_SECCOMP_SET_MODE_FILTER = 1
_FLAG_TSYNC = 1 << 0
_FLAG_NEW_LISTENER = 1 << 3
_FLAG_TSYNC_ESRCH = 1 << 4
_FLAG_WAIT_KILLABLE_RECV = 1 << 5
# Every thread of the process gets the filter, not only the caller; with a
# listener, TSYNC needs TSYNC_ESRCH (a thread that cannot follow: ESRCH).
_FLAGS_ALL_THREADS = _FLAG_TSYNC | _FLAG_TSYNC_ESRCH
_FLAGS_NOTIFY = _FLAGS_ALL_THREADS | _FLAG_NEW_LISTENER | _FLAG_WAIT_KILLABLE_RECV
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39


def _load(arch: Arch, program: bytes, flags: int) -> int:
    """``seccomp(SECCOMP_SET_MODE_FILTER, flags, program)``: its result, or
    ``-errno``."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    result = int(
        libc().syscall(
            ctypes.c_long(arch.number("seccomp") or -1),
            ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(flags),
            ctypes.c_void_p(ctypes.addressof(fprog)),
        )
    )
    return -ctypes.get_errno() if result < 0 else result


def install(*, notify_connect: bool = True) -> int | None:
    """Load :data:`RULES` on every thread of this process, for good.

    Sets ``no_new_privs`` first if it is not set (seccomp requires it of an
    unprivileged process). With ``notify_connect`` (the agent), ``connect()``
    goes to the supervisor and the listener fd is returned: the caller must
    pass it on and close it before the agent's code runs. Without (tests of
    the static rules only), ``connect()`` is left allowed and None returned.
    Raises :class:`ConfinementError` naming the errno and what it means."""
    arch = native_arch()
    rules = RULES if notify_connect else tuple(r for r in RULES if r.action != NOTIFY)
    program = compile_program(rules, arch.name)
    if prctl("seccomp", "PR_GET_NO_NEW_PRIVS", _PR_GET_NO_NEW_PRIVS) != 1:
        prctl("seccomp", "PR_SET_NO_NEW_PRIVS", _PR_SET_NO_NEW_PRIVS, 1)
    flags = _FLAGS_NOTIFY if notify_connect else _FLAGS_ALL_THREADS
    result = _load(arch, program, flags)
    if result < 0:
        hint = {
            errno.EINVAL: ": this kernel lacks a flag (user notification with "
            "WAIT_KILLABLE_RECV needs Linux 5.19)",
            errno.EBUSY: ": a seccomp listener is already installed on this process",
            errno.ESRCH: ": another thread of this process cannot take the filter",
        }.get(-result, "")
        raise ConfinementError(
            "seccomp",
            f"seccomp(SECCOMP_SET_MODE_FILTER, flags={flags:#x}) failed: "
            f"{describe_errno(-result)}{hint}",
        )
    return result if notify_connect else None


@dataclass(frozen=True)
class SeccompSupport:
    """What this kernel and machine offer (for ``capsup sandbox-check``)."""

    filter: bool
    user_notif: bool
    wait_killable_recv: bool
    arch_supported: bool


def probe() -> SeccompSupport:
    """Find out, in a forked child (a filter cannot be removed), which of
    the filter, a listener and ``WAIT_KILLABLE_RECV`` this kernel accepts,
    with the flags :func:`install` uses."""
    try:
        arch = native_arch()
    except ConfinementError:
        return SeccompSupport(False, False, False, False)
    program = compile_program((), arch.name)  # the architecture check only
    attempts = (_FLAGS_NOTIFY, _FLAGS_ALL_THREADS | _FLAG_NEW_LISTENER, _FLAGS_ALL_THREADS)
    pid = os.fork()
    if pid == 0:  # the child: syscalls only, then out without clean-up
        level = 0
        try:  # whatever happens, never return into the caller's code
            prctl("seccomp", "PR_SET_NO_NEW_PRIVS", _PR_SET_NO_NEW_PRIVS, 1)
            for index, flags in enumerate(attempts):
                if _load(arch, program, flags) >= 0:
                    level = len(attempts) - index
                    break
        finally:
            os._exit(level)
    _, status = os.waitpid(pid, 0)
    level = os.waitstatus_to_exitcode(status)
    return SeccompSupport(
        filter=level >= 1, user_notif=level >= 2, wait_killable_recv=level >= 3, arch_supported=True
    )
