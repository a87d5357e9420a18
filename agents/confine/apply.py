"""Carry out a :class:`~capsup.agents.confine.plan.ConfinementPlan`, in order.

The order matters, and each step says why it comes where it does:

1. join the agent's cgroup, before anything else, so that no process of the
   agent ever exists outside its process bound and its kill switch;
2. its own mount, IPC and network namespaces and a private ``/dev/shm``,
   while the process may still unshare and mount;
3. resource limits, while it may still raise a soft limit up to the hard;
4. drop every Linux capability (when the supervisor runs as root);
5. Landlock (which sets ``no_new_privs`` first);
6. seccomp, last, since it refuses ``mount``, ``unshare`` and more that the
   steps above need; its ``connect()`` listener goes to the supervisor.

Then the bootstrap reports over the descriptor socket and becomes the agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capsup.agents.confine import landlock, seccomp
from capsup.agents.confine.cgroup_join import Joining
from capsup.agents.confine.errors import ConfinementError
from capsup.agents.confine.limits import ResourceLimits, apply_limits
from capsup.agents.confine.namespace import private_namespaces
from capsup.agents.confine.plan import ConfinementPlan
from capsup.agents.confine.privileges import drop_privileges

__all__ = ["Confined", "confine"]


@dataclass
class Confined:
    """What was enforced: feature names, and the seccomp listener (an fd in
    this process, for the supervisor) if ``connect()`` is brokered."""

    enforced: list[str] = field(default_factory=list)
    listener: int | None = None


def confine(plan: ConfinementPlan, joining: Joining | None = None) -> Confined:
    """Apply ``plan`` to the calling process; raises :class:`ConfinementError`
    naming the step that failed (the agent must then not start).
    ``joining``: the move into the plan's cgroup, if the caller started it
    early (see :mod:`~capsup.agents.confine.cgroup_join`)."""
    done = Confined()
    if plan.cgroup_procs is not None:
        if joining is None or joining.procs_path != plan.cgroup_procs:
            joining = Joining(plan.cgroup_procs)
        error = joining.wait()
        if error is not None:
            raise ConfinementError("processes", f"cannot join the agent's cgroup: {error}")
        done.enforced.append("processes")
    if plan.shm_bytes:
        private_namespaces(plan.shm_bytes)
        done.enforced.append("namespaces")
    apply_limits(
        ResourceLimits(
            memory=plan.memory,
            open_files=plan.open_files,
            file_size=plan.file_size,
            cpu_seconds=plan.cpu_seconds,
        )
    )
    done.enforced.append("limits")
    if plan.drop_privileges:
        drop_privileges()
        done.enforced.append("privileges")
    if plan.landlock:
        rules = landlock.FilesystemRules(
            read_exec=plan.read_exec,
            read_only=plan.read_only,
            read_write=plan.read_write,
            devices=plan.devices,
        )
        report = landlock.restrict_self(rules)
        done.enforced.append(f"landlock-abi-{report.abi}")
        if plan.mode == "required" and not report.scoped:  # ABI 6 has TCP rules too
            raise ConfinementError(
                "landlock", f"ABI {report.abi} cannot scope sockets and signals (needs 6)"
            )
    if plan.seccomp:
        done.listener = seccomp.install(notify_connect=True)
        done.enforced.append("seccomp")
    return done
