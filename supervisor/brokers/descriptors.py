"""The descriptor socket, supervisor side: one ``open`` request, one reply with its file.

Each agent gets, at its start, one end of an ``AF_UNIX`` ``SOCK_SEQPACKET``
pair (``$CAPSUP_FD_SOCKET``); the supervisor keeps the other, so a datagram
on it is the agent's (or a descendant's, which inherits it) by
construction. One request is one datagram, the msgpack request map of the
main endpoint; one reply is one datagram, the reply map, and on success it
carries the descriptor as ``SCM_RIGHTS`` (docs/protocol.md, "The descriptor
socket"). This module moves datagrams and descriptors; what a request means
is the handler's business (``open_for_agent``).
"""

from __future__ import annotations

import array
import errno
import os
import secrets
import select
import socket
from collections.abc import Callable
from typing import Final

from capsup.agents import protocol as p
from capsup.agents.descriptors import MAX_DESCRIPTOR_MESSAGE_BYTES
from capsup.agents.errors import BadRequest, CapsupError, MessageTooLarge

__all__ = ["DescriptorHandler", "DescriptorRefuser", "refusal_reply", "serve_descriptor_request"]

DescriptorHandler = Callable[[bytes], tuple[bytes, int | None]]
"""Answers one request datagram: the reply, and the descriptor it carries
(``None`` for none). The descriptor is closed here once sent."""

DescriptorRefuser = Callable[[CapsupError, bytes], bytes]
"""The reply to a datagram refused before any handler sees it (too large, or
carrying descriptors), given the error and the bytes that were read."""

#: Descriptors an agent's datagram may carry that are taken in (to be closed
#: at once); the kernel drops any beyond (``MSG_CTRUNC``).
_PEER_FDS: Final = 16
_INT_SIZE: Final = array.array("i").itemsize
_RECEIVE: Final = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
_SEND: Final = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
#: The peer is gone (every copy of its end closed), whatever it left unread.
_GONE: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN})
_HANGUP: Final = select.POLLHUP | select.POLLRDHUP
#: A datagram, or its ancillary data, longer than the room given for it.
_CUT: Final = socket.MSG_TRUNC | socket.MSG_CTRUNC


def refusal_reply(error: CapsupError, data: bytes) -> bytes:
    """The default :data:`DescriptorRefuser`: an error reply echoing the
    request's id and trace id where they can be read (a trace id of its own
    otherwise). It records nothing: a server passes one that does."""
    request_id, trace_id = p.best_effort_ids(data)
    return p.error_reply(request_id, error, trace_id or f"fd-{secrets.token_hex(6)}")


def serve_descriptor_request(
    sock: socket.socket,
    handle: DescriptorHandler,
    *,
    refuse: DescriptorRefuser = refusal_reply,
    max_bytes: int = MAX_DESCRIPTOR_MESSAGE_BYTES,
) -> bool:
    """Serve at most one datagram waiting on ``sock``, without blocking.

    A datagram longer than ``max_bytes`` is refused (``message_too_large``),
    and so is one carrying ancillary data (``bad_request``; any descriptors
    it brought are closed first); ``refuse`` makes their reply. Any other
    goes to ``handle``. The reply is sent with the handler's descriptor as
    ``SCM_RIGHTS``, and that descriptor is closed here, sent or not (a peer
    that does not read its replies loses them).

    Returns False once the peer is gone (every copy of its end closed): the
    caller stops watching the socket. True otherwise, also when nothing was
    waiting.
    """
    try:
        data, ancillary, flags, _ = sock.recvmsg(
            max_bytes, socket.CMSG_SPACE(_PEER_FDS * _INT_SIZE), _RECEIVE
        )
    except (BlockingIOError, InterruptedError):
        return True
    except OSError as error:
        if error.errno in _GONE:
            return False
        raise
    passed = _close_passed(ancillary)
    if not data and not ancillary and not flags & _CUT and _hung_up(sock):
        return False
    fd: int | None = None
    if flags & socket.MSG_TRUNC:
        reply = refuse(MessageTooLarge(f"a descriptor request is at most {max_bytes} bytes"), data)
    elif ancillary or flags & socket.MSG_CTRUNC:
        refusal = BadRequest(
            f"the descriptor socket takes no ancillary data; the {passed} descriptors sent "
            "were closed"
        )
        reply = refuse(refusal, data)
    else:
        reply, fd = handle(data)
    try:
        return _send(sock, reply, fd)
    finally:
        if fd is not None:
            os.close(fd)


def _close_passed(ancillary: list[tuple[int, int, bytes]]) -> int:
    """Close every descriptor the peer sent; how many there were."""
    count = 0
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT_SIZE
            for fd in array.array("i", payload[:usable]):
                os.close(fd)
                count += 1
    return count


def _hung_up(sock: socket.socket) -> bool:
    """Whether an empty read meant the end (not an empty datagram)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    return any(events & _HANGUP for _, events in poller.poll(0))


def _send(sock: socket.socket, reply: bytes, fd: int | None) -> bool:
    ancillary = []
    if fd is not None:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes()))
    try:
        sock.sendmsg([reply], ancillary, _SEND)
    except (BlockingIOError, InterruptedError):
        return True  # its queue is full: a peer that does not read loses its replies
    except OSError as error:
        if error.errno in _GONE:
            return False
        raise
    return True
