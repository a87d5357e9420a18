"""Agent processes: spawning, identifying, signalling and reaping them.

Every agent is a direct child of the supervisor, started through
:mod:`capsup.agents.bootstrap` (which ties its life to the supervisor's), and
is known by ``(pid, create time)``, as psutil identifies processes, so that a
recycled pid is never mistaken for an agent. A pidfd per agent lets the server
learn of an exit in the same poll as its socket, by event, not by polling.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

import psutil
from capsup.agents.descriptors import FD_SOCKET_ENV
from capsup.agents.errors import SpawnFailed
from capsup.supervisor.confinement.setup import AgentConfinement, Confiner
from capsup.supervisor.environment import agent_environment

__all__ = [
    "EXIT_REASONS",
    "AgentProcess",
    "ExitReason",
    "ProcessTable",
    "exit_status",
    "new_agent_id",
]

_NOT_IN_IDS = re.compile(r"[^A-Za-z0-9._-]")

#: How many ancestors to walk from a connecting process to its agent.
_MAX_ANCESTRY = 32

#: Signals the kernel sends a process for a fault of its own (or that it
#: raises on itself, as abort() does): an agent that dies of one crashed.
_FAULT_SIGNALS = frozenset(
    {
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGILL,
        signal.SIGFPE,
        signal.SIGABRT,
        signal.SIGSYS,
        signal.SIGTRAP,
    }
)

#: How an agent process ended, as :attr:`AgentProcess.exit_reason` decides:
#: ``exit`` (status 0), ``error`` (another status), ``signal`` (a signal
#: capsup did not send), ``crash`` (one of the fault signals above),
#: ``killed`` (a signal capsup sent: shutdown, timeout, revocation), or
#: ``other`` while it still runs. Defined here, next to the code that
#: decides, so the audit's ``reason`` and the labels of
#: ``capsup_agent_exits_total`` (:mod:`~capsup.supervisor.metrics`, in this
#: order) cannot drift apart; mypy holds ``exit_reason`` to the Literal.
ExitReason = Literal["exit", "error", "signal", "crash", "killed", "other"]
EXIT_REASONS: Final[tuple[ExitReason, ...]] = get_args(ExitReason)


@dataclass(eq=False)
class AgentProcess:
    """One spawned agent."""

    agent_id: str
    name: str
    popen: subprocess.Popen[bytes]
    create_time: float
    pidfd: int
    parent: str | None = None
    #: The policy key its own requests are judged by; "" for none.
    policy_name: str = ""
    children: set[str] = field(default_factory=set)
    #: Its children that ended, oldest first: their exit codes are kept for
    #: ``wait`` while it runs, but only the most recent (see the server).
    ended_children: collections.deque[str] = field(default_factory=collections.deque)
    returncode: int | None = None
    kill_at: float | None = None
    #: Signals capsup sent it (forwarded, or to stop it).
    signals_sent: set[int] = field(default_factory=set)
    #: The supervisor's end of the agent's descriptor socket (``open``, and
    #: the bootstrap's report); closed when the agent is reaped.
    control: socket.socket | None = None
    #: Its confinement, when it runs confined.
    confinement: AgentConfinement | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def exit_reason(self) -> ExitReason:
        """How it ended, for the audit and the ``capsup_agent_exits_total``
        label; one of :data:`EXIT_REASONS`."""
        if self.returncode is None:
            return "other"
        if self.returncode >= 0:
            return "exit" if self.returncode == 0 else "error"
        signum = -self.returncode
        if signum in self.signals_sent:
            return "killed"
        return "crash" if signum in _FAULT_SIGNALS else "signal"


def new_agent_id(name: str) -> str:
    """A fresh agent id: readable, and 128 random bits so that no two collide.

    The readable part is the name with anything but ``A-Z a-z 0-9 . _ -``
    made ``_`` (a sub-agent's name may come from any ``argv[0]``), so an id
    is one plain token wherever it goes: the connection's User-Id, the
    audit trail, a terminal."""
    readable = _NOT_IN_IDS.sub("_", name[:32]) or "agent"
    return f"agent-{readable}-{secrets.token_hex(16)}"


def exit_status(returncode: int) -> int:
    """A shell's view of a return code: 128+N when signal N ended the process."""
    return 128 - returncode if returncode < 0 else returncode


class ProcessTable:
    """The supervisor's agents, by id, by pidfd and by (pid, create time)."""

    def __init__(
        self,
        endpoint: str,
        *,
        batch: bool = True,
        pass_environment: Sequence[str] = (),
        confiner: Confiner | None = None,
    ) -> None:
        self._endpoint = endpoint
        self.confiner = confiner
        #: Start agents under SCHED_BATCH (``[supervisor] agent_scheduling``).
        self._batch = batch
        #: What of the supervisor's environment agents get besides the defaults.
        self._pass_environment = tuple(pass_environment)
        self._by_id: dict[str, AgentProcess] = {}
        self._by_pidfd: dict[int, AgentProcess] = {}
        self._by_control: dict[int, AgentProcess] = {}
        self._by_key: dict[tuple[int, float], AgentProcess] = {}
        #: Running agents with a SIGKILL deadline still ahead, by id (reap
        #: and kill_overdue take them out): the loop looks at these every
        #: turn, so not at every agent there is.
        self._doomed: dict[str, AgentProcess] = {}
        #: Agents spawned and not yet reaped: a plain int, so the metrics
        #: thread can read it while the loop changes the table.
        self.running_count = 0

    def __iter__(self) -> Iterator[AgentProcess]:
        return iter(list(self._by_id.values()))

    def get(self, agent_id: str) -> AgentProcess | None:
        return self._by_id.get(agent_id)

    def by_pidfd(self, fd: int) -> AgentProcess | None:
        return self._by_pidfd.get(fd)

    @property
    def running(self) -> list[AgentProcess]:
        return [agent for agent in self._by_id.values() if agent.running]

    def by_control(self, fd: int) -> AgentProcess | None:
        return self._by_control.get(fd)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        agent_id: str,
        name: str,
        policy_name: str,
        parent: str | None = None,
        stdin_devnull: bool = False,
        endpoint: str | None = None,
    ) -> AgentProcess:
        """Start ``argv`` as an agent; raises :class:`SpawnFailed`.

        ``endpoint`` is the agent's own endpoint (a confined agent's); the
        table's shared one otherwise. Confined, the agent starts through the
        bootstrap with its plan, and only ``connect()`` to ``endpoint`` (and
        its scratch) is brokered for it."""
        env = agent_environment(
            os.environ,
            self._pass_environment,
            endpoint=endpoint or self._endpoint,
            agent_id=agent_id,
        )
        control, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control.setblocking(False)
        env[FD_SOCKET_ENV] = str(agent_end.fileno())
        confinement: AgentConfinement | None = None
        try:
            if self.confiner is not None:
                if endpoint is None:
                    raise ValueError("a confined agent needs an endpoint of its own")
                path = endpoint.removeprefix("ipc://")
                parent_agent = self._by_id.get(parent) if parent is not None else None
                confinement = self.confiner.prepare(
                    agent_id,
                    argv,
                    policy_name,
                    endpoint_path=path,
                    control_fd=agent_end.fileno(),
                    parent=(
                        parent_agent.confinement.plan
                        if parent_agent is not None and parent_agent.confinement is not None
                        else None
                    ),
                )
                env.update(confinement.environment())
            agent = self._start(
                argv,
                env,
                agent_id,
                name,
                policy_name,
                parent,
                stdin_devnull,
                confinement,
                agent_end,
            )
        except BaseException:
            control.close()
            if confinement is not None:
                confinement.release()
            raise
        finally:
            agent_end.close()
        agent.control = control
        agent.confinement = confinement
        self._by_control[control.fileno()] = agent
        return agent

    def _start(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        agent_id: str,
        name: str,
        policy_name: str,
        parent: str | None,
        stdin_devnull: bool,
        confinement: AgentConfinement | None,
        agent_end: socket.socket,
    ) -> AgentProcess:
        command = [
            sys.executable,
            "-m",
            "capsup.agents.bootstrap",
            "--supervisor",
            str(os.getpid()),
            *(["--batch"] if self._batch else []),
            *(["--confine", confinement.plan.to_json()] if confinement is not None else []),
            "--",
            *argv,
        ]
        try:
            popen = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL if stdin_devnull else None,
                close_fds=True,
                pass_fds=(agent_end.fileno(),),
            )
        except OSError as error:
            raise SpawnFailed(f"cannot start {argv[0]!r}: {error.strerror}") from None
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError as error:
            # Untracked, it could never be reaped, stopped or identified: kill it.
            popen.kill()
            popen.wait()
            raise SpawnFailed(f"cannot watch {argv[0]!r}: {error.strerror}") from None
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            # Gone already; the pidfd is readable and the exit is handled as usual.
            create_time = 0.0
        agent = AgentProcess(agent_id, name, popen, create_time, pidfd, parent, policy_name)
        self._by_id[agent_id] = agent
        self._by_pidfd[pidfd] = agent
        self._by_key[(popen.pid, create_time)] = agent
        self.running_count += 1
        if parent is not None and parent in self._by_id:
            self._by_id[parent].children.add(agent_id)
        return agent

    def identify(self, pid: int) -> AgentProcess | None:
        """The running agent that is ``pid`` or one of its ancestors, if any."""
        try:
            process: psutil.Process | None = psutil.Process(pid)
            for _ in range(_MAX_ANCESTRY):
                if process is None or process.pid in (0, 1, os.getpid()):
                    return None
                agent = self._by_key.get((process.pid, process.create_time()))
                if agent is not None:
                    return agent if agent.running else None
                process = process.parent()
        except (psutil.Error, OSError):
            # Gone, or /proc unreadable (out of descriptors): nobody, never
            # an exception out of the loop.
            return None
        return None

    def reap(self, agent: AgentProcess) -> int:
        """Collect an exited agent's return code and forget its pidfd."""
        if agent.returncode is None:
            agent.returncode = agent.popen.wait()
            self.running_count -= 1
            self._by_pidfd.pop(agent.pidfd, None)
            self._by_key.pop((agent.pid, agent.create_time), None)
            self._doomed.pop(agent.agent_id, None)
            os.close(agent.pidfd)
            if agent.control is not None:
                self._by_control.pop(agent.control.fileno(), None)
                agent.control.close()
        return agent.returncode

    def forget(self, agent: AgentProcess) -> None:
        """Drop a reaped agent once nobody can wait for it any more."""
        self._by_id.pop(agent.agent_id, None)
        parent = self._by_id.get(agent.parent) if agent.parent else None
        if parent is not None:
            parent.children.discard(agent.agent_id)

    def send_signal(self, agent: AgentProcess, signum: int) -> None:
        """Signal a running agent through its pidfd, which cannot hit a recycled pid."""
        if agent.running:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(agent.pidfd, signum)
                agent.signals_sent.add(signum)

    def stop(self, agent: AgentProcess, now: float, grace: float) -> None:
        """SIGTERM now, SIGKILL at ``now + grace`` if still running."""
        if agent.running and agent.kill_at is None:
            self.send_signal(agent, signal.SIGTERM)
            self.kill_later(agent, now + grace)

    def kill_later(self, agent: AgentProcess, deadline: float) -> None:
        """SIGKILL ``agent`` at ``deadline`` if it still runs then; a
        deadline already set stands."""
        if agent.running and agent.kill_at is None:
            agent.kill_at = deadline
            self._doomed[agent.agent_id] = agent

    def kill_overdue(self, now: float) -> None:
        """SIGKILL every agent past its deadline (once: it cannot survive it)."""
        for agent in list(self._doomed.values()):
            if agent.kill_at is not None and now >= agent.kill_at:
                self.send_signal(agent, signal.SIGKILL)
                del self._doomed[agent.agent_id]

    def next_kill(self) -> float | None:
        """The earliest SIGKILL deadline still ahead, if any."""
        deadlines = [a.kill_at for a in self._doomed.values() if a.kill_at is not None]
        return min(deadlines) if deadlines else None

    def descendants(self, agent_id: str) -> list[AgentProcess]:
        """Every sub-agent spawned by ``agent_id``, transitively."""
        found = []
        stack = list(self._by_id[agent_id].children) if agent_id in self._by_id else []
        while stack:
            child = self._by_id.get(stack.pop())
            if child is not None:
                found.append(child)
                stack.extend(child.children)
        return found
