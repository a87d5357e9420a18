"""A real Prometheus server scrapes capsup's /metrics and a query sees our counter.

The test starts its own ``prometheus`` process on loopback (temporary config
and storage, a free port, a 1 s scrape interval) and never relies on a system
service. Every wait is bounded; the process is stopped however the test ends.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from capsup.supervisor.audit import AuditLog
from capsup.supervisor.events import Event, EventSink, EventType
from capsup.supervisor.metrics import Metrics, MetricsServer, serve_metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus not installed (Debian package 'prometheus'; `make test` installs it)",
    ),
]

QUERY = 'capsup_capability_events_total{event="capability_granted"}'
DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def exporter() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    server = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        yield metrics, server
    finally:
        server.close()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: tuple[Metrics, MetricsServer]) -> Iterator[str]:
    """A Prometheus scraping ``exporter`` every second; yields its base URL."""
    _, server = exporter
    host, port = server.address
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: capsup\n"
        "    static_configs:\n"
        f"      - targets: ['{host}:{port}']\n"
    )
    listen = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={listen}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://{listen}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def query(base: str, promql: str) -> float | None:
    """The single value of an instant query, or None (not up yet, no data)."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            answer = json.load(reply)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    results = answer.get("data", {}).get("result", [])
    return float(results[0]["value"][1]) if len(results) == 1 else None


def wait_for(base: str, promql: str, expected: float, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    seen = None
    while time.monotonic() < deadline:
        seen = query(base, promql)
        if seen == expected:
            return
        time.sleep(0.5)
    pytest.fail(f"{promql} = {seen}, expected {expected}; prometheus log:\n{log.read_text()}")


def grant(n: int) -> Event:
    return Event(
        EventType.CAPABILITY_GRANTED,
        time.time(),
        f"trace-{n}",
        principal="agent-1",
        capability_id=f"cap-{n}",
        resource="file:///data",
        decision="allow",
        detail={"holder": "agent-1"},
    )


def test_prometheus_scrapes_the_counters(
    tmp_path: Path, exporter: tuple[Metrics, MetricsServer], prometheus: str
) -> None:
    metrics, _ = exporter
    audit = AuditLog(tmp_path / "audit.jsonl", on_written=metrics.audit_records_written)

    def sink(event: Event) -> None:  # the server's wiring: audit first, then metrics
        audit(event)
        metrics(event)

    feed: EventSink = sink
    for n in range(3):
        feed(grant(n))
    log = tmp_path / "prometheus.log"
    wait_for(prometheus, QUERY, 3.0, log)
    wait_for(prometheus, "capsup_audit_records_total", 3.0, log)
    feed(grant(3))  # and it keeps scraping a live value
    wait_for(prometheus, QUERY, 4.0, log)
    assert query(prometheus, 'up{job="capsup"}') == 1.0
    audit.close()
