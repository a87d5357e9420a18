"""Security events: what the kernel and the supervisor tell audit and metrics.

The kernel emits one :class:`Event` per security-relevant fact, synchronously,
before the call that caused it returns; sinks (the audit trail, the metrics)
therefore see a denial before the reply that reports it is sent. A sink that
cannot record an event raises, and the caller fails closed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = ["NO_DETAIL", "Event", "EventSink", "EventType", "ViolationKind", "record_all"]


class EventType(StrEnum):
    """The audit vocabulary (docs/audit.md documents each record)."""

    CAPABILITY_REQUESTED = "capability_requested"
    CAPABILITY_GRANTED = "capability_granted"
    CAPABILITY_DENIED = "capability_denied"
    CAPABILITY_DELEGATED = "capability_delegated"
    CAPABILITY_REVOKED = "capability_revoked"
    CAPABILITY_EXPIRED = "capability_expired"
    CAPABILITY_VALIDATED = "capability_validated"
    CAPABILITY_VALIDATION_FAILED = "capability_validation_failed"
    CONSTRAINT_VIOLATION = "constraint_violation"
    SECURITY_VIOLATION = "security_violation"
    #: The effect of a brokered file operation, or the broker's refusal of it.
    FILE_OPERATION = "file_operation"
    #: The outcome of a brokered HTTP request, or the broker's refusal of it.
    HTTP_REQUEST = "http_request"
    #: The outcome of a brokered SQL statement, or the broker's refusal of it.
    DATABASE_QUERY = "database_query"
    AGENT_STARTED = "agent_started"
    AGENT_TERMINATED = "agent_terminated"
    KERNEL_STARTED = "kernel_started"
    KERNEL_STATE_RESTORED = "kernel_state_restored"
    #: Refusal records a peer's budget held back, counted in one record
    #: (supervisor/refusal_limit.py).
    REFUSALS_SUPPRESSED = "refusals_suppressed"


class ViolationKind(StrEnum):
    """Why a ``security_violation`` was raised (a bounded metrics label)."""

    STOLEN_ID = "stolen_id"
    FORGED_ID = "forged_id"
    DELEGATION_WIDENING = "delegation_widening"
    UNAUTHENTICATED = "unauthenticated"
    MALFORMED_INPUT = "malformed_input"
    NOT_AUTHORIZED = "not_authorized"
    #: A confined agent tried to reach something outside its sandbox by OS
    #: means (a ``connect()`` the supervisor refused).
    SANDBOX_DENIED = "sandbox_denied"
    #: A connection past a bound (per connecting process, or in all) was
    #: shut down as soon as it was accepted (supervisor/peers.py).
    TOO_MANY_CONNECTIONS = "too_many_connections"


#: The detail of an event that has none (shared, so it cannot be mutable).
NO_DETAIL: Mapping[str, Any] = MappingProxyType({})


class Event(NamedTuple):
    """One security event.

    ``principal`` is the acting principal's id (an agent id, a service name,
    or ``operator``), never a name a client claimed. ``decision`` is
    ``"allow"`` or ``"deny"`` where a decision was made; ``reason`` the error
    code or the validator's reason code. ``detail`` holds event-specific
    fields (the new holder of a delegation, an exit code, a violation kind).

    A named tuple rather than a frozen dataclass: as immutable, and built
    three times faster, which counts on the validate path (one per use).
    """

    event: EventType
    time: float
    trace_id: str
    principal: str | None = None
    pid: int | None = None
    capability_id: str | None = None
    parent_id: str | None = None
    resource: str | None = None
    operation: str | None = None
    decision: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] = NO_DETAIL


EventSink = Callable[[Event], None]


def record_all(sink: EventSink, events: Sequence[Event]) -> None:
    """Hand ``events`` to ``sink``, in order: all in one go where the sink
    takes a batch (a ``record_all`` method of its own: the audit trail
    writes them in one write and keeps one head, instead of one of each per
    record; a cascade of 100,000 revocations is one batch), else one by one.
    Either way each event is recorded or the call raises."""
    batch = getattr(sink, "record_all", None)
    if batch is not None:
        batch(events)
        return
    for event in events:
        sink(event)
