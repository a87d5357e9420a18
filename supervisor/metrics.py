"""Prometheus metrics: what the supervisor is doing, for operators.

:class:`Metrics` owns its own ``CollectorRegistry`` (never the library's
global one, so a test or an embedding program can have several supervisors
and nothing else leaks into ``/metrics``). It is an
:data:`~capsup.supervisor.events.EventSink` for the kernel's events, and has
methods for what only the server, spawner and audit trail know (latencies,
agent lives, cascade sizes, records written). :func:`serve_metrics` serves
``/metrics`` over HTTP. docs/metrics.md lists every metric.

Every label takes values from a closed set (event types, violation kinds,
op names, exit reasons); anything outside it is counted as ``other``, so a
hostile client cannot create series by choosing names. The event sink
counts what events imply too (how agents ended, cascade sizes); the two
gauges are read at scrape time from the kernel and the process table.
"""

from __future__ import annotations

import platform
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from capsup.agents.protocol import Op
from capsup.supervisor.events import Event, EventType, ViolationKind
from capsup.supervisor.metric_families import OTHER, CounterFamily, HistogramFamily, PlainCollector
from capsup.supervisor.processes import EXIT_REASONS
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = [
    "DEFAULT_OPS",
    "LATENCY_BUCKETS",
    "Metrics",
    "MetricsServer",
    "parse_listen",
    "serve_metrics",
]

#: Seconds: resolve tens of microseconds (a validation) to tens of
#: milliseconds (a spawn, a slow disk), with a catch-all at one second.
LATENCY_BUCKETS = (
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    1e-1,
    1.0,
)

#: Capabilities revoked by one revocation (the revoked one and its descendants).
CASCADE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

#: The wire ops (docs/protocol.md), taken from the protocol's own table so
#: a new op is never counted as ``other``; the server may pass its own.
DEFAULT_OPS: tuple[str, ...] = tuple(Op)

_VALIDATED = EventType.CAPABILITY_VALIDATED
#: The events that end capabilities, and so may carry ``cascade_size``.
_ENDINGS = frozenset({EventType.CAPABILITY_REVOKED, EventType.CAPABILITY_EXPIRED})


def _package_version() -> str:
    try:
        return version("capsup")
    except PackageNotFoundError:  # a source tree without install
        return "0+unknown"


class Metrics:
    """The supervisor's metrics, in a registry of their own.

    Counters and histograms are :mod:`plain numbers
    <capsup.supervisor.metric_families>`, to be updated from one thread (the
    supervisor's loop); scrapes may come from any other."""

    def __init__(self, *, ops: Iterable[str] = DEFAULT_OPS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        build = Gauge(
            "capsup_build_info",
            "Always 1; the labels say which capsup and Python are running.",
            ["version", "python"],
            registry=r,
        )
        build.labels(_package_version(), platform.python_version()).set(1)
        self._live = Gauge(
            "capsup_live_capabilities",
            "Capabilities granted or delegated and not yet revoked or expired.",
            registry=r,
        )
        self._running = Gauge(
            "capsup_running_agents", "Agent processes alive under the supervisor.", registry=r
        )
        self._events = CounterFamily(
            "capsup_capability_events",
            "Security events by type (the audit vocabulary).",
            "event",
            [kind.value for kind in EventType],
            other=False,
        )
        self._validations = CounterFamily(
            "capsup_validations",
            "Validation decisions: allow, or deny (any reason).",
            "result",
            ["allow", "deny"],
            other=False,
        )
        self._violations = CounterFamily(
            "capsup_security_violations",
            "Security violations by kind (stolen or forged ids, widening, ...).",
            "kind",
            [kind.value for kind in ViolationKind],
        )
        self._requests = HistogramFamily(
            "capsup_request_duration_seconds",
            "Time from a decoded request to its encoded reply, by op.",
            LATENCY_BUCKETS,
            "op",
            ops,
        )
        self._validation_seconds = HistogramFamily(
            "capsup_validation_duration_seconds",
            "Time the kernel takes to decide one use of a capability.",
            LATENCY_BUCKETS,
        )
        self._exits = CounterFamily(
            "capsup_agent_exits",
            "Agent processes that ended, by how they ended.",
            "reason",
            EXIT_REASONS,
        )
        self._audit_records = CounterFamily(
            "capsup_audit_records", "Audit records written to the trail."
        )
        self._audit_errors = CounterFamily(
            "capsup_audit_write_errors",
            "Failed writes to the audit trail (each made the supervisor fail closed).",
        )
        self._cascade = HistogramFamily(
            "capsup_revocation_cascade_size",
            "Capabilities ended by one revocation, the revoked one included.",
            CASCADE_BUCKETS,
        )
        r.register(
            PlainCollector(
                [
                    self._events,
                    self._validations,
                    self._violations,
                    self._requests,
                    self._validation_seconds,
                    self._exits,
                    self._audit_records,
                    self._audit_errors,
                    self._cascade,
                ]
            )
        )

    # -- the event sink ------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Count one event, and what it implies: an allowed or denied use, a
        violation, how an agent ended, the size of a revocation cascade
        (never raises for an odd event)."""
        kind = event.event
        self._events.inc(kind)
        if kind == _VALIDATED:  # the hot path: one per validation, nothing else to read
            self._validations.inc("allow")
        elif kind == EventType.CAPABILITY_VALIDATION_FAILED:
            self._validations.inc("deny")
        elif kind == EventType.SECURITY_VIOLATION:
            violation = event.detail.get("kind")
            self._violations.inc(violation if isinstance(violation, str) else OTHER)
        elif kind == EventType.AGENT_TERMINATED:
            self.agent_exited(str(event.detail.get("reason", OTHER)))
        elif kind in _ENDINGS:  # the first record of a cascade says its size
            cascade = event.detail.get("cascade_size")
            if isinstance(cascade, int) and not isinstance(cascade, bool):
                self.observe_revocation_cascade(cascade)

    # -- what the server, spawner and audit trail report ---------------------------

    def observe_request(self, op: str, seconds: float) -> None:
        """One request handled; an op outside the known set counts as ``other``."""
        self._requests.observe(seconds, op)

    def observe_validation(self, seconds: float) -> None:
        self._validation_seconds.observe(seconds)

    def set_live_capabilities(self, count: int) -> None:
        self._live.set(count)

    def live_capabilities_from(self, source: Callable[[], float]) -> None:
        """Read the live count at scrape time (e.g. ``lambda: kernel.live_count``),
        so it can never drift from the kernel's own number."""
        self._live.set_function(source)

    def running_agents_from(self, source: Callable[[], float]) -> None:
        """Read the number of running agents at scrape time from the process
        table, not from events: an agent whose start could not be recorded
        still runs until it is reaped, and must not make the gauge drift."""
        self._running.set_function(source)

    def agent_exited(self, reason: str) -> None:
        """An agent ended; ``reason`` is one of
        :data:`~capsup.supervisor.processes.EXIT_REASONS`."""
        self._exits.inc(reason)

    def observe_revocation_cascade(self, size: int) -> None:
        """One revocation ended ``size`` capabilities (call once per revocation)."""
        self._cascade.observe(size)

    def audit_records_written(self, count: int) -> None:
        """For :class:`~capsup.supervisor.audit.AuditLog`'s ``on_written``."""
        self._audit_records.inc(amount=count)

    def audit_write_failed(self, error: OSError | None = None) -> None:
        """For :class:`~capsup.supervisor.audit.AuditLog`'s ``on_error``."""
        self._audit_errors.inc()

    def render(self) -> bytes:
        """The text exposition format (what ``/metrics`` returns)."""
        return bytes(generate_latest(self.registry))


# -- HTTP ----------------------------------------------------------------------------


def parse_listen(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as given to ``--metrics``."""
    host, sep, port_text = spec.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"not HOST:PORT: {spec!r} (e.g. 127.0.0.1:9464)")
    return host, int(port_text)


class _Handler(BaseHTTPRequestHandler):
    """``/metrics`` and nothing else; quiet, and bounded against slow clients."""

    timeout = 10
    server_version = "capsup-metrics"
    registry: CollectorRegistry  # set on a per-server subclass

    def do_GET(self) -> None:
        self._reply(send_body=True)

    def do_HEAD(self) -> None:
        self._reply(send_body=False)

    def _reply(self, *, send_body: bool) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            status, body, content_type = 404, b"not found; try /metrics\n", "text/plain"
        else:
            status, body = 200, generate_latest(self.registry)
            content_type = CONTENT_TYPE_PLAIN_0_0_4
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not news; say nothing."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that hung up mid-reply is its own problem; the default
        prints a traceback into the supervisor's stderr."""


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """An HTTP server for one registry on its own thread; :meth:`close` stops it."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"registry": registry})
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="capsup-metrics",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close the socket, wait for the thread (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def serve_metrics(metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``metrics`` on ``http://HOST:PORT/metrics`` until ``close()``.

    Raises :class:`OSError` if the address cannot be bound (the caller says
    which flag was wrong)."""
    return MetricsServer(metrics.registry, host, port).start()
