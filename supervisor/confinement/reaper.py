"""The supervisor as a child subreaper: an agent's orphans come back to it.

When a process dies, the kernel hands its children to the nearest ancestor
that declared itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), not
to init. With the supervisor as one, a daemon an agent double-forked
(``setsid``, fork, the middle process exits) becomes the supervisor's child:
it stays visible, and its exit status is the supervisor's to collect, so
no zombie piles up.

Two kinds of children then share the supervisor: its own (agents, each
reaped by the server through its ``Popen``; anything else a module started
and waits for) and adopted orphans. :func:`reap_orphans` collects only the
latter: it must never take an exit status that some ``Popen.wait()`` is
owed, or that ``Popen`` would report a made-up 0.

Killing orphans: where a cgroup holds the agent (:mod:`.cgroup`), killing
the cgroup kills them and :func:`reap_orphans` only collects the statuses.
Where none can be had, :func:`kill_orphans` SIGKILLs every child of the
supervisor that is not kept, which is a weaker guarantee: it reaches only
processes that have been orphaned so far (a descendant whose parent still
lives is not the supervisor's child until that parent is killed, hence the
passes), it cannot tell whose orphan a process is (so it is for when the
last agent has ended, as in ``capsup run``), and a fork bomb can outrun it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import time
from collections.abc import Container
from pathlib import Path

from capsup.agents.confine._libc import describe_errno, prctl
from capsup.agents.confine.errors import ConfinementError

__all__ = ["KILL_PASSES", "become_subreaper", "is_subreaper", "kill_orphans", "reap_orphans"]

_FEATURE = "subreaper"
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
#: How many times :func:`kill_orphans` looks for new orphans, at most.
KILL_PASSES = 32
#: How long one pass waits for the orphans it signalled to exit.
_PASS_TIMEOUT = 1.0


def become_subreaper() -> bool:
    """Make this process a child subreaper; False where the kernel refuses."""
    try:
        prctl(_FEATURE, "PR_SET_CHILD_SUBREAPER", _PR_SET_CHILD_SUBREAPER, 1)
    except ConfinementError:
        return False
    return True


def is_subreaper() -> bool:
    """Whether this process is a child subreaper (for ``capsup sandbox-check``)."""
    flag = ctypes.c_int(0)
    prctl(_FEATURE, "PR_GET_CHILD_SUBREAPER", _PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag))
    return flag.value != 0


def _children() -> set[int]:
    """This process's children, zombies included, from every thread's
    ``/proc/self/task/TID/children`` (an orphan goes to any live thread of
    the subreaper). A child's pid cannot be reused until it is reaped, so
    each stays valid for the caller."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


def _reap(pid: int) -> bool:
    """Collect ``pid``'s exit status if it has exited; never blocks."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # someone else reaped it meanwhile
        return False
    return reaped == pid


def reap_orphans(agent_pids: Container[int]) -> list[int]:
    """Collect the exit status of every exited child not in ``agent_pids``;
    return their pids. Never blocks.

    ``agent_pids`` must hold every child some other code will wait for: the
    agents (the server reaps them through ``Popen``) and any other process
    the supervisor started itself. ``waitid(P_ALL, WNOWAIT)`` peeks at the
    first exited child without collecting it; only one that is not kept is
    then reaped by pid. The peek always shows the same kept child until its
    owner reaps it, so past that point each remaining child is looked at by
    pid instead (so, too, after a child was reaped elsewhere meanwhile)."""
    reaped: list[int] = []
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, flags)
        except ChildProcessError:  # no children at all
            return reaped
        if exited is None:
            return reaped
        if exited.si_pid in agent_pids or not _reap(exited.si_pid):
            break
        reaped.append(exited.si_pid)
    try:
        children = _children()
    except OSError as error:
        raise ConfinementError(
            _FEATURE, f"cannot list the supervisor's children: {describe_errno(error.errno or 0)}"
        ) from None
    reaped.extend(pid for pid in sorted(children) if pid not in agent_pids and _reap(pid))
    return reaped


def kill_orphans(agent_pids: Container[int]) -> list[int]:
    """SIGKILL and reap every child of this process not in ``agent_pids``,
    pass after pass (each kill may orphan the victim's own children, who
    then come to this subreaper) until none is left or :data:`KILL_PASSES`
    ran out; return their pids. The fallback where no cgroup exists:
    see the module's docstring for what it does not guarantee."""
    killed: list[int] = []
    for _ in range(KILL_PASSES):
        victims = [pid for pid in sorted(_children()) if pid not in agent_pids]
        if not victims:
            break
        pidfds = []
        for pid in victims:
            # Our unreaped child: its pid cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                pidfd = os.pidfd_open(pid)
                pidfds.append(pidfd)
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                if pid not in killed:
                    killed.append(pid)
        _wait_readable(pidfds, _PASS_TIMEOUT)
        for pidfd in pidfds:
            os.close(pidfd)
        for pid in victims:
            _reap(pid)
    return killed


def _wait_readable(pidfds: list[int], timeout: float) -> None:
    """Wait until every pidfd is readable (its process exited) or ``timeout``."""
    deadline = time.monotonic() + timeout
    waiting = list(pidfds)
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        poller = select.poll()
        for pidfd in waiting:
            poller.register(pidfd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(remaining * 1000)}
        waiting = [pidfd for pidfd in waiting if pidfd not in ready]
