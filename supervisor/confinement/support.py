"""What this machine can enforce, found once by trying it.

Every guarantee of docs/confinement.md depends on the kernel (Landlock's ABI,
seccomp's user notification, cgroups, namespaces). The supervisor
probes them once, in throw-away child processes (a probe must never confine
the supervisor itself), and both ``capsup sandbox-check`` and the planner
read the answer: under ``confine = "required"`` a missing guarantee stops
the agent from starting, under ``"best-effort"`` it is named and recorded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from capsup.agents.confine import landlock, seccomp
from capsup.agents.confine.errors import ConfinementError
from capsup.agents.confine.namespace import private_namespaces
from capsup.supervisor.confinement.cgroup import CgroupManager
from capsup.supervisor.confinement.reaper import become_subreaper

__all__ = ["Guarantee", "Support", "probe"]

#: Landlock's ABI that scopes abstract unix sockets and signals.
_LANDLOCK_SCOPED_ABI = 6
#: Landlock's ABI that controls TCP bind and connect.
_LANDLOCK_TCP_ABI = 4
_NO_NAMESPACES = "no new namespaces (unprivileged user namespaces are off?)"


@dataclass(frozen=True, slots=True)
class Guarantee:
    """One line of ``capsup sandbox-check``."""

    name: str
    enforced: bool
    how: str


@dataclass(frozen=True, slots=True)
class Support:
    landlock_abi: int
    seccomp: bool
    #: Private mount (with /dev/shm), IPC and network namespaces.
    shm: bool
    cgroups: str | None
    subreaper: bool
    root: bool

    @property
    def guarantees(self) -> tuple[Guarantee, ...]:
        abi = self.landlock_abi
        return (
            Guarantee(
                "landlock filesystem",
                abi >= 1,
                f"Landlock ABI {abi}: runtime read-only, scratch read-write, nothing else"
                if abi
                else "Landlock is not available (kernel 5.13+ with lsm=landlock)",
            ),
            Guarantee(
                "landlock tcp",
                abi >= _LANDLOCK_TCP_ABI,
                "TCP bind and connect denied" if abi >= _LANDLOCK_TCP_ABI else "needs ABI 4",
            ),
            Guarantee(
                "landlock scope",
                abi >= _LANDLOCK_SCOPED_ABI,
                "abstract unix sockets and signals scoped to the agent's domain"
                if abi >= _LANDLOCK_SCOPED_ABI
                else "needs ABI 6",
            ),
            Guarantee(
                "seccomp",
                self.seccomp,
                "socket families but AF_UNIX, io_uring, ptrace, namespaces, mounts, keyrings "
                "... refused (EPERM)"
                if self.seccomp
                else "needs seccomp user notification with WAIT_KILLABLE_RECV (Linux 5.19+)",
            ),
            Guarantee(
                "unix sockets by path",
                self.seccomp,
                "connect() decided by the supervisor: the agent's endpoint and its scratch only"
                if self.seccomp
                else "needs seccomp user notification",
            ),
            Guarantee(
                "private /dev/shm",
                self.shm,
                "a tmpfs of its own in a mount namespace" if self.shm else _NO_NAMESPACES,
            ),
            Guarantee(
                "private ipc and network",
                self.shm,
                "IPC and network namespaces of its own: SysV IPC and message queues, "
                "abstract unix sockets; no TCP or UDP"
                if self.shm
                else _NO_NAMESPACES,
            ),
            Guarantee(
                "process bound",
                self.cgroups is not None,
                f"pids.max and kill of the whole tree: {self.cgroups}"
                if self.cgroups
                else "no writable cgroup with the pids controller",
            ),
            Guarantee(
                "subreaper",
                self.subreaper,
                "orphaned descendants come back to the supervisor"
                if self.subreaper
                else "PR_SET_CHILD_SUBREAPER refused",
            ),
            Guarantee(
                "privileges",
                True,
                "running as root: agents drop every capability"
                if self.root
                else "not root: agents have no capabilities to drop",
            ),
        )

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.guarantees if not g.enforced)


@functools.cache
def probe() -> Support:
    """Probe once per process (the answer does not change while it runs)."""
    manager = CgroupManager.detect()
    cgroups = manager.describe() if manager is not None else None
    if manager is not None:
        manager.close()
    return Support(
        landlock_abi=landlock.abi_version(),
        seccomp=_seccomp_works(),
        shm=_in_child(lambda: private_namespaces(1 << 20)),
        cgroups=cgroups,
        subreaper=become_subreaper(),
        root=os.geteuid() == 0,
    )


def _seccomp_works() -> bool:
    support = seccomp.probe()
    return (
        support.filter
        and support.user_notif
        and support.wait_killable_recv
        and support.arch_supported
    )


def _in_child(step: Callable[[], object]) -> bool:
    """Whether ``step()`` succeeds in a forked child (which then exits)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        try:
            step()
            os._exit(0)
        except (ConfinementError, OSError):
            os._exit(1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
