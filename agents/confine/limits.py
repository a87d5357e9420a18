"""Resource limits of an agent process (``setrlimit``), and the size syntax
the policy uses for them.

rlimits are per process (memory, CPU time, file size) or per descriptor
table (open files), inherited by children and kept across ``execve``. They
are not the process bound: ``RLIMIT_NPROC`` counts every process of a uid,
the supervisor's and other agents' included, so the bound is a cgroup's
``pids.max`` (the supervisor's part); :class:`ResourceLimits` only carries
the number.
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass, fields

from capsup.agents.confine._libc import describe_errno
from capsup.agents.confine.errors import ConfinementError

__all__ = ["ResourceLimits", "apply_limits", "parse_size"]


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Limits for one agent; ``None`` leaves the inherited limit as it is.

    ``memory`` is address space in bytes (``RLIMIT_AS``: an allocation past
    it fails, Python raises ``MemoryError``); ``open_files`` bounds
    descriptor numbers (``RLIMIT_NOFILE``: ``EMFILE``); ``file_size`` is the
    largest file the process may write, in bytes (``RLIMIT_FSIZE``: ``EFBIG``
    where ``SIGXFSZ`` is ignored, as CPython does); ``cpu_seconds`` is CPU
    time (``RLIMIT_CPU``: then ``SIGKILL``); ``processes`` is for the
    supervisor's cgroup and is not applied here.
    """

    memory: int | None = None
    open_files: int | None = None
    file_size: int | None = None
    cpu_seconds: int | None = None
    processes: int | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"limit {field.name}: {value!r} is not a non-negative integer")


#: Which rlimit enforces each field (``processes`` has none: see the module).
_RLIMITS: tuple[tuple[str, str], ...] = (
    ("memory", "RLIMIT_AS"),
    ("open_files", "RLIMIT_NOFILE"),
    ("file_size", "RLIMIT_FSIZE"),
    ("cpu_seconds", "RLIMIT_CPU"),
)


def apply_limits(limits: ResourceLimits) -> None:
    """Set each given limit as both the soft and the hard limit, so the agent
    cannot raise it again, and always turn core dumps off (a core would write
    the agent's memory to disk, outside its scratch directory).

    A limit is never set above the current hard limit: a larger value is
    clamped to it, so the result is the tighter of the two (even as root,
    which could raise it). Raises :class:`ConfinementError` (``"limits"``)
    if the kernel refuses one.
    """
    wanted = [(rlimit, getattr(limits, field)) for field, rlimit in _RLIMITS]
    for name, value in [*wanted, ("RLIMIT_CORE", 0)]:
        if value is None:
            continue
        rlimit = getattr(resource, name)
        _, hard = resource.getrlimit(rlimit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(rlimit, (value, value))
        except OSError as error:
            reason = describe_errno(error.errno or 0)
            raise ConfinementError("limits", f"setrlimit({name}, {value}): {reason}") from None


#: Binary multiples; decimal ones (KB, MB) are refused, being easy to confuse.
_UNITS = {None: 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_SIZE = re.compile(r"([0-9]+)(?: ?(KiB|MiB|GiB|TiB))?")


def parse_size(text: str | int) -> int:
    """A size in bytes: a non-negative integer, or a string such as ``"512"``,
    ``"64KiB"``, ``"2GiB"`` or ``"1 TiB"``. Anything else is a
    ``ValueError`` that quotes the text."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size {text!r} is negative")
        return text
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"size {text!r}: expected a number of bytes, optionally with KiB, MiB, GiB or TiB"
        )
    return int(match[1]) * _UNITS[match[2]]
