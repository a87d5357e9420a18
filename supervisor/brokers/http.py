"""The HTTP broker: performs a brokered ``http`` call after the kernel allowed it.

The kernel has validated the use (``HttpValidator.decide`` on the URL that
:func:`~capsup.validators.http.parse_url` gave); the broker then does it
from that same :class:`ParsedURL`, on a worker thread:

1. :func:`check_agent_headers` takes the agent's headers: RFC 9110 tokens
   and clean values, none of the hop-by-hop or framing headers the broker
   sets itself, bounded in number and size (``http_checks``).
2. :func:`resolve_checked` resolves the host once and checks every address:
   loopback, private, link-local and metadata addresses only where the
   capability names exactly that address (``http_checks``).
3. :meth:`HttpBroker.exchange` sends the request over a connection that
   dials one of those addresses and no other (``http_transport``), with
   the URL's host in ``Host`` and in TLS SNI and verification, so DNS
   rebinding between check and use cannot happen.

This module is the broker's public face: everything a caller needs is
importable from here.

Decisions an agent can rely on:

- Redirects are never followed: a 3xx comes back as it is, and a request to
  its ``Location`` is validated like any other.
- Content codings: the broker asks for none and decodes none. Without the
  agent's own ``Accept-Encoding`` it sends ``Accept-Encoding: identity``;
  with one, the body comes back as the server encoded it, headers intact,
  for the agent to decode within its own limits. ``max_response_bytes``
  counts the bytes delivered to the agent, so a compression bomb is capped
  at its compressed size and never inflated in the supervisor.
- No proxies, no cookies, no HTTP/2; connections are pooled per host and
  checked address (:class:`HttpBroker`).
- Credentials: ``inject`` headers are added last and replace the agent's
  headers of the same name; their values never appear in a refusal.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import httpcore
from capsup.agents import protocol as p
from capsup.supervisor.brokers.http_checks import (
    DEFAULT_PORTS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    REASONS,
    HttpRefused,
    check_agent_headers,
    check_header_pairs,
    clip,
    resolve_checked,
)
from capsup.supervisor.brokers.http_transport import (
    MAX_RESPONSE_HEAD_BYTES,
    DialFailed,
    exchange_deadline,
    open_pool,
    send,
)
from capsup.validators.http import HttpValidator, ParsedURL
from capsup.validators.ipaddrs import IPAddress

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TOTAL_TIMEOUT",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_POOLS",
    "MAX_RESPONSE_HEAD_BYTES",
    "REASONS",
    "HttpBroker",
    "HttpCall",
    "HttpLimits",
    "HttpRefused",
    "HttpResult",
    "check_agent_headers",
    "exchange",
    "resolve_checked",
]

#: Largest request body by default: what one protocol message carries.
DEFAULT_MAX_REQUEST_BYTES: Final = p.MAX_IO_BYTES
#: Largest response body by default (860 KiB): the body and the largest head
#: together still fit in one protocol reply.
DEFAULT_MAX_RESPONSE_BYTES: Final = p.MAX_IO_BYTES - MAX_RESPONSE_HEAD_BYTES
#: Seconds to open a TCP connection (and complete TLS) by default.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: Seconds for the whole exchange by default, from the first connect to the
#: last byte of the body; an agent's ``timeout`` may only shorten it.
DEFAULT_TOTAL_TIMEOUT: Final = 30.0
#: Most connection pools (one per scheme, host, port and address) kept.
MAX_POOLS: Final = 64

_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
#: Longest refusal message an agent is shown.
_MESSAGE_CHARS: Final = 512
_REDACTED: Final = "[redacted]"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds of one call: the capability's ``max_bytes`` and the broker's caps."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_response_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        for name in ("connect_timeout", "total_timeout"):
            if not _positive_seconds(getattr(self, name)):
                raise ValueError(f"{name} must be a positive, finite number of seconds")


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One brokered request, as validated; refuses a malformed one when made."""

    method: str
    url: ParsedURL
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in HttpValidator.operations:
            raise HttpRefused("bad_request", f"{clip(repr(self.method))} is not a method")
        if not isinstance(self.url, ParsedURL) or self.url.wildcard:
            raise HttpRefused("bad_request", "the URL must be a parsed URL without a wildcard")
        if not isinstance(self.body, bytes):
            raise HttpRefused("bad_request", "the body must be bytes")
        if self.timeout is not None and not _positive_seconds(self.timeout):
            raise HttpRefused("bad_request", "timeout must be a positive number of seconds")
        check_header_pairs(self.headers, "header")


@dataclass(frozen=True, slots=True)
class HttpResult:
    """The response: status, headers in order (duplicates kept) and the body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _Pool:
    """A connection pool and how many calls are using it now."""

    __slots__ = ("connections", "users")

    def __init__(self, connections: httpcore.ConnectionPool) -> None:
        self.connections = connections
        self.users = 0


_PoolKey = tuple[str, str, str, int, IPAddress]


class HttpBroker:
    """Performs checked HTTP calls, reusing connections across calls; thread-safe.

    Pools are keyed by (partition, scheme, host, port, address), so a
    connection is only reused by a call of the same caller that checked its
    address. At most ``max_pools`` idle pools are kept, the least recently
    used closed first.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_pools: int = MAX_POOLS):
        # The system's roots (SSL_CERT_FILE and SSL_CERT_DIR honoured), not
        # certifi's: an operator's CA bundle is the one to trust.
        context = ssl.create_default_context() if ssl_context is None else ssl_context
        if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
            raise ValueError("the TLS context must verify certificates and host names")
        self._ssl_context = context
        self._max_pools = max_pools
        self._lock = threading.Lock()
        self._pools: OrderedDict[_PoolKey, _Pool] = OrderedDict()
        self._closed = False

    def __enter__(self) -> HttpBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle pool now, and the others as their calls end."""
        with self._lock:
            self._closed = True
            idle = self._evict()
        for pool in idle:
            pool.close()

    def exchange(
        self,
        call: HttpCall,
        addresses: Sequence[IPAddress],
        *,
        inject: Mapping[str, str],
        limits: HttpLimits,
        partition: str = "",
    ) -> HttpResult:
        """Send ``call`` to the first of ``addresses`` that accepts a connection.

        Connections are reused only by calls of the same ``partition`` (the
        caller's: an agent and the credentials it sends): a connection one
        caller left in a bad state (a server's stray bytes after a response,
        a connection-bound login) must never answer another's request."""
        secrets = [value for value in inject.values() if isinstance(value, str) and value]
        try:
            return self._exchange(call, addresses, inject, limits, partition)
        except HttpRefused as refusal:
            message = clip(_scrub(refusal.message, secrets), _MESSAGE_CHARS)
            raise HttpRefused(refusal.reason, message) from None

    def _exchange(
        self,
        call: HttpCall,
        addresses: Sequence[IPAddress],
        inject: Mapping[str, str],
        limits: HttpLimits,
        partition: str,
    ) -> HttpResult:
        size = len(call.body)
        if size > limits.max_request_bytes:
            message = f"the body is {size} bytes, more than {limits.max_request_bytes}"
            raise HttpRefused("request_too_large", message)
        headers = _request_headers(call, inject)
        if not addresses:
            raise HttpRefused("dns_failed", f"no checked address for {call.url.host}")
        seconds = limits.total_timeout
        if call.timeout is not None:
            seconds = min(call.timeout, seconds)
        url = call.url
        host = str(url.address) if url.address is not None else url.host
        port = url.port or DEFAULT_PORTS[url.scheme]
        target = httpcore.URL(scheme=url.scheme, host=host, port=port, target=url.path + url.query)
        failure: DialFailed | None = None
        with exchange_deadline(seconds) as remaining:
            for address in addresses:
                left = remaining()
                timeouts = {"connect": min(limits.connect_timeout, left), "read": left}
                request = httpcore.Request(
                    call.method,
                    target,
                    headers=headers,
                    content=call.body,
                    extensions={"timeout": timeouts | {"write": left, "pool": left}},
                )
                try:
                    with self._pool((partition, url.scheme, host, port, address)) as pool:
                        status, response_headers, body = send(
                            pool, request, url.host, limits.max_response_bytes
                        )
                except DialFailed as error:
                    failure = error
                    continue
                return HttpResult(status, response_headers, body)
        assert failure is not None  # addresses is not empty, and each one failed to dial
        raise HttpRefused(failure.reason, failure.message)

    @contextlib.contextmanager
    def _pool(self, key: _PoolKey) -> Iterator[httpcore.ConnectionPool]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the HTTP broker is closed")
            pool = self._pools.get(key)
            if pool is None:
                _, _, host, port, address = key
                pool = self._pools[key] = _Pool(open_pool(host, port, address, self._ssl_context))
            else:
                self._pools.move_to_end(key)
            pool.users += 1
        try:
            yield pool.connections
        finally:
            with self._lock:
                pool.users -= 1
                idle = self._evict()
            for connections in idle:
                connections.close()

    def _evict(self) -> list[httpcore.ConnectionPool]:
        """Take out idle pools beyond the bound (all once closed), oldest first; under the lock."""
        excess = len(self._pools) - (0 if self._closed else self._max_pools)
        evicted: list[httpcore.ConnectionPool] = []
        if excess <= 0:
            return evicted
        for key, pool in list(self._pools.items()):
            if excess <= 0:
                break
            if pool.users == 0:
                del self._pools[key]
                evicted.append(pool.connections)
                excess -= 1
        return evicted


def exchange(
    call: HttpCall,
    addresses: Sequence[IPAddress],
    *,
    inject: Mapping[str, str],
    limits: HttpLimits,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpResult:
    """One call on connections of its own; :class:`HttpBroker` reuses them across calls."""
    with HttpBroker(ssl_context=ssl_context, max_pools=1) as broker:
        return broker.exchange(call, addresses, inject=inject, limits=limits)


def _request_headers(call: HttpCall, inject: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """``Host``, the agent's headers, framing, then the injected headers over the agent's."""
    injected = check_header_pairs(tuple(inject.items()), "injected header")
    replaced = {name.lower() for name, _ in injected}
    kept = [(name, value) for name, value in call.headers if name.lower() not in replaced]
    present = replaced | {name.lower() for name, _ in kept}
    headers = [("Host", call.url.authority), *kept]
    if "accept-encoding" not in present:
        headers.append(("Accept-Encoding", "identity"))
    if call.body or call.method in _BODY_METHODS:
        headers.append(("Content-Length", str(len(call.body))))
    headers.extend(injected)
    return [(name.encode("ascii"), value.encode("ascii")) for name, value in headers]


def _positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every injected value, as written or as Python would quote it, redacted."""
    for secret in secrets:
        for form in {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}:
            text = text.replace(form, _REDACTED)
    return text
