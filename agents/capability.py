"""The capability record and its wire form.

The kernel's record is authoritative; what a client holds is a copy of the
same fields, useful for display and for naming the id. Converting to the wire
form and back is lossless, and a malformed map is rejected whole with
:class:`~capsup.agents.errors.BadRequest`, never half-accepted.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from capsup.agents.errors import BadRequest

__all__ = ["CAPABILITY_FIELDS", "Capability", "new_capability_id"]

#: The fields of a capability, in wire order.
CAPABILITY_FIELDS = (
    "id",
    "resource",
    "operations",
    "constraints",
    "holder",
    "granted_at",
    "expires_at",
    "parent_id",
    "delegation_depth",
    "metadata",
)

_ID_PREFIX = "cap_"
# 24 random bytes: 192 bits, comfortably above the 128 the design asks for.
_ID_BYTES = 24


def new_capability_id() -> str:
    """An unguessable id; never derived from the capability's content."""
    return _ID_PREFIX + secrets.token_urlsafe(_ID_BYTES)


@dataclass(frozen=True, slots=True)
class Capability:
    """One capability: who may do which operations on which resource, until when.

    ``resource`` is the canonical URI (as the scheme's validator printed it);
    ``delegation_depth`` is how many further delegations are still allowed.
    ``constraints`` and ``metadata`` are treated as read-only.
    """

    id: str
    resource: str
    operations: frozenset[str]
    constraints: Mapping[str, Any]
    holder: str
    granted_at: float
    expires_at: float
    parent_id: str | None = None
    delegation_depth: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """A plain map of msgpack-able values; operations sorted for stable output."""
        return {
            "id": self.id,
            "resource": self.resource,
            "operations": sorted(self.operations),
            "constraints": _plain(self.constraints),
            "holder": self.holder,
            "granted_at": self.granted_at,
            "expires_at": self.expires_at,
            "parent_id": self.parent_id,
            "delegation_depth": self.delegation_depth,
            "metadata": _plain(self.metadata),
        }

    @classmethod
    def from_wire(cls, wire: object) -> Capability:
        """Parse the wire map; anything missing, extra or ill-typed is refused."""
        if not isinstance(wire, Mapping):
            raise BadRequest(f"a capability must be a map, not {type(wire).__name__}")
        keys = set(wire)
        if keys != set(CAPABILITY_FIELDS):
            missing = sorted(set(CAPABILITY_FIELDS) - keys)
            extra = sorted(str(k) for k in keys - set(CAPABILITY_FIELDS))
            raise BadRequest(f"capability map fields wrong: missing {missing}, unexpected {extra}")
        ops = wire["operations"]
        if not isinstance(ops, list | tuple) or not all(isinstance(o, str) for o in ops):
            raise BadRequest("capability.operations must be a list of strings")
        parent = wire["parent_id"]
        if parent is not None and not isinstance(parent, str):
            raise BadRequest("capability.parent_id must be a string or nil")
        depth = wire["delegation_depth"]
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise BadRequest("capability.delegation_depth must be a non-negative integer")
        return cls(
            id=_string(wire, "id"),
            resource=_string(wire, "resource"),
            operations=frozenset(ops),
            constraints=_map(wire, "constraints"),
            holder=_string(wire, "holder"),
            granted_at=_time(wire, "granted_at"),
            expires_at=_time(wire, "expires_at"),
            parent_id=parent,
            delegation_depth=depth,
            metadata=_map(wire, "metadata"),
        )


def _string(wire: Mapping[str, Any], key: str) -> str:
    value = wire[key]
    if not isinstance(value, str) or not value:
        raise BadRequest(f"capability.{key} must be a non-empty string")
    return value


def _time(wire: Mapping[str, Any], key: str) -> float:
    value = wire[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"capability.{key} must be a finite number of epoch seconds")
    return float(value)


def _map(wire: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = wire[key]
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise BadRequest(f"capability.{key} must be a map with string keys")
    return dict(value)


def _plain(value: Any) -> Any:
    """Deep-copy into lists and dicts so the wire form shares nothing mutable."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        items = [_plain(v) for v in value]
        return sorted(items) if isinstance(value, frozenset | set) else items
    return value
