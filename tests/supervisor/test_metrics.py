"""Metrics: counted from events, bounded labels, valid exposition, served over HTTP."""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from capsup.supervisor.events import Event, EventType, ViolationKind
from capsup.supervisor.metrics import (
    DEFAULT_OPS,
    Metrics,
    parse_listen,
    serve_metrics,
)
from capsup.supervisor.processes import EXIT_REASONS, AgentProcess
from prometheus_client import REGISTRY

E = EventType


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, (name, labels)
    return got


def ev(event: EventType, n: int = 0, **detail: str) -> Event:
    return Event(event, 1.0, f"trace-{n}", f"agent-{n}", 1000 + n, f"cap-{n}", detail=detail)


def busy_metrics() -> Metrics:
    """Metrics that have seen a bit of everything."""
    m = Metrics()
    for n in range(3):
        m(ev(E.CAPABILITY_GRANTED, n))
    m(ev(E.CAPABILITY_VALIDATED))
    m(ev(E.CAPABILITY_VALIDATION_FAILED))
    m(ev(E.CAPABILITY_VALIDATION_FAILED))
    m(ev(E.SECURITY_VIOLATION, kind=ViolationKind.STOLEN_ID.value))
    m(ev(E.SECURITY_VIOLATION, kind="made_up_by_a_client"))
    m.observe_request("validate", 42e-6)
    m.observe_request("drop_tables", 0.5)
    m.observe_validation(15e-6)
    m.set_live_capabilities(7)
    m.running_agents_from(lambda: 2)
    m.agent_exited("exit")
    m.agent_exited("eaten_by_a_grue")
    m.observe_revocation_cascade(4)
    m.audit_records_written(9)
    m.audit_write_failed()
    return m


def test_the_first_record_of_a_revocation_or_expiry_cascade_gives_its_size() -> None:
    m = Metrics()
    m(Event(E.CAPABILITY_REVOKED, 1.0, "t", detail={"cascade_size": 3}))
    m(Event(E.CAPABILITY_REVOKED, 1.0, "t", detail={"cascade_of": "cap-1"}))
    m(Event(E.CAPABILITY_EXPIRED, 1.0, "t", detail={"cascade_size": 2}))
    m(Event(E.CAPABILITY_REVOKED, 1.0, "t", detail={"cascade_size": True}))  # not a size
    assert value(m, "capsup_revocation_cascade_size_count") == 2
    assert value(m, "capsup_revocation_cascade_size_sum") == 5


def test_events_and_calls_update_the_metrics() -> None:
    m = busy_metrics()
    assert value(m, "capsup_capability_events_total", event="capability_granted") == 3
    assert value(m, "capsup_capability_events_total", event="kernel_started") == 0
    assert value(m, "capsup_validations_total", result="allow") == 1
    assert value(m, "capsup_validations_total", result="deny") == 2
    assert value(m, "capsup_security_violations_total", kind="stolen_id") == 1
    assert value(m, "capsup_security_violations_total", kind="other") == 1
    assert value(m, "capsup_request_duration_seconds_count", op="validate") == 1
    assert value(m, "capsup_request_duration_seconds_bucket", op="validate", le="5e-05") == 1
    assert value(m, "capsup_request_duration_seconds_bucket", op="validate", le="2.5e-05") == 0
    assert value(m, "capsup_request_duration_seconds_count", op="other") == 1
    assert value(m, "capsup_validation_duration_seconds_bucket", le="2.5e-05") == 1
    assert value(m, "capsup_live_capabilities") == 7
    assert value(m, "capsup_running_agents") == 2
    assert value(m, "capsup_agent_exits_total", reason="exit") == 1
    assert value(m, "capsup_agent_exits_total", reason="other") == 1
    assert value(m, "capsup_revocation_cascade_size_sum") == 4
    assert value(m, "capsup_audit_records_total") == 9
    assert value(m, "capsup_audit_write_errors_total") == 1
    build = [s for f in m.registry.collect() for s in f.samples if s.name == "capsup_build_info"]
    assert len(build) == 1 and build[0].value == 1
    assert set(build[0].labels) == {"version", "python"}


def test_live_capabilities_can_be_read_at_scrape_time() -> None:
    m = Metrics()
    live = [3]
    m.live_capabilities_from(lambda: live[0])
    assert value(m, "capsup_live_capabilities") == 3
    live[0] = 5
    assert value(m, "capsup_live_capabilities") == 5


def test_labels_never_take_client_chosen_values() -> None:
    m = Metrics()
    before = sum(len(f.samples) for f in m.registry.collect())
    for n in range(200):
        m(ev(E.SECURITY_VIOLATION, n, kind=f"kind-{n}"))
        m(ev(E.CAPABILITY_DENIED, n))
        m.observe_request(f"op-{n}", 0.001)
        m.agent_exited(f"reason-{n}")
    after = sum(len(f.samples) for f in m.registry.collect())
    assert after == before
    labels = {
        value
        for family in m.registry.collect()
        for sample in family.samples
        for key, value in sample.labels.items()
        if key not in {"le", "version", "python"}
    }
    allowed = {*EventType, *ViolationKind, *DEFAULT_OPS, *EXIT_REASONS, "other", "allow", "deny"}
    assert labels <= {str(v) for v in allowed}


def test_every_way_an_agent_can_end_has_an_exit_label_of_its_own() -> None:
    # Every end exit_reason can see: still running, each kind of status, and
    # every signal, sent by capsup or not. A reason outside the label set
    # would be counted as "other", and the metric would disagree with the audit.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    ends: list[tuple[int | None, set[int]]] = [(None, set()), (0, set()), (1, set()), (255, set())]
    ends += [(-signum, sent) for signum in signal.Signals for sent in (set(), {signum})]
    reasons = {
        AgentProcess("agent-x", "x", ended, 0.0, -1, returncode=code, signals_sent=sent).exit_reason
        for code, sent in ends
    }
    assert reasons == set(EXIT_REASONS)  # and no label is left that nothing returns
    m = Metrics()
    for reason in reasons:
        m.agent_exited(reason)
    for reason in EXIT_REASONS:
        assert value(m, "capsup_agent_exits_total", reason=reason) == 1


def test_each_instance_has_its_own_registry_and_the_global_one_stays_clean() -> None:
    a, b = Metrics(), Metrics()
    a(ev(E.CAPABILITY_GRANTED))
    assert value(a, "capsup_capability_events_total", event="capability_granted") == 1
    assert value(b, "capsup_capability_events_total", event="capability_granted") == 0
    assert not [f for f in REGISTRY.collect() if f.name.startswith("capsup")]


def test_the_server_op_table_can_be_passed_in() -> None:
    m = Metrics(ops=["hello"])
    m.observe_request("hello", 0.001)
    m.observe_request("validate", 0.001)
    assert value(m, "capsup_request_duration_seconds_count", op="hello") == 1
    assert value(m, "capsup_request_duration_seconds_count", op="other") == 1


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package 'prometheus'; `make test` installs it)",
)
def test_the_exposition_passes_promtool_check_metrics() -> None:
    body = busy_metrics().render()
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout == b"" and done.stderr == b"", "promtool has lint complaints"


def test_metrics_are_served_on_slash_metrics_only() -> None:
    m = busy_metrics()
    server = serve_metrics(m, "127.0.0.1", 0)
    try:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(server.url, timeout=10) as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = reply.read()
        assert b'capsup_capability_events_total{event="capability_granted"} 3.0' in body
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert caught.value.code == 404
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("HEAD", "/metrics?x=1")
        head = connection.getresponse()
        assert head.status == 200 and head.read() == b""
        connection.close()
    finally:
        server.close()
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_listen_addresses_parse() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:80") == ("localhost", 80)
    for bad in ("9464", ":9464", "host:", "host:http", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)
