"""The ``http://`` and ``https://`` validator, and the one URL parser of capsup.

:func:`parse_url` is the only way capsup reads a URL: the validator checks
what it returns and the supervisor's broker makes the request from the same
:class:`ParsedURL`, so validation and use can never disagree about the host.
It wraps ada-url, the WHATWG parser of Node.js and browsers, which folds case,
IDNA, trailing dots, default ports, dot segments (also ``%2e%2e``) and every
IPv4 spelling. Around it we refuse what WHATWG silently repairs and servers
may read differently: userinfo, backslashes, whitespace and control
characters, encoded separators, double encoding and ``..;`` segments.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import ada_url
from capsup.validators._common import (
    Normalizer,
    bad_size,
    has_control_char,
    positive_int,
    positive_number,
)
from capsup.validators._scheme import SchemeValidator
from capsup.validators.base import (
    ALLOW,
    ConstraintError,
    Decision,
    Refusal,
    ResourceError,
    Use,
    deny,
)
from capsup.validators.ipaddrs import (
    IPAddress,
    forbidden_hostname_reason,
    forbidden_reason,
    parse_ip,
)

__all__ = ["MAX_URL_LENGTH", "HttpValidator", "ParsedURL", "URLError", "parse_url"]

#: Longer URLs are refused; most servers stop at 8 KiB of request line.
MAX_URL_LENGTH = 8192

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_WHITESPACE = re.compile(r"\s")  # Unicode whitespace, the characters str.isspace() names
_AUTHORITY_END = re.compile(r"[/?#]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9A-F]|7F)")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ATTRIBUTES = ("protocol", "username", "password", "hostname", "port", "pathname", "search")
#: Methods whose requests carry a body, so ``max_bytes`` needs its size.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class URLError(Refusal):
    """A URL is refused; ``reason`` is the validator's reason code."""


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A URL as capsup understands it, in canonical form.

    ``host`` is lower-case ASCII without a trailing dot; an IP literal is in
    its canonical spelling (IPv6 in brackets, IPv4-mapped IPv6 as IPv4) and
    ``address`` holds it. ``wildcard`` marks a capability host ``*.host``.
    ``port`` is ``None`` for the scheme's default port. ``path`` starts with
    ``/`` and has unreserved characters decoded and other escapes upper-cased.
    """

    scheme: str
    host: str
    port: int | None
    path: str
    query: str = ""
    address: IPAddress | None = None
    wildcard: bool = False

    @property
    def authority(self) -> str:
        host = ("*." + self.host) if self.wildcard else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def href(self) -> str:
        """The URL to request (or, for a capability, its canonical resource)."""
        return f"{self.scheme}://{self.authority}{self.path}{self.query}"


def parse_url(url: object, *, allow_wildcard: bool = False) -> ParsedURL:
    """Parse an ``http``/``https`` URL strictly; raises :class:`URLError`.

    A fragment is dropped (it is never sent); a query is kept for requests.
    ``allow_wildcard`` admits a host ``*.example.com`` (capabilities only).
    """
    if not isinstance(url, str):
        raise URLError("bad_url", "a URL must be a string")
    if len(url) > MAX_URL_LENGTH:
        raise URLError("url_too_long", f"the URL is longer than {MAX_URL_LENGTH}")
    if has_control_char(url):
        raise URLError("control_character", "control character in the URL")
    if _WHITESPACE.search(url):
        raise URLError("whitespace", "whitespace in the URL")
    if "\\" in url:
        raise URLError("backslash", "backslash in the URL")
    match = _SCHEME.match(url)
    if match is None or match.group(1).lower() not in _DEFAULT_PORTS:
        raise URLError("bad_scheme", "only http and https URLs")
    scheme = match.group(1).lower()
    rest = url[match.end() :]
    if not rest.startswith("//"):
        raise URLError("bad_url", "expected // after the scheme")
    authority = _AUTHORITY_END.split(rest[2:], maxsplit=1)[0]
    wildcard = allow_wildcard and authority.startswith("*.")
    if wildcard:
        authority = authority[2:]
        url = f"{scheme}://{rest[4:]}"
    _check_authority(authority)
    try:
        parts = ada_url.parse_url(url, attributes=_ATTRIBUTES)
    except ValueError:
        raise URLError("bad_url", "not a valid URL") from None
    if parts["protocol"] != scheme + ":":
        raise URLError("bad_scheme", "the scheme changed while parsing")
    if parts["username"] or parts["password"]:
        raise URLError("userinfo", "a URL may not carry a user or password")
    host, address = _canonical_host(parts["hostname"], wildcard)
    port = int(parts["port"]) if parts["port"] else None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    path = _normalize_path(parts["pathname"])
    return ParsedURL(scheme, host, port, path, parts["search"], address, wildcard)


def _check_authority(authority: str) -> None:
    """Refuse what the authority must not hold before WHATWG repairs it."""
    if "@" in authority:
        raise URLError("userinfo", "a URL may not carry a user or password")
    if authority.startswith("["):
        host, _, tail = authority.partition("]")
        if not tail.startswith(":") and tail:
            raise URLError("bad_url", "junk after an IPv6 literal")
        port = tail[1:]
    else:
        host, _, port = authority.partition(":")
    if not host:
        raise URLError("empty_host", "the URL has no host")
    if port and (not port.isascii() or not port.isdigit() or not 0 < int(port) <= 65535):
        raise URLError("bad_port", "the port must be a number from 1 to 65535")


def _canonical_host(hostname: str, wildcard: bool) -> tuple[str, IPAddress | None]:
    address = parse_ip(hostname)
    if address is not None:
        if wildcard:
            raise URLError("bad_host", "a wildcard needs a domain name, not an address")
        text = str(address)
        return (f"[{text}]" if address.version == 6 else text), address
    host = hostname[:-1] if hostname.endswith(".") else hostname
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise URLError("bad_host", f"not a valid host name: {hostname[:100]!r}")
    if wildcard and len(labels) < 2:
        raise URLError("bad_host", "a wildcard must stand for a label under a domain: *.a.b")
    return host, None


def _normalize_path(path: str) -> str:
    """Decode unreserved escapes, upper-case the others, refuse ambiguous segments.

    An encoded ``/`` or ``\\``, a doubly encoded dot or separator, a ``..;``
    segment, an overlong UTF-8 dot (``%c0%ae``) and a fullwidth dot or
    solidus (``%EF%BC%8E``, which NFKC folds to ``.``) are read as separators
    or parent steps by some servers and proxies (Tomcat, Spring, IIS) but not
    by us, which would let a request leave the prefix it was checked against.
    """
    if "%" in path:
        path = _ESCAPE.sub(_fold_escape, path)
        upper = path.upper()
        if "%2F" in upper or "%5C" in upper:
            raise URLError("encoded_separator", "an encoded / or \\ in the path")
        if "%252E" in upper or "%252F" in upper or "%255C" in upper:
            raise URLError("double_encoding", "a doubly encoded dot or separator")
        if _ENCODED_CONTROL.search(upper):
            raise URLError("control_character", "an encoded control character in the path")
        for segment in path.split("/"):
            if "%" in segment:
                _check_decoded_segment(segment)
    if "." in path:
        for segment in path.split("/"):
            if segment.split(";", 1)[0] in (".", ".."):
                raise URLError("dot_segment", "a dot segment left in the path")
    return path


def _check_decoded_segment(segment: str) -> None:
    """Refuse a segment whose decoded, NFKC-folded text is a separator or dot step."""
    try:
        decoded = urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise URLError("bad_encoding", "percent-encoding is not valid UTF-8") from None
    if has_control_char(decoded):
        raise URLError("control_character", "an encoded control character in the path")
    folded = unicodedata.normalize("NFKC", decoded)
    if "/" in folded or "\\" in folded:
        raise URLError("encoded_separator", "an encoded character that folds to / or \\")
    if folded.split(";", 1)[0] in (".", ".."):
        raise URLError("dot_segment", "an encoded segment that folds to a dot step")


def _fold_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


@functools.lru_cache(maxsize=1024)
def _capability(resource: str) -> ParsedURL:
    """A canonical capability resource, parsed once."""
    return parse_url(resource, allow_wildcard=True)


def _host_within(inner: ParsedURL, outer: ParsedURL) -> bool:
    """Exact host, or ``*.b.c`` containing ``a.b.c`` and ``*.a.b.c`` (never ``b.c``)."""
    if not outer.wildcard:
        return not inner.wildcard and inner.host == outer.host
    if inner.address is not None:
        return False
    if inner.wildcard and inner.host == outer.host:
        return True
    return inner.host.endswith("." + outer.host)


def _path_within(inner: str, outer: str) -> bool:
    """Segment-wise prefix: ``/repos`` holds ``/repos`` and ``/repos/x``, not ``/repository``."""
    if outer == "/":
        return True
    return inner == outer or inner.startswith(outer + "/")


def _rate_limit(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) != {"requests", "per_seconds"}:
        raise ConstraintError("rate_limit must be a map {requests, per_seconds}")
    return {
        "per_seconds": positive_number("rate_limit.per_seconds", value["per_seconds"]),
        "requests": positive_int("rate_limit.requests", value["requests"]),
    }


def _meet_rate(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """Fewer requests over a longer window: stricter than both sides."""
    return {
        "per_seconds": max(first["per_seconds"], second["per_seconds"]),
        "requests": min(first["requests"], second["requests"]),
    }


_MEET: Mapping[str, Callable[[Any, Any], Any]] = {"rate_limit": _meet_rate, "max_bytes": min}
_NORMALIZERS: Mapping[str, Normalizer] = {
    "rate_limit": lambda key, value: _rate_limit(value),
    "max_bytes": positive_int,
}


class HttpValidator(SchemeValidator):
    """Requests to a host (or ``*.domain``), port and path prefix, by method."""

    schemes: ClassVar[frozenset[str]] = frozenset({"http", "https"})
    operations: ClassVar[frozenset[str]] = frozenset(
        {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
    )
    kind: ClassVar[str] = "http"
    fold_operation = staticmethod(str.upper)
    constraint_normalizers = _NORMALIZERS
    constraint_meets = _MEET

    # -- the algebra -----------------------------------------------------------

    def canonical_resource(self, uri: str) -> str:
        """``scheme://host[:port]/path``; no query, fragment or userinfo."""
        if not isinstance(uri, str):
            raise ResourceError("an http resource must be a URL string")
        if "?" in uri or "#" in uri:
            raise ResourceError("an http resource may not have a query or fragment")
        try:
            parsed = parse_url(uri, allow_wildcard=True)
        except URLError as error:
            raise ResourceError(f"bad http resource ({error.reason}): {error}") from None
        path = parsed.path.rstrip("/") or "/"
        return f"{parsed.scheme}://{parsed.authority}{path}"

    def resource_within(self, inner: str, outer: str) -> bool:
        a, b = _capability(inner), _capability(outer)
        return (
            a.scheme == b.scheme
            and a.port == b.port
            and _host_within(a, b)
            and _path_within(a.path, b.path)
        )

    # -- one use -----------------------------------------------------------------

    def decide(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        if use.operation not in self.operations:
            return deny("unknown_operation", f"{use.operation!r} is not an HTTP method")
        if bad_size(use.size):
            return deny("bad_size", "size must be a non-negative integer")
        target = parse_url(use.target)
        cap = _capability(resource)
        if target.host != cap.host or cap.wildcard:
            reason = (
                forbidden_reason(target.address)
                if target.address is not None
                else forbidden_hostname_reason(target.host)
            )
            if reason is not None:
                return deny(reason, f"{target.host} must be named exactly by the capability")
        if target.scheme != cap.scheme:
            return deny("scheme_mismatch", f"{target.scheme} is not {cap.scheme}")
        if not _host_within(target, cap):
            return deny("host_mismatch", f"{target.host} is not within {cap.authority}")
        if target.port != cap.port:
            return deny("port_mismatch", "the port differs from the capability's")
        if not _path_within(target.path, cap.path):
            return deny("path_outside", f"{target.path[:200]} is not within {cap.path}")
        max_bytes = constraints.get("max_bytes")
        if max_bytes is not None:
            if use.size is None:
                if use.operation in _BODY_METHODS:
                    return deny("size_unknown", "max_bytes needs the size of the body")
            elif use.size > max_bytes:
                return deny("too_large", f"{use.size} bytes is more than max_bytes {max_bytes}")
        return ALLOW
