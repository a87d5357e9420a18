"""The few libc calls and ``/proc`` reads that the confinement modules share.

Each call raises :class:`ConfinementError` naming the feature, the call and
the errno (its symbolic name and its text), so that a failed step says in
one line what this kernel or this process refused.

The confinement modules read and write ``/proc`` as bytes: a text codec
other than UTF-8 is imported on first use, and once the process has changed
uid or is under Landlock its interpreter's library may be out of reach.
"""

from __future__ import annotations

import ctypes
import errno
import os

from capsup.agents.confine.errors import ConfinementError

__all__ = ["capability_sets", "describe_errno", "libc", "prctl", "syscall"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def libc() -> ctypes.CDLL:
    """The C library of this process (``errno`` kept per call)."""
    return _libc


def describe_errno(number: int) -> str:
    """``EPERM (Operation not permitted)``: the name a reader can search for."""
    return f"{errno.errorcode.get(number, str(number))} ({os.strerror(number)})"


def syscall(feature: str, name: str, number: int, *args: int) -> int:
    """``syscall(number, *args)``; a negative return raises for ``feature``.

    Every argument goes as a C long, the width the kernel reads (a pointer
    is passed as ``ctypes.addressof(...)``, and the caller keeps the object
    alive across the call)."""
    result = int(_libc.syscall(*(ctypes.c_long(a) for a in (number, *args))))
    if result < 0:
        raise ConfinementError(feature, f"{name} failed: {describe_errno(ctypes.get_errno())}")
    return result


def prctl(feature: str, name: str, option: int, arg2: int = 0, arg3: int = 0) -> int:
    """``prctl(option, arg2, arg3, 0, 0)`` (unused arguments must be zero)."""
    args = (option, arg2, arg3, 0, 0)
    result = int(_libc.prctl(*(ctypes.c_ulong(a) for a in args)))
    if result < 0:
        raise ConfinementError(
            feature, f"prctl({name}) failed: {describe_errno(ctypes.get_errno())}"
        )
    return result


def capability_sets() -> dict[str, int]:
    """The capability sets of this process, from ``/proc/self/status``:
    ``{"CapInh": ..., "CapPrm": ..., "CapEff": ..., "CapBnd": ..., "CapAmb": ...}``.
    The kernel's own account, so it also serves to verify a drop."""
    sets: dict[str, int] = {}
    with open("/proc/self/status", "rb") as status:
        for line in status:
            key, _, value = line.partition(b":")
            if key.startswith(b"Cap"):
                sets[key.decode()] = int(value, 16)
    return sets
