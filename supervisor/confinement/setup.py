"""The supervisor's half of confining an agent: what exists before it starts
and what is torn down after its whole tree has ended.

Before: a private scratch directory, a cgroup (the process bound and the
tree's kill switch), the plan. After the bootstrap reports: the seccomp
listener, served by a :class:`UnixConnectBroker` so that the agent's
``connect()`` reaches its own endpoint and its scratch, nothing else. After
the agent exits: its cgroup is killed (double-forked daemons included), its
broker closed, its scratch removed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from capsup.agents.confine.plan import ConfinementPlan, Mode
from capsup.supervisor.confinement.cgroup import AgentCgroup, CgroupManager
from capsup.supervisor.confinement.planner import build_plan
from capsup.supervisor.confinement.reaper import become_subreaper
from capsup.supervisor.confinement.sandbox import DEFAULT_SANDBOX, Sandbox
from capsup.supervisor.confinement.scratch import make_scratch, remove_scratch
from capsup.supervisor.confinement.support import Support, probe
from capsup.supervisor.confinement.unix_connect import UnixConnectBroker

__all__ = ["AgentConfinement", "ConfinementUnavailable", "Confiner"]


class ConfinementUnavailable(Exception):
    """``confine = "required"`` and this machine lacks a guarantee; the
    message names it and the way out."""


@dataclass(eq=False)
class AgentConfinement:
    """One confined agent's share of the supervisor."""

    agent_id: str
    scratch: Path
    #: The agent's own endpoint, which its brokered ``connect()`` may reach.
    endpoint_path: str
    plan: ConfinementPlan
    cgroup: AgentCgroup | None
    broker: UnixConnectBroker | None = None
    #: What the bootstrap reported as enforced (``None`` until it did).
    enforced: list[str] | None = None

    def environment(self) -> dict[str, str]:
        """Variables the agent gets on top of the usual ones: its scratch is
        its ``TMPDIR`` and its ``HOME`` (Python's start-up asks the name
        service over a socket without one)."""
        return {"TMPDIR": str(self.scratch), "HOME": str(self.scratch)}

    def serve_connects(
        self, listener: int, on_refused: Callable[[int, str, str], None] | None
    ) -> None:
        """Take over the seccomp listener the bootstrap handed over."""
        if self.broker is not None:  # only the bootstrap's first report counts
            os.close(listener)
            return
        self.broker = UnixConnectBroker(
            listener,
            endpoints=(self.endpoint_path,),
            scratch=str(self.scratch),
            on_refused=on_refused,
        )
        self.broker.start()

    def kill_tree(self) -> None:
        """SIGKILL every process left in the agent's cgroup (its daemons)."""
        if self.cgroup is not None:
            self.cgroup.kill()

    def release(self) -> None:
        """After the agent has exited: kill what is left of its tree and drop
        the cgroup, close the broker, remove the scratch directory. Each step
        runs even if one fails. The kill comes first: a process left (a
        daemon) could keep the broker's thread busy and the scratch in use;
        the broker's close waits a moment at most, never for the agent."""
        try:
            if self.cgroup is not None:
                self.cgroup.kill()
                self.cgroup.remove()
        finally:
            try:
                if self.broker is not None:
                    self.broker.close()
            finally:
                remove_scratch(self.scratch)


class Confiner:
    """Prepares confinement for each agent a supervisor starts."""

    def __init__(
        self,
        mode: Mode,
        runtime_dir: Path,
        sandboxes: Mapping[str, Sandbox] | None = None,
        *,
        support: Support | None = None,
        protected: Sequence[str] = (),
        secrets: Sequence[str] = (),
    ) -> None:
        self.mode = mode
        self.support = support or probe()
        if mode == "required" and self.support.missing:
            raise ConfinementUnavailable(
                f"this machine cannot enforce: {', '.join(self.support.missing)} "
                '(`capsup sandbox-check` says why; [supervisor] confine = "best-effort" or '
                "`capsup run --no-confine` runs agents anyway)"
            )
        self._sandboxes = dict(sandboxes or {})
        #: Paths no agent's code grant may cover: the runtime directory, the
        #: policy, the state, the trail.
        self._protected = (str(runtime_dir), *protected)
        #: Files no agent may reach by any grant (the audit key, the files
        #: credentials are injected from): an agent whose plan reaches one
        #: is not started.
        self._secrets = tuple(os.path.realpath(path) for path in secrets)
        self._scratch_root = runtime_dir / "scratch"
        self._scratch_root.mkdir(mode=0o700, exist_ok=True)
        self._cgroups = CgroupManager.detect() if self.support.cgroups else None
        if mode == "required" and self._cgroups is None:
            # The probe found a cgroup, this second attempt none: never run
            # agents unbounded under "required".
            raise ConfinementUnavailable(
                "this machine cannot enforce: process bound (no cgroup could be made;"
                " `capsup sandbox-check` says why)"
            )
        #: Scratch directories are named by a counter, not the agent id: a
        #: unix socket's path must fit in 108 bytes, and multiprocessing
        #: makes its sockets beneath TMPDIR.
        self._scratch_names = itertools.count(1)
        become_subreaper()

    def prepare(
        self,
        agent_id: str,
        argv: Sequence[str],
        policy_name: str,
        *,
        endpoint_path: str,
        control_fd: int,
        parent: ConfinementPlan | None = None,
    ) -> AgentConfinement:
        """Make what ``agent_id`` needs before it starts, and its plan
        (``parent``: the plan of the agent that spawns it, if one does)."""
        sandbox = self._sandboxes.get(policy_name, DEFAULT_SANDBOX)
        scratch = make_scratch(self._scratch_root, str(next(self._scratch_names)))
        cgroup: AgentCgroup | None = None
        try:
            if self._cgroups is not None:
                cgroup = self._cgroups.create(agent_id, sandbox.processes)
            plan = build_plan(
                argv,
                mode=self.mode,
                sandbox=sandbox,
                scratch=scratch,
                control_fd=control_fd,
                cgroup_procs=cgroup.procs_path if cgroup is not None else None,
                support=self.support,
                protected=self._protected,
                parent=parent,
            )
            self._check_secrets(policy_name, plan)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            remove_scratch(scratch)
            raise
        return AgentConfinement(agent_id, scratch, endpoint_path, plan, cgroup)

    def _check_secrets(self, policy_name: str, plan: ConfinementPlan) -> None:
        """Refuse a plan under which the agent could read a secret: Landlock
        grants whole trees and has no exceptions, so a grant above a secret
        cannot be narrowed around it."""
        granted = (*plan.read_exec, *plan.read_only, *plan.read_write)
        for secret in self._secrets:
            for path in granted:
                root = os.path.realpath(path)
                if secret == root or secret.startswith(root.rstrip("/") + "/"):
                    raise ConfinementUnavailable(
                        f"the sandbox of {policy_name or 'this agent'!r} reaches {secret} "
                        f"(through {path}), which no agent may read: keep the audit key "
                        "and the files credentials are injected from where no agent's "
                        "grants reach"
                    )

    def close(self) -> None:
        if self._cgroups is not None:
            self._cgroups.close()
        remove_scratch(self._scratch_root)
