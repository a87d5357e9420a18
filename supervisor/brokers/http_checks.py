"""What the HTTP broker checks before any byte is sent: headers and addresses.

Also the one refusal type of the broker, :class:`HttpRefused`, with its
reason codes (:data:`REASONS`). Refusal messages name what failed and why,
never show a header's value, and clip anything the client chose.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from typing import Final

from capsup.supervisor.audit_record import clip as clip_text
from capsup.validators.http import ParsedURL
from capsup.validators.ipaddrs import IPAddress, forbidden_reason, parse_ip

__all__ = [
    "DEFAULT_PORTS",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "REASONS",
    "HttpRefused",
    "check_agent_headers",
    "check_credentialed_request",
    "check_credentialed_response",
    "check_header_pairs",
    "clip",
    "resolve_checked",
]

#: Most headers an agent may set, and most bytes of their names and values:
#: common servers refuse more than 8 to 32 KiB of request head.
MAX_HEADERS: Final = 100
MAX_HEADER_BYTES: Final = 32 << 10
DEFAULT_PORTS: Final[Mapping[str, int]] = {"http": 80, "https": 443}

#: Every reason a call is refused with, and what it means.
REASONS: Final[Mapping[str, str]] = {
    "bad_request": "the call itself is malformed: method, URL, body or timeout",
    "bad_header": "a header name is not a token, or a value has a forbidden character",
    "forbidden_header": "a hop-by-hop or framing header, which the broker sets itself",
    "headers_too_large": "more headers, or more bytes of headers, than allowed",
    "request_too_large": "the request body is larger than allowed",
    "response_too_large": "the response is larger than allowed; reading stopped there",
    "dns_failed": "the host name did not resolve",
    "private_address": "the host resolves to a loopback, private or link-local address",
    "metadata_address": "the host resolves to a cloud metadata service",
    "connect_failed": "no checked address accepted a connection",
    "tls_error": "the TLS handshake or the server's certificate failed",
    "timeout": "the exchange or its connect did not finish in time",
    "connection_lost": "the connection failed in the middle of the exchange",
    "protocol_error": "the server broke HTTP/1.1",
    "encoded_response": "an encoded response to a request that carried credentials",
    "revoked": "the capability ended (revoked, or expired) before the request was made",
}

#: Headers the agent may not set, and why (compared lower-case).
_FORBIDDEN: Final[Mapping[str, str]] = {
    "host": "the broker sends the checked URL's host",
    "content-length": "a framing header, which the broker sets from the body",
    "transfer-encoding": "a framing header, which the broker sets from the body",
    "connection": "a hop-by-hop header; the broker manages its connections",
    "keep-alive": "a hop-by-hop header; the broker manages its connections",
    "te": "a hop-by-hop header; the broker manages its connections",
    "trailer": "a hop-by-hop header; the broker sends no trailers",
    "upgrade": "a hop-by-hop header; the broker does not switch protocols",
    "expect": "the broker sends the body with the request, never after a 100 Continue",
}

#: Headers an agent may not set on a capability that carries credentials:
#: a server that echoes the request would send the injected value back in a
#: form redaction cannot see (compressed, or cut into ranges).
_NOT_WITH_CREDENTIALS: Final[Mapping[str, str]] = {
    "accept-encoding": "an encoded response could carry the credentials past redaction",
    "range": "a partial response could carry pieces of the credentials past redaction",
    "if-range": "a partial response could carry pieces of the credentials past redaction",
}
_PROXY_PREFIX: Final = "proxy-"
_PROXY_WHY: Final = "Proxy-* headers are for proxies, and the broker uses none"

#: What each forbidden address reason says, the graver first. The message
#: names no address: an agent must not learn what internal names resolve to.
_ADDRESS_KINDS: Final[Mapping[str, str]] = {
    "metadata_address": "a cloud metadata",
    "private_address": "a loopback, private or link-local",
}

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LINE_BREAK: Final = re.compile(r"[\r\n\x00]")
_NOT_FIELD_CHAR: Final = re.compile(r"[^\t\x20-\x7e]")
#: Longest client-chosen text shown inside a message.
_NAME_CHARS: Final = 128


class HttpRefused(Exception):
    """A brokered call refused, with a reason from :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown HTTP broker reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message


def clip(text: str, limit: int = _NAME_CHARS) -> str:
    """A name or value the agent chose, cut for a message (a header's name
    by default)."""
    return clip_text(text, limit)


def check_agent_headers(headers: object) -> tuple[tuple[str, str], ...]:
    """The agent's header map as pairs, or :class:`HttpRefused` naming the header and why."""
    if not isinstance(headers, Mapping):
        raise HttpRefused("bad_header", "headers must be a map of names to string values")
    return check_header_pairs(tuple(headers.items()), "header")


def check_credentialed_request(headers: Sequence[tuple[str, str]]) -> None:
    """Refuse the headers an agent may not set when credentials are injected."""
    for name, _ in headers:
        why = _NOT_WITH_CREDENTIALS.get(name.lower())
        if why is not None:
            raise HttpRefused(
                "forbidden_header",
                f"header {clip(name)} may not be set on a capability that carries "
                f"credentials: {why}",
            )


def check_credentialed_response(headers: Sequence[tuple[str, str]]) -> None:
    """Refuse a response with a content coding (a server that ignored the
    broker's ``Accept-Encoding: identity``) when credentials were injected:
    redaction sees only the bytes as they came."""
    for name, value in headers:
        if name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity"):
            raise HttpRefused(
                "encoded_response",
                f"the response is {clip(value)}-encoded, and the request carried credentials "
                "that redaction could not find in it",
            )


def check_header_pairs(pairs: Sequence[object], what: str) -> tuple[tuple[str, str], ...]:
    """Check names, values and bounds; ``what`` names the pairs in messages."""
    if len(pairs) > MAX_HEADERS:
        raise HttpRefused("headers_too_large", f"more than {MAX_HEADERS} {what}s")
    size = 0
    checked = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise HttpRefused("bad_header", f"a {what} must be a (name, value) pair")
        name, value = pair
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise HttpRefused(
                "bad_header", f"{what} name {clip(repr(name))} is not an RFC 9110 token"
            )
        lower = name.lower()
        why = _PROXY_WHY if lower.startswith(_PROXY_PREFIX) else _FORBIDDEN.get(lower)
        if why is not None:
            raise HttpRefused("forbidden_header", f"{what} {clip(name)} may not be set: {why}")
        if not isinstance(value, str):
            raise HttpRefused("bad_header", f"{what} {clip(name)}: the value must be a string")
        problem = _value_problem(value)
        if problem is not None:
            raise HttpRefused("bad_header", f"{what} {clip(name)}: {problem}")
        size += len(name) + len(value)
        checked.append((name, value))
    if size > MAX_HEADER_BYTES:
        raise HttpRefused("headers_too_large", f"{what}s take more than {MAX_HEADER_BYTES} bytes")
    return tuple(checked)


def _value_problem(value: str) -> str | None:
    """Why a value cannot be sent as it is (h11 would refuse it, or a server split it)."""
    if _LINE_BREAK.search(value):
        return "the value holds a CR, LF or NUL, which would split or end the header"
    if _NOT_FIELD_CHAR.search(value):
        return "the value holds a control or non-ASCII character"
    if value != value.strip(" \t"):
        return "the value starts or ends with whitespace"
    return None


def resolve_checked(target: ParsedURL, capability_host: str) -> list[IPAddress]:
    """Resolve ``target.host`` once; refuse unless every address may be reached.

    A loopback, private, link-local or metadata address is allowed only when
    ``capability_host`` (the capability's canonical host) is exactly that
    address; one address that is not allowed refuses the whole call, so a
    name cannot mix a public address with a private one.
    """
    if target.address is not None:
        addresses = [target.address]
    else:
        port = target.port or DEFAULT_PORTS[target.scheme]
        try:
            found = socket.getaddrinfo(target.host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            message = f"{target.host} did not resolve: {error.strerror}"
            raise HttpRefused("dns_failed", message) from None
        addresses = []
        for *_, sockaddr in found:
            address = parse_ip(str(sockaddr[0]))
            if address is not None and address not in addresses:
                addresses.append(address)
    if not addresses:
        raise HttpRefused("dns_failed", f"{target.host} resolved to no address")
    named = parse_ip(capability_host)
    reasons = {forbidden_reason(a) for a in addresses if a != named} - {None}
    for reason, kind in _ADDRESS_KINDS.items():
        if reason in reasons:
            message = f"{target.host} resolves to {kind} address, which a capability must name"
            raise HttpRefused(reason, message)
    return addresses
