"""Tries what an agent should not do, and what it must still be able to do.

Run by tests/confine/test_seccomp.py as ``python seccomp_attempts.py MODE``
with MODE ``confined`` (the filter of capsup.agents.confine.seccomp, without
the connect() notification) or ``unconfined`` (the same attempts, no filter:
the control that shows each attempt really tried). Prints one JSON object:
``{"attempts": {name: result}, "probes": {syscall: result}}`` where a result
is ``"ok"``, an errno name, or ``"signal:SIGSYS"`` and the like.

Each attempt runs in a child forked for it, so that what one changes (a
namespace, a personality, a session) does not leak into the next.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import multiprocessing
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import tty
from collections.abc import Callable

from capsup.agents.confine import seccomp

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
ARCH = seccomp.native_arch()
BAD = 1  # an address nothing is mapped at
NO_KEY = 0x7E57_C495  # a SysV IPC key nothing has
SIGCHLD = int(signal.SIGCHLD)


def nr(name: str) -> int:
    number = ARCH.number(name)
    assert number is not None, name
    return number


def sys_call(number: int, *args: int) -> int:
    """syscall(2) with every argument a full 64-bit long; OSError on -1."""
    result = int(LIBC.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def address(buffer: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buffer)


def prctl(*args: int) -> None:
    sys_call(nr("prctl"), *args, *[0] * (5 - len(args)))


# --- set up before the filter ------------------------------------------------

ROOT = os.geteuid() == 0
MOUNT_POINT = tempfile.mkdtemp(prefix="capsup-seccomp-")
HANDLE = ctypes.create_string_buffer(8 + 128)  # struct file_handle for "/"


def prepare() -> int:
    """As root, a private mount namespace so that a mount that succeeds stays
    here, and a file handle for open_by_handle_at; a victim process (a
    sibling of every attempt) to reach into. Returns the victim's pid."""
    if ROOT:
        sys_call(nr("unshare"), 0x0002_0000)  # CLONE_NEWNS
        if LIBC.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC|MS_PRIVATE
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        struct.pack_into("=I", HANDLE, 0, 128)
        root, mount_id = ctypes.create_string_buffer(b"/"), ctypes.c_int()
        sys_call(nr("name_to_handle_at"), -100, address(root), address(HANDLE),
                 ctypes.addressof(mount_id), 0)  # fmt: skip
    victim = os.fork()
    if victim == 0:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: goes with this script
        while True:
            signal.pause()
    return victim


VICTIM = prepare()


# --- the attempts ---------------------------------------------------------------


def make_socket(family: int, kind: int, proto: int = 0) -> None:
    socket.socket(family, kind, proto).close()


def make_socketpair(kind: int) -> None:
    for end in socket.socketpair(socket.AF_UNIX, kind):
        end.close()


def socket_with_high_bits() -> None:
    """AF_INET with garbage in the upper half: the kernel reads an int."""
    os.close(sys_call(nr("socket"), (1 << 32) | socket.AF_INET, socket.SOCK_STREAM, 0))


def io_uring_setup() -> None:
    params = ctypes.create_string_buffer(120)
    os.close(sys_call(nr("io_uring_setup"), 4, address(params)))


def ptrace_attach() -> None:
    sys_call(nr("ptrace"), 16, VICTIM, 0, 0)  # PTRACE_ATTACH
    os.waitpid(VICTIM, 0x4000_0000)  # __WALL: wait for the attach stop
    sys_call(nr("ptrace"), 17, VICTIM, 0, 0)  # PTRACE_DETACH


class IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


def process_vm_readv() -> None:
    source = ctypes.create_string_buffer(b"secret")
    target = ctypes.create_string_buffer(6)
    local, remote = IoVec(address(target), 6), IoVec(address(source), 6)
    sys_call(nr("process_vm_readv"), os.getpid(), ctypes.addressof(local), 1,
             ctypes.addressof(remote), 1, 0)  # fmt: skip
    assert target.raw == b"secret"


def bpf_map_create() -> None:
    attr = ctypes.create_string_buffer(struct.pack("=4I", 2, 4, 4, 1), 72)  # ARRAY, 4, 4, 1
    os.close(sys_call(nr("bpf"), 0, address(attr), 72))  # BPF_MAP_CREATE


def perf_event_open() -> None:
    # PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, flags: disabled|exclude_kernel|exclude_hv
    attr = ctypes.create_string_buffer(struct.pack("=IIQQQQQ", 1, 64, 0, 0, 0, 0, 1 | 32 | 64), 64)
    os.close(sys_call(nr("perf_event_open"), address(attr), 0, -1, -1, 0))


def userfaultfd() -> None:
    os.close(sys_call(nr("userfaultfd"), os.O_CLOEXEC | 1))  # UFFD_USER_MODE_ONLY


def unshare_user() -> None:
    sys_call(nr("unshare"), 0x1000_0000)  # CLONE_NEWUSER


def mount_tmpfs() -> None:
    source, kind = ctypes.create_string_buffer(b"capsup"), ctypes.create_string_buffer(b"tmpfs")
    target = ctypes.create_string_buffer(MOUNT_POINT.encode())
    sys_call(nr("mount"), address(source), address(target), address(kind), 0, 0)
    sys_call(nr("umount2"), address(target), 0)


def keyctl() -> None:
    sys_call(nr("keyctl"), 0, -4, 1)  # KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, create


def open_by_handle_at() -> None:
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.close(sys_call(nr("open_by_handle_at"), root, address(HANDLE), os.O_RDONLY))


def controlling_pty() -> int:
    """A new session, whose controlling terminal is a new pty: taken by
    opening it without O_NOCTTY (TIOCSCTTY is one of the refused ioctls)."""
    os.setsid()
    _, secondary = os.openpty()
    terminal = os.open(os.ttyname(secondary), os.O_RDWR)
    os.close(secondary)
    return terminal


def tiocsctty() -> None:
    os.setsid()
    _, secondary = os.openpty()  # O_NOCTTY: not the controlling terminal yet
    fcntl.ioctl(secondary, termios.TIOCSCTTY, 0)
    assert os.tcgetpgrp(secondary) == os.getpgrp()


def tiocspgrp() -> None:
    """The review's attempt: another process group of the session takes the
    terminal's foreground (tcsetpgrp is ioctl TIOCSPGRP)."""
    terminal = controlling_pty()
    other = os.fork()
    if other == 0:
        while True:
            signal.pause()
    try:
        os.setpgid(other, other)
        os.tcsetpgrp(terminal, other)
        assert os.tcgetpgrp(terminal) == other
    finally:
        os.kill(other, signal.SIGKILL)
        os.waitpid(other, 0)


def tiocsti() -> None:
    terminal = controlling_pty()
    tty.setraw(terminal)
    fcntl.ioctl(terminal, termios.TIOCSTI, b"x")
    assert os.read(terminal, 1) == b"x"  # typed into the terminal's input


def tioclinux() -> None:
    fcntl.ioctl(controlling_pty(), termios.TIOCLINUX, b"\x06\x00")


def prctl_with_buffer(option: int, data: bytes, *before: int) -> None:
    buffer = ctypes.create_string_buffer(data)
    prctl(option, *before, address(buffer))


def raw_clone(flags: int) -> None:
    pid = sys_call(nr("clone"), flags | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:  # the new process: out at once
        os._exit(0)
    if not flags & 0x8000:  # CLONE_PARENT: the child is our parent's
        os.waitpid(pid, 0)


def clone3() -> None:
    args = ctypes.create_string_buffer(struct.pack("=8Q", 0, 0, 0, 0, SIGCHLD, 0, 0, 0))
    pid = sys_call(nr("clone3"), address(args), 64)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def personality(persona: int) -> None:
    sys_call(nr("personality"), persona)


def sched_setattr(pid: int) -> None:
    attr = ctypes.create_string_buffer(struct.pack("=II", 48, 0), 48)  # size, SCHED_OTHER
    sys_call(nr("sched_setattr"), pid, address(attr), 0)


def ioprio_set(who: int) -> None:
    sys_call(nr("ioprio_set"), 1, who, (2 << 13) | 4)  # IOPRIO_WHO_PROCESS, best-effort 4


def int80_getpid() -> None:
    """The i386 ABI from 64-bit code: ``mov eax, 20; int 0x80; ret``."""
    code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    code.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")
    function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))
    assert function() == os.getpid()


def fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7


def spawn() -> None:
    assert subprocess.run(["/bin/true"], check=False).returncode == 0
    pid = os.posix_spawn("/bin/true", ["true"], {})
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def thread() -> None:
    seen = []
    worker = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
    worker.start()
    worker.join()
    assert seen and seen[0] != os.getpid()


def pool() -> None:
    with multiprocessing.get_context("fork").Pool(2) as workers:
        assert workers.map(abs, [-1, -2, -3]) == [1, 2, 3]


def another_filter() -> None:
    seccomp.install(notify_connect=False)  # a second, stacked filter


ATTEMPTS: dict[str, Callable[[], object]] = {
    # refused when confined
    "socket AF_INET stream": lambda: make_socket(socket.AF_INET, socket.SOCK_STREAM),
    "socket AF_INET dgram": lambda: make_socket(socket.AF_INET, socket.SOCK_DGRAM),
    "socket AF_INET6 stream": lambda: make_socket(socket.AF_INET6, socket.SOCK_STREAM),
    "socket AF_NETLINK": lambda: make_socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "socket AF_PACKET": lambda: make_socket(socket.AF_PACKET, socket.SOCK_RAW),
    "socket AF_VSOCK": lambda: make_socket(socket.AF_VSOCK, socket.SOCK_STREAM),
    "socket AF_UNIX dgram": lambda: make_socket(
        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
    ),
    "socket AF_INET, high bits set": socket_with_high_bits,
    "socketpair AF_UNIX dgram": lambda: make_socketpair(socket.SOCK_DGRAM),
    "io_uring_setup": io_uring_setup,
    "ptrace PTRACE_ATTACH a sibling": ptrace_attach,
    "process_vm_readv": process_vm_readv,
    "bpf BPF_MAP_CREATE": bpf_map_create,
    "perf_event_open": perf_event_open,
    "userfaultfd": userfaultfd,
    "unshare CLONE_NEWUSER": unshare_user,
    "mount tmpfs": mount_tmpfs,
    "keyctl": keyctl,
    "open_by_handle_at": open_by_handle_at,
    "ioctl TIOCSTI": tiocsti,
    "ioctl TIOCLINUX": tioclinux,
    "ioctl TIOCSPGRP": tiocspgrp,
    "ioctl TIOCSCTTY": tiocsctty,
    "prctl PR_SET_PDEATHSIG 0": lambda: prctl(1, 0),
    "prctl PR_SET_PDEATHSIG, high bits set": lambda: prctl((1 << 32) | 1, 0),
    "prctl PR_SET_PTRACER": lambda: prctl(0x5961_6D61, 0),
    "prctl PR_SET_MM": lambda: prctl_with_buffer(35, b"\0" * 4, 15),  # PR_SET_MM_MAP_SIZE
    "clone CLONE_NEWNS": lambda: raw_clone(0x0002_0000),
    "clone CLONE_NEWUSER": lambda: raw_clone(0x1000_0000),
    "clone CLONE_NEWNET": lambda: raw_clone(0x4000_0000),
    "clone CLONE_NEWPID": lambda: raw_clone(0x2000_0000),
    "clone CLONE_PARENT": lambda: raw_clone(0x8000),
    "clone3": clone3,
    "personality ADDR_NO_RANDOMIZE": lambda: personality(0x0040000),
    "prlimit64 set a sibling's": lambda: resource.prlimit(
        VICTIM, resource.RLIMIT_NOFILE, resource.prlimit(VICTIM, resource.RLIMIT_NOFILE)
    ),
    "setpriority a sibling": lambda: os.setpriority(os.PRIO_PROCESS, VICTIM, 1),
    "ioprio_set a sibling": lambda: ioprio_set(VICTIM),
    "sched_setscheduler SCHED_IDLE a sibling": lambda: os.sched_setscheduler(
        VICTIM, os.SCHED_IDLE, os.sched_param(0)
    ),
    "sched_setattr a sibling": lambda: sched_setattr(VICTIM),
    "i386 getpid through int 0x80": int80_getpid,
    "x32 getpid": lambda: sys_call(0x4000_0000 | 39),
    # still allowed when confined
    "syscall -1": lambda: sys_call(-1),
    "fork": fork,
    "subprocess and posix_spawn": spawn,
    "a thread": thread,
    "multiprocessing Pool": pool,
    "socket AF_UNIX stream": lambda: make_socket(
        socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    ),
    "socket AF_UNIX seqpacket": lambda: make_socket(socket.AF_UNIX, socket.SOCK_SEQPACKET),
    "socketpair AF_UNIX stream": lambda: make_socketpair(socket.SOCK_STREAM),
    "socketpair AF_UNIX seqpacket": lambda: make_socketpair(socket.SOCK_SEQPACKET),
    "clone plain": lambda: raw_clone(0),
    "personality query": lambda: personality(0xFFFF_FFFF),
    "personality PER_LINUX": lambda: personality(0),
    "prctl PR_GET_PDEATHSIG": lambda: prctl_with_buffer(2, b"\0" * 4),
    "prctl PR_SET_NAME": lambda: prctl_with_buffer(15, b"agent\0"),
    "prlimit64 own": lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)
    ),
    "prlimit64 read a sibling's": lambda: resource.prlimit(VICTIM, resource.RLIMIT_NOFILE),
    "setpriority own": lambda: os.setpriority(os.PRIO_PROCESS, 0, 0),
    "ioprio_set own": lambda: ioprio_set(0),
    "sched_setscheduler own": lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0)),
    "sched_setscheduler SCHED_IDLE own": lambda: os.sched_setscheduler(
        0, os.SCHED_IDLE, os.sched_param(0)
    ),
    "sched_setscheduler SCHED_OTHER a thread id": lambda: os.sched_setscheduler(
        threading.get_native_id(), os.SCHED_OTHER, os.sched_param(0)
    ),
    "sched_setattr own": lambda: sched_setattr(0),
    "ioctl TIOCGWINSZ": lambda: fcntl.ioctl(controlling_pty(), termios.TIOCGWINSZ, b"\0" * 8),
    "seccomp, another filter": another_filter,
    "landlock_create_ruleset version": lambda: sys_call(444, 0, 0, 1),
}

# For every syscall the filter refuses outright: arguments that make it fail
# harmlessly (or do nothing) unconfined, so the control cannot hurt the host.
PROBE_ARGS: dict[str, tuple[int, ...]] = {
    "io_uring_setup": (0, BAD),
    "io_uring_enter": (-1, 0, 0, 0, 0, 0),
    "io_uring_register": (-1, 0, 0, 0),
    "bpf": (-1, 0, 0),
    "perf_event_open": (BAD, 0, -1, -1, 0),
    "userfaultfd": (-1,),
    "ptrace": (-1, 0, 0, 0),
    "process_vm_readv": (0, 0, 0, 0, 0, 0),
    "process_vm_writev": (0, 0, 0, 0, 0, 0),
    "process_madvise": (-1, 0, 0, 0, 0),
    "pidfd_getfd": (-1, -1, 0),
    "kcmp": (0, 0, 99, 0, 0),
    "unshare": (0,),
    "setns": (-1, 0),
    "mount": (BAD, BAD, BAD, 0, 0),
    "umount2": (BAD, 0),
    "pivot_root": (BAD, BAD),
    "chroot": (BAD,),
    "open_tree": (-1, BAD, 0),
    "open_tree_attr": (-1, BAD, 0, 0, 0),
    "move_mount": (-1, BAD, -1, BAD, 0),
    "fsopen": (BAD, 0),
    "fsconfig": (-1, 0, 0, 0, 0),
    "fsmount": (-1, 0, 0),
    "fspick": (-1, BAD, 0),
    "mount_setattr": (-1, BAD, 0, BAD, 0),
    "keyctl": (-1, 0, 0, 0, 0),
    "add_key": (BAD, BAD, 0, 0, 0),
    "request_key": (BAD, BAD, 0, 0),
    "name_to_handle_at": (-1, BAD, BAD, BAD, 0),
    "open_by_handle_at": (-1, BAD, 0),
    "init_module": (BAD, 0, BAD),
    "finit_module": (-1, BAD, 0),
    "delete_module": (BAD, 0),
    "kexec_load": (0, 0, 0, 0xFFFF_FFFF),
    "kexec_file_load": (-1, -1, 0, 0, 0xFFFF_FFFF),
    "reboot": (0, 0, 0, 0),
    "iopl": (0,),
    "ioperm": (0, 0, 0),
    "modify_ldt": (0, 0, 0),
    "swapon": (BAD, 0),
    "swapoff": (BAD,),
    "acct": (BAD,),
    "quotactl": (0, BAD, 0, 0),
    "quotactl_fd": (-1, 0, 0, 0),
    "lookup_dcookie": (0, 0, 0),
    "syslog": (-1, 0, 0),
    "settimeofday": (0, 0),
    "clock_settime": (-1, BAD),
    "adjtimex": (BAD,),
    "clock_adjtime": (-1, BAD),
    "sethostname": (BAD, 1 << 20),
    "setdomainname": (BAD, 1 << 20),
    "vhangup": (),  # run after setsid(): no controlling terminal to hang up
    "fanotify_init": (0xFFFF_FFFF, 0),
    # A key no one uses (a lookup, not IPC_PRIVATE, which would create), and
    # ids and queue descriptors that name nothing.
    "shmget": (NO_KEY, 0, 0),
    "shmat": (-1, 0, 0),
    "shmctl": (-1, 2, 0),  # IPC_STAT
    "shmdt": (BAD,),
    "msgget": (NO_KEY, 0),
    "msgsnd": (-1, 0, 0, 0),
    "msgrcv": (-1, 0, 0, 0, 0),
    "msgctl": (-1, 2, 0),
    "semget": (NO_KEY, 0, 0),
    "semop": (-1, 0, 0),
    "semtimedop": (-1, 0, 0, 0),
    "semctl": (-1, 0, 2, 0),
    "mq_open": (BAD, 0, 0, 0),
    "mq_unlink": (BAD,),
    "mq_timedsend": (-1, 0, 0, 0, 0),
    "mq_timedreceive": (-1, 0, 0, 0, 0),
    "mq_notify": (-1, 0),
    "mq_getsetattr": (-1, 0, 0),
}


def probe(name: str) -> None:
    os.setsid()
    sys_call(nr(name), *PROBE_ARGS[name])


# --- running them ---------------------------------------------------------------


def in_child(action: Callable[[], object]) -> str:
    """Run ``action`` in a forked child: "ok", an errno name, or the signal."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            action()
            answer = "ok"
        except OSError as error:
            answer = errno.errorcode.get(error.errno or 0, f"errno {error.errno}")
        except BaseException as error:  # an assertion: the attempt did not do it
            answer = f"failed: {error!r}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answers:
        answer = answers.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"signal:{signal.Signals(os.WTERMSIG(status)).name}"
    return answer


def main() -> None:
    mode = sys.argv[1]
    if mode == "confined":
        seccomp.install(notify_connect=False)
    else:
        assert mode == "unconfined", mode
    probes = [name for name in PROBE_ARGS if ARCH.number(name) is not None]
    try:
        report = {
            "attempts": {name: in_child(action) for name, action in ATTEMPTS.items()},
            "probes": {name: in_child(lambda name=name: probe(name)) for name in probes},
        }
    finally:
        os.kill(VICTIM, signal.SIGKILL)
        os.waitpid(VICTIM, 0)
        os.rmdir(MOUNT_POINT)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
