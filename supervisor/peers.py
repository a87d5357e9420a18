"""Which process made each connection to the shared endpoint, even after its
pid was recycled.

libzmq's ZAP request carries the peer's pid as the kernel recorded it at
``connect()`` (SO_PEERCRED), but the handshake that triggers it can come
much later, when that process may be dead and its pid another's: a stranger
connects from a short-lived child, lets it die, waits for an agent's
descendant to take the pid, then completes the handshake. The ZAP request
does not say which descriptor it is about, so this module keeps the
descriptors the ROUTER accepted (from its socket monitor) and answers one
question for a pid about to be looked up: is every connection whose peer
had that pid still held by a living connector? It asks the kernel with
``SO_PEERPIDFD`` (Linux 6.5+), a descriptor of the very process that
connected, which a recycled pid cannot stand in for (before 6.16 a reaped
connector has none: that failure, like any, counts as dead). If one
of them is dead, the pid is ambiguous and the lookup is refused: the
stranger's connection is the dead one, and a genuine agent's client
reconnects once libzmq has dropped the stranger's (the handshake interval).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import struct

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["AcceptedConnections"]

_SOL_SOCKET = 1
_SO_PEERCRED = 17
#: Linux 6.5+; not in Python's socket module yet.
_SO_PEERPIDFD = 77
_UCRED = struct.Struct("iII")
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
#: Most accepted connections kept track of (more is a flood: see drain).
_MAX_TRACKED = 65536

_libc = ctypes.CDLL(None, use_errno=True)


class AcceptedConnections:
    """The shared ROUTER's accepted descriptors, from its socket monitor."""

    def __init__(self, router: zmq.Socket[bytes]) -> None:
        self.monitor: zmq.Socket[bytes] = router.get_monitor_socket(_EVENTS)
        self._fds: set[int] = set()
        self._pidfd_supported = True

    def drain(self) -> None:
        """Take in every event the monitor has queued (call before answering
        ZAP: an accept is queued before its handshake can end)."""
        while True:
            try:
                message = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = message.get("value")
            if not isinstance(fd, int):
                continue
            if message.get("event") == zmq.EVENT_ACCEPTED:
                if len(self._fds) < _MAX_TRACKED:
                    self._fds.add(fd)
            else:
                self._fds.discard(fd)

    def connector_alive(self, pid: int) -> bool:
        """False if any tracked connection whose peer had ``pid`` at
        ``connect()`` was made by a process that has since died, or whose
        connector the kernel cannot vouch for (fail closed: the cost is a
        reconnect); True if none was. Where the kernel has no
        ``SO_PEERPIDFD`` (before 6.5) it is always True: the handshake
        interval alone bounds the window."""
        if not self._pidfd_supported:
            return True
        for fd in list(self._fds):
            peer = _peer_pid(fd)
            if peer is None:
                self._fds.discard(fd)  # closed, or no longer a socket
                continue
            if peer == pid and not self._peer_alive(fd):
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
        with contextlib.suppress(zmq.ZMQError):
            self.monitor.close(linger=0)


def _peer_pid(fd: int) -> int | None:
    buffer = ctypes.create_string_buffer(_UCRED.size)
    size = ctypes.c_uint32(_UCRED.size)
    if _libc.getsockopt(fd, _SOL_SOCKET, _SO_PEERCRED, buffer, ctypes.byref(size)):
        return None
    pid, _, _ = _UCRED.unpack(buffer.raw)
    return pid if pid > 0 else None
