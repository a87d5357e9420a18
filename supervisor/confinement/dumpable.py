"""The supervisor's memory and environment, kept from processes of its user.

By default every process is *dumpable*: any other process of the same user
may ``ptrace`` it and read its ``/proc/PID/mem`` and ``/proc/PID/environ``.
The supervisor holds what no agent or stranger may have: the operator's
environment, whose secrets ``pass_environment`` withholds from agents, every
capability id, the audit chain's state. ``PR_SET_DUMPABLE`` 0 makes the
kernel refuse those accesses to any process without ``CAP_SYS_PTRACE``,
makes the supervisor's ``/proc/PID`` files root's, and writes no core dump
of it (a core holds the same secrets).

Its children: ``fork`` copies the flag and ``execve`` sets it back (for a
program its user may read), so an agent, started by fork and exec, is
dumpable again, and the supervisor still reaches it with
``process_vm_readv`` and ``pidfd_getfd`` (the connect broker): those check
the target's flag, not the caller's.

Not held back: a process with ``CAP_SYS_PTRACE`` (root, unless it dropped
its capabilities, as confined agents do).
"""

from __future__ import annotations

from capsup.agents.confine._libc import prctl

__all__ = ["make_undumpable"]

_PR_SET_DUMPABLE = 4


def make_undumpable() -> None:
    """Make this process non-dumpable, for the rest of its life (``execve``
    aside). Raises :class:`~capsup.agents.confine.errors.ConfinementError`
    (feature ``"dumpable"``) if the kernel refuses."""
    prctl("dumpable", "PR_SET_DUMPABLE", _PR_SET_DUMPABLE, 0)
