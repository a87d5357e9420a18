"""How a new capability is derived: from a request and a ceiling, or from a
parent by delegation.

These are pure functions of their arguments (the validators, a ceiling or a
parent, the time); the kernel decides who may call them and records the
result. Keeping the algebra here, apart from the kernel's bookkeeping, is what
lets the property tests check "delegation only narrows" on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capsup.agents.capability import Capability, new_capability_id
from capsup.agents.errors import (
    BadRequest,
    DelegationDepthExhausted,
    DelegationWidening,
    DeniedByPolicy,
    InvalidConstraints,
    InvalidOperation,
    InvalidResource,
)
from capsup.supervisor.policy import Ceiling
from capsup.validators import (
    ConstraintError,
    OperationError,
    ResourceError,
    Validator,
    ValidatorRegistry,
)

__all__ = ["CapabilityRequest", "Delegation", "delegate_from", "grant_within"]

_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class CapabilityRequest:
    """What a principal asks for; also one step of a plan."""

    resource: str
    operations: Sequence[str]
    constraints: Mapping[str, Any] | None = None
    ttl: float | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Delegation:
    """What a holder asks to hand on; ``None`` fields are inherited from the parent."""

    to: str
    resource: str | None = None
    operations: Sequence[str] | None = None
    constraints: Mapping[str, Any] | None = None
    ttl: float | None = None
    metadata: Mapping[str, Any] | None = None


def grant_within(
    request: CapabilityRequest,
    ceilings: Sequence[Ceiling],
    validators: ValidatorRegistry,
    holder: str,
    now: float,
) -> tuple[Capability, Ceiling]:
    """The capability the first covering ceiling allows, and that ceiling;
    raises DeniedByPolicy, or an ``invalid_*`` error for a malformed request.

    The grant is the request met with the ceiling's constraints (a ceiling's
    limits always apply), with the request's own ttl and depth when they fit.
    The request's constraints are parsed only once a ceiling covers its
    resource and operations: parsing compiles deny globs, and a principal
    the policy grants nothing there must not make the supervisor do that.
    """
    validator, resource = _canonical(validators, request.resource)
    operations = _operations(validator, request.operations)
    ttl = _ttl(request.ttl)
    metadata = _metadata(request.metadata)
    covering = [
        ceiling
        for ceiling in ceilings
        if _scheme_validator(validators, ceiling.resource) is validator
        and operations <= ceiling.operations
        and validator.resource_within(resource, ceiling.resource)
    ]
    why = "no policy entry for this principal" if not ceilings else "no ceiling covers it"
    if not covering:
        raise _denied_by_policy(resource, operations, why)
    constraints, depth = _constraints(validator, request.constraints)
    for ceiling in covering:
        if ttl is not None and ceiling.max_ttl is not None and ttl > ceiling.max_ttl:
            why = f"ttl {ttl:g}s exceeds the ceiling's max_ttl {ceiling.max_ttl:g}s"
            continue
        if depth is not None and depth > ceiling.max_delegation_depth:
            why = (
                f"max_delegation_depth {depth} exceeds the ceiling's {ceiling.max_delegation_depth}"
            )
            continue
        try:
            limits = validator.rebase_constraints(ceiling.constraints, ceiling.resource, resource)
        except ConstraintError as error:
            why = f"the ceiling's constraints deny it: {error}"
            continue
        held = validator.meet_constraints(constraints, limits)
        try:
            validator.check_held_constraints(held)
        except ConstraintError as error:
            why = f"with the ceiling's constraints: {error}"
            continue
        cap = Capability(
            id=new_capability_id(),
            resource=resource,
            operations=operations,
            constraints=held,
            holder=holder,
            granted_at=now,
            expires_at=now + (ceiling.default_ttl if ttl is None else ttl),
            delegation_depth=ceiling.max_delegation_depth if depth is None else depth,
            metadata=metadata,
        )
        return cap, ceiling
    raise _denied_by_policy(resource, operations, why)


def _denied_by_policy(resource: str, operations: frozenset[str], why: str) -> DeniedByPolicy:
    ops = ", ".join(sorted(operations))
    return DeniedByPolicy(f"{resource} [{ops}] denied by policy: {why}")


def delegate_from(
    parent: Capability,
    delegation: Delegation,
    validators: ValidatorRegistry,
    now: float,
) -> Capability:
    """The child capability; anything that would widen is refused, never clipped.

    Omitted fields are inherited. Constraint keys the child names must each be
    at least as strict as the parent's, except additive ones (a deny list),
    whose named value is added to the parent's; keys it omits are inherited,
    so the child's constraints are the meet of both.
    """
    if parent.delegation_depth <= 0:
        raise DelegationDepthExhausted(
            "this capability may not be delegated further", capability_id=parent.id
        )
    validator = validators.for_uri(parent.resource)
    resource = parent.resource
    if delegation.resource is not None:
        child_validator, resource = _canonical(validators, delegation.resource)
        if child_validator is not validator or not validator.resource_within(
            resource, parent.resource
        ):
            raise _widening(parent, f"resource {resource} is not within {parent.resource}")
    operations = parent.operations
    if delegation.operations is not None:
        operations = _operations(validator, delegation.operations)
        extra = operations - parent.operations
        if extra:
            raise _widening(parent, f"operations {sorted(extra)} are not granted to the parent")
    try:
        # The parent's constraints, said of the child's resource.
        inherited = validator.rebase_constraints(parent.constraints, parent.resource, resource)
    except ConstraintError as error:
        raise _widening(
            parent, f"resource {resource} is outside what the parent allows: {error}"
        ) from None
    named, depth = _constraints(validator, delegation.constraints)
    # What the child names of an additive key (a deny list) is added to what
    # it inherits, so it need not repeat the parent's list; any other key it
    # names must be at least as strict as the parent's, or it is refused.
    compared = {k: v for k, v in named.items() if k not in validator.additive_constraints}
    wider = validator.constraints_within(
        compared, {k: v for k, v in inherited.items() if k in compared}
    )
    if wider is not None:
        raise _widening(parent, f"constraint {wider!r} is looser than the parent's")
    if depth is None:
        depth = parent.delegation_depth - 1
    elif depth > parent.delegation_depth - 1:
        raise _widening(
            parent,
            f"max_delegation_depth {depth} exceeds the {parent.delegation_depth - 1} left",
        )
    held = validator.meet_constraints(named, inherited)
    try:
        validator.check_held_constraints(held)
    except ConstraintError as error:
        raise InvalidConstraints(f"with the parent's constraints: {error}") from None
    expires_at = parent.expires_at
    ttl = _ttl(delegation.ttl)
    if ttl is not None:
        expires_at = now + ttl
        if expires_at > parent.expires_at:
            raise _widening(parent, "ttl outlives the parent capability")
    return Capability(
        id=new_capability_id(),
        resource=resource,
        operations=operations,
        constraints=held,
        holder=delegation.to,
        granted_at=now,
        expires_at=expires_at,
        parent_id=parent.id,
        delegation_depth=depth,
        metadata=_metadata(delegation.metadata),
    )


def _widening(parent: Capability, message: str) -> DelegationWidening:
    return DelegationWidening(f"delegation would widen: {message}", capability_id=parent.id)


def _scheme_validator(validators: ValidatorRegistry, resource: str) -> Validator | None:
    try:
        return validators.for_uri(resource)
    except ResourceError:  # a scheme these validators do not serve covers nothing
        return None


def _canonical(validators: ValidatorRegistry, resource: object) -> tuple[Validator, str]:
    if not isinstance(resource, str):
        raise InvalidResource("resource must be a URI string")
    try:
        validator = validators.for_uri(resource)
        return validator, validator.canonical_resource(resource)
    except ResourceError as error:
        raise InvalidResource(str(error)) from None


#: One shared frozenset per distinct set of operations. Bounded: every member
#: is one of a scheme's few operations. Saves ~200 bytes per live capability.
_INTERNED_OPERATIONS: dict[frozenset[str], frozenset[str]] = {}


def _operations(validator: Validator, operations: Iterable[object]) -> frozenset[str]:
    if isinstance(operations, str | bytes) or not isinstance(operations, Iterable):
        raise InvalidOperation("operations must be a list of strings")
    try:
        ops = validator.normalize_operations(operations)
    except OperationError as error:
        raise InvalidOperation(str(error)) from None
    return _INTERNED_OPERATIONS.setdefault(ops, ops)


def _constraints(
    validator: Validator, raw: Mapping[str, Any] | None
) -> tuple[dict[str, Any], int | None]:
    """The scheme's constraints, and the kernel's own ``max_delegation_depth``."""
    if raw is None:
        return {}, None
    if not isinstance(raw, Mapping):
        raise InvalidConstraints("constraints must be a map")
    rest = {k: v for k, v in raw.items() if k != "max_delegation_depth"}
    depth = raw.get("max_delegation_depth")
    if depth is not None and (
        isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= _MAX_DEPTH
    ):
        raise InvalidConstraints(f"max_delegation_depth must be an integer from 0 to {_MAX_DEPTH}")
    try:
        return validator.normalize_constraints(rest), depth
    except ConstraintError as error:
        raise InvalidConstraints(str(error)) from None


def _ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise BadRequest("ttl must be a finite number of seconds")
    if ttl <= 0:
        raise BadRequest("ttl must be positive")
    return float(ttl)


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise BadRequest("metadata must be a map with string keys")
    try:  # it is stored as JSON: refuse now what the store could not write
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError):
        raise BadRequest(
            "metadata must hold only strings, numbers, booleans, nil, lists and maps"
        ) from None
    return dict(metadata)
