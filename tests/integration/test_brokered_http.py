"""Brokered HTTP end to end (issue 16): a confined agent under a real
`capsup run` reaches local HTTP and HTTPS servers only through its
capabilities, with a credential it never sees.

One run performs every step (each run costs a supervisor and a confined
start); the agent writes each step's outcome, the test reads them, the
servers' records and the trail."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from local_http import LocalServer
from runner import CAPSUP, read_audit

#: A test credential, which must never leak.
TOKEN = "s3cr3t-t0ken-Zq9"

AGENT = """
import json, socket, sys
import httpx
from capsup.agents import CapsupError, HttpxTransport, connect

steps_file, out_file = sys.argv[1], sys.argv[2]
plan = json.load(open(steps_file))
c = connect(timeout=30)
caps = {name: c.request(spec["resource"], spec["operations"], constraints=spec.get("constraints"))
        for name, spec in plan["caps"].items()}
out = {}
for name, step in plan["steps"].items():
    try:
        if step.get("httpx"):
            with httpx.Client(transport=HttpxTransport(c, caps[step["cap"]])) as web:
                r = web.get(step["url"])
                out[name] = {"status": r.status_code, "json": r.json()}
            continue
        r = c.http(caps[step["cap"]], step.get("method", "GET"), step["url"],
                   headers=step.get("headers"), body=step.get("body", "").encode())
        out[name] = {"status": r.status, "headers": r.headers, "body": r.body.decode("latin-1")}
    except CapsupError as e:
        out[name] = {"error": e.code, "reason": e.reason, "message": e.message}
try:
    socket.create_connection(tuple(plan["direct"]), timeout=2).close()
    out["direct"] = "connected"
except OSError as e:
    out["direct"] = type(e).__name__
out["listed"] = [cap.to_wire() for cap in c.list_my_capabilities()]
# A reply that comes later goes by routing id: one the agent chose could be
# taken by another connection once this one closes, so it is refused.
import msgpack, os, zmq
raw = zmq.Context.instance().socket(zmq.DEALER)
raw.setsockopt(zmq.ROUTING_ID, b"victim-1")
raw.setsockopt(zmq.LINGER, 0)
raw.connect(os.environ["CAPSUP_ENDPOINT"])
raw.send(msgpack.packb({"id": 1, "op": "http", "args": {
    "capability": caps["site"].id, "method": "GET", "url": plan["chosen_id_url"]}}))
out["chosen_id"] = msgpack.unpackb(raw.recv())["error"] if raw.poll(10000) else "no reply"
raw.close()
json.dump(out, open(out_file, "w"))
"""


@dataclass
class Servers:
    plain: LocalServer
    tls: LocalServer
    foreign: LocalServer
    ca_file: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    ca, stranger_ca = trustme.CA(), trustme.CA()
    good = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(good)
    foreign = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger_ca.issue_cert("127.0.0.1").configure_cert(foreign)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    started = Servers(LocalServer(), LocalServer(tls=good), LocalServer(tls=foreign), ca_file)
    yield started
    for server in (started.plain, started.tls, started.foreign):
        server.close()


@pytest.fixture(scope="module")
def outcome(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], list[dict[str, Any]], str, Path]:
    """One confined run of every step: (outcomes, trail, capsup's output, work dir)."""
    root = tmp_path_factory.mktemp("http")
    out = root / "out"
    out.mkdir()
    plain = f"http://127.0.0.1:{servers.plain.port}"
    name = socket.gethostname()
    config = root / "capsup.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [agents.main]
            sandbox = {{ write = ["{out}"] }}
            allow = [
              {{ resource = "{plain}/", operations = ["GET", "POST"], inject = {{ headers = {{ Authorization = "Bearer ${{env:TEST_TOKEN}}" }} }} }},
              {{ resource = "http://{name}:{servers.plain.port}/", operations = ["GET"] }},
              {{ resource = "https://127.0.0.1:{servers.tls.port}/", operations = ["GET"] }},
              {{ resource = "https://127.0.0.1:{servers.foreign.port}/", operations = ["GET"] }},
            ]
            """
        )
    )
    plan = {
        "caps": {
            "site": {"resource": f"{plain}/", "operations": ["GET", "POST"]},
            "echo_only": {"resource": f"{plain}/echo", "operations": ["GET"]},
            "small": {
                "resource": f"{plain}/",
                "operations": ["GET"],
                "constraints": {"max_bytes": 1000},
            },
            "named": {"resource": f"http://{name}:{servers.plain.port}/", "operations": ["GET"]},
            "tls": {"resource": f"https://127.0.0.1:{servers.tls.port}/", "operations": ["GET"]},
            "foreign": {
                "resource": f"https://127.0.0.1:{servers.foreign.port}/",
                "operations": ["GET"],
            },
        },
        "steps": {
            "inside": {"cap": "site", "url": f"{plain}/echo?q=1", "headers": {"X-Mine": "1"}},
            "post": {"cap": "site", "method": "POST", "url": f"{plain}/echo", "body": "hello"},
            "outside": {"cap": "echo_only", "url": f"{plain}/dup"},
            "prefix_twin": {"cap": "echo_only", "url": f"{plain}/echoes"},
            "method": {"cap": "echo_only", "method": "POST", "url": f"{plain}/echo"},
            "redirect": {"cap": "site", "url": f"{plain}/redirect"},
            "too_large": {"cap": "small", "url": f"{plain}/bytes?n=5000"},
            "userinfo": {"cap": "site", "url": f"http://u:p@127.0.0.1:{servers.plain.port}/echo"},
            "ip_spelling": {"cap": "site", "url": f"http://2130706433:{servers.plain.port}/echo"},
            "other_host": {"cap": "site", "url": f"http://127.0.0.2:{servers.plain.port}/echo"},
            "private_name": {"cap": "named", "url": f"http://{name}:{servers.plain.port}/echo"},
            "host_header": {"cap": "site", "url": f"{plain}/echo", "headers": {"Host": "evil"}},
            "chunked": {
                "cap": "site",
                "url": f"{plain}/echo",
                "headers": {"Transfer-Encoding": "chunked"},
            },
            "crlf": {"cap": "site", "url": f"{plain}/echo", "headers": {"X-A": "a\r\nX-B: b"}},
            "steal_auth": {
                "cap": "site",
                "url": f"{plain}/echo",
                "headers": {"Authorization": "Bearer mine"},
            },
            "gzip_with_credentials": {
                "cap": "site",
                "url": f"{plain}/echo",
                "headers": {"Accept-Encoding": "gzip"},
            },
            "range_with_credentials": {
                "cap": "site",
                "url": f"{plain}/echo",
                "headers": {"Range": "bytes=0-9"},
            },
            "encoded_with_credentials": {"cap": "site", "url": f"{plain}/gzip-bomb?mib=1"},
            "gzip_without_credentials": {
                "cap": "tls",
                "url": f"https://127.0.0.1:{servers.tls.port}/gzip-bomb?mib=1",
                "headers": {"Accept-Encoding": "gzip"},
            },
            "tls": {"cap": "tls", "url": f"https://127.0.0.1:{servers.tls.port}/echo"},
            "foreign_ca": {"cap": "foreign", "url": f"https://127.0.0.1:{servers.foreign.port}/"},
            "httpx": {"cap": "site", "url": f"{plain}/echo?via=httpx", "httpx": True},
        },
        "direct": ["127.0.0.1", servers.plain.port],
        "chosen_id_url": f"{plain}/echo?chosen",
    }
    # Its plan in the directory it may write; its code apart from the policy
    # (a directory holding the policy is narrowed to the agent's own file).
    steps = out / "steps.json"
    steps.write_text(json.dumps(plan))
    agent = out / "agent.py"
    agent.write_text(textwrap.dedent(AGENT))
    trail = root / "audit.jsonl"
    env = {**os.environ, "TEST_TOKEN": TOKEN, "SSL_CERT_FILE": str(servers.ca_file)}
    done = subprocess.run(
        [
            *CAPSUP,
            *("run", "--config", str(config), "--audit-log", str(trail), "--name", "main"),
            *(sys.executable, str(agent), str(steps), str(out / "out.json")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "out.json").read_text())
    return results, read_audit(trail), done.stdout + done.stderr, root


def _refused(result: dict[str, Any], code: str, reason: str | None = None) -> None:
    assert result.get("error") == code, result
    if reason is not None:
        assert result["reason"] == reason, result


def test_requests_inside_the_capability_reach_the_server(outcome: Any, servers: Servers) -> None:
    results, _, _, _ = outcome
    inside = results["inside"]
    assert inside["status"] == 200
    echoed = json.loads(inside["body"])
    assert (echoed["method"], echoed["path"]) == ("GET", "/echo?q=1")
    assert ["X-Mine", "1"] in echoed["headers"]
    post = json.loads(results["post"]["body"])
    assert (post["method"], post["body"]) == ("POST", "hello")
    httpx_result = results["httpx"]
    assert httpx_result["status"] == 200 and httpx_result["json"]["path"] == "/echo?via=httpx"


def test_outside_the_capability_is_refused_and_nothing_is_sent(
    outcome: Any, servers: Servers
) -> None:
    results, _, _, _ = outcome
    _refused(results["outside"], "constraint_violation", "path_outside")
    _refused(results["prefix_twin"], "constraint_violation", "path_outside")
    _refused(results["method"], "operation_not_allowed")
    _refused(results["userinfo"], "constraint_violation", "userinfo")
    _refused(results["other_host"], "constraint_violation")
    paths = [seen.path for seen in servers.plain.record.requests]
    assert not any(p.startswith(("/dup", "/echoes")) for p in paths)


def test_an_ip_spelling_reaches_the_one_host_it_names(outcome: Any, servers: Servers) -> None:
    results, _, _, _ = outcome
    echoed = json.loads(results["ip_spelling"]["body"])
    host = [v for k, v in echoed["headers"] if k.lower() == "host"]
    assert host == [f"127.0.0.1:{servers.plain.port}"]


def test_a_name_that_resolves_to_a_private_address_is_refused(outcome: Any) -> None:
    """The capability names a host by name; its DNS answer is loopback, which
    only a capability naming that address exactly may reach."""
    results, _, _, _ = outcome
    addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), 80)}
    assert all(a.startswith("127.") or a == "::1" for a in addresses), addresses
    _refused(results["private_name"], "constraint_violation", "private_address")


def test_redirects_come_back_unfollowed(outcome: Any, servers: Servers) -> None:
    results, _, _, _ = outcome
    redirect = results["redirect"]
    assert redirect["status"] == 302
    assert ["Location", "http://elsewhere.test/next"] in redirect["headers"]


def test_an_oversized_response_is_refused(outcome: Any) -> None:
    results, _, _, _ = outcome
    _refused(results["too_large"], "constraint_violation", "response_too_large")


def test_framing_headers_are_the_supervisors(outcome: Any, servers: Servers) -> None:
    results, _, _, _ = outcome
    _refused(results["host_header"], "bad_request", "forbidden_header")
    assert "Host" in results["host_header"]["message"]
    _refused(results["chunked"], "bad_request", "forbidden_header")
    _refused(results["crlf"], "bad_request", "bad_header")


def test_no_encoded_or_partial_response_under_credentials(outcome: Any) -> None:
    """A server that echoes the request could send the injected value back
    compressed or in pieces, where redaction cannot see it: on a capability
    that carries credentials, the agent may not ask for either, and an
    encoded response is refused. Without credentials, both are the agent's."""
    results, _, _, _ = outcome
    _refused(results["gzip_with_credentials"], "bad_request", "forbidden_header")
    assert "carries credentials" in results["gzip_with_credentials"]["message"]
    _refused(results["range_with_credentials"], "bad_request", "forbidden_header")
    _refused(results["encoded_with_credentials"], "constraint_violation", "encoded_response")
    assert results["gzip_without_credentials"]["status"] == 200


def test_tls_is_verified_against_the_trusted_roots(outcome: Any, servers: Servers) -> None:
    results, _, _, _ = outcome
    assert results["tls"]["status"] == 200
    _refused(results["foreign_ca"], "upstream_error", "tls_error")
    assert not servers.foreign.record.requests  # nothing was sent over the untrusted channel


def test_no_brokered_request_on_a_routing_id_the_agent_chose(
    outcome: Any, servers: Servers
) -> None:
    results, _, _, _ = outcome
    assert results["chosen_id"]["code"] == "bad_request"
    assert "ZMQ_ROUTING_ID" in results["chosen_id"]["message"]
    assert not [s for s in servers.plain.record.requests if s.path == "/echo?chosen"]


def test_the_agent_has_no_network_of_its_own(outcome: Any) -> None:
    """Confined: the broker is the only way out (test_escapes.py shows the
    same connect() succeeding unconfined)."""
    results, _, _, _ = outcome
    assert results["direct"] != "connected"


def test_the_credential_reaches_the_server_and_nobody_else(outcome: Any, servers: Servers) -> None:
    results, trail, output, root = outcome
    sent = [seen.header("Authorization") for seen in servers.plain.record.requests]
    assert [f"Bearer {TOKEN}"] in sent
    # The injected header replaces the agent's own: it cannot choose the credential.
    assert all(values == [f"Bearer {TOKEN}"] for values in sent if values)
    # The echo server sent the token back: the agent got it redacted.
    echoed = json.loads(results["steal_auth"]["body"])
    assert ["Authorization", "[redacted]"] in echoed["headers"]
    for where, text in [
        ("the agent's results", json.dumps(results)),
        ("the trail", (root / "audit.jsonl").read_text()),
        ("capsup's output", output),
    ]:
        assert TOKEN not in text, where
    site = f"http://127.0.0.1:{servers.plain.port}/"
    records = [r for r in trail if r["event"] == "http_request" and r["decision"] == "allow"]
    assert records and all(
        r["detail"]["injected"] == (["Authorization"] if r["resource"] == site else [])
        for r in records
    )
    listed = {cap["resource"]: cap for cap in results["listed"]}
    assert "inject" not in json.dumps(listed)


def test_each_request_is_one_trace_of_use_and_effect(outcome: Any) -> None:
    _, trail, _, _ = outcome
    effects = [r for r in trail if r["event"] == "http_request"]
    uses = {r["trace_id"] for r in trail if r["event"] == "capability_validated"}
    allowed = [r for r in effects if r["decision"] == "allow"]
    assert allowed and all(r["trace_id"] in uses for r in allowed)
    assert {r["detail"]["status"] for r in allowed} >= {200, 302}
    refused = {r["reason"] for r in effects if r["decision"] == "deny"}
    assert {"response_too_large", "forbidden_header", "tls_error", "private_address"} <= refused
