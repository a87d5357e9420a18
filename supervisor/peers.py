"""The connections each ROUTER accepted: who made them, how many there are,
and whether their makers still live.

Three attacks on the supervisor go through connections it has accepted but
not yet identified, and this module is where each is stopped:

- **Pid reuse.** libzmq's ZAP request carries the peer's pid as the kernel
  recorded it at ``connect()`` (SO_PEERCRED), but the handshake that
  triggers it can come much later, when that process may be dead and its
  pid another's: a stranger connects from a short-lived child, lets it die,
  waits for an agent's descendant to take the pid, then completes the
  handshake. The ZAP request does not say which descriptor it is about, so
  :meth:`AcceptedConnections.connector_alive` answers one question for a
  pid about to be looked up: is every connection whose peer had that pid
  still held by a living connector? It asks the kernel with
  ``SO_PEERPIDFD`` (Linux 6.5+), a descriptor of the very process that
  connected, which a recycled pid cannot stand in for (before 6.16 a reaped
  connector has none: that failure, like any, counts as dead). If one of
  them is dead, the pid is ambiguous and the lookup is refused: the
  stranger's connection is the dead one, and a genuine agent's client
  reconnects once libzmq has dropped the stranger's (the handshake interval).
- **Descriptor exhaustion.** Every accepted connection costs the supervisor
  a descriptor until its handshake ends or times out, and libzmq 4.3 aborts
  the whole process when ``accept()`` fails with ``EMFILE``. Connections are
  bounded per connecting process and in total (:class:`ConnectionBudget`,
  shared by every ROUTER); one past a bound is shut down as soon as it is
  seen, which makes libzmq close it, before it has cost more than its
  descriptor.
- **Memory.** What a peer can make libzmq buffer is bounded per connection
  (``MAXMSGSIZE``, ``RCVHWM``), so bounding connections bounds that too.

The connections come from the ROUTER's socket monitor. Its queue is made
unbounded (an inproc pipe's bound is the sum of both ends', and ours is 0),
so libzmq never drops an event and no connection goes untracked; what it
holds is bounded by the connections themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import signal
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["AcceptedConnections", "ConnectionBudget", "RefusedConnection"]

_SOL_SOCKET = 1
_SO_PEERCRED = 17
#: Linux 6.5+; not in Python's socket module yet.
_SO_PEERPIDFD = 77
_UCRED = struct.Struct("iII")
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
#: ``sun_path`` of a Unix socket address (a name longer than this is cut).
_SUN_PATH_MAX = 108

_libc = ctypes.CDLL(None, use_errno=True)
_MONITOR_NAMES = itertools.count(1)


@dataclass(slots=True)
class ConnectionBudget:
    """Bounds on accepted connections: ``per_peer`` per connecting process
    on one endpoint, and ``total`` over every endpoint. ``in_use`` is kept
    by the :class:`AcceptedConnections` that share the budget."""

    total: int
    per_peer: int
    in_use: int = 0

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_peer < 1:
            raise ValueError("connection bounds must be at least 1")


@dataclass(frozen=True, slots=True)
class RefusedConnection:
    """A connection shut down for going past a bound, or (``stranger``)
    because its process may not connect there at all (for the trail)."""

    pid: int | None
    reason: str
    stranger: bool = False


class AcceptedConnections:
    """One ROUTER's accepted descriptors, from its socket monitor.

    ``endpoint`` is the path the ROUTER is bound at: a descriptor is acted
    on only while its local name is that path, so a number libzmq closed
    and the process reused for something else is never shut down."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        router: zmq.Socket[bytes],
        endpoint: str,
        budget: ConnectionBudget,
        admits: Callable[[int | None], bool] | None = None,
    ) -> None:
        # A name never used before: libzmq lets go of a closed monitor's
        # inproc name only later, and an object's id() is soon another's.
        address = f"inproc://capsup-accepted-{os.getpid()}-{next(_MONITOR_NAMES)}"
        router.monitor(address, _EVENTS)
        self.monitor: zmq.Socket[bytes] = context.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.LINGER, 0)
        self.monitor.setsockopt(zmq.RCVHWM, 0)  # before connect(): the pipe takes it then
        self.monitor.connect(address)
        self.router = router
        self._path = endpoint.removeprefix("ipc://").encode()[:_SUN_PATH_MAX]
        self._budget = budget
        #: Which connecting processes may hold a connection here at all
        #: (an agent's own endpoint: the supervisor, for the agent); others
        #: are shut down as soon as they are accepted, handshake or not.
        self._admits = admits
        #: accepted descriptor -> the pid its peer had at connect()
        self._peer: dict[int, int] = {}
        #: pid -> its accepted descriptors
        self._by_pid: dict[int, set[int]] = {}
        self._pidfd_supported = True

    def __len__(self) -> int:
        return len(self._peer)

    def drain(self) -> list[RefusedConnection]:
        """Take in every event the monitor has queued (call before answering
        ZAP: an accept is queued before its handshake can end), shutting
        down each new connection past a bound; what was shut down."""
        refused: list[RefusedConnection] = []
        while True:
            try:
                message = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return refused
            fd = message.get("value")
            if not isinstance(fd, int):
                continue
            self._forget(fd)  # a reused number: its old connection ended
            if message.get("event") == zmq.EVENT_ACCEPTED:
                refusal = self._admit(fd)
                if refusal is not None:
                    refused.append(refusal)

    def _admit(self, fd: int) -> RefusedConnection | None:
        if not self._ours(fd):
            return None  # closed already, and its number reused
        pid = _peer_pid(fd)
        held = self._by_pid.get(pid, ()) if pid is not None else ()
        if self._admits is not None and not self._admits(pid):
            _libc.shutdown(fd, socket.SHUT_RDWR)
            return RefusedConnection(pid, "a process that is not this agent", stranger=True)
        if pid is None:
            reason = "the kernel does not say which process connected"
        elif len(held) >= self._budget.per_peer:
            reason = f"process {pid} holds {len(held)} connections here already"
        elif self._budget.in_use >= self._budget.total:
            reason = f"the supervisor holds {self._budget.in_use} connections already"
        else:
            self._peer[fd] = pid
            self._by_pid.setdefault(pid, set()).add(fd)
            self._budget.in_use += 1
            return None
        # libzmq owns the descriptor: shutting it down (not closing it) makes
        # its next read end the connection, and libzmq closes it then.
        _libc.shutdown(fd, socket.SHUT_RDWR)
        return RefusedConnection(pid, reason)

    def _forget(self, fd: int) -> None:
        pid = self._peer.pop(fd, None)
        if pid is None:
            return
        self._budget.in_use -= 1
        held = self._by_pid[pid]
        held.discard(fd)
        if not held:
            del self._by_pid[pid]

    def _ours(self, fd: int) -> bool:
        """Whether ``fd`` is still a connection accepted on our endpoint."""
        buffer = ctypes.create_string_buffer(2 + _SUN_PATH_MAX)
        size = ctypes.c_uint32(ctypes.sizeof(buffer))
        if _libc.getsockname(fd, buffer, ctypes.byref(size)):
            return False
        family = int.from_bytes(buffer.raw[:2], "little")
        name = buffer.raw[2 : size.value].split(b"\0", 1)[0]
        return family == socket.AF_UNIX and name == self._path

    def connections_of(self, pid: int) -> Iterator[int]:
        """The tracked descriptors whose peer had ``pid`` at ``connect()``."""
        yield from list(self._by_pid.get(pid, ()))

    def connector_alive(self, pid: int) -> bool:
        """False if any tracked connection whose peer had ``pid`` at
        ``connect()`` was made by a process that has since died, or whose
        connector the kernel cannot vouch for (fail closed: the cost is a
        reconnect); True if none was. Where the kernel has no
        ``SO_PEERPIDFD`` (before 6.5) it is always True: the handshake
        interval alone bounds the window."""
        if not self._pidfd_supported:
            return True
        for fd in self.connections_of(pid):
            if _peer_pid(fd) != pid:
                self._forget(fd)  # closed, or its number reused since
                continue
            if not self._peer_alive(fd):
                return False
        return True

    def _peer_alive(self, fd: int) -> bool:
        """Whether the process that connected ``fd`` still lives. Before
        Linux 6.16 the kernel gives no pidfd for a peer already reaped
        (EINVAL, later ESRCH): that, like any other failure, is not alive."""
        value = ctypes.c_int(-1)
        size = ctypes.c_uint32(ctypes.sizeof(value))
        if _libc.getsockopt(
            fd, _SOL_SOCKET, _SO_PEERPIDFD, ctypes.byref(value), ctypes.byref(size)
        ):
            if ctypes.get_errno() == errno.ENOPROTOOPT:
                self._pidfd_supported = False
                return True
            return False
        pidfd = value.value
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except PermissionError:
            return True  # it exists, it is just not ours to signal
        except OSError:
            return False  # ESRCH: it has exited
        finally:
            os.close(pidfd)
        return True

    def close(self) -> None:
        """Stop monitoring; what the budget counted for this ROUTER is freed."""
        for fd in list(self._peer):
            self._forget(fd)
        with contextlib.suppress(zmq.ZMQError):
            self.router.disable_monitor()
        with contextlib.suppress(zmq.ZMQError):
            self.monitor.close(linger=0)


def _peer_pid(fd: int) -> int | None:
    buffer = ctypes.create_string_buffer(_UCRED.size)
    size = ctypes.c_uint32(_UCRED.size)
    if _libc.getsockopt(fd, _SOL_SOCKET, _SO_PEERCRED, buffer, ctypes.byref(size)):
        return None
    pid, _, _ = _UCRED.unpack(buffer.raw)
    return pid if pid > 0 else None
