"""The supervisor's side of an agent's ``connect()``: seccomp user notifications.

The agent's filter (:mod:`capsup.agents.confine.seccomp`) hands every
``connect()`` to the supervisor. One :class:`UnixConnectBroker` per agent
answers them on a thread of its own:

1. it reads the address from the calling thread's memory
   (``process_vm_readv``, at most ``sizeof(struct sockaddr_un)``), then asks
   the kernel whether the notification is still pending
   (``SECCOMP_IOCTL_NOTIF_ID_VALID``): if the thread died meanwhile, its id
   may already name another process, whose memory is not the agent's;
2. it allows exactly two kinds of address: a path equal, as a string, to one
   of the agent's ``endpoints`` (the broker then connects to its own copy of
   that string), and an absolute path strictly beneath the agent's
   ``scratch`` directory, which it opens with ``openat2`` beneath its own
   descriptor of that directory with ``RESOLVE_BENEATH``,
   ``RESOLVE_NO_SYMLINKS``, ``RESOLVE_NO_MAGICLINKS`` and ``RESOLVE_NO_XDEV``
   and connects through ``/proc/self/fd/N``: an agent's symlink is never
   followed, and what was checked is what gets connected. Anything else
   (abstract names, relative paths, other families, other paths, memory it
   cannot read) is refused with EPERM and reported to ``on_refused``; a
   socket absent from the scratch directory gets ENOENT, as it would
   unconfined;
3. it connects a socket of its own, never the agent's. The agent's socket
   is only read, through a duplicate (``pidfd_getfd``): its type, whether it
   blocks, whether it is connected or listening already, the options of
   :data:`_KEPT_OPTIONS`. Its file status flags and options are the
   agent's to change at any moment from any of its processes (the file is
   shared across ``fork``), so a connect on it would wait for as long as
   the agent liked: a listener of its own with a full backlog, the socket
   made blocking without a send timeout between the broker's check and its
   ``connect()``, and the broker's thread (and the supervisor's clean-up
   that waits for it) hangs. The broker's socket, of the same type, is
   connected without waiting if the agent's socket does not block, and
   otherwise waits for room in the listener's backlog for at most
   :data:`_CONNECT_BOUND` (the agent's send timeout if shorter), as the
   agent's blocking ``connect()`` would (without the bound); only the broker
   can change that socket's flags. A failure's errno (EAGAIN, ECONNREFUSED,
   ...) is the agent's answer. A connected socket gets the agent's kept
   options, and its ``O_NONBLOCK`` and close-on-exec flags as they are at
   that moment; ``SECCOMP_IOCTL_NOTIF_ADDFD`` with ``SETFD`` puts it in the
   agent's descriptor table at the number the agent connected, in place of
   its socket, and the answer is 0. What the replaced socket had and this
   one lacks: a name it was bound to, options outside the table, and epoll
   registrations (libzmq and asyncio register a socket after its
   ``connect()`` returns).

The broker's sockets are made in the agent's network namespace: its thread
joins it (``setns``) at the first ``connect()``. An unprivileged supervisor
may not; its sockets are then made in its own namespace and autobound, so
that the agent cannot bind one to an abstract name of the host's (it can
still list the host's network interfaces with ``SIOCGIFCONF`` on it).

It never answers with ``SECCOMP_USER_NOTIF_FLAG_CONTINUE``: the kernel would
then read the address again, after the check, from memory that the agent's
other threads can rewrite (seccomp_unotify(2), "Design goals").

Identity: the connection is made by the supervisor, so ``SO_PEERCRED`` on the
accepting side (and libzmq's ZAP address) names the supervisor, not the
agent. Who is on the other end is known from which per-agent endpoint was
reached, and only this agent's broker connects to that endpoint.

Failing closed: if the broker thread hits an error it does not expect, it
closes the listener, and the kernel then fails the agent's pending and
future ``connect()`` calls with ENOSYS. An exception from ``on_refused``
(an audit trail that cannot record) counts as such an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from capsup.agents.confine._libc import libc
from capsup.agents.confine.seccomp import native_arch

__all__ = ["UnixConnectBroker"]

# <linux/seccomp.h>: struct seccomp_notif {u64 id; u32 pid; u32 flags;
# struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}},
# struct seccomp_notif_resp {u64 id; s64 val; s32 error; u32 flags} and
# struct seccomp_notif_addfd {u64 id; u32 flags; u32 srcfd; u32 newfd; u32 newfd_flags}.
_NOTIF = struct.Struct("=QIIiIQ6Q")
_RESPONSE = struct.Struct("=QqiI")
_ADDFD = struct.Struct("=QIIII")
_IOCTL_NOTIF_RECV = 0xC050_2100  # _IOWR('!', 0, struct seccomp_notif)
_IOCTL_NOTIF_SEND = 0xC018_2101  # _IOWR('!', 1, struct seccomp_notif_resp)
_IOCTL_NOTIF_ID_VALID = 0x4008_2102  # _IOW('!', 2, __u64)
_IOCTL_NOTIF_ADDFD = 0x4018_2103  # _IOW('!', 3, struct seccomp_notif_addfd)
_ADDFD_FLAG_SETFD = 1 << 0  # at newfd, replacing what is there (dup2)

_SOCKADDR_UN_SIZE = 110  # sa_family_t + sun_path[108]
_SUN_PATH = 2
_U32 = 0xFFFF_FFFF

# Numbers from 424 on are the same on every architecture.
_SYS_OPENAT2 = 437
_SYS_PIDFD_GETFD = 438
_PIDFD_THREAD = os.O_EXCL  # Linux 6.9+: a pidfd for a thread, not its group
_RESOLVE = 0x01 | 0x02 | 0x04 | 0x08  # NO_XDEV, NO_MAGICLINKS, NO_SYMLINKS, BENEATH
_CLONE_NEWNET = 0x4000_0000

_SOL_SOCKET = 1
_SO_TYPE = 3
_SO_ACCEPTCONN = 30
_SO_DOMAIN = 39
_SO_SNDTIMEO = 21
_TIMEVAL = struct.Struct("=qq")
_CONNECT_BOUND = (1, 0)  # seconds, microseconds
#: How long :meth:`UnixConnectBroker.close` waits for the thread, at most.
_CLOSE_WAIT = 0.25
_KINDS = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)  # what the filter lets it make


@dataclass(frozen=True)
class _Option:
    """A ``SOL_SOCKET`` option the agent may have set before ``connect()``."""

    name: int
    size: int
    #: The kernel reports twice the value set (SO_SNDBUF, SO_RCVBUF).
    doubled: bool = False

    def to_set(self, reported: bytes) -> bytes:
        """What to pass to ``setsockopt`` to get ``reported`` back."""
        if not self.doubled:
            return reported
        return struct.pack("=i", struct.unpack("=i", reported)[0] // 2)


#: The options a replacing socket takes over from the agent's: those a unix
#: stream client plausibly sets before it connects.
_KEPT_OPTIONS = (
    _Option(7, 4, doubled=True),  # SO_SNDBUF
    _Option(8, 4, doubled=True),  # SO_RCVBUF
    _Option(16, 4),  # SO_PASSCRED
    _Option(20, _TIMEVAL.size),  # SO_RCVTIMEO
    _Option(_SO_SNDTIMEO, _TIMEVAL.size),
)


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


# Private prototypes (argument types set here, not on the shared libc handle).
_process_vm_readv = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
    use_errno=True,
)(("process_vm_readv", libc()))
_connect = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, use_errno=True
)(("connect", libc()))
_getsockopt = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_uint),
    use_errno=True,
)(("getsockopt", libc()))
_getpeername = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), use_errno=True
)(("getpeername", libc()))
_setns = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, use_errno=True)(
    ("setns", libc())
)


def _syscall(number: int, *args: int | ctypes.c_void_p) -> int:
    """``syscall(number, *args)``; raises OSError with the errno."""
    values = [a if isinstance(a, ctypes.c_void_p) else ctypes.c_long(a) for a in args]
    result = int(libc().syscall(ctypes.c_long(number), *values))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


@dataclass(frozen=True)
class _Refusal:
    """Refused: what was asked for, and why (for ``on_refused``)."""

    what: str
    reason: str


@dataclass(frozen=True)
class _Endpoint:
    path: str


@dataclass(frozen=True)
class _InScratch:
    relative: str
    path: str


@dataclass(frozen=True)
class _AgentSocket:
    """What the broker read of the socket the agent asked to connect."""

    kind: int
    blocking: bool
    #: (option, value as ``getsockopt`` reported it), for :data:`_KEPT_OPTIONS`.
    options: tuple[tuple[_Option, bytes], ...]

    @property
    def send_timeout(self) -> tuple[int, int]:
        """Its ``SO_SNDTIMEO``: (seconds, microseconds), (0, 0) for none."""
        value = next(value for option, value in self.options if option.name == _SO_SNDTIMEO)
        seconds, microseconds = _TIMEVAL.unpack(value)
        return seconds, microseconds


class UnixConnectBroker:
    """Answers one agent's ``connect()`` notifications (module docstring).

    Takes ownership of ``listener_fd``. ``endpoints`` are absolute paths the
    agent may connect to; ``scratch`` is the agent's scratch directory (its
    sockets are reachable too), or None. ``on_refused(tid, what, reason)``
    hears of each refusal, on the broker's thread, after the agent has been
    answered; it must not block, nor call :meth:`close`."""

    def __init__(
        self,
        listener_fd: int,
        *,
        endpoints: Collection[str],
        scratch: str | None,
        on_refused: Callable[[int, str, str], None] | None = None,
    ) -> None:
        paths = [*endpoints, *([] if scratch is None else [scratch])]
        if not all(path.startswith("/") and path.strip("/") for path in paths):
            raise ValueError(f"endpoints and scratch must be absolute paths below /: {paths}")
        arch = native_arch()
        self._connect_nr = arch.number("connect")
        self._audit_arch = arch.audit_arch
        self._endpoints = frozenset(endpoints)
        self._scratch_prefix = None if scratch is None else scratch.rstrip("/") + "/"
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._closed = False
        self._released = False
        self._listener = listener_fd
        self._scratch_fd = (
            None if scratch is None else os.open(scratch, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        )
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        #: Whether this thread makes its sockets in the agent's network
        #: namespace; None until the first connect() tells.
        self._in_agent_netns: bool | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"capsup-unix-connect-{listener_fd}", daemon=True
        )

    def start(self) -> None:
        """Serve notifications on a daemon thread until :meth:`close`, or
        until every process under the filter is gone."""
        with self._lock:
            if self._closed:
                raise RuntimeError("UnixConnectBroker.start() after close()")
        self._thread.start()

    def close(self, timeout: float = _CLOSE_WAIT) -> None:
        """Stop the thread (after the notification in hand, if any) and
        close the listener. Idempotent. Waits for the thread at most
        ``timeout`` seconds: one still busy then (with a connect() to an
        endpoint, itself bounded) closes the listener as it ends. Kill the
        agent's processes first, so that none is left waiting for an answer."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("UnixConnectBroker.close() called from its own thread")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.ident is None:  # never started: nobody else holds the fds
            self._release()
        else:
            # The thread may have ended and closed its end: EPIPE, no signal.
            with contextlib.suppress(BrokenPipeError):
                os.write(self._wake_write, b"x")
            self._thread.join(timeout)
        os.close(self._wake_write)

    def _release(self) -> None:
        """Close what the thread uses (once): by the thread as it ends, or by
        :meth:`close` if it never started."""
        with self._lock:
            if self._released:
                return
            self._released = True
        for fd in (self._listener, self._wake_read, self._scratch_fd):
            if fd is not None:
                os.close(fd)

    def _serve(self) -> None:
        # No signal handler may interrupt a connect() made here with EINTR.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._wake_read in events:
                    return
                if events.get(self._listener, 0) & select.POLLIN:
                    self._serve_one()
                elif events:  # POLLHUP: no process uses the filter any more
                    return
        finally:
            # Also on an unexpected error: fail closed, the kernel answers ENOSYS.
            self._release()

    def _serve_one(self) -> None:
        buffer = bytearray(_NOTIF.size)  # RECV wants it zeroed
        try:
            fcntl.ioctl(self._listener, _IOCTL_NOTIF_RECV, buffer)
        except OSError as error:
            if error.errno == errno.ENOENT:  # the caller was gone first
                return
            raise
        notification, tid, _, nr, arch, _, *args = _NOTIF.unpack(buffer)
        if nr != self._connect_nr or arch != self._audit_arch:
            answer: int | _Refusal | None = _Refusal(f"syscall {nr}", "only connect() is brokered")
        else:
            answer = self._answer(notification, tid, args)
        if answer is None:  # no longer pending: nobody to answer
            return
        self._respond(notification, errno.EPERM if isinstance(answer, _Refusal) else answer)
        if isinstance(answer, _Refusal) and self._on_refused is not None:
            self._on_refused(tid, answer.what, answer.reason)

    def _pending(self, notification: int) -> bool:
        try:
            fcntl.ioctl(self._listener, _IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notification))
        except OSError as error:
            if error.errno == errno.ENOENT:
                return False
            raise
        return True

    def _respond(self, notification: int, error: int) -> None:
        response = bytearray(_RESPONSE.pack(notification, 0, -error, 0))
        try:
            fcntl.ioctl(self._listener, _IOCTL_NOTIF_SEND, response)
        except OSError as failure:
            if failure.errno != errno.ENOENT:  # ENOENT: the caller died meanwhile
                raise

    def _answer(self, notification: int, tid: int, args: list[int]) -> int | _Refusal | None:
        """An errno (0: connected), a refusal, or None if not pending."""
        sockfd = ctypes.c_int(args[0] & _U32).value
        length = args[2] & _U32
        address = None
        if _SUN_PATH <= length <= _SOCKADDR_UN_SIZE:
            address = _read_memory(tid, args[1], length)
        if not self._pending(notification):
            return None
        if address is None:
            return _Refusal(f"address of {length} bytes", "not a readable sockaddr_un")
        target = self._target(address)
        if isinstance(target, _Refusal):
            return target
        if isinstance(target, _Endpoint):
            return self._connect_for(notification, tid, sockfd, target.path)
        assert self._scratch_fd is not None
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE)
        relative = ctypes.create_string_buffer(os.fsencode(target.relative))
        try:
            opened = _syscall(
                _SYS_OPENAT2,
                self._scratch_fd,
                ctypes.c_void_p(ctypes.addressof(relative)),
                ctypes.c_void_p(ctypes.addressof(how)),
                ctypes.sizeof(how),
            )
        except OSError as error:
            if error.errno == errno.ENOENT:
                return errno.ENOENT
            return _Refusal(
                target.path, f"not openable beneath the scratch directory: {_name(error)}"
            )
        try:
            return self._connect_for(notification, tid, sockfd, f"/proc/self/fd/{opened}")
        finally:
            os.close(opened)

    def _target(self, address: bytes) -> _Endpoint | _InScratch | _Refusal:
        family = int.from_bytes(address[:_SUN_PATH], "little")
        if family != 1:  # AF_UNIX
            return _Refusal(f"address family {family}", "only unix sockets are brokered")
        raw = address[_SUN_PATH:]
        if not raw:
            return _Refusal("an unnamed address", "not a socket path")
        if raw[0] == 0:
            return _Refusal(f"@{raw[1:]!r}", "abstract sockets are not brokered")
        path = os.fsdecode(raw.split(b"\0", 1)[0])
        if path in self._endpoints:
            return _Endpoint(path)
        if not path.startswith("/"):
            return _Refusal(path, "a relative path")
        prefix = self._scratch_prefix
        if prefix is not None and path.startswith(prefix) and path[len(prefix) :].strip("/"):
            return _InScratch(path[len(prefix) :].lstrip("/"), path)
        return _Refusal(path, "neither the agent's endpoint nor beneath its scratch directory")

    def _connect_for(
        self, notification: int, tid: int, sockfd: int, path: str
    ) -> int | _Refusal | None:
        """Connect a socket of the broker's to ``path`` and put it in place
        of the agent's socket ``sockfd``."""
        agent = self._agent_socket(notification, tid, sockfd, path)
        if not isinstance(agent, _AgentSocket):
            return agent
        in_agent_netns = self._join_agent_netns(notification, tid)
        if in_agent_netns is None:
            return None
        with socket.socket(socket.AF_UNIX, agent.kind | socket.SOCK_CLOEXEC) as own:
            if not in_agent_netns:
                own.bind("")  # autobind: no abstract name of the host's for the agent
            wait = None
            if agent.blocking:
                timeout = agent.send_timeout
                wait = timeout if (0, 0) < timeout < _CONNECT_BOUND else _CONNECT_BOUND
            result = _connect_own(own, os.fsencode(path), wait)
            if result != 0:
                return result
            for option, value in agent.options:
                if own.getsockopt(_SOL_SOCKET, option.name, option.size) != value:
                    own.setsockopt(_SOL_SOCKET, option.name, option.to_set(value))
            flags = _descriptor_flags(tid, sockfd)
            if not self._pending(notification):
                return None
            if flags is None:  # the agent closed it meanwhile
                return errno.EBADF
            own.setblocking(not flags & os.O_NONBLOCK)
            request = _ADDFD.pack(
                notification, _ADDFD_FLAG_SETFD, own.fileno(), sockfd, flags & os.O_CLOEXEC
            )
            try:
                fcntl.ioctl(self._listener, _IOCTL_NOTIF_ADDFD, bytearray(request))
            except OSError as error:
                if error.errno == errno.ENOENT:  # the caller died meanwhile
                    return None
                return error.errno or errno.EBADF
        return 0

    def _agent_socket(
        self, notification: int, tid: int, sockfd: int, path: str
    ) -> _AgentSocket | int | _Refusal | None:
        """Read the agent's socket ``sockfd`` through a duplicate; an errno
        for what the kernel itself would refuse."""
        try:
            pidfd = _pidfd_of(tid)
        except OSError as error:
            if not self._pending(notification):
                return None
            return _Refusal(path, f"no pidfd for thread {tid}: {_name(error)}")
        try:
            duplicate = _syscall(_SYS_PIDFD_GETFD, pidfd, sockfd, 0)
        except OSError as error:
            if not self._pending(notification):
                return None
            if error.errno == errno.EBADF:  # the agent has no such descriptor
                return errno.EBADF
            return _Refusal(path, f"pidfd_getfd of its socket failed: {_name(error)}")
        finally:
            os.close(pidfd)
        try:
            return _inspect(duplicate)
        finally:
            os.close(duplicate)

    def _join_agent_netns(self, notification: int, tid: int) -> bool | None:
        """Whether this thread is in the agent's network namespace, joining
        it the first time; None if the notification is no longer pending."""
        if self._in_agent_netns is not None:
            return self._in_agent_netns
        try:
            netns = os.open(f"/proc/{tid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            netns = None
        try:
            if not self._pending(notification):  # the tid may name another process
                return None
            if netns is None:
                joined = False
            else:
                theirs, ours = os.fstat(netns), Path("/proc/thread-self/ns/net").stat()
                same = (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
                joined = same or _setns(netns, _CLONE_NEWNET) == 0
        finally:
            if netns is not None:
                os.close(netns)
        self._in_agent_netns = joined
        return joined


def _name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, str(error.errno))


def _read_memory(tid: int, address: int, length: int) -> bytes | None:
    """``length`` bytes at ``address`` in ``tid``'s memory; None if short."""
    buffer = ctypes.create_string_buffer(length)
    local = _IoVec(ctypes.addressof(buffer), length)
    remote = _IoVec(address, length)
    done = _process_vm_readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return buffer.raw[:length] if done == length else None


def _pidfd_of(tid: int) -> int:
    """A pidfd for the thread ``tid`` (whose descriptor table the agent's
    ``connect()`` used), or, before Linux 6.9, for its thread group."""
    try:
        return os.pidfd_open(tid, _PIDFD_THREAD)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
    with open(f"/proc/{tid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"Tgid:"):
                return os.pidfd_open(int(line.split()[1]))
    raise OSError(errno.ESRCH, f"no Tgid for thread {tid}")


class _OptionReader:
    """``getsockopt(fd, SOL_SOCKET, ...)`` through ctypes, without a Python
    socket object (which could change the blocking mode of the agent's
    file), into buffers made once for the reads of one socket."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._value = ctypes.create_string_buffer(_TIMEVAL.size)  # the largest read
        self._length = ctypes.c_uint()
        self._length_ref = ctypes.byref(self._length)

    def raw(self, name: int, size: int = 4) -> bytes:
        self._length.value = size
        if _getsockopt(self._fd, _SOL_SOCKET, name, self._value, self._length_ref) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return self._value.raw[: self._length.value]

    def integer(self, name: int) -> int:
        return int.from_bytes(self.raw(name), "little", signed=True)

    def connected(self) -> bool:
        """Whether the socket has a peer (``getpeername`` succeeds)."""
        self._length.value = _SOCKADDR_UN_SIZE
        peer = ctypes.create_string_buffer(_SOCKADDR_UN_SIZE)
        result: int = _getpeername(self._fd, peer, self._length_ref)
        return result == 0


def _inspect(fd: int) -> _AgentSocket | int | _Refusal:
    """The agent's socket as :class:`_AgentSocket`, or the errno that the
    kernel would answer its ``connect()`` with (not a socket, connected or
    listening already), or a refusal (not a unix stream or seqpacket socket)."""
    read = _OptionReader(fd)
    try:
        family = read.integer(_SO_DOMAIN)
    except OSError as error:
        return error.errno or errno.ENOTSOCK
    kind = read.integer(_SO_TYPE)
    if family != socket.AF_UNIX or kind not in _KINDS:
        return _Refusal(
            f"a socket of family {family}, type {kind}",
            "only unix stream and seqpacket sockets are brokered",
        )
    if read.integer(_SO_ACCEPTCONN):
        return errno.EINVAL
    if read.connected():
        return errno.EISCONN
    blocking = not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    options = tuple((option, read.raw(option.name, option.size)) for option in _KEPT_OPTIONS)
    return _AgentSocket(kind, blocking, options)


def _descriptor_flags(tid: int, fd: int) -> int | None:
    """The file status flags of ``tid``'s descriptor ``fd``, with
    ``O_CLOEXEC`` if it is close-on-exec (``/proc/TID/fdinfo``: the one place
    that says); None if there is no such descriptor (or thread)."""
    try:
        info = os.open(f"/proc/{tid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        text = os.read(info, 4096)
    finally:
        os.close(info)
    for line in text.splitlines():
        if line.startswith(b"flags:"):
            return int(line.split()[1], 8)
    return None


def _connect_own(own: socket.socket, path: bytes, wait: tuple[int, int] | None) -> int:
    """Connect the broker's socket ``own`` to ``path``: 0 or the errno.
    Without ``wait``, at once (non-blocking); with it, waiting at most that
    long (seconds, microseconds) for room in the listener's backlog."""
    own.setblocking(wait is not None)
    if wait is not None:
        own.setsockopt(_SOL_SOCKET, _SO_SNDTIMEO, _TIMEVAL.pack(*wait))
    address = struct.pack("=H", socket.AF_UNIX) + path + b"\0"
    while _connect(own.fileno(), address, len(address)) != 0:
        code = ctypes.get_errno()
        if code != errno.EINTR:  # EINTR: a stop of the supervisor; signals are blocked
            return code
    return 0
