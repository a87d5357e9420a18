"""From checked op arguments to kernel calls, and from their results to replies.

The socket loop (:mod:`capsup.supervisor.server`) authenticates the peer and
parses the envelope; this module owns the meaning of each op that the kernel
answers on its own. ``spawn`` and ``wait`` involve processes and live in the
server.
"""

from __future__ import annotations

from typing import Any

from capsup.agents import protocol as p
from capsup.agents.capability import Capability
from capsup.supervisor.derive import CapabilityRequest, Delegation
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.principal import Principal
from capsup.validators import Use

__all__ = ["capability_request", "dispatch_kernel_op"]


#: The ``validate`` result of recently validated capabilities, encoded. A
#: capability never changes, so its result is encoded once, not on every
#: validate (the hot path).
_VALIDATED: dict[str, tuple[Capability, p.Packed]] = {}
_VALIDATED_SIZE = 65536


def _validated(cap: Capability) -> p.Packed:
    cached = _VALIDATED.get(cap.id)
    if cached is not None and cached[0] is cap:
        return cached[1]
    if len(_VALIDATED) >= _VALIDATED_SIZE:
        _VALIDATED.clear()
    result = p.Packed(p.encode({"allowed": True, "capability": cap.to_wire()}))
    _VALIDATED[cap.id] = (cap, result)
    return result


def capability_request(args: p.RequestArgs) -> CapabilityRequest:
    return CapabilityRequest(
        args.resource, sorted(args.operations), args.constraints, args.ttl, args.metadata
    )


def dispatch_kernel_op(
    kernel: Kernel, principal: Principal, args: p.OpArgs, *, now: float, trace_id: str
) -> dict[str, Any] | p.Packed:
    """Run one kernel op and shape its wire result (for :func:`~capsup.agents.protocol.ok_reply`).
    Raises CapsupError."""
    match args:
        case p.ValidateArgs():
            use = Use(args.operation, args.resource, args.size, args.statement)
            cap = kernel.validate(principal, args.capability, use, now=now, trace_id=trace_id)
            return _validated(cap)
        case p.RequestArgs():
            cap = kernel.request(principal, capability_request(args), now=now, trace_id=trace_id)
            return cap.to_wire()
        case p.DelegateArgs():
            delegation = Delegation(
                args.to,
                args.resource,
                None if args.operations is None else sorted(args.operations),
                args.constraints,
                args.ttl,
            )
            cap = kernel.delegate(
                principal, args.capability, delegation, now=now, trace_id=trace_id
            )
            return cap.to_wire()
        case p.RevokeArgs():
            return {
                "revoked": kernel.revoke(principal, args.capability, now=now, trace_id=trace_id)
            }
        case p.RevokeAgentArgs():
            revoked = kernel.revoke_all_for_agent(principal, args.agent, now=now, trace_id=trace_id)
            return {"revoked": revoked}
        case p.ListArgs():
            return {
                "capabilities": [c.to_wire() for c in kernel.list_capabilities(principal, now=now)]
            }
        case p.RequestPlanArgs():
            requests = [capability_request(r) for r in args.requests]
            caps = kernel.request_for_plan(principal, requests, now=now, trace_id=trace_id)
            return {"capabilities": [c.to_wire() for c in caps]}
        case p.WhoamiArgs():
            return {"principal": principal.name, "agent_id": principal.id, "pid": principal.pid}
    raise TypeError(f"not a kernel op: {type(args).__name__}")
