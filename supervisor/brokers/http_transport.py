"""The pinned connection layer of the HTTP broker: httpcore, dialling only checked addresses.

The broker requests through httpcore, the transport layer under httpx, with
a network backend of its own. Why this extension point and not another:

- The URL keeps its real host, so ``Host``, TLS SNI and certificate
  verification all use the name the capability was checked against, done by
  httpcore and :mod:`ssl` as for any request; only the dial is pinned. The
  other way (the checked IP in the URL, ``sni_hostname`` in the extensions)
  splits the host in two and leaves httpcore's pool keyed by the address
  alone, where a connection opened for one name may serve another.
- The backend is the one place every socket of the exchange is made, so it
  is where "only the checked address" holds by construction, and the one
  place that sees every socket operation, so it is where the exchange's
  deadline (httpcore's timeouts are per operation) can hold too.
- ``httpx.Client`` is not used: cookies, redirects, proxies from the
  environment, default headers, content decoding and a second URL parse
  are each something the broker must not do, and ``httpx.HTTPTransport``
  takes no network backend.

Each pool serves one (scheme, host, port, address), so a pooled connection
can only ever be reused for a call whose checked addresses include its own.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import httpcore
from capsup.supervisor.brokers.http_checks import HttpRefused
from capsup.validators.ipaddrs import IPAddress

__all__ = [
    "KEEPALIVE_EXPIRY",
    "MAX_CONNECTIONS_PER_POOL",
    "MAX_RESPONSE_HEAD_BYTES",
    "DialFailed",
    "exchange_deadline",
    "open_pool",
    "send",
]

#: Seconds an idle pooled connection is kept (httpx's default): servers
#: commonly close idle connections after 5 s or more, so a kept one is rarely stale.
KEEPALIVE_EXPIRY: Final = 5.0
#: Connections one pool (one host at one address) has open at once; a call
#: beyond them waits for one, within its deadline.
MAX_CONNECTIONS_PER_POOL: Final = 16
#: Largest response head (status line and headers). httpcore's HTTP/1.1
#: connection refuses a larger one; :func:`send` checks it again.
MAX_RESPONSE_HEAD_BYTES: Final = 100 << 10
#: Longest piece of a library's error text kept in a message.
_DETAIL_CHARS: Final = 200

#: Errors of httpcore that reach :func:`send`, the reason each is refused
#: with and its message (connects, TLS and timeouts are classified earlier,
#: in the backend and the stream, where it is known which step failed).
_LIBRARY_ERRORS: Final[tuple[tuple[type[Exception], str, str], ...]] = (
    (httpcore.TimeoutException, "timeout", "the exchange with {host} timed out"),
    (httpcore.RemoteProtocolError, "protocol_error", "{host} broke HTTP/1.1: {detail}"),
    (httpcore.LocalProtocolError, "protocol_error", "the request is not valid HTTP/1.1: {detail}"),
    (httpcore.ProtocolError, "protocol_error", "the exchange with {host} broke HTTP/1.1: {detail}"),
    (httpcore.NetworkError, "connection_lost", "the connection to {host} failed: {detail}"),
)
_LIBRARY_ERROR_TYPES: Final = tuple(kind for kind, _, _ in _LIBRARY_ERRORS)


class DialFailed(HttpRefused):
    """No TCP connection to one address: nothing was sent, so the next may be tried."""


@dataclass(frozen=True, slots=True)
class _Deadline:
    at: float  # on time.monotonic()
    seconds: float


#: The deadline of the exchange running on this thread (or task): httpcore
#: runs every socket operation of a synchronous request on the caller's thread.
_DEADLINE: ContextVar[_Deadline | None] = ContextVar("capsup_http_deadline", default=None)


@contextlib.contextmanager
def exchange_deadline(seconds: float) -> Iterator[Callable[[], float]]:
    """Bound every socket operation inside the block by ``seconds`` in all.

    Yields a function giving the seconds left, which raises the refusal once none are.
    """
    token = _DEADLINE.set(_Deadline(time.monotonic() + seconds, seconds))
    try:
        yield _remaining
    finally:
        _DEADLINE.reset(token)


def _remaining() -> float:
    left = _left(None)
    assert left is not None  # only called inside exchange_deadline
    return left


def _left(timeout: float | None) -> float | None:
    """``timeout`` shortened to what is left of the exchange; refuses when nothing is."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    remaining = deadline.at - time.monotonic()
    if remaining <= 0:
        raise _timed_out(deadline)
    return remaining if timeout is None else min(timeout, remaining)


def _timed_out(deadline: _Deadline | None = None) -> HttpRefused:
    deadline = deadline or _DEADLINE.get()
    within = "" if deadline is None else f" within {deadline.seconds:g} s"
    return HttpRefused("timeout", f"the exchange did not finish{within}")


def _detail(error: BaseException) -> str:
    """What an OS or TLS error says, without the library's wrapping."""
    cause = error.__cause__ or error
    if isinstance(cause, ssl.SSLCertVerificationError):
        text = str(cause.verify_message)
    elif isinstance(cause, ssl.SSLError):
        text = str(cause.reason or cause)
    elif isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror
    else:
        text = str(cause) or type(cause).__name__
    return text[:_DETAIL_CHARS]


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and handshake ends by the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, host: str) -> None:
        self._inner = inner
        self._host = host

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._inner.read(max_bytes, _left(timeout))
        except httpcore.TimeoutException:
            raise _timed_out() from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._inner.write(buffer, _left(timeout))
        except httpcore.TimeoutException:
            raise _timed_out() from None

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            inner = self._inner.start_tls(ssl_context, server_hostname, _left(timeout))
        except httpcore.ConnectTimeout:
            raise HttpRefused("timeout", f"the TLS handshake with {self._host} timed out") from None
        except httpcore.ConnectError as error:
            message = f"TLS with {self._host} failed: {_detail(error)}"
            raise HttpRefused("tls_error", message) from None
        return _DeadlineStream(inner, self._host)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Dials the one checked address, for the one origin its pool serves."""

    def __init__(self, host: str, port: int, address: IPAddress) -> None:
        self._origin = (host, port)
        self._dial = str(address)
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if (host, port) != self._origin:
            # Each pool is made for one origin; anything else is a bug, never a dial.
            raise HttpRefused("connect_failed", f"{host}:{port} is not this pool's origin")
        try:
            stream = self._inner.connect_tcp(
                self._dial, port, _left(timeout), local_address, socket_options
            )
        except httpcore.ConnectTimeout:
            message = f"connecting to {host}:{port} timed out"
            raise DialFailed("timeout", message) from None
        except httpcore.ConnectError as error:
            message = f"could not connect to {host}:{port}: {_detail(error)}"
            raise DialFailed("connect_failed", message) from None
        return _DeadlineStream(stream, host)


def open_pool(
    host: str, port: int, address: IPAddress, ssl_context: ssl.SSLContext
) -> httpcore.ConnectionPool:
    """A pool of HTTP/1.1 connections to ``host`` that dials only ``address``.

    ``host`` is the URL's host as httpcore is given it (an IPv6 literal
    without brackets); TLS, for an ``https`` request, sends it as SNI and
    verifies the certificate against it.
    """
    return httpcore.ConnectionPool(
        ssl_context=ssl_context,
        max_connections=MAX_CONNECTIONS_PER_POOL,
        max_keepalive_connections=MAX_CONNECTIONS_PER_POOL,
        keepalive_expiry=KEEPALIVE_EXPIRY,
        http1=True,
        http2=False,
        retries=0,
        network_backend=_PinnedBackend(host, port, address),
    )


#: Most pieces (reads, or chunks of a chunked body) one response body may
#: come in: 860 KiB in reads of 64 KiB is 14; this leaves room for small
#: chunks, not for a byte each.
MAX_BODY_PIECES: Final = 4096


def send(
    pool: httpcore.ConnectionPool, request: httpcore.Request, host: str, cap: int
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of ``request``'s response; a body over ``cap`` bytes is refused.

    Raises :class:`DialFailed` when the address took no connection, and
    :class:`HttpRefused` for everything else that went wrong.
    """
    try:
        response = pool.handle_request(request)
        try:
            if response.status == 101:
                raise HttpRefused("protocol_error", f"{host} switched protocols unasked")
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers]
            if sum(len(n) + len(v) + 4 for n, v in headers) > MAX_RESPONSE_HEAD_BYTES:
                message = f"the response head is larger than {MAX_RESPONSE_HEAD_BYTES} bytes"
                raise HttpRefused("response_too_large", message)
            body = bytearray()
            # A chunk is what one read returns (at most 64 KiB), so no more
            # than cap + 64 KiB is read and no more than cap is kept. Into
            # one buffer, and only so many pieces: a body sent a byte per
            # chunk would otherwise cost an object and an event each (the
            # memory and the time, under the lock the loop also needs).
            for pieces, chunk in enumerate(response.iter_stream(), 1):
                if len(body) + len(chunk) > cap:
                    message = f"the response from {host} is larger than {cap} bytes"
                    raise HttpRefused("response_too_large", message)
                if pieces > MAX_BODY_PIECES:
                    message = f"the response from {host} came in more than {MAX_BODY_PIECES} pieces"
                    raise HttpRefused("protocol_error", message)
                body += chunk
        finally:
            # A body not read to its end closes the connection instead of pooling it.
            response.close()
    except _LIBRARY_ERROR_TYPES as error:
        reason, template = next((r, t) for k, r, t in _LIBRARY_ERRORS if isinstance(error, k))
        # h11 quotes what the server sent after a colon: keep only its verdict.
        detail = (str(error) or type(error).__name__).split(": ", 1)[0]
        raise HttpRefused(reason, template.format(host=host, detail=detail)) from None
    return response.status, headers, bytes(body)
