"""What the supervisor tells the bootstrap to enforce, and how it travels.

The supervisor decides everything (paths, limits, which guarantees this
kernel can give); the bootstrap, running in the new agent process, only
carries the plan out, in a fixed order, and fails closed where a step the
plan asks for cannot be taken. The plan crosses the ``execve`` into the
bootstrap as one JSON argument, so nothing the agent's environment holds
can change it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from types import NoneType, UnionType
from typing import Any, Literal, get_args, get_origin, get_type_hints

__all__ = ["ConfinementPlan", "Mode"]

#: ``required``: every step must succeed or the agent does not start;
#: ``best-effort``: steps the supervisor found missing are left out (and
#: recorded), but a step the plan does ask for still fails closed.
Mode = Literal["required", "best-effort"]


@dataclass(frozen=True, slots=True)
class ConfinementPlan:
    """One agent's confinement, step by step (see :func:`capsup.agents.confine.apply.confine`)."""

    mode: Mode = "required"
    #: Landlock: read and execute (the runtime), read only (the agent's
    #: code, ``sandbox.read``), read-write (scratch, ``sandbox.write``),
    #: device files (read-write).
    read_exec: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    read_write: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    landlock: bool = True
    #: seccomp's filter, with ``connect()`` brokered by the supervisor.
    seccomp: bool = True
    #: A private tmpfs on /dev/shm of this many bytes (0: none, and then
    #: /dev/shm is not granted at all).
    shm_bytes: int = 0
    #: Resource limits (``None``: left as inherited), core dumps always off.
    memory: int | None = None
    open_files: int | None = None
    file_size: int | None = None
    cpu_seconds: int | None = None
    #: The cgroup ``cgroup.procs`` file the agent joins before anything else
    #: (its process bound and its tree's kill switch), if one could be made.
    cgroup_procs: str | None = None
    #: Drop every Linux capability (the supervisor runs as root).
    drop_privileges: bool = False
    #: The descriptor socket's fd in the agent: the bootstrap reports there
    #: (and hands over the seccomp listener) before it becomes the agent.
    control_fd: int | None = None
    #: Names of what the supervisor found this kernel cannot enforce.
    missing: tuple[str, ...] = field(default=())

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ConfinementPlan:
        """Parse a plan; anything unexpected is a ``ValueError`` (the
        bootstrap then refuses to start the agent). Every key must be there
        with a value of its declared type: a missing or mistyped one (a
        ``null`` for ``seccomp``, say) would otherwise leave a step out."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("a confinement plan is a JSON object")
        types = get_type_hints(cls)
        given, known = set(raw), set(types)
        for problem, names in (("unknown", given - known), ("missing", known - given)):
            if names:
                raise ValueError(f"confinement plan key {sorted(names)[0]!r} is {problem}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if not _has_type(value, types[name]):
                raise ValueError(f"confinement plan {name}: {value!r} is not {types[name]}")
            values[name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


def _has_type(value: object, kind: Any) -> bool:
    """Whether a JSON value fits a field's annotation (a list for a tuple)."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Literal:
        return value in args
    if origin is UnionType:
        return any(_has_type(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind is NoneType:
        return value is None
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)
