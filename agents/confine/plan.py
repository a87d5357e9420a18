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
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

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
        bootstrap then refuses to start the agent)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("a confinement plan is a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise ValueError(f"unknown confinement plan key {sorted(unknown)[0]!r}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if isinstance(value, list):
                if not all(isinstance(v, str) for v in value):
                    raise ValueError(f"confinement plan {name}: a list of strings")
                value = tuple(value)
            values[name] = value
        plan = cls(**values)
        if plan.mode not in ("required", "best-effort"):
            raise ValueError(f"confinement plan mode: {plan.mode!r}")
        return plan
