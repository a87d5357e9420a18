"""The ``http`` op: the kernel's check on the loop, the exchange on a worker.

1. On the loop (:func:`prepare_http`): the kernel validates the use (the
   method as the operation, the URL as the target, the body's size), with
   its audit record and the capability's rate limits; the URL is parsed
   once more by the same parser into the :class:`ParsedURL` the request is
   made from; the agent's headers are checked; the bounds are the
   capability's ``max_bytes`` within the broker's caps; the credentials the
   capability carries (its policy ceiling's ``inject``) are taken from the
   kernel, never from the agent.
2. On a worker (:meth:`PreparedHttp.perform`): the host is resolved once,
   every address checked against the capability, and the request sent to a
   checked address (supervisor/brokers/http.py). An injected value the
   server sends back (an echo service) is redacted from the response.
3. On the loop (:meth:`PreparedHttp.finish`): the ``http_request`` record of
   the outcome (header names injected, never values), and the reply or the
   error (supervisor/brokers/effects.py says which error each reason is).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from capsup.agents import protocol as p
from capsup.agents.capability import Capability
from capsup.supervisor.brokers.effects import EffectRecorder, clip
from capsup.supervisor.brokers.http import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpBroker,
    HttpCall,
    HttpLimits,
    HttpRefused,
    HttpResult,
    check_agent_headers,
    resolve_checked,
)
from capsup.supervisor.brokers.http_checks import (
    check_credentialed_request,
    check_credentialed_response,
)
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.injection import Injection, redact
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.principal import Principal
from capsup.validators import Use
from capsup.validators.base import Refusal
from capsup.validators.http import parse_url

__all__ = ["PreparedHttp", "prepare_http"]

_OP: Final = p.Op.HTTP.value


class PreparedHttp:
    """One validated ``http`` call, ready for a worker."""

    def __init__(
        self,
        *,
        kernel: Kernel,
        broker: HttpBroker,
        call: HttpCall,
        cap: Capability,
        capability_host: str,
        limits: HttpLimits,
        injection: Injection | None,
        record: EffectRecorder,
        partition: str,
    ) -> None:
        self._kernel = kernel
        self._broker = broker
        self._partition = partition
        self._call = call
        self._cap = cap
        self._capability_host = capability_host
        self._limits = limits
        self._injection = injection
        self._record = record
        self._started = time.perf_counter()

    def perform(self) -> HttpResult:
        """Resolve, check and send (on a worker: it blocks), unless the
        capability ended since the loop validated it (the job may have
        waited for a worker)."""
        if not self._kernel.is_live(self._cap.id, time.time()):
            raise HttpRefused("revoked", f"{self._cap.id} ended before the request was made")
        addresses = resolve_checked(self._call.url, self._capability_host)
        inject = dict(self._injection.headers) if self._injection else {}
        result = self._broker.exchange(
            self._call, addresses, inject=inject, limits=self._limits, partition=self._partition
        )
        if self._injection is None:
            return result
        check_credentialed_response(result.headers)
        secrets = self._injection.secrets
        headers = [(name, redact(value, secrets)) for name, value in result.headers]
        return HttpResult(result.status, headers, redact(result.body, secrets))

    def finish(self, outcome: HttpResult | BaseException) -> dict[str, Any]:
        """Record the outcome and return the reply's result, or raise its error
        (on the loop). An exception that is not a refusal is re-raised: a bug,
        which the server answers as ``internal_error``."""
        seconds = round(time.perf_counter() - self._started, 6)
        if isinstance(outcome, HttpRefused):
            self._record.refused(outcome.reason, outcome.message, self._cap, seconds=seconds)
        if isinstance(outcome, BaseException):
            raise outcome
        self._record.done(
            self._cap,
            status=outcome.status,
            bytes_sent=len(self._call.body),
            bytes_received=len(outcome.body),
            seconds=seconds,
        )
        return {
            "status": outcome.status,
            "headers": [[name, value] for name, value in outcome.headers],
            "body": outcome.body,
        }


def prepare_http(
    kernel: Kernel,
    broker: HttpBroker,
    principal: Principal,
    args: p.HttpArgs,
    *,
    now: float,
    trace_id: str,
    emit: Callable[[Event], None],
) -> PreparedHttp:
    """Validate ``args`` for ``principal`` and make the call a worker performs.

    Raises :class:`~capsup.agents.errors.CapsupError`: the kernel's refusals
    (recorded by the kernel), or the broker's (recorded here as a refused
    ``http_request``)."""
    cap = kernel.validate(
        principal,
        args.capability,
        Use(args.method, args.url, len(args.body)),
        now=now,
        trace_id=trace_id,
    )
    injection = kernel.injection(cap.id)
    record = EffectRecorder(
        EventType.HTTP_REQUEST,
        _OP,
        principal=principal,
        capability_id=args.capability,
        operation=args.method,
        # The names of the headers the policy added, never their values.
        detail={
            "url": clip(args.url),
            "injected": [n for n, _ in injection.headers] if injection else [],
        },
        now=now,
        trace_id=trace_id,
        emit=emit,
        secrets=injection.secrets if injection else (),
    )
    try:
        if not cap.resource.startswith(("http://", "https://")):
            raise HttpRefused("bad_request", f"{cap.id} is not an http(s) capability")
        headers = check_agent_headers(dict(args.headers))
        if injection is not None:
            check_credentialed_request(headers)
        # The parser the validator used, on the same text: the same URL.
        url = parse_url(args.url)
        capability_host = parse_url(cap.resource, allow_wildcard=True).host
        max_bytes = cap.constraints.get("max_bytes")
        limits = HttpLimits(
            max_request_bytes=_within(max_bytes, DEFAULT_MAX_REQUEST_BYTES),
            max_response_bytes=_within(max_bytes, DEFAULT_MAX_RESPONSE_BYTES),
        )
        call = HttpCall(args.method, url, headers, args.body, args.timeout)
    except HttpRefused as refusal:
        record.refused(refusal.reason, refusal.message, cap)
    except Refusal as refusal:  # the URL passed the validator: this is not expected
        record.refused("bad_request", f"{refusal.reason}: {refusal}", cap)
    return PreparedHttp(
        kernel=kernel,
        broker=broker,
        call=call,
        cap=cap,
        capability_host=capability_host,
        limits=limits,
        injection=injection,
        record=record,
        # Connections are the caller's own, per set of credentials.
        partition=f"{principal.id}|{id(injection) if injection else ''}",
    )


def _within(limit: object, cap: int) -> int:
    """A capability's ``max_bytes`` (a positive int, or absent) within the broker's cap."""
    return min(limit, cap) if isinstance(limit, int) else cap
