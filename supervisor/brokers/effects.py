"""What every broker shares: the record of an effect, and the error an agent
gets for each reason a broker refuses or fails with.

A brokered op makes two records under one trace id: the kernel's record of
the use (``capability_validated``, or its denial), then the broker's record
of what happened (``file_operation``, ``http_request``, ``database_query``):
the effect, or why there was none. The second is built here, the same way
for every broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, NoReturn

from capsup.agents.capability import Capability
from capsup.agents.errors import (
    BadRequest,
    CapsupError,
    ConstraintViolation,
    Revoked,
    UpstreamError,
)
from capsup.supervisor.audit_record import clip
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.injection import redact
from capsup.supervisor.principal import Principal

__all__ = ["ERROR_FOR_REASON", "EffectRecorder", "clip", "effect_event", "refusal_error"]

#: The error class each broker reason reaches the agent as: what the agent
#: sent is wrong (``bad_request``), what the capability allows was reached
#: (``constraint_violation``), or the far end failed (``upstream_error``).
#: A reason missing here is a bug, and fails as ``internal_error``.
ERROR_FOR_REASON: Final[Mapping[str, type[CapsupError]]] = {
    # http
    "bad_request": BadRequest,
    "bad_header": BadRequest,
    "forbidden_header": BadRequest,
    "headers_too_large": BadRequest,
    "private_address": ConstraintViolation,
    "metadata_address": ConstraintViolation,
    "request_too_large": ConstraintViolation,
    "response_too_large": ConstraintViolation,
    "encoded_response": ConstraintViolation,
    "revoked": Revoked,
    "dns_failed": UpstreamError,
    "connect_failed": UpstreamError,
    "tls_error": UpstreamError,
    "timeout": UpstreamError,
    "connection_lost": UpstreamError,
    "protocol_error": UpstreamError,
    # query
    "bad_params": BadRequest,
    "authorizer_denied": ConstraintViolation,
    "too_many_rows": ConstraintViolation,
    "too_many_bytes": ConstraintViolation,
    "read_only": ConstraintViolation,
    "multiple_statements": ConstraintViolation,
    "unavailable": UpstreamError,
    "database_error": UpstreamError,
}


def refusal_error(
    op: str, reason: str, message: str, cap: Capability | None, trace_id: str
) -> CapsupError:
    """The error for a broker's refusal or failure (``reason``), as the agent gets it."""
    error_class = ERROR_FOR_REASON[reason]
    return error_class(
        f"{op}: {message}",
        reason=reason,
        capability_id=cap.id if cap else None,
        trace_id=trace_id,
    )


def effect_event(
    event: EventType,
    *,
    now: float,
    trace_id: str,
    principal: Principal,
    cap: Capability | None,
    capability_id: str,
    op: str,
    reason: str | None,
    detail: dict[str, Any],
) -> Event:
    """The broker's record of one op: ``decision`` allow when ``reason`` is
    None (done), deny otherwise (refused or failed; no effect, or none known)."""
    return Event(
        event,
        now,
        trace_id,
        principal.id,
        principal.pid,
        cap.id if cap else clip(capability_id),
        cap.parent_id if cap else None,
        cap.resource if cap else None,
        op,
        "allow" if reason is None else "deny",
        reason,
        detail,
    )


class EffectRecorder:
    """The records of one brokered op's outcome (``http_request``,
    ``database_query``): done, or refused and raised as the agent gets it.
    ``detail`` goes into every record; ``secrets`` are redacted from
    refusal messages (the credentials the op carried)."""

    def __init__(
        self,
        event: EventType,
        op: str,
        *,
        principal: Principal,
        capability_id: str,
        operation: str,
        detail: Mapping[str, Any],
        now: float,
        trace_id: str,
        emit: Callable[[Event], None],
        secrets: Iterable[str] = (),
    ) -> None:
        self._event_type = event
        self._op = op
        self._principal = principal
        self._capability_id = capability_id
        self._operation = operation
        self._detail = dict(detail)
        self._secrets = tuple(secrets)
        self._now = now
        self._trace_id = trace_id
        self._emit = emit

    def done(self, cap: Capability, **detail: Any) -> None:
        self._emit(self._event(None, cap, {"result": "ok", **detail}))

    def refused(self, reason: str, message: str, cap: Capability | None, **detail: Any) -> NoReturn:
        """Record a refusal or failure, then raise it as the agent gets it."""
        if self._secrets:
            message = redact(message, self._secrets)
        error = refusal_error(self._op, reason, message, cap, self._trace_id)
        self._emit(
            self._event(reason, cap, {"result": "refused", "message": error.message, **detail})
        )
        raise error

    def _event(self, reason: str | None, cap: Capability | None, detail: dict[str, Any]) -> Event:
        return effect_event(
            self._event_type,
            now=self._now,
            trace_id=self._trace_id,
            principal=self._principal,
            cap=cap,
            capability_id=self._capability_id,
            op=self._operation,
            reason=reason,
            detail={**self._detail, **detail},
        )
