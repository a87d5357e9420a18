"""Adversarial corpus for the http(s):// validator: SSRF and parser confusion."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from capsup.validators import HttpValidator, ResourceError, Use
from capsup.validators.http import URLError, parse_url
from capsup.validators.ipaddrs import embedded_ipv4, forbidden_reason

HTTP = HttpValidator()
ALLOW = "allow"
API = "https://api.example.com/repos"
WILD = "https://*.example.com"
LOOP = "http://127.0.0.1:8080"
META = "http://169.254.169.254/latest/meta-data"

# (capability, method, target, constraints, size, expected decision or reason)
CASES: list[tuple[str, str, object, dict[str, Any], int | None, str]] = [
    # -- inside, after normalization -----------------------------------------
    (API, "GET", "https://api.example.com/repos", {}, None, ALLOW),
    (API, "GET", "https://api.example.com/repos/", {}, None, ALLOW),
    (API, "GET", "https://api.example.com/repos/a/b?page=2&q=x", {}, None, ALLOW),
    (API, "GET", "HTTPS://API.EXAMPLE.COM/repos/x", {}, None, ALLOW),
    (API, "GET", "https://api.example.com:443/repos/x", {}, None, ALLOW),
    (API, "GET", "https://api.example.com./repos/x", {}, None, ALLOW),
    (API, "GET", "https://api.example.com/repos/./x", {}, None, ALLOW),
    (API, "GET", "https://api.example.com/other/../repos/x", {}, None, ALLOW),
    (API, "GET", "https://api.example.com/repos/x#frag", {}, None, ALLOW),
    (API, "GET", "https://api.example.com/%72%65pos/x", {}, None, ALLOW),
    (API, "GET", "https://api\u3002example\uff0ecom/repos", {}, None, ALLOW),  # unicode dots
    (API, "GET", "https://api.example.com/repos/x;v=1", {}, None, ALLOW),
    (API, "POST", "https://api.example.com/repos", {"max_bytes": 100}, 10, ALLOW),
    (API, "GET", "https://api.example.com/repos", {"max_bytes": 100}, None, ALLOW),
    (WILD, "GET", "https://a.example.com/x", {}, None, ALLOW),
    (WILD, "GET", "https://a.b.example.com/", {}, None, ALLOW),
    (WILD, "GET", "https://A.Example.COM./", {}, None, ALLOW),
    (WILD, "GET", "https://b\u00fccher.example.com/", {}, None, ALLOW),  # IDNA
    (LOOP, "GET", "http://127.0.0.1:8080/x", {}, None, ALLOW),
    (LOOP, "GET", "http://2130706433:8080/", {}, None, ALLOW),
    (LOOP, "GET", "http://0x7f.0.0.1:8080/", {}, None, ALLOW),
    (LOOP, "GET", "http://0177.0.0.1:8080/", {}, None, ALLOW),
    (LOOP, "GET", "http://127.1:8080/", {}, None, ALLOW),
    (LOOP, "GET", "http://[::ffff:127.0.0.1]:8080/", {}, None, ALLOW),
    (META, "GET", "http://169.254.169.254/latest/meta-data/iam", {}, None, ALLOW),
    # -- path prefix ---------------------------------------------------------
    (API, "GET", "https://api.example.com/repository", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com/repos-evil", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com/", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com/Repos", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com/repos/../admin", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com/repos/%2e%2e/admin", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com/repos/.%2E/admin", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com//repos", {}, None, "path_outside"),
    (API, "GET", "https://api.example.com/repos/..%2fadmin", {}, None, "encoded_separator"),
    (API, "GET", "https://api.example.com/repos%2F..%2Fadmin", {}, None, "encoded_separator"),
    (API, "GET", "https://api.example.com/repos/..%5cadmin", {}, None, "encoded_separator"),
    (API, "GET", "https://api.example.com/repos/%252e%252e/admin", {}, None, "double_encoding"),
    (API, "GET", "https://api.example.com/repos/%25%32%65%25%32%65/x", {}, None, "double_encoding"),
    (API, "GET", "https://api.example.com/repos/%252f/x", {}, None, "double_encoding"),
    (API, "GET", "https://api.example.com/repos/..;/admin", {}, None, "dot_segment"),
    (API, "GET", "https://api.example.com/repos/x/..;a=b/y", {}, None, "dot_segment"),
    (API, "GET", "https://api.example.com/repos/%00", {}, None, "control_character"),
    (API, "GET", "https://api.example.com/repos/%c2%85", {}, None, "control_character"),
    (API, "GET", "https://api.example.com/repos/%c0%ae%c0%ae/admin", {}, None, "bad_encoding"),
    (API, "GET", "https://api.example.com/repos/%ff/admin", {}, None, "bad_encoding"),
    (API, "GET", "https://api.example.com/repos/\uff0e\uff0e/admin", {}, None, "dot_segment"),
    (API, "GET", "https://api.example.com/repos/%ef%bc%8e./admin", {}, None, "dot_segment"),
    (API, "GET", "https://api.example.com/repos/..\uff0fadmin", {}, None, "encoded_separator"),
    (API, "GET", "https://api.example.com/repos/caf%C3%A9", {}, None, ALLOW),
    (API, "GET", "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", {}, None, "private_address"),
    (API, "GET", "http://\u2460\u2461\u2466.0.0.1/", {}, None, "private_address"),
    (API, "GET", "http://[::ffff:0:127.0.0.1]/", {}, None, "private_address"),
    # -- authority confusion --------------------------------------------------
    (API, "GET", "https://api.example.com\\@evil.com/repos", {}, None, "backslash"),
    (API, "GET", "https://api.example.com/repos\\..\\admin", {}, None, "backslash"),
    (API, "GET", "https://evil.com\\api.example.com/repos", {}, None, "backslash"),
    (API, "GET", "https://api.example.com@evil.com/repos", {}, None, "userinfo"),
    (API, "GET", "https://user:pass@api.example.com/repos", {}, None, "userinfo"),
    (API, "GET", "https://api.example.com:443@evil.com/repos", {}, None, "userinfo"),
    (API, "GET", "https://evil.com#@api.example.com/repos", {}, None, "host_mismatch"),
    (API, "GET", "https://evil.com?@api.example.com/repos", {}, None, "host_mismatch"),
    (API, "GET", "https://api.example.com.evil.com/repos", {}, None, "host_mismatch"),
    (API, "GET", "https://evilapi.example.com/repos", {}, None, "host_mismatch"),
    (API, "GET", "https://8.8.8.8/repos", {}, None, "host_mismatch"),
    (API, "GET", "http://api.example.com/repos", {}, None, "scheme_mismatch"),
    (API, "GET", "ftp://api.example.com/repos", {}, None, "bad_scheme"),
    (API, "GET", "javascript:alert(1)", {}, None, "bad_scheme"),
    (API, "GET", "file:///etc/passwd", {}, None, "bad_scheme"),
    (API, "GET", "gopher://127.0.0.1:25/", {}, None, "bad_scheme"),
    (API, "GET", "//api.example.com/repos", {}, None, "bad_scheme"),
    (API, "GET", "https:api.example.com/repos", {}, None, "bad_url"),
    (API, "GET", "https:/api.example.com/repos", {}, None, "bad_url"),
    (API, "GET", "https:///api.example.com/repos", {}, None, "empty_host"),
    (API, "GET", "https://:443/repos", {}, None, "empty_host"),
    (API, "GET", "https://[::1/repos", {}, None, "bad_url"),
    (API, "GET", "https://api.example.com:8443/repos", {}, None, "port_mismatch"),
    (API, "GET", "https://api.example.com:0/repos", {}, None, "bad_port"),
    (API, "GET", "https://api.example.com:65536/repos", {}, None, "bad_port"),
    (API, "GET", "https://api.example.com:-1/repos", {}, None, "bad_port"),
    (API, "GET", "https://api.example.com:1e3/repos", {}, None, "bad_port"),
    (API, "GET", "https://api.example.com:\uff18\uff10/repos", {}, None, "bad_port"),
    (API, "GET", "https://api..example.com/repos", {}, None, "bad_host"),
    (API, "GET", "https://ap!i.example.com/repos", {}, None, "bad_host"),
    (API, "GET", "https://*.example.com/repos", {}, None, "bad_host"),
    (API, "GET", "https://api.example.com/repos/ x", {}, None, "whitespace"),
    (API, "GET", " https://api.example.com/repos", {}, None, "whitespace"),
    (API, "GET", "https://api.example.com/repos\u3000", {}, None, "whitespace"),
    (API, "GET", "https://api.example.com/re\tpos", {}, None, "control_character"),
    (API, "GET", "https://api.exa\nmple.com/repos", {}, None, "control_character"),
    (API, "GET", "https://api.example.com/repos\r\nHost: evil", {}, None, "control_character"),
    (API, "GET", None, {}, None, "bad_url"),
    (API, "GET", "https://api.example.com/repos/" + "a" * 9000, {}, None, "url_too_long"),
    # -- wildcards -------------------------------------------------------------
    (WILD, "GET", "https://example.com/", {}, None, "host_mismatch"),
    (WILD, "GET", "https://evilexample.com/", {}, None, "host_mismatch"),
    (WILD, "GET", "https://example.com.evil.com/", {}, None, "host_mismatch"),
    (WILD, "GET", "https://a.example.com.evil.com/", {}, None, "host_mismatch"),
    (WILD, "GET", "http://a.example.com/", {}, None, "scheme_mismatch"),
    (WILD, "GET", "https://93.184.216.34/", {}, None, "host_mismatch"),
    (WILD, "GET", "https://127.0.0.1/", {}, None, "private_address"),
    (WILD, "GET", "https://a.localhost/", {}, None, "private_address"),
    # -- internal addresses in every spelling --------------------------------
    (API, "GET", "http://127.0.0.1/", {}, None, "private_address"),
    (API, "GET", "http://2130706433/", {}, None, "private_address"),
    (API, "GET", "http://0177.0.0.1/", {}, None, "private_address"),
    (API, "GET", "http://0x7f.1/", {}, None, "private_address"),
    (API, "GET", "http://0x7f000001/", {}, None, "private_address"),
    (API, "GET", "http://127.1/", {}, None, "private_address"),
    (API, "GET", "http://127.000.000.001/", {}, None, "private_address"),
    (API, "GET", "http://0/", {}, None, "private_address"),
    (API, "GET", "http://[::1]/", {}, None, "private_address"),
    (API, "GET", "http://[0:0:0:0:0:0:0:1]/", {}, None, "private_address"),
    (API, "GET", "http://[::]/", {}, None, "private_address"),
    (API, "GET", "http://[::ffff:127.0.0.1]/", {}, None, "private_address"),
    (API, "GET", "http://[::ffff:7f00:1]/", {}, None, "private_address"),
    (API, "GET", "http://[::127.0.0.1]/", {}, None, "private_address"),
    (API, "GET", "http://[64:ff9b::7f00:1]/", {}, None, "private_address"),
    (API, "GET", "http://[64:ff9b::127.0.0.1]/", {}, None, "private_address"),
    (API, "GET", "http://[64:ff9b:1::1]/", {}, None, "private_address"),
    (API, "GET", "http://[2002:7f00:1::]/", {}, None, "private_address"),
    (API, "GET", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", {}, None, "private_address"),
    (API, "GET", "http://10.0.0.1/", {}, None, "private_address"),
    (API, "GET", "http://012.0.0.1/", {}, None, "private_address"),
    (API, "GET", "http://192.168.1.1/", {}, None, "private_address"),
    (API, "GET", "http://172.16.0.1/", {}, None, "private_address"),
    (API, "GET", "http://100.64.0.1/", {}, None, "private_address"),
    (API, "GET", "http://[fe80::1]/", {}, None, "private_address"),
    (API, "GET", "http://[fc00::1]/", {}, None, "private_address"),
    (API, "GET", "http://[fec0::1]/", {}, None, "private_address"),  # site-local
    (API, "GET", "http://[feff:ffff::1]/", {}, None, "private_address"),
    (API, "GET", "http://224.0.0.1/", {}, None, "private_address"),
    (API, "GET", "http://255.255.255.255/", {}, None, "private_address"),
    (API, "GET", "http://localhost/", {}, None, "private_address"),
    (API, "GET", "http://LOCALHOST./", {}, None, "private_address"),
    (API, "GET", "http://foo.localhost/", {}, None, "private_address"),
    (API, "GET", "http://169.254.169.254/latest/", {}, None, "metadata_address"),
    (API, "GET", "http://0xa9fea9fe/", {}, None, "metadata_address"),
    (API, "GET", "http://2852039166/", {}, None, "metadata_address"),
    (API, "GET", "http://169.254.43518/", {}, None, "metadata_address"),
    (API, "GET", "http://[::ffff:169.254.169.254]/", {}, None, "metadata_address"),
    (API, "GET", "http://[64:ff9b::a9fe:a9fe]/", {}, None, "metadata_address"),
    (API, "GET", "http://[2002:a9fe:a9fe::]/", {}, None, "metadata_address"),
    (API, "GET", "http://[fd00:ec2::254]/", {}, None, "metadata_address"),
    (API, "GET", "http://168.63.129.16/", {}, None, "metadata_address"),
    (API, "GET", "http://100.100.100.200/", {}, None, "metadata_address"),
    (API, "GET", "http://metadata.google.internal/", {}, None, "metadata_address"),
    (API, "GET", "http://METADATA.google.internal./", {}, None, "metadata_address"),
    (LOOP, "GET", "http://127.0.0.2:8080/", {}, None, "private_address"),
    (LOOP, "GET", "http://[::1]:8080/", {}, None, "private_address"),
    (LOOP, "GET", "http://localhost:8080/", {}, None, "private_address"),
    (LOOP, "GET", "http://127.0.0.1:8081/", {}, None, "port_mismatch"),
    (LOOP, "GET", "http://127.0.0.1/", {}, None, "port_mismatch"),
    (META, "GET", "http://169.254.169.254/latest/user-data", {}, None, "path_outside"),
    # -- methods and sizes -----------------------------------------------------
    (API, "TRACE", "https://api.example.com/repos", {}, None, "unknown_operation"),
    (API, "get", "https://api.example.com/repos", {}, None, "unknown_operation"),
    (API, "POST", "https://api.example.com/repos", {"max_bytes": 100}, 1000, "too_large"),
    (API, "POST", "https://api.example.com/repos", {"max_bytes": 100}, None, "size_unknown"),
    (API, "PUT", "https://api.example.com/repos", {}, -5, "bad_size"),
]


@pytest.mark.parametrize(
    ("capability", "method", "target", "constraints", "size", "expected"), CASES
)
def test_corpus(
    capability: str,
    method: str,
    target: object,
    constraints: dict[str, Any],
    size: int | None,
    expected: str,
) -> None:
    resource = HTTP.canonical_resource(capability)
    normalized = HTTP.normalize_constraints(constraints)
    decision = HTTP.check(resource, normalized, Use(method, target, size))  # type: ignore[arg-type]
    assert (ALLOW if decision.allowed else decision.reason) == expected, decision.detail


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://API.Example.com:443/repos/", "https://api.example.com/repos"),
        ("https://api.example.com", "https://api.example.com/"),
        ("https://api.example.com./a/./b/../c", "https://api.example.com/a/c"),
        ("https://api.example.com/%7euser/%41", "https://api.example.com/~user/A"),
        ("https://api.example.com/a%2cb", "https://api.example.com/a%2Cb"),
        ("http://api.example.com:80/", "http://api.example.com/"),
        ("http://api.example.com:8080/", "http://api.example.com:8080/"),
        ("https://*.Example.COM./x/", "https://*.example.com/x"),
        ("https://b\u00fccher.example/", "https://xn--bcher-kva.example/"),
        ("http://0x7f.1:8080", "http://127.0.0.1:8080/"),
        ("http://[::FFFF:127.0.0.1]/", "http://127.0.0.1/"),
        ("http://[0:0::1]/", "http://[::1]/"),
    ],
)
def test_canonical_resource(uri: str, expected: str) -> None:
    assert HTTP.canonical_resource(uri) == expected
    assert HTTP.canonical_resource(expected) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "https://api.example.com/repos?x=1",
        "https://api.example.com/repos#x",
        "https://user@api.example.com/",
        "https://*/",
        "https://*.com/",
        "https://a.*.example.com/",
        "https://*a.example.com/",
        "https://*.127.0.0.1/",
        "ftp://api.example.com/",
        "https://",
        "https://api.example.com:99999/",
        "https://api.example.com/a%2fb",
    ],
)
def test_canonical_resource_rejects(uri: str) -> None:
    with pytest.raises(ResourceError):
        HTTP.canonical_resource(uri)


def test_parse_url_is_what_the_broker_requests() -> None:
    parsed = parse_url("HTTPS://Api.Example.com:443/a/../b/%7e?q=1#frag")
    assert parsed.href == "https://api.example.com/b/~?q=1"
    assert (parsed.scheme, parsed.host, parsed.port, parsed.query) == (
        "https",
        "api.example.com",
        None,
        "?q=1",
    )
    assert parse_url("http://[::1]:8080/").address == ipaddress.ip_address("::1")
    with pytest.raises(URLError) as error:
        parse_url("http://a@b/")
    assert error.value.reason == "userinfo"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("64:ff9b::808:808", None),  # NAT64 to a public address is a real route
        ("2002:808:808::1", None),
        ("::ffff:8.8.8.8", "private_address"),  # never on the wire as such
        ("127.0.0.1", "private_address"),
        ("::ffff:10.0.0.1", "private_address"),
        ("169.254.169.254", "metadata_address"),
        ("fd00:ec2::254", "metadata_address"),
    ],
)
def test_forbidden_reason(address: str, expected: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == expected


def test_embedded_ipv4() -> None:
    v6 = ipaddress.IPv6Address
    assert embedded_ipv4(v6("64:ff9b::7f00:1")) == ipaddress.IPv4Address("127.0.0.1")
    assert embedded_ipv4(v6("2002:a9fe:a9fe::1")) == ipaddress.IPv4Address("169.254.169.254")
    assert embedded_ipv4(v6("::1")) is None
    assert embedded_ipv4(v6("2606:4700::1")) is None
