"""Drop every Linux capability, for good, before the agent's code runs.

When the supervisor runs as root (CI, containers), its agents would too, and
root's capabilities walk around everything else: read any file
(``CAP_DAC_OVERRIDE``), load a module, mount, trace any process. So the
agent drops all five sets (effective, permitted, inheritable, ambient and
the bounding set) and locks the securebits that would otherwise give a
uid-0 process its capabilities back at the next ``execve``.

What stays: the uid. A uid-0 process without capabilities still owns
root's files by plain ownership (``/etc/passwd`` is root's and 0644); it is
Landlock that keeps the agent away from them, or running the agent as an
unprivileged user.
"""

from __future__ import annotations

import ctypes
import os

from capsup.agents.confine._libc import capability_sets, describe_errno, libc, prctl
from capsup.agents.confine.errors import ConfinementError

__all__ = ["drop_privileges"]

_PR_CAPBSET_DROP = 24
_PR_GET_SECUREBITS = 27
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522

#: The securebits set, each with its lock so nothing run later can clear it
#: (include/uapi/linux/securebits.h).
_SECUREBITS = (
    1 << 0  # NOROOT: an execve by uid 0 (or a setuid-root file) grants no capability
    | 1 << 1  # NOROOT_LOCKED
    | 1 << 2  # NO_SETUID_FIXUP: changing uids neither grants nor clears capabilities
    | 1 << 3  # NO_SETUID_FIXUP_LOCKED
    | 1 << 5  # KEEP_CAPS_LOCKED (KEEP_CAPS itself stays off)
    | 1 << 6  # NO_CAP_AMBIENT_RAISE: nothing can enter the ambient set again
    | 1 << 7  # NO_CAP_AMBIENT_RAISE_LOCKED
)

#: The sets /proc/self/status shows, all of which must be empty afterwards.
_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def drop_privileges() -> None:
    """Drop every capability of this process and lock the securebits.

    Needs ``CAP_SETPCAP`` (root has it) when there is anything to drop. A
    process with nothing in its effective, permitted, inheritable and
    ambient sets and no uid 0 (an ordinary user's) is left alone: it keeps
    the full bounding set it cannot change, which matters only for setuid
    and file-capability binaries, and those gain nothing under
    ``PR_SET_NO_NEW_PRIVS`` (which the bootstrap and Landlock set).

    Verifies the result from ``/proc/self/status``; raises
    :class:`ConfinementError` (``"privileges"``) if any step fails or any
    set is not empty afterwards.
    """
    sets = capability_sets()
    held = sets["CapEff"] | sets["CapPrm"] | sets["CapInh"] | sets["CapAmb"]
    if not held and (sets["CapBnd"] == 0 or 0 not in os.getresuid()):
        return
    # The bounding set and the securebits need CAP_SETPCAP, so they go
    # before the capset that clears the effective set.
    for capability in range(_last_capability() + 1):
        prctl("privileges", f"PR_CAPBSET_DROP {capability}", _PR_CAPBSET_DROP, capability)
    prctl("privileges", "PR_CAP_AMBIENT_CLEAR_ALL", _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    prctl("privileges", "PR_SET_SECUREBITS", _PR_SET_SECUREBITS, _SECUREBITS)
    _clear_capabilities()
    _verify()


def _last_capability() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as last:
            return int(last.read())
    except (OSError, ValueError) as error:
        raise ConfinementError(
            "privileges", f"cannot read /proc/sys/kernel/cap_last_cap: {error}"
        ) from None


def _clear_capabilities() -> None:
    """``capset`` (version 3: two 32-bit words per set) with every set empty."""
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc().capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        reason = describe_errno(ctypes.get_errno())
        raise ConfinementError("privileges", f"capset to nothing failed: {reason}")


def _verify() -> None:
    """Fail closed unless the kernel reports every set empty and the bits locked."""
    sets = capability_sets()
    left = [f"{name}={sets.get(name, -1):x}" for name in _SETS if sets.get(name, -1) != 0]
    if left:
        raise ConfinementError("privileges", f"capabilities left after the drop: {' '.join(left)}")
    bits = prctl("privileges", "PR_GET_SECUREBITS", _PR_GET_SECUREBITS)
    if bits & _SECUREBITS != _SECUREBITS:
        raise ConfinementError(
            "privileges", f"securebits are {bits:#x}, want at least {_SECUREBITS:#x}"
        )
