"""Assembling a running supervisor: store, kernel, audit, metrics, server.

``capsup run`` (and any other front end) builds one :class:`Runtime` and
drives its server; closing the runtime flushes the audit trail, closes the
state store and stops the metrics endpoint, in that order, so nothing
acknowledged is left in a buffer.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from capsup.supervisor.audit import (
    HEAD_META_KEY,
    AuditHead,
    AuditLog,
    default_audit_path,
    format_head,
    parse_head,
    read_key_file,
)
from capsup.supervisor.config import Config, secret_files
from capsup.supervisor.confinement.dumpable import make_undumpable
from capsup.supervisor.confinement.leftovers import sweep_leftovers
from capsup.supervisor.confinement.setup import Confiner
from capsup.supervisor.events import Event, EventSink, record_all
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.metrics import Metrics, MetricsServer, parse_listen, serve_metrics
from capsup.supervisor.principal import OPERATOR
from capsup.supervisor.refusal_limit import RefusalLimiter
from capsup.supervisor.server import Server, new_trace_id
from capsup.supervisor.store import Store

__all__ = ["FanOut", "MetricsUnavailable", "Runtime", "RuntimeOptions"]


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    endpoint: str
    state: str = ":memory:"
    audit_log: str | None = None
    metrics: str | None = None
    grace_period: float = 5.0
    #: "required", "best-effort" or "off"; None: the config's ``confine``.
    confine: str | None = None


class FanOut:
    """One sink that feeds several, in order (the audit trail first: if it
    raises, the event is not counted as done anywhere); a batch goes to each
    as a batch (:func:`~capsup.supervisor.events.record_all`)."""

    def __init__(self, *sinks: EventSink) -> None:
        self._sinks = sinks

    def __call__(self, event: Event) -> None:
        for each in self._sinks:
            each(event)

    def record_all(self, events: Sequence[Event]) -> None:
        for each in self._sinks:
            record_all(each, events)


class MetricsUnavailable(Exception):
    """The metrics endpoint could not be started where the user asked."""


def run_audit_path() -> Path:
    """A per-run trail next to the default one, so concurrent ``capsup run``
    sessions never interleave two writers in one hash chain."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return default_audit_path().parent / "runs" / f"{stamp}-{os.getpid()}.jsonl"


def _protected_paths(config: Config, options: RuntimeOptions, trail: Path) -> tuple[str, ...]:
    """What no agent's code grant may cover: the policy, the state, the trail,
    the trail's key (the runtime directory the confiner adds itself)."""
    paths = [str(trail)]
    if config.settings.audit_key_file:
        paths.append(config.settings.audit_key_file)
    if config.source and Path(config.source).is_file():
        paths.append(config.source)
    if options.state and options.state != ":memory:":
        paths.append(options.state)
    return tuple(str(Path(p).resolve()) for p in paths)


def _raise_descriptor_limit() -> None:
    """Every agent costs the supervisor descriptors (a pidfd, a descriptor
    socket, a ROUTER and its connections), and libzmq aborts the process
    when ``accept`` runs out of them: take the whole hard limit, not the
    soft one a shell hands down (often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Runtime:
    """A supervisor, assembled from a config and the command line's options."""

    def __init__(self, config: Config, options: RuntimeOptions) -> None:
        mode = options.confine or config.settings.confine
        if mode not in ("required", "best-effort", "off"):
            # Never read an unknown word as a weaker mode.
            raise ValueError(f"confine must be required, best-effort or off, not {mode!r}")
        # First of all: no process of this user may read what follows from
        # this one's memory (see confinement/dumpable.py).
        make_undumpable()
        _raise_descriptor_limit()
        # What a killed supervisor left: its runtime directory is a sibling
        # of the one holding this one's endpoint (see confinement/leftovers.py).
        runtime_dir = Path(options.endpoint.removeprefix("ipc://")).parent
        for problem in sweep_leftovers(runtime_dir.parent):
            print(f"capsup: warning: {problem}", file=sys.stderr)
        self.config = config
        key_file = config.settings.audit_key_file
        key = read_key_file(key_file) if key_file else None
        self.store = Store(options.state)
        known = self.store.get_meta(HEAD_META_KEY)
        known_head: AuditHead | None = parse_head(known) if known else None
        self.metrics = Metrics()
        self._head_to_keep: AuditHead | None = None
        self.audit = AuditLog(
            options.audit_log or run_audit_path(),
            key=key,
            known_head=known_head,
            on_head=self._remember_head,
            on_written=self.metrics.audit_records_written,
            on_error=self.metrics.audit_write_failed,
        )
        sink = FanOut(self.audit, self.metrics)
        self.kernel = Kernel(
            store=self.store,
            policy=config.policy,
            validators=config.validators,
            sink=sink,
            tombstone_retention=config.settings.tombstone_retention,
            max_tombstones=config.settings.max_tombstones,
            max_per_holder=config.settings.max_capabilities_per_agent,
        )
        start_trace = new_trace_id()
        self.kernel.start(now=time.time(), trace_id=start_trace)
        self._revoke_orphans(start_trace)
        self.confiner: Confiner | None = None
        if mode != "off":
            try:
                self.confiner = Confiner(
                    "required" if mode == "required" else "best-effort",
                    runtime_dir,
                    config.sandboxes,
                    protected=_protected_paths(config, options, self.audit.path),
                    secrets=secret_files(config.policy.ceilings, config.settings),
                )
            except BaseException:
                self.audit.close()
                self.store.close()
                raise
        # The server's refusals pass a budget before the trail; the kernel's
        # records do not (supervisor/refusal_limit.py).
        self.refusals = RefusalLimiter(
            sink,
            self.metrics,
            trace_ids=new_trace_id,
            rate=config.settings.refusal_records_per_second,
            burst=config.settings.refusal_records_burst,
        )
        self.server = Server(
            self.kernel,
            options.endpoint,
            sink=self.refusals,
            grace_period=options.grace_period,
            batch_agents=config.settings.agent_scheduling == "batch",
            pass_environment=config.settings.pass_environment,
            max_message_bytes=config.settings.max_message_bytes,
            observe_request=self.metrics.observe_request,
            observe_validation=self.metrics.observe_validation,
            on_idle=self._on_idle,
            confiner=self.confiner,
            max_sub_agents=config.settings.max_sub_agents,
            max_agents=config.settings.max_agents,
            max_connections=config.settings.max_connections,
            max_connections_per_peer=config.settings.max_connections_per_peer,
            databases=config.databases,
        )
        self.metrics.live_capabilities_from(lambda: self.kernel.live_count)
        self.metrics.running_agents_from(lambda: self.server.processes.running_count)
        self.metrics_server: MetricsServer | None = None
        if options.metrics:
            try:
                host, port = parse_listen(options.metrics)
                self.metrics_server = serve_metrics(self.metrics, host, port)
            except (ValueError, OSError) as error:
                self.close()
                raise MetricsUnavailable(f"--metrics {options.metrics}: {error}") from None

    def _revoke_orphans(self, trace_id: str) -> None:
        """Revoke what agents of an earlier run still hold in the store.

        Agents die with their supervisor (PDEATHSIG), so after a crash and a
        restart every holder in the store is a dead process: a dead holder
        holds nothing, after a restart too."""
        for holder in sorted(self.kernel.holders()):
            self.kernel.revoke_all_for_agent(
                OPERATOR, holder, now=time.time(), trace_id=trace_id, cause="holder_gone"
            )

    def _on_idle(self) -> None:
        try:
            self.refusals.summarize_due()
        finally:
            try:
                self.audit.flush_if_due()
            finally:
                self._keep_head()

    def _remember_head(self, seq: int, digest: str) -> None:
        """Note the trail's newest record; :meth:`_keep_head` stores it.

        Storing it is a transaction of the state store, as dear as the rest
        of a brokered request; so it is stored once per turn of the loop (at
        its end, and at close), not once per write. The file is then ahead
        of the stored head for at most one turn, which a crash may leave too
        and which the start-up check accepts: records never fall behind it."""
        self._head_to_keep = AuditHead(seq, digest)

    def _keep_head(self) -> None:
        """Store the newest head, if it moved; a store that refuses it stops
        the trail (every audited request then fails closed), since tampering
        after this point could no longer be told."""
        head, self._head_to_keep = self._head_to_keep, None
        if head is None:
            return
        try:
            self.store.set_meta(HEAD_META_KEY, format_head(head))
        except Exception as error:
            self.audit.fail(f"cannot keep the audit head in the state store: {error}")
            raise

    def close(self) -> None:
        try:
            self.server.close()
            if self.confiner is not None:
                self.confiner.close()
        finally:
            try:
                # What the refusal budget held back goes on file before the trail closes.
                try:
                    self.refusals.close()
                finally:
                    try:
                        self.audit.close()
                    finally:
                        self._keep_head()
            finally:
                self.store.close()
                if self.metrics_server is not None:
                    self.metrics_server.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
