"""The descriptor socket, agent side: ``open`` requests and the files they bring.

The supervisor gives each agent, at its start, one end of an ``AF_UNIX``
``SOCK_SEQPACKET`` socket pair; its number is in ``$CAPSUP_FD_SOCKET``.
One request is one datagram holding the same msgpack request map as on the
main endpoint (``{id, op: "open", args, trace_id?}``); one reply is one
datagram holding the same reply map, and a successful one carries exactly
one descriptor as ``SCM_RIGHTS`` ancillary data. docs/protocol.md
("The descriptor socket") is the contract, for clients in any language.

One request is in flight at a time per socket (a lock here). Replies are
matched by id, so the answer to a call that timed out is skipped, and its
descriptor closed, by the next call.
"""

from __future__ import annotations

import array
import itertools
import math
import os
import select
import socket
import threading
import time
from typing import Any, Final

from capsup.agents.errors import InternalError, SupervisorGone
from capsup.agents.protocol import Op, encode, parse_reply

__all__ = [
    "FD_SOCKET_ENV",
    "MAX_DESCRIPTOR_MESSAGE_BYTES",
    "DescriptorChannel",
    "shared_channel",
]

#: The environment variable that holds the descriptor socket's number.
FD_SOCKET_ENV: Final = "CAPSUP_FD_SOCKET"
#: The largest datagram either side of the descriptor socket sends or takes
#: (64 KiB): an ``open`` request, whose largest envelope is under 17 KiB.
MAX_DESCRIPTOR_MESSAGE_BYTES: Final = 64 << 10
#: Descriptors a reply may carry that are read (and closed) at once; a
#: correct reply carries one.
_MAX_FDS: Final = 4
_INT_SIZE: Final = array.array("i").itemsize


class DescriptorChannel:
    """An agent's end of the descriptor socket: asks for descriptors."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def forked(self) -> None:
        """Called in a forked child: a thread of the parent may have held the
        lock, and the child has no such thread."""
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        self._socket.close()

    def open(
        self,
        capability: str,
        resource: str,
        mode: str,
        *,
        trace_id: str | None = None,
        timeout: float = 10.0,
    ) -> int:
        """A descriptor of ``resource`` opened by the supervisor in ``mode``
        (one of ``r``, ``w``, ``a``, ``x``, ``r+``), owned by the caller.

        Raises the error the supervisor answered with (a
        :class:`~capsup.agents.errors.CapsupError` subclass), or
        :class:`SupervisorGone` when no reply comes within ``timeout`` seconds
        or the socket is closed."""
        # The pid keeps a forked child's ids apart from its parent's.
        request_id = f"{os.getpid()}.{next(self._ids)}"
        message: dict[str, Any] = {
            "id": request_id,
            "op": Op.OPEN.value,
            "args": {"capability": capability, "resource": resource, "mode": mode},
        }
        if trace_id is not None:
            message["trace_id"] = trace_id
        payload = encode(message, max_bytes=MAX_DESCRIPTOR_MESSAGE_BYTES)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._wait(select.POLLOUT, deadline, timeout)
            try:
                self._socket.sendmsg([payload], [], socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError as error:
                raise SupervisorGone(f"cannot send on the descriptor socket: {error}") from None
            while True:
                self._wait(select.POLLIN, deadline, timeout)
                data, fds = self._receive()
                try:
                    reply = parse_reply(data, max_bytes=MAX_DESCRIPTOR_MESSAGE_BYTES)
                except BaseException:
                    _close_all(fds)
                    raise
                if reply.id is not None and reply.id != request_id:
                    _close_all(fds)  # the answer to a call given up on
                    continue
                if reply.error is not None:
                    _close_all(fds)
                    raise reply.error
                if len(fds) != 1:
                    _close_all(fds)
                    raise InternalError(f"the reply to open carried {len(fds)} descriptors, not 1")
                return fds[0]

    def _wait(self, event: int, deadline: float, timeout: float) -> None:
        poller = select.poll()
        poller.register(self._socket, event)
        remaining = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        if not poller.poll(remaining):
            raise SupervisorGone(f"no answer on the descriptor socket within {timeout:g} s")

    def _receive(self) -> tuple[bytes, list[int]]:
        try:
            data, ancillary, flags, _ = self._socket.recvmsg(
                MAX_DESCRIPTOR_MESSAGE_BYTES,
                socket.CMSG_SPACE(_MAX_FDS * _INT_SIZE),
                socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
            )
        except OSError as error:
            raise SupervisorGone(f"cannot read the descriptor socket: {error}") from None
        fds = _descriptors(ancillary)
        if not data and not ancillary:
            raise SupervisorGone("the supervisor closed the descriptor socket")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            _close_all(fds)
            raise InternalError("a reply on the descriptor socket was cut short")
        return data, fds


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors ``SCM_RIGHTS`` messages brought (each already ours)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _INT_SIZE
            fds.extend(array.array("i", data[:usable]))
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


_shared: DescriptorChannel | None = None
_shared_lock = threading.Lock()


def _after_fork() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()
    if _shared is not None:
        _shared.forked()


os.register_at_fork(after_in_child=_after_fork)


def shared_channel() -> DescriptorChannel:
    """This process's channel over ``$CAPSUP_FD_SOCKET``, made at first use.

    It works on a duplicate of the inherited descriptor, so closing it, or
    the garbage collector, never closes the number the environment names.
    A forked child shares the socket with its parent: let one of them ask at
    a time (a reply that the other one reads is not its own, so it is
    dropped there, and the call it answers times out).
    Raises :class:`SupervisorGone` when the variable is unset or names no
    unix ``SOCK_SEQPACKET`` socket."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DescriptorChannel(_inherited_socket())
        return _shared


def _inherited_socket() -> socket.socket:
    text = os.environ.get(FD_SOCKET_ENV, "")
    if not text.isdigit():
        raise SupervisorGone(
            f"{FD_SOCKET_ENV} is not set: open() needs the descriptor socket `capsup run` gives"
        )
    try:
        sock = socket.socket(fileno=os.dup(int(text)))
    except OSError as error:
        raise SupervisorGone(f"{FD_SOCKET_ENV}={text} is not a usable socket: {error}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.close()
        raise SupervisorGone(f"{FD_SOCKET_ENV}={text} is not a unix SOCK_SEQPACKET socket")
    return sock
