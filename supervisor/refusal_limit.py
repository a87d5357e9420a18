"""A budget for the records of refusals, per peer, in front of the audit trail.

Every request the supervisor refuses before it reaches the kernel (from a
process that is not an agent, or one that cannot be parsed) is recorded. A
peer sending garbage as fast as it can would otherwise make a record per
message: megabytes of trail a second, until a full disk makes every agent's
request fail with ``audit_unavailable``.

:class:`RefusalLimiter` is the server's event sink. Refusal records (the
table :data:`REFUSALS`) spend a token from their peer's bucket and from one
bucket all peers share; a record that finds either empty is held back:
counted, and folded into one ``refusals_suppressed`` record for its peer
(or, when the shared bucket was the empty one, for all peers, ``"*"``)
with the count, the first and last time and the kinds. That record is
written when the bucket that held them back is full again, at least once a
second while refusals are held back, when the peer's agent exits, when the
peer is evicted from the table, and at shutdown, so a refusal is never
dropped silently; a crash loses the count of at most the last second.
Every other event goes through untouched, and the metrics count every
refusal, held back or not.

A peer is the connection's identity as the server proved it: the agent id,
or a stranger's pid (``pid:N``), or ``unknown`` for a stranger whose pid the
supervisor could not learn. The kernel's own records (a denied request, a
forged capability id) never come here: it has its own sink.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from capsup.supervisor.events import Event, EventSink, EventType, ViolationKind
from capsup.supervisor.ratelimit import TokenBucket, spend_all

__all__ = [
    "ALL_PEERS",
    "ALL_PEERS_FACTOR",
    "MAX_PEERS",
    "REFUSALS",
    "SUMMARY_INTERVAL",
    "RefusalLimiter",
]

#: The bucket all peers share holds this many times one peer's: a stranger
#: that forks a new process (a new peer) for every few messages still
#: cannot grow the trail faster than this many peers could.
ALL_PEERS_FACTOR = 8
#: Peers whose buckets are kept; the least recently refused is evicted
#: (its summary written first).
MAX_PEERS = 4096
#: Longest a count is kept in memory before its summary is written.
SUMMARY_INTERVAL = 1.0
#: The peer of the summaries of what the shared bucket held back.
ALL_PEERS = "*"

#: The records the budget applies to: per event type, the values of
#: ``detail["kind"]`` that make one a refusal (None: every record of that
#: type the server makes, which for ``capability_denied`` is a ``wait`` or
#: ``spawn`` refused, or a request a fault stopped).
REFUSALS: Mapping[EventType, frozenset[str] | None] = {
    EventType.SECURITY_VIOLATION: frozenset(
        {
            ViolationKind.UNAUTHENTICATED,
            ViolationKind.MALFORMED_INPUT,
            # A confined agent hammering connect() at what it may not reach.
            ViolationKind.SANDBOX_DENIED,
            # A flood of connections, each shut down past its bound.
            ViolationKind.TOO_MANY_CONNECTIONS,
        }
    ),
    EventType.CAPABILITY_DENIED: None,
}

#: How often the idle loop looks for summaries that are due (seconds).
_SCAN_EVERY = 0.1


@dataclass(slots=True)
class _Held:
    """Refusals of one peer held back since ``since`` (the clock's time)."""

    since: float
    first: float
    last: float
    principal: str | None
    pid: int | None
    count: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Budget:
    """A peer's bucket, and what it holds back now."""

    bucket: TokenBucket
    held: _Held | None = None


class RefusalLimiter:
    """An :data:`~capsup.supervisor.events.EventSink` for the server's
    events that bounds the records refusals make (module docstring).

    ``record`` takes every record to be written (the trail, then the
    metrics); ``count`` takes what is held back (the metrics alone).
    ``rate`` and ``burst`` are one peer's refusal records on average per
    second and in a row (``[supervisor] refusal_records_per_second`` and
    ``refusal_records_burst``). ``trace_ids`` makes the summaries' trace
    ids. Errors of ``record``
    propagate, so the caller fails closed as for any record; a summary that
    failed to be written is kept, to be tried again."""

    def __init__(
        self,
        record: EventSink,
        count: EventSink,
        *,
        trace_ids: Callable[[], str],
        rate: float,
        burst: int,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not rate > 0 or burst < 1 or max_peers < 1:
            raise ValueError("rate must be positive, burst and max_peers at least 1")
        self._record = record
        self._count = count
        self._trace_ids = trace_ids
        self._rate = rate
        self._burst = burst
        self._max_peers = max_peers
        self._clock = clock
        self._wall_clock = wall_clock
        now = clock()
        self._all = _Budget(self._bucket(ALL_PEERS_FACTOR, now))
        #: Peers by key, least recently refused first.
        self._peers: collections.OrderedDict[str, _Budget] = collections.OrderedDict()
        #: The budgets holding refusals back now (the shared one included).
        self._holding: dict[str, _Budget] = {}
        self._next_scan = now

    def __call__(self, event: Event) -> None:
        kind = _refusal_kind(event)
        if kind is None:
            if event.event == EventType.AGENT_TERMINATED and event.principal:
                self.forget(event.principal)
            self._record(event)
            return
        now = self._clock()
        key = _peer_key(event)
        budget = self._budget(key, now)
        self._summarize_if_due(key, budget, now)
        self._summarize_if_due(ALL_PEERS, self._all, now)
        if spend_all((budget.bucket, self._all.bucket), now):
            self._record(event)
            return
        if budget.bucket.tokens >= 1.0:  # the peer had tokens: the shared bucket ran out
            key, budget = ALL_PEERS, self._all
        _hold(budget, event, kind, now)
        self._holding[key] = budget
        self._count(event)

    def summarize_due(self) -> None:
        """Write the summaries that are due (for the server's idle hook)."""
        now = self._clock()
        if now < self._next_scan:
            return
        self._next_scan = now + _SCAN_EVERY
        for key, budget in list(self._holding.items()):
            self._summarize_if_due(key, budget, now)

    def forget(self, key: str) -> None:
        """Drop a peer (its agent exited), writing its summary first."""
        budget = self._peers.get(key)
        if budget is not None:
            self._summarize(key, budget, "exited")
            del self._peers[key]

    def close(self) -> None:
        """Write every summary still open (at shutdown). All are tried; the
        first failure is raised after."""
        failure: Exception | None = None
        for key, budget in list(self._holding.items()):
            try:
                self._summarize(key, budget, "shutdown")
            except Exception as error:
                failure = failure or error
        if failure is not None:
            raise failure

    @property
    def held_back(self) -> int:
        """Refusals held back whose summaries are not written yet."""
        return sum(b.held.count for b in self._holding.values() if b.held is not None)

    # -- internals ----------------------------------------------------------------

    def _bucket(self, factor: int, now: float) -> TokenBucket:
        burst = self._burst * factor
        return TokenBucket(burst, burst / (self._rate * factor), now)

    def _budget(self, key: str, now: float) -> _Budget:
        """``key``'s budget, made if new; the least recently refused peer
        is evicted (its summary written) to keep the table bounded."""
        budget = self._peers.get(key)
        if budget is not None:
            self._peers.move_to_end(key)
            return budget
        if len(self._peers) >= self._max_peers:
            oldest_key, oldest = next(iter(self._peers.items()))
            self._summarize(oldest_key, oldest, "evicted")
            del self._peers[oldest_key]
        budget = self._peers[key] = _Budget(self._bucket(1, now))
        return budget

    def _summarize_if_due(self, key: str, budget: _Budget, now: float) -> None:
        held = budget.held
        if held is None:
            return
        if now - held.since >= SUMMARY_INTERVAL:
            self._summarize(key, budget, "interval")
        elif budget.bucket.available(now) >= budget.bucket.capacity:
            self._summarize(key, budget, "refilled")

    def _summarize(self, key: str, budget: _Budget, cause: str) -> None:
        """Write what ``budget`` holds back as one record, then let it go
        (kept if the write fails, to be tried again)."""
        held = budget.held
        if held is None:
            return
        self._record(_summary(key, held, cause, self._wall_clock(), self._trace_ids()))
        budget.held = None
        self._holding.pop(key, None)


def _refusal_kind(event: Event) -> str | None:
    """``EVENT:KIND`` (the violation kind, or the refusal's reason) if
    ``event`` is one of :data:`REFUSALS`, else None."""
    if event.event not in REFUSALS:
        return None
    kinds = REFUSALS[event.event]
    kind = event.detail.get("kind")
    if kinds is not None and kind not in kinds:
        return None
    return f"{event.event}:{kind if kinds is not None else event.reason}"


def _peer_key(event: Event) -> str:
    """Who made the refusal: the agent, else the stranger's pid."""
    if event.principal:
        return event.principal
    return f"pid:{event.pid}" if event.pid else "unknown"


def _hold(budget: _Budget, event: Event, kind: str, now: float) -> None:
    held = budget.held
    if held is None:
        held = budget.held = _Held(now, event.time, event.time, event.principal, event.pid)
    held.count += 1
    held.last = event.time
    held.kinds[kind] = held.kinds.get(kind, 0) + 1


def _summary(key: str, held: _Held, cause: str, now: float, trace_id: str) -> Event:
    detail: dict[str, Any] = {
        "peer": key,
        "count": held.count,
        "first": held.first,
        "last": held.last,
        "kinds": dict(held.kinds),
        "cause": cause,
    }
    if key == ALL_PEERS:
        return Event(EventType.REFUSALS_SUPPRESSED, now, trace_id, detail=detail)
    return Event(
        EventType.REFUSALS_SUPPRESSED,
        now,
        trace_id,
        principal=held.principal,
        pid=held.pid,
        detail=detail,
    )
