"""``sandbox = {...}`` in a policy entry: OS-level grants for an agent's whole life.

A capability is the right tool for anything an agent reaches through the
supervisor: it is narrow, revocable, delegable and audited per use. A sandbox
grant is a Landlock rule fixed when the agent starts: for what a program must
touch natively and all the time (a model cache it mmaps, a toolchain's
directory), never revocable while the agent runs, and not audited per use.
The limits bound what the agent may consume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsup.agents.confine.limits import parse_size
from capsup.supervisor.policy import PolicyError, strict_table

__all__ = ["DEFAULT_SANDBOX", "Sandbox", "parse_sandbox", "sandboxes_of"]

_KEYS = frozenset(
    {"read", "write", "memory", "open_files", "processes", "cpu_seconds", "file_size"}
)
#: Most paths one entry may grant: each is a Landlock rule.
_MAX_PATHS = 64


@dataclass(frozen=True, slots=True)
class Sandbox:
    """An agent's OS-level grants and limits (``None``: no limit of capsup's)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    memory: int | None = None
    open_files: int = 1024
    processes: int = 256
    cpu_seconds: int | None = None
    file_size: int | None = None


DEFAULT_SANDBOX = Sandbox()


def parse_sandbox(raw: object, where: str) -> Sandbox:
    """One ``sandbox`` table; ``where`` names it in errors."""
    table = strict_table(raw, where, _KEYS)
    values: dict[str, Any] = {}
    for key in ("read", "write"):
        if key in table:
            values[key] = _paths(table[key], f"{where}.{key}")
    for key in ("memory", "file_size"):
        if key in table:
            values[key] = _size(table[key], f"{where}.{key}")
    for key in ("open_files", "processes", "cpu_seconds"):
        if key in table:
            values[key] = _count(table[key], f"{where}.{key}")
    return Sandbox(**values)


def _paths(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: must be a list of absolute paths")
    if len(value) > _MAX_PATHS:
        raise PolicyError(f"{where}: at most {_MAX_PATHS} paths")
    paths = []
    for path in value:
        if "\0" in path or not Path(path).is_absolute():
            raise PolicyError(f"{where}: {path!r} is not an absolute path")
        normal = os.path.normpath(path)
        if normal == "/":
            raise PolicyError(f"{where}: granting / would undo the sandbox; name directories")
        paths.append(normal)
    return tuple(paths)


def _size(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PolicyError(f'{where}: a size such as "2GiB" or a number of bytes')
    try:
        size = parse_size(value)
    except ValueError as error:
        raise PolicyError(f"{where}: {error}") from None
    if size <= 0:
        raise PolicyError(f"{where}: must be positive")
    return size


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PolicyError(f"{where}: must be a positive integer")
    return value


def sandboxes_of(agents: Mapping[str, Any]) -> dict[str, Sandbox]:
    """The ``sandbox`` of every ``[agents.NAME]`` that has one."""
    return {
        name: parse_sandbox(entry["sandbox"], f"agents.{name}.sandbox")
        for name, entry in agents.items()
        if isinstance(entry, Mapping) and "sandbox" in entry
    }
