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
3. it takes a duplicate of the agent's own socket (``pidfd_getfd``), checks
   again that the notification is pending, connects the duplicate and
   answers with the result of that ``connect()``: 0, or its errno (EAGAIN
   and EINPROGRESS included, as the agent's non-blocking socket would see
   them). The agent's socket keeps its options and its epoll registrations;
   an ``SECCOMP_IOCTL_NOTIF_ADDFD`` replacement would lose both. A blocking
   socket gets a send timeout of at most 1 s for the connect (restored
   after), so a listener with a full backlog cannot stall the broker.

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

import ctypes
import errno
import fcntl
import os
import select
import signal
import struct
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass

from capsup.agents.confine._libc import libc
from capsup.agents.confine.seccomp import native_arch

__all__ = ["UnixConnectBroker"]

# <linux/seccomp.h>: struct seccomp_notif {u64 id; u32 pid; u32 flags;
# struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}} and
# struct seccomp_notif_resp {u64 id; s64 val; s32 error; u32 flags}.
_NOTIF = struct.Struct("=QIIiIQ6Q")
_RESPONSE = struct.Struct("=QqiI")
_IOCTL_NOTIF_RECV = 0xC050_2100  # _IOWR('!', 0, struct seccomp_notif)
_IOCTL_NOTIF_SEND = 0xC018_2101  # _IOWR('!', 1, struct seccomp_notif_resp)
_IOCTL_NOTIF_ID_VALID = 0x4008_2102  # _IOW('!', 2, __u64)

_SOCKADDR_UN_SIZE = 110  # sa_family_t + sun_path[108]
_SUN_PATH = 2
_U32 = 0xFFFF_FFFF

# Numbers from 424 on are the same on every architecture.
_SYS_OPENAT2 = 437
_SYS_PIDFD_GETFD = 438
_PIDFD_THREAD = os.O_EXCL  # Linux 6.9+: a pidfd for a thread, not its group
_RESOLVE = 0x01 | 0x02 | 0x04 | 0x08  # NO_XDEV, NO_MAGICLINKS, NO_SYMLINKS, BENEATH

_SO_SNDTIMEO = 21
_TIMEVAL = struct.Struct("=qq")
_CONNECT_BOUND = (1, 0)  # seconds, microseconds


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
_setsockopt = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
    use_errno=True,
)(("setsockopt", libc()))


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
        self._listener = listener_fd
        self._scratch_fd = (
            None if scratch is None else os.open(scratch, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        )
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(
            target=self._serve, name=f"capsup-unix-connect-{listener_fd}", daemon=True
        )

    def start(self) -> None:
        """Serve notifications on a daemon thread until :meth:`close`, or
        until every process under the filter is gone."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (after the notification in hand, if any) and
        close the listener. Idempotent."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("UnixConnectBroker.close() called from its own thread")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._close_listener()
        for fd in (self._wake_read, self._wake_write, self._scratch_fd):
            if fd is not None:
                os.close(fd)

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, -1
        if listener >= 0:
            os.close(listener)

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
        except BaseException:
            self._close_listener()  # fail closed: the kernel answers ENOSYS
            raise

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
        """Connect the agent's own socket ``sockfd`` to ``path``."""
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
            if not self._pending(notification):
                return None
            return _connect_bounded(duplicate, os.fsencode(path))
        finally:
            os.close(duplicate)


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


def _connect_bounded(fd: int, path: bytes) -> int:
    """``connect(fd, path)``: 0 or its errno. A blocking socket waits at
    most :data:`_CONNECT_BOUND` (its own send timeout if shorter)."""
    address = struct.pack("=H", 1) + path + b"\0"
    try:
        blocking = not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    except OSError as error:
        return error.errno or errno.EBADF
    if not blocking:
        return _connect_once(fd, address)
    raw = ctypes.create_string_buffer(_TIMEVAL.size)
    size = ctypes.c_uint(_TIMEVAL.size)
    if _getsockopt(fd, 1, _SO_SNDTIMEO, raw, ctypes.byref(size)) != 0:  # SOL_SOCKET
        return ctypes.get_errno()
    previous = _TIMEVAL.unpack(raw.raw)
    if previous != (0, 0) and previous <= _CONNECT_BOUND:
        return _connect_once(fd, address)
    bound = _TIMEVAL.pack(*_CONNECT_BOUND)
    if _setsockopt(fd, 1, _SO_SNDTIMEO, bound, len(bound)) != 0:
        return ctypes.get_errno()
    try:
        return _connect_once(fd, address)
    finally:
        _setsockopt(fd, 1, _SO_SNDTIMEO, raw.raw, len(raw.raw))


def _connect_once(fd: int, address: bytes) -> int:
    if _connect(fd, address, len(address)) == 0:
        return 0
    return ctypes.get_errno()
