"""Policy: the configured ceilings, per principal name.

A principal is granted a capability only if the request lies within one of
its ceilings; a principal with no entry can be granted nothing. Ceilings are
parsed once, at load, with the same validators the kernel uses, so a typo in
a resource or a constraint fails the load instead of silently never matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from capsup.supervisor.injection import Injection, InjectionError, parse_injection
from capsup.validators import (
    ConstraintError,
    OperationError,
    ResourceError,
    ValidatorRegistry,
)

__all__ = ["DEFAULT_TTL", "Ceiling", "Policy", "PolicyError", "parse_ceiling", "strict_table"]

#: Lifetime of a grant that names no ttl, unless its ceiling's max_ttl is shorter.
DEFAULT_TTL = 3600.0

_CEILING_KEYS = frozenset(
    {"resource", "operations", "constraints", "max_ttl", "max_delegation_depth", "inject"}
)
#: The schemes whose brokered requests can carry injected headers.
_INJECTABLE_SCHEMES = frozenset({"http", "https"})


class PolicyError(ValueError):
    """A ceiling is malformed; the message names the key and what is wrong."""


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The widest capability one entry of the policy allows."""

    resource: str
    operations: frozenset[str]
    constraints: Mapping[str, Any] = field(default_factory=dict)
    max_ttl: float | None = None
    max_delegation_depth: int = 0
    #: Headers the broker adds to every request under a capability granted
    #: here (supervisor/injection.py). Kept out of ``constraints`` on purpose:
    #: constraints travel to the agent, the state file and the audit trail.
    inject: Injection | None = None

    @property
    def default_ttl(self) -> float:
        return DEFAULT_TTL if self.max_ttl is None else min(DEFAULT_TTL, self.max_ttl)


@dataclass(frozen=True, slots=True)
class Policy:
    """Principal name -> its ceilings, and which names its sub-agents may take."""

    ceilings: Mapping[str, Sequence[Ceiling]] = field(default_factory=dict)
    spawnable: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def ceilings_for(self, name: str) -> Sequence[Ceiling]:
        return self.ceilings.get(name, ())

    def may_spawn(self, parent: str, child: str) -> bool:
        """Whether an agent under policy ``parent`` may start a sub-agent that is
        judged by the policy entry ``child`` (its ``may_spawn`` list says so)."""
        return child in self.spawnable.get(parent, ())


def strict_table(raw: object, where: str, keys: AbstractSet[str]) -> Mapping[str, Any]:
    """``raw`` as a config table holding only ``keys``; ``where`` names it in
    errors. An unknown key is refused, not ignored: a misspelt constraint or
    option must not silently mean "no limit"."""
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must be a table, not {type(raw).__name__}")
    unknown = set(raw) - keys
    if unknown:
        raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    return raw


def parse_ceiling(raw: object, validators: ValidatorRegistry, where: str) -> Ceiling:
    """One ``allow`` entry; ``where`` names it in errors (``agents.x.allow[0]``)."""
    raw = strict_table(raw, where, _CEILING_KEYS)
    resource = raw.get("resource")
    if not isinstance(resource, str):
        raise PolicyError(f"{where}.resource: required, a resource URI string")
    try:
        validator = validators.for_uri(resource)
        canonical = validator.canonical_resource(resource)
    except ResourceError as error:
        raise PolicyError(f"{where}.resource: {error}") from None
    operations = raw.get("operations")
    if not isinstance(operations, list) or not operations:
        raise PolicyError(f"{where}.operations: required, a non-empty list")
    try:
        ops = validator.normalize_operations(operations)
    except OperationError as error:
        raise PolicyError(f"{where}.operations: {error}") from None
    constraints = raw.get("constraints", {})
    if not isinstance(constraints, Mapping):
        raise PolicyError(f"{where}.constraints: must be a table")
    if "max_delegation_depth" in constraints:
        raise PolicyError(
            f"{where}.constraints.max_delegation_depth: set it on the entry itself,"
            " as max_delegation_depth"
        )
    try:
        normalized = validator.normalize_constraints(constraints)
    except ConstraintError as error:
        raise PolicyError(f"{where}.constraints: {error}") from None
    max_ttl = raw.get("max_ttl")
    if max_ttl is not None and (
        isinstance(max_ttl, bool) or not isinstance(max_ttl, int | float) or not max_ttl > 0
    ):
        raise PolicyError(f"{where}.max_ttl: must be a positive number of seconds")
    depth = raw.get("max_delegation_depth", 0)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 64:
        raise PolicyError(f"{where}.max_delegation_depth: must be an integer from 0 to 64")
    return Ceiling(
        resource=canonical,
        operations=ops,
        constraints=normalized,
        max_ttl=None if max_ttl is None else float(max_ttl),
        max_delegation_depth=depth,
        inject=_injection(raw, canonical, where),
    )


def _injection(raw: Mapping[str, Any], resource: str, where: str) -> Injection | None:
    """The entry's ``inject`` table, resolved now (a missing variable or file
    fails the load), or None. Only a brokered HTTP request can carry it."""
    if "inject" not in raw:
        return None
    scheme = resource.partition(":")[0]
    if scheme not in _INJECTABLE_SCHEMES:
        raise PolicyError(
            f"{where}.inject: only an http or https resource can carry injected headers,"
            f" not {scheme}"
        )
    try:
        return parse_injection(raw["inject"], f"{where}.inject")
    except InjectionError as error:
        raise PolicyError(str(error)) from None
