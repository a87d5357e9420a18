"""The HTTP broker against real servers on loopback: each rule refuses, and its control works."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from capsup.supervisor.brokers.http import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    REASONS,
    HttpBroker,
    HttpCall,
    HttpLimits,
    HttpRefused,
    HttpResult,
    check_agent_headers,
    exchange,
    resolve_checked,
)
from capsup.validators.http import parse_url
from local_http import CHUNK, LocalServer, closed_port, gzip_bomb

LOOPBACK = ipaddress.ip_address("127.0.0.1")
#: Printable ASCII with both quotes and a backslash, so no quoting can hide it.
SECRET = "Bearer s3cr3t-'t0ken\"\\x"
INJECT = {"Authorization": SECRET}
LIMITS = HttpLimits(total_timeout=10.0)


# -- servers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    local = LocalServer()
    yield local
    local.close()


@pytest.fixture
def fresh() -> Iterator[LocalServer]:
    """A server of the test's own, whose connections it can count."""
    local = LocalServer()
    yield local
    local.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _tls_server(ca: trustme.CA, name: str) -> LocalServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    return LocalServer(tls=context)


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA) -> Iterator[LocalServer]:
    local = _tls_server(ca, "broker.test")
    yield local
    local.close()


@pytest.fixture(scope="module")
def wrong_name_server(ca: trustme.CA) -> Iterator[LocalServer]:
    local = _tls_server(ca, "other.test")
    yield local
    local.close()


@pytest.fixture
def broker(client_tls: ssl.SSLContext) -> Iterator[HttpBroker]:
    with HttpBroker(ssl_context=client_tls) as instance:
        yield instance


def call(url: str, method: str = "GET", **kwargs: Any) -> HttpCall:
    headers = check_agent_headers(kwargs.pop("headers", {}))
    return HttpCall(method, parse_url(url), headers, **kwargs)


def local(server: LocalServer, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
    return f"{scheme}://{host}:{server.port}{path}"


def echoed(result: HttpResult) -> dict[str, Any]:
    assert result.status == 200
    reply: dict[str, Any] = json.loads(result.body)
    return reply


def refusal(reason: str, run: Any, *args: Any, **kwargs: Any) -> HttpRefused:
    with pytest.raises(HttpRefused) as caught:
        run(*args, **kwargs)
    assert caught.value.reason == reason, caught.value.message
    assert caught.value.reason in REASONS
    return caught.value


# -- exchanges -------------------------------------------------------------------


def test_get_roundtrip(broker: HttpBroker, server: LocalServer) -> None:
    result = broker.exchange(
        call(local(server, "/echo/a?x=1&y=2"), headers={"X-Test": "yes"}),
        [LOOPBACK],
        inject={},
        limits=LIMITS,
    )
    reply = echoed(result)
    assert reply["method"] == "GET" and reply["path"] == "/echo/a?x=1&y=2"
    headers = [tuple(pair) for pair in reply["headers"]]
    assert headers[0] == ("Host", f"127.0.0.1:{server.port}")
    assert ("X-Test", "yes") in headers
    # No content coding is asked for unless the agent asks; no body, no length.
    assert ("Accept-Encoding", "identity") in headers
    assert not [name for name, _ in headers if name.lower() == "content-length"]


def test_post_roundtrip(broker: HttpBroker, server: LocalServer) -> None:
    body = bytes(range(256)) * 4
    result = broker.exchange(
        call(local(server, "/echo"), "POST", body=body), [LOOPBACK], inject={}, limits=LIMITS
    )
    reply = echoed(result)
    assert reply["method"] == "POST"
    assert reply["body"].encode("latin-1") == body
    assert ["Content-Length", str(len(body))] in reply["headers"]


def test_response_headers_in_order_with_duplicates(broker: HttpBroker, server: LocalServer) -> None:
    result = broker.exchange(call(local(server, "/dup")), [LOOPBACK], inject={}, limits=LIMITS)
    mine = [(n, v) for n, v in result.headers if n in ("X-Dup", "Set-Cookie")]
    assert mine == [
        ("X-Dup", "one"),
        ("Set-Cookie", "a=1"),
        ("X-Dup", "two"),
        ("Set-Cookie", "b=2"),
    ]
    assert result.body == b"dup"


def test_cookies_are_not_kept_between_calls(broker: HttpBroker, server: LocalServer) -> None:
    broker.exchange(call(local(server, "/dup")), [LOOPBACK], inject={}, limits=LIMITS)
    reply = echoed(
        broker.exchange(call(local(server, "/echo")), [LOOPBACK], inject={}, limits=LIMITS)
    )
    assert not [name for name, _ in reply["headers"] if name.lower() == "cookie"]


def test_redirect_is_returned_not_followed(broker: HttpBroker, fresh: LocalServer) -> None:
    result = broker.exchange(call(local(fresh, "/redirect")), [LOOPBACK], inject={}, limits=LIMITS)
    assert result.status == 302
    assert ("Location", "http://elsewhere.test/next") in result.headers
    assert result.body == b"moved"
    assert len(fresh.record.requests) == 1


def test_head_has_no_body(broker: HttpBroker, server: LocalServer) -> None:
    result = broker.exchange(
        call(local(server, "/dup"), "HEAD"), [LOOPBACK], inject={}, limits=LIMITS
    )
    assert result.status == 200 and result.body == b""
    assert ("Content-Length", "3") in result.headers


def test_module_exchange_uses_its_own_connections(
    server: LocalServer, client_tls: ssl.SSLContext
) -> None:
    result = exchange(
        call(local(server, "/echo")), [LOOPBACK], inject={}, limits=LIMITS, ssl_context=client_tls
    )
    assert echoed(result)["method"] == "GET"


# -- the agent's headers ---------------------------------------------------------

FORBIDDEN = [
    "Host",
    "connection",
    "Transfer-Encoding",
    "CONTENT-LENGTH",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Authorization",
    "proxy-connection",
]


@pytest.mark.parametrize("name", FORBIDDEN)
def test_hop_by_hop_and_framing_headers_refused(name: str) -> None:
    error = refusal("forbidden_header", check_agent_headers, {"X-Fine": "1", name: "v"})
    assert name in error.message and "may not be set" in error.message


def test_ordinary_headers_allowed() -> None:
    headers = {"X-Custom": "a b\tc", "Accept": "*/*", "Authorization": "", "Proxyish": "ok"}
    assert check_agent_headers(headers) == tuple(headers.items())


@pytest.mark.parametrize("name", ["bad name", "", "a:b", "ünï", "x\r\ny", 3, None])
def test_header_names_must_be_tokens(name: object) -> None:
    error = refusal("bad_header", check_agent_headers, {name: "v"})
    assert "token" in error.message


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("a\r\nX-Evil: 1", "CR, LF or NUL"),
        ("a\rb", "CR, LF or NUL"),
        ("a\nb", "CR, LF or NUL"),
        ("a\0b", "CR, LF or NUL"),
        ("a\x01b", "control or non-ASCII"),
        ("caf\u00e9", "control or non-ASCII"),
        (" padded", "whitespace"),
        ("padded\t", "whitespace"),
        (b"bytes", "string"),
    ],
)
def test_header_values_must_be_clean(value: object, why: str) -> None:
    error = refusal("bad_header", check_agent_headers, {"X-Value": value})
    assert "X-Value" in error.message and why in error.message
    assert not isinstance(value, str) or value not in error.message


def test_headers_must_be_a_map() -> None:
    refusal("bad_header", check_agent_headers, [("X-A", "1")])


def test_header_count_and_size_are_bounded() -> None:
    assert len(check_agent_headers({f"X-{i}": "v" for i in range(MAX_HEADERS)})) == MAX_HEADERS
    refusal(
        "headers_too_large", check_agent_headers, {f"X-{i}": "v" for i in range(MAX_HEADERS + 1)}
    )
    assert check_agent_headers({"X-Big": "v" * (MAX_HEADER_BYTES - 5)})
    refusal("headers_too_large", check_agent_headers, {"X-Big": "v" * (MAX_HEADER_BYTES - 4)})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_request_bytes": -1},
        {"max_response_bytes": 1.5},
        {"connect_timeout": 0},
        {"total_timeout": float("inf")},
    ],
)
def test_limits_must_be_sane(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        HttpLimits(**kwargs)


def test_a_call_checks_its_headers_again() -> None:
    refusal("forbidden_header", HttpCall, "GET", parse_url("http://a.test/"), (("Host", "b.test"),))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "CONNECT"},
        {"method": "get"},
        {"url": parse_url("http://*.a.test/", allow_wildcard=True)},
        {"body": "text"},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"timeout": True},
    ],
)
def test_malformed_calls_refused(kwargs: dict[str, Any]) -> None:
    fields = {"method": "GET", "url": parse_url("http://a.test/"), **kwargs}
    refusal("bad_request", HttpCall, **fields)


# -- credentials -----------------------------------------------------------------


def test_injected_header_replaces_the_agents(broker: HttpBroker, server: LocalServer) -> None:
    agent = {"authorization": "agent's own", "X-Agent": "1"}
    reply = echoed(
        broker.exchange(
            call(local(server, "/echo"), headers=agent), [LOOPBACK], inject=INJECT, limits=LIMITS
        )
    )
    names = [name.lower() for name, _ in reply["headers"]]
    assert [v for n, v in reply["headers"] if n.lower() == "authorization"] == [SECRET]
    assert names.index("authorization") > names.index("x-agent")  # added last


def test_injected_headers_are_checked_without_showing_values(
    broker: HttpBroker, server: LocalServer
) -> None:
    for inject, reason in (
        ({"Host": SECRET}, "forbidden_header"),
        ({"X-Key": SECRET + "\n"}, "bad_header"),
    ):
        error = refusal(
            reason,
            broker.exchange,
            call(local(server, "/echo")),
            [LOOPBACK],
            inject=inject,
            limits=LIMITS,
        )
        assert "injected header" in error.message and SECRET not in error.message


#: Failures after the secret was added: reason, route, limits (the TLS case
#: goes to a certificate for another name).
AFTER_INJECTION: dict[str, tuple[str, str, HttpLimits]] = {
    "drip": ("timeout", "/drip", HttpLimits(total_timeout=0.3)),
    "big": ("response_too_large", "/bytes?n=5000", HttpLimits(max_response_bytes=1000)),
    "tls": ("tls_error", "/echo", LIMITS),
    "broken-status": ("protocol_error", "/broken-status", LIMITS),
    "cut": ("protocol_error", "/cut", LIMITS),
    "reset": ("connection_lost", "/reset", LIMITS),
}


@pytest.mark.parametrize("case", list(AFTER_INJECTION))
def test_injected_value_never_in_an_error(
    case: str, broker: HttpBroker, server: LocalServer, tls_server: LocalServer
) -> None:
    reason, path, limits = AFTER_INJECTION[case]
    url = local(tls_server, path, "other.test", "https") if case == "tls" else local(server, path)
    error = refusal(reason, broker.exchange, call(url), [LOOPBACK], inject=INJECT, limits=limits)
    texts = [str(error), repr(error), error.message, "".join(traceback.format_exception(error))]
    for text in texts:
        for part in (SECRET, "s3cr3t", "t0ken"):
            assert part not in text, (case, text)


def test_injected_values_are_redacted_from_messages() -> None:
    port = closed_port()
    error = refusal(
        "connect_failed",
        exchange,
        call(f"http://127.0.0.1:{port}/"),
        [LOOPBACK],
        inject={"X-Key": "127.0.0.1"},
        limits=LIMITS,
    )
    assert error.message.startswith(f"could not connect to [redacted]:{port}"), error.message


def test_server_quoting_the_secret_is_scrubbed(broker: HttpBroker, server: LocalServer) -> None:
    # The status line quotes the secret back; h11's error would show it.
    seen_before = len(server.record.requests)
    error = refusal(
        "protocol_error",
        broker.exchange,
        call(local(server, "/broken-status")),
        [LOOPBACK],
        inject=INJECT,
        limits=LIMITS,
    )
    assert server.record.requests[seen_before].header("Authorization") == [SECRET]
    assert "illegal status line" in error.message


# -- sizes -----------------------------------------------------------------------


def test_request_body_bounded(broker: HttpBroker, fresh: LocalServer) -> None:
    limits = HttpLimits(max_request_bytes=100)
    ok = broker.exchange(
        call(local(fresh, "/echo"), "PUT", body=b"x" * 100), [LOOPBACK], inject={}, limits=limits
    )
    assert echoed(ok)["method"] == "PUT"
    refusal(
        "request_too_large",
        broker.exchange,
        call(local(fresh, "/echo"), "PUT", body=b"x" * 101),
        [LOOPBACK],
        inject={},
        limits=limits,
    )
    assert len(fresh.record.requests) == 1  # the refused body was never sent


@pytest.mark.parametrize("chunked", ["", "&chunked=1"])
def test_response_body_bounded_exactly(
    broker: HttpBroker, server: LocalServer, chunked: str
) -> None:
    limits = HttpLimits(max_response_bytes=1000)
    url = local(server, f"/bytes?n=1000{chunked}")
    assert broker.exchange(call(url), [LOOPBACK], inject={}, limits=limits).body == b"x" * 1000
    url = local(server, f"/bytes?n=1001{chunked}")
    error = refusal(
        "response_too_large", broker.exchange, call(url), [LOOPBACK], inject={}, limits=limits
    )
    assert "larger than 1000 bytes" in error.message


@pytest.mark.parametrize("chunked", ["", "&chunked=1"])
def test_large_response_read_is_bounded(
    broker: HttpBroker, server: LocalServer, chunked: str
) -> None:
    cap = 1 << 20
    url = local(server, f"/bytes?n={10 << 20}{chunked}")
    tracemalloc.start()
    try:
        refusal(
            "response_too_large",
            broker.exchange,
            call(url),
            [LOOPBACK],
            inject={},
            limits=HttpLimits(max_response_bytes=cap),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The kept body (at most the cap), a read or two in h11's buffer and the
    # server thread's own chunks (about 1.4 MiB in all): far from the 10 MiB sent.
    assert peak < cap + 16 * CHUNK, peak


def test_gzip_bomb_is_delivered_compressed_and_capped(
    broker: HttpBroker, server: LocalServer
) -> None:
    bomb = gzip_bomb(64)  # 64 MiB of zeros in about 64 KiB
    limits = HttpLimits(max_response_bytes=len(bomb))
    asked = call(local(server, "/gzip-bomb?mib=64"), headers={"Accept-Encoding": "gzip"})
    result = broker.exchange(asked, [LOOPBACK], inject={}, limits=limits)
    assert result.body == bomb  # never inflated by the broker
    assert ("Content-Encoding", "gzip") in result.headers
    small = HttpLimits(max_response_bytes=len(bomb) - 1)
    refusal("response_too_large", broker.exchange, asked, [LOOPBACK], inject={}, limits=small)


# -- time ------------------------------------------------------------------------


def test_slow_drip_body_hits_the_total_deadline(broker: HttpBroker, server: LocalServer) -> None:
    start = time.monotonic()
    error = refusal(
        "timeout",
        broker.exchange,
        call(local(server, "/drip"), timeout=0.5),
        [LOOPBACK],
        inject={},
        limits=LIMITS,
    )
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 1.0, elapsed
    assert "within 0.5 s" in error.message


def test_limits_cap_the_agents_timeout(broker: HttpBroker, server: LocalServer) -> None:
    start = time.monotonic()
    refusal(
        "timeout",
        broker.exchange,
        call(local(server, "/drip"), timeout=60),
        [LOOPBACK],
        inject={},
        limits=HttpLimits(total_timeout=0.3),
    )
    assert time.monotonic() - start < 0.8


def test_connect_refused() -> None:
    port = closed_port()
    error = refusal(
        "connect_failed",
        exchange,
        call(f"http://127.0.0.1:{port}/"),
        [LOOPBACK],
        inject={},
        limits=LIMITS,
    )
    assert f"127.0.0.1:{port}" in error.message and "refused" in error.message


def test_first_address_that_connects_is_used(broker: HttpBroker, fresh: LocalServer) -> None:
    # Nothing listens on 127.0.0.2 at this port: the broker moves on to 127.0.0.1.
    addresses = [ipaddress.ip_address("127.0.0.2"), LOOPBACK]
    result = broker.exchange(
        call(local(fresh, "/echo", "two.test")), addresses, inject={}, limits=LIMITS
    )
    assert echoed(result)["method"] == "GET"


# -- addresses ---------------------------------------------------------------------


def _loopback_names() -> list[str]:
    """Real names this machine resolves to loopback only (``/etc/hosts``)."""
    names = []
    for name in ("localhost", socket.gethostname()):
        try:
            found = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
        except OSError:
            continue
        if found and all(ipaddress.ip_address(a).is_loopback for a in found):
            names.append(name)
    return names


@pytest.mark.parametrize("name", _loopback_names())
def test_name_resolving_to_loopback_needs_the_exact_literal(name: str) -> None:
    target = parse_url(f"http://{name}:8080/")
    for capability_host in (target.host, "example.com", "127.0.0.2"):
        error = refusal("private_address", resolve_checked, target, capability_host)
        assert target.host in error.message and "127.0.0.1" not in error.message
    found = {
        ipaddress.ip_address(i[4][0]) for i in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    }
    if len(found) == 1:  # one address: a capability naming it reaches it
        (address,) = found
        literal = f"[{address}]" if address.version == 6 else str(address)
        assert resolve_checked(target, literal) == [address]


def test_ip_literal_allowed_only_when_named() -> None:
    target = parse_url("http://127.0.0.1:8080/x")
    assert resolve_checked(target, "127.0.0.1") == [LOOPBACK]
    refusal("private_address", resolve_checked, target, "example.com")
    v6 = parse_url("http://[::1]:8080/")
    assert resolve_checked(v6, "[::1]") == [ipaddress.ip_address("::1")]
    refusal("private_address", resolve_checked, v6, "127.0.0.1")


def test_metadata_address_refused_unless_named() -> None:
    target = parse_url("http://169.254.169.254/latest/meta-data")
    refusal("metadata_address", resolve_checked, target, "example.com")
    assert resolve_checked(target, "169.254.169.254") == [ipaddress.ip_address("169.254.169.254")]
    mapped = parse_url("http://[::ffff:169.254.169.254]/")
    refusal("metadata_address", resolve_checked, mapped, "example.com")


def test_public_literal_needs_no_naming() -> None:
    target = parse_url("https://93.184.216.34/")
    assert resolve_checked(target, "example.com") == [ipaddress.ip_address("93.184.216.34")]


def test_unresolvable_name() -> None:
    error = refusal(
        "dns_failed", resolve_checked, parse_url("http://nothing.invalid/"), "nothing.invalid"
    )
    assert "nothing.invalid" in error.message


def test_no_dns_between_check_and_use(broker: HttpBroker, fresh: LocalServer) -> None:
    """The host name goes in Host; the connection goes only to the given address."""
    url = local(fresh, "/echo", "rebind.test")
    reply = echoed(broker.exchange(call(url), [LOOPBACK], inject={}, limits=LIMITS))
    assert ["Host", f"rebind.test:{fresh.port}"] in reply["headers"]
    assert fresh.record.connections == 1


def test_ipv6_literal(broker: HttpBroker) -> None:
    try:
        v6 = LocalServer("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        url = f"http://[::1]:{v6.port}/echo"
        addresses = resolve_checked(parse_url(url), "[::1]")
        reply = echoed(broker.exchange(call(url), addresses, inject={}, limits=LIMITS))
        assert ["Host", f"[::1]:{v6.port}"] in reply["headers"]
    finally:
        v6.close()


def test_no_checked_address_no_request(broker: HttpBroker, fresh: LocalServer) -> None:
    refusal(
        "dns_failed", broker.exchange, call(local(fresh, "/echo")), [], inject={}, limits=LIMITS
    )
    assert fresh.record.connections == 0


# -- TLS -------------------------------------------------------------------------


def test_tls_verified_against_the_url_host(broker: HttpBroker, tls_server: LocalServer) -> None:
    url = local(tls_server, "/echo", "broker.test", "https")
    reply = echoed(broker.exchange(call(url), [LOOPBACK], inject={}, limits=LIMITS))
    assert ["Host", f"broker.test:{tls_server.port}"] in reply["headers"]
    assert "broker.test" in tls_server.record.sni


def test_tls_certificate_for_another_name(
    broker: HttpBroker, wrong_name_server: LocalServer
) -> None:
    url = local(wrong_name_server, "/echo", "broker.test", "https")
    error = refusal("tls_error", broker.exchange, call(url), [LOOPBACK], inject={}, limits=LIMITS)
    assert "broker.test" in error.message and "mismatch" in error.message.lower()


def test_tls_unknown_ca_refused_by_system_roots(
    tls_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    url = local(tls_server, "/echo", "broker.test", "https")
    with HttpBroker() as system_roots:
        error = refusal(
            "tls_error", system_roots.exchange, call(url), [LOOPBACK], inject={}, limits=LIMITS
        )
    assert "certificate" in error.message


def test_tls_honours_ssl_cert_file(
    tls_server: LocalServer, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    url = local(tls_server, "/echo", "broker.test", "https")
    with HttpBroker() as operator_roots:
        assert (
            operator_roots.exchange(call(url), [LOOPBACK], inject={}, limits=LIMITS).status == 200
        )


def test_tls_context_must_verify() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    with pytest.raises(ValueError, match="verify"):
        HttpBroker(ssl_context=context)


def test_plain_http_to_a_tls_server_is_a_protocol_failure(
    broker: HttpBroker, tls_server: LocalServer
) -> None:
    with pytest.raises(HttpRefused) as caught:
        broker.exchange(
            call(local(tls_server, "/echo", "broker.test")), [LOOPBACK], inject={}, limits=LIMITS
        )
    assert caught.value.reason in {"protocol_error", "connection_lost"}


# -- the pool --------------------------------------------------------------------


def test_calls_reuse_one_connection(broker: HttpBroker, fresh: LocalServer) -> None:
    for _ in range(3):
        echoed(
            broker.exchange(
                call(local(fresh, "/echo", "pool.test")), [LOOPBACK], inject={}, limits=LIMITS
            )
        )
    assert fresh.record.connections == 1 and len(fresh.record.requests) == 3


def test_tls_calls_reuse_one_connection(broker: HttpBroker, ca: trustme.CA) -> None:
    own = _tls_server(ca, "broker.test")
    try:
        for _ in range(3):
            url = local(own, "/echo", "broker.test", "https")
            echoed(broker.exchange(call(url), [LOOPBACK], inject={}, limits=LIMITS))
        assert own.record.connections == 1
    finally:
        own.close()


def _pair_on_one_port() -> tuple[LocalServer, LocalServer]:
    """Servers on 127.0.0.1 and 127.0.0.2 at the same port."""
    for _ in range(20):
        first = LocalServer("127.0.0.1")
        try:
            return first, LocalServer("127.0.0.2", first.port)
        except OSError:
            first.close()
    pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")


def test_pool_is_keyed_by_the_checked_address(broker: HttpBroker) -> None:
    one, two = _pair_on_one_port()
    try:
        url = f"http://pool.test:{one.port}/echo"
        for address in ("127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"):
            broker.exchange(call(url), [ipaddress.ip_address(address)], inject={}, limits=LIMITS)
        assert (one.record.connections, len(one.record.requests)) == (1, 2)
        assert (two.record.connections, len(two.record.requests)) == (1, 2)
    finally:
        one.close()
        two.close()


def test_connections_are_never_shared_between_partitions(
    broker: HttpBroker, fresh: LocalServer
) -> None:
    """Two callers (agents, or one agent's two sets of credentials) never
    share a connection, so bytes a server leaves on one after a response
    can never be read as another's response."""
    url = local(fresh, "/echo", "127.0.0.1")
    for partition in ("agent-a|", "agent-b|", "agent-a|", "agent-b|"):
        broker.exchange(call(url), [LOOPBACK], inject={}, limits=LIMITS, partition=partition)
    assert (fresh.record.connections, len(fresh.record.requests)) == (2, 4)


def test_pools_are_bounded(client_tls: ssl.SSLContext, fresh: LocalServer) -> None:
    with HttpBroker(ssl_context=client_tls, max_pools=1) as small:
        for host in ("a.test", "b.test", "a.test"):
            echoed(
                small.exchange(
                    call(local(fresh, "/echo", host)), [LOOPBACK], inject={}, limits=LIMITS
                )
            )
    # a.test's pool was closed when b.test's came, so a.test connected again.
    assert fresh.record.connections == 3


def test_closed_broker_refuses_new_calls(client_tls: ssl.SSLContext, server: LocalServer) -> None:
    instance = HttpBroker(ssl_context=client_tls)
    instance.close()
    with pytest.raises(RuntimeError, match="closed"):
        instance.exchange(call(local(server, "/echo")), [LOOPBACK], inject={}, limits=LIMITS)


def test_threads_share_one_broker(broker: HttpBroker, fresh: LocalServer) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(10):
                url = local(fresh, f"/echo?i={i}", "threads.test")
                echoed(broker.exchange(call(url), [LOOPBACK], inject={}, limits=LIMITS))
        except BaseException as error:  # reported below, on the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(fresh.record.requests) == 80
    assert fresh.record.connections <= 8


def test_a_body_in_too_many_pieces_is_refused(broker: HttpBroker, fresh: LocalServer) -> None:
    """A byte a chunk costs an event and an object each: past MAX_BODY_PIECES
    the response is refused, though small; a few thousand chunks pass."""
    fine = broker.exchange(
        call(local(fresh, "/tiny-chunks?n=4000")), [LOOPBACK], inject={}, limits=LIMITS
    )
    assert fine.body == b"x" * 4000
    with pytest.raises(HttpRefused) as refused:
        broker.exchange(
            call(local(fresh, "/tiny-chunks?n=20000")), [LOOPBACK], inject={}, limits=LIMITS
        )
    assert refused.value.reason == "protocol_error"
    assert "pieces" in refused.value.message
