"""The one exception tree of capsup.

Every error that crosses the wire has a stable snake_case ``code``; the kernel
raises these classes and the SDK raises the same classes when a reply carries
the code, so an agent catches exactly what the kernel decided. The tree groups
codes by what the caller can do about them::

    CapsupError
    +-- RequestError              the request itself is wrong; fix it and retry
    |   +-- BadRequest               bad_request
    |   +-- UnknownOperation         unknown_op
    |   +-- MessageTooLarge          message_too_large
    |   +-- InvalidResource          invalid_resource
    |   +-- InvalidOperation         invalid_operation
    |   +-- InvalidConstraints       invalid_constraints
    +-- Unauthenticated              unauthenticated
    +-- AccessDenied              the kernel said no; retrying will not help
    |   +-- DeniedByPolicy           denied_by_policy
    |   +-- UnknownCapability        unknown_capability
    |   +-- Revoked                  revoked
    |   +-- Expired                  expired
    |   +-- NotHolder                not_holder
    |   +-- OperationNotAllowed      operation_not_allowed
    |   +-- ConstraintViolation      constraint_violation (``reason`` says which)
    |   +-- RateLimited              rate_limited
    |   +-- DelegationWidening       delegation_widening
    |   +-- DelegationDepthExhausted delegation_depth_exhausted
    |   +-- NotAuthorized            not_authorized
    +-- AgentError                about a (sub-)agent process
    |   +-- UnknownAgent             unknown_agent
    |   +-- SpawnFailed              spawn_failed
    |   +-- WaitTimeout              timeout
    +-- SupervisorError           the supervisor could not do its part
    |   +-- InternalError            internal_error
    |   +-- AuditUnavailable         audit_unavailable
    |   +-- UpstreamError            upstream_error (``reason`` says which)
    |   +-- Busy                     busy
    +-- ConnectionClosed          the SDK's socket was closed by this side
    +-- SupervisorGone            the supervisor stopped answering

Exceptions pickle cleanly (they cross process boundaries in tests and in
multiprocessing code) and carry the capability id and the validator's reason
where one applies.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AccessDenied",
    "AgentError",
    "AuditUnavailable",
    "BadRequest",
    "Busy",
    "CapsupError",
    "ConnectionClosed",
    "ConstraintViolation",
    "DelegationDepthExhausted",
    "DelegationWidening",
    "DeniedByPolicy",
    "Expired",
    "InternalError",
    "InvalidConstraints",
    "InvalidOperation",
    "InvalidResource",
    "MessageTooLarge",
    "NotAuthorized",
    "NotHolder",
    "OperationNotAllowed",
    "RateLimited",
    "RequestError",
    "Revoked",
    "SpawnFailed",
    "SupervisorError",
    "SupervisorGone",
    "Unauthenticated",
    "UnknownAgent",
    "UnknownCapability",
    "UnknownOperation",
    "UpstreamError",
    "WaitTimeout",
    "error_class_for_code",
]


class CapsupError(Exception):
    """Base of every capsup error.

    ``code`` is the stable wire code; ``reason`` is the finer, equally stable
    code a validator gives for a ``constraint_violation``; ``capability_id``
    names the capability the error is about, when there is one.
    """

    code: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        capability_id: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.capability_id = capability_id
        self.trace_id = trace_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive Exception's default pickling.
        return (_rebuild_error, (type(self), self.message, self.__dict__.copy()))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` map of a reply."""
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.reason is not None:
            wire["reason"] = self.reason
        if self.capability_id is not None:
            wire["capability"] = self.capability_id
        return wire


def _rebuild_error(cls: type[CapsupError], message: str, state: dict[str, Any]) -> CapsupError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class RequestError(CapsupError):
    """The request is malformed or names something that does not exist."""


class BadRequest(RequestError):
    code = "bad_request"


class UnknownOperation(RequestError):
    code = "unknown_op"


class MessageTooLarge(RequestError):
    code = "message_too_large"


class InvalidResource(RequestError):
    code = "invalid_resource"


class InvalidOperation(RequestError):
    code = "invalid_operation"


class InvalidConstraints(RequestError):
    code = "invalid_constraints"


class Unauthenticated(CapsupError):
    code = "unauthenticated"


class AccessDenied(CapsupError):
    """The kernel decided against the request; the same request will fail again."""


class DeniedByPolicy(AccessDenied):
    code = "denied_by_policy"


class UnknownCapability(AccessDenied):
    code = "unknown_capability"


class Revoked(AccessDenied):
    code = "revoked"


class Expired(AccessDenied):
    code = "expired"


class NotHolder(AccessDenied):
    """A capability id was presented by someone other than its holder."""

    code = "not_holder"


class OperationNotAllowed(AccessDenied):
    code = "operation_not_allowed"


class ConstraintViolation(AccessDenied):
    """A validator denied the concrete resource; ``reason`` says why."""

    code = "constraint_violation"


class RateLimited(AccessDenied):
    code = "rate_limited"


class DelegationWidening(AccessDenied):
    code = "delegation_widening"


class DelegationDepthExhausted(AccessDenied):
    code = "delegation_depth_exhausted"


class NotAuthorized(AccessDenied):
    code = "not_authorized"


class AgentError(CapsupError):
    """About an agent process rather than a capability."""


class UnknownAgent(AgentError):
    code = "unknown_agent"


class SpawnFailed(AgentError):
    code = "spawn_failed"


class WaitTimeout(AgentError):
    code = "timeout"


class SupervisorError(CapsupError):
    """The supervisor failed to do its part; the request changed nothing."""


class InternalError(SupervisorError):
    code = "internal_error"


class AuditUnavailable(SupervisorError):
    """The audit trail cannot be written, so the supervisor fails closed."""

    code = "audit_unavailable"


class UpstreamError(SupervisorError):
    """The server or database a brokered ``http`` or ``query`` went to did
    not answer as it should: ``reason`` says how (``dns_failed``,
    ``connect_failed``, ``tls_error``, ``timeout``, ``connection_lost``,
    ``protocol_error``, ``unavailable``, ``database_error``). The capability
    allowed the request; whether it had an effect there is unknown."""

    code = "upstream_error"


class Busy(SupervisorError):
    """Too many brokered requests of this agent (or of all) are in flight;
    nothing was done. Retry once some have been answered."""

    code = "busy"


class ConnectionClosed(CapsupError):
    """The client's connection was closed by this side (``Client.close``)."""

    code = "connection_closed"


class SupervisorGone(CapsupError):
    """The supervisor did not answer: it exited, or the endpoint is wrong."""

    code = "supervisor_gone"


_BY_CODE: dict[str, type[CapsupError]] = {}


def _index(cls: type[CapsupError]) -> None:
    for sub in cls.__subclasses__():
        if "code" in sub.__dict__:
            _BY_CODE[sub.code] = sub
        _index(sub)


_index(CapsupError)


def error_class_for_code(code: str) -> type[CapsupError]:
    """The exception class for a wire code; unknown codes map to the base class."""
    return _BY_CODE.get(code, CapsupError)
