"""The supervisor's event loop: one ZeroMQ ROUTER socket, the agents' pidfds and
the signal pipe, in one poller, on one thread, so the kernel needs no locks.

Each turn of the loop handles agent exits first (their capabilities are
revoked before any other request is served), then signals, then a bounded
batch of requests, then timers (grace-period kills, ``wait`` timeouts, the
expiry sweep).

Identity is proven, never claimed: libzmq reports the connecting process's
pid (SO_PEERCRED) as each message's ``Peer-Address``; the server maps it, by
(pid, create time), to a spawned agent or a descendant of one. Anyone else
gets ``unauthenticated``. No field of a request can name who is speaking.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import json
import os
import resource
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import zmq
from capsup.agents import protocol as p
from capsup.agents.bootstrap import enter_batch_scheduling
from capsup.agents.errors import (
    BadRequest,
    Busy,
    CapsupError,
    InternalError,
    NotAuthorized,
    SpawnFailed,
    Unauthenticated,
    UnknownAgent,
    WaitTimeout,
)
from capsup.supervisor.brokers.descriptors import serve_descriptor_request
from capsup.supervisor.brokers.files import open_for_agent, perform_file_op
from capsup.supervisor.brokers.service import BrokeredOps
from capsup.supervisor.config import DatabaseConfig
from capsup.supervisor.confinement.reaper import kill_orphans, reap_orphans
from capsup.supervisor.confinement.setup import Confiner
from capsup.supervisor.derive import Delegation
from capsup.supervisor.dispatch import dispatch_kernel_op
from capsup.supervisor.events import Event, EventSink, EventType, ViolationKind
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.peers import AcceptedConnections, ConnectionBudget
from capsup.supervisor.principal import OPERATOR, Principal
from capsup.supervisor.processes import AgentProcess, ProcessTable, exit_status, new_agent_id

__all__ = ["Server", "exit_code_of", "new_trace_id"]

#: Requests served per turn before agent exits and timers are looked at again.
_BATCH = 64
#: Refused connects waiting for the loop to record them; more are counted.
_MAX_QUEUED_REFUSALS = 1024
#: How long a peer has to complete the ZeroMQ handshake, in milliseconds.
_HANDSHAKE_MS = 2000
#: Ended sub-agents whose exit codes a running parent can still wait for.
_KEPT_ENDED_CHILDREN = 128
#: Descriptors kept for the loop's own use (the trail, the store, metrics,
#: a spawn's pipes), which neither connections nor agents may take.
_DESCRIPTOR_RESERVE = 128
#: Descriptors one running agent costs the supervisor, from above: a pidfd,
#: its control and descriptor sockets, its endpoint and that endpoint's
#: monitor, the connect broker's listener and thread, its cgroup's files.
_AGENT_DESCRIPTORS = 8
#: Requests served from the shared endpoint per turn when agents are
#: confined (64 took a stranger's flood of small garbage to a confined
#: agent's validate p99 of 4.3 ms; 16, to 1.3 ms).
_STRANGER_BATCH = 16
#: The largest message the shared endpoint reads when agents are confined.
_STRANGER_MESSAGE_BYTES = 64 << 10
#: How far past ``max_message_bytes`` a message may go and still be read
#: (to be answered ``message_too_large``) rather than dropped by libzmq.
_MESSAGE_SLACK = 64 << 10
#: Pending ``wait`` calls on one agent; each costs memory and a timer.
_MAX_WAITERS = 16
_PROCESS_OPS = (p.SpawnArgs, p.WaitArgs)
_FILE_OPS = (p.ReadArgs, p.WriteArgs, p.ListdirArgs, p.StatArgs, p.DeleteArgs)
_BROKERED_OPS = (p.HttpArgs, p.QueryArgs)
_SEND_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_SEND_LAST = int(zmq.NOBLOCK)
_RECV = int(zmq.NOBLOCK)
# libzmq's send as pyzmq's compiled layer has it, without the Python layer
# above (routing_id and group handling for draft socket types, which a
# ROUTER never uses): half the cost of a send, and a reply is two.
_send_frame = zmq.backend.Socket.send
#: The C library, whose rand() seeds libzmq's routing id counters.
_libc = ctypes.CDLL(None)


#: Trace ids are this process's random prefix and a counter: unique within a
#: run, unlikely to repeat across runs, and cheaper than fresh randomness per
#: request (they need to be unique, not secret).
_TRACE_PREFIX = secrets.token_hex(6)
_trace_counter = itertools.count(1)


def new_trace_id() -> str:
    return f"{_TRACE_PREFIX}-{next(_trace_counter):x}"


@dataclass
class _Waiter:
    """A ``wait`` to be answered when its agent exits or its deadline passes.

    ``asker`` is the agent that asked: the answer goes out only while it
    runs, since the connection it asked on is gone once it has exited, and
    its routing id free for another connection to take. A connection the
    asker closed while it runs is not noticed (docs/protocol.md, ``wait``)."""

    asker: AgentProcess
    sock: zmq.Socket[bytes]
    envelope: list[bytes]
    request_id: p.RequestId
    trace_id: str
    deadline: float | None


@dataclass(frozen=True, slots=True)
class _Peer:
    agent: AgentProcess
    principal: Principal


class Server:
    """Serve the wire protocol for the agents this supervisor spawned."""

    def __init__(
        self,
        kernel: Kernel,
        endpoint: str,
        *,
        sink: EventSink | None = None,
        grace_period: float = 5.0,
        batch_agents: bool = True,
        pass_environment: Sequence[str] = (),
        max_message_bytes: int = p.MAX_MESSAGE_BYTES,
        observe_request: Callable[[str, float], None] | None = None,
        observe_validation: Callable[[float], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        confiner: Confiner | None = None,
        max_sub_agents: int = 64,
        max_agents: int = 1024,
        max_connections: int = 2048,
        max_connections_per_peer: int = 32,
        databases: Mapping[str, DatabaseConfig] | None = None,
    ) -> None:
        if not endpoint.startswith("ipc://"):
            # Identity comes from SO_PEERCRED, which only a Unix socket has;
            # on tcp:// the Peer-Address is an IP address, not a process.
            raise ValueError(f"the agent endpoint must be ipc://, not {endpoint!r}")
        self.kernel = kernel
        self.endpoint = endpoint
        self.processes = ProcessTable(
            endpoint, batch=batch_agents, pass_environment=pass_environment, confiner=confiner
        )
        #: Confined agents' own endpoints live next to the shared one.
        self._agent_endpoints = Path(endpoint.removeprefix("ipc://")).parent / "agents"
        self._endpoint_counter = itertools.count(1)
        #: A confined agent's own ROUTER socket -> the agent (see start_agent).
        self._routers: dict[zmq.Socket[bytes], AgentProcess] = {}
        #: Each ROUTER's monitor socket -> its accepted connections, and the
        #: agent whose own endpoint it is (None for the shared one).
        self._ledgers: dict[zmq.Socket[bytes], tuple[AcceptedConnections, AgentProcess | None]] = {}
        # Connections cost a descriptor each, and libzmq aborts the process
        # when accept() meets EMFILE. Two budgets, so that strangers holding
        # every connection the shared endpoint allows cannot keep a confined
        # agent from connecting to its own; their size follows the agents
        # running (_rebudget).
        #: Requests served from the shared endpoint per turn. When agents are
        #: confined only strangers speak there, and every batch of their
        #: refusals is time a confined agent's request waits: a small one.
        self._shared_batch = _STRANGER_BATCH if confiner is not None else _BATCH
        self._soft_descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._max_connections = max_connections
        self._connections = ConnectionBudget(total=1, per_peer=max_connections_per_peer)
        self._agent_connections = ConnectionBudget(total=1, per_peer=max_connections_per_peer)
        self._rebudget()
        #: The socket whose messages are being served (replies go there).
        self._serving: zmq.Socket[bytes] | None = None
        #: Refusals the connect brokers' threads made, for the loop to record
        #: (at most _MAX_QUEUED_REFUSALS waiting; more are counted, not lost).
        self._refused_connects: collections.deque[tuple[str, int, str, str]] = collections.deque()
        self._refused_connects_lock = threading.Lock()
        self._refused_connects_overflow: dict[str, int] = {}
        self._sink = sink
        self._grace = grace_period
        self._max_sub_agents = max_sub_agents
        self._max_agents = max_agents
        self._max_bytes = max_message_bytes
        self._observe = observe_request
        self._observe_validation = observe_validation
        self._on_idle = on_idle
        self._context = zmq.Context()
        # The ZAP handler must exist before the first connection is accepted.
        # It is the context's first socket, so libzmq starts its I/O thread
        # now, and the thread takes this one's scheduling policy.
        with _io_thread_policy():
            self._zap = self._context.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind("inproc://zeromq.zap.01")
        self._poller = zmq.Poller()
        self._socket, self._accepted = self._router(b"capsup", endpoint, None)
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._zap, zmq.POLLIN)
        self._peers: dict[str, _Peer] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._signals_r, self._signals_w = socket.socketpair()
        self._signals_r.setblocking(False)
        self._signals_w.setblocking(False)
        self._brokered = BrokeredOps(kernel, databases or {}, wake=self._wake_loop, emit=self._emit)
        self._poller.register(self._signals_r.fileno(), zmq.POLLIN)
        self.pending_signals: list[int] = []
        self._reaping_orphans = False
        self._restore_sigchld: Callable[[], None] | None = None
        if confiner is not None and threading.current_thread() is threading.main_thread():
            # The supervisor is a subreaper: an agent's orphans come back to
            # it, and their SIGCHLD wakes the loop to reap them.
            wakeup = signal.set_wakeup_fd(self._signals_w.fileno(), warn_on_full_buffer=False)
            handler = signal.signal(signal.SIGCHLD, self._record_signal)

            def restore() -> None:
                signal.signal(signal.SIGCHLD, handler)
                signal.set_wakeup_fd(wakeup)

            self._restore_sigchld = restore
            self._reaping_orphans = True

    def _router(
        self, domain: bytes, endpoint: str, owner: AgentProcess | None
    ) -> tuple[zmq.Socket[bytes], AcceptedConnections]:
        """A ROUTER socket bound at ``endpoint`` whose connections the ZAP
        handler judges under ``domain`` (``capsup``, or a confined agent's
        id), and its accepted connections, watched from the poller (``owner``:
        the agent whose own endpoint it is).

        libzmq assigns routing ids from a counter that starts at its C
        library's ``rand()``, unseeded, so the same in every process: a peer
        that names the next assigned id as its own makes the next ordinary
        connection trip an assertion that aborts the supervisor. The counter
        is drawn from a seed of 32 secret bits instead, so a peer can only
        guess it (docs/protocol.md, "Connections")."""
        _libc.srand(secrets.randbits(32))
        sock = self._context.socket(zmq.ROUTER)
        accepted: AcceptedConnections | None = None
        try:
            # Watched before it is bound: no connection goes uncounted.
            if domain == b"capsup":
                accepted = AcceptedConnections(self._context, sock, endpoint, self._connections)
            else:
                accepted = AcceptedConnections(
                    self._context,
                    sock,
                    endpoint,
                    self._agent_connections,
                    admits=lambda pid: self._agent_endpoint_user(domain, pid) is not None,
                )
            sock.setsockopt(zmq.ZAP_DOMAIN, domain)
            sock.setsockopt(zmq.LINGER, 0)
            # Messages a little over the limit get a message_too_large reply;
            # libzmq drops the connection of a peer sending anything larger,
            # before it is ever buffered whole. It also bounds what a peer
            # that stalls in the middle of a message makes the supervisor
            # hold: one such message per connection.
            sock.setsockopt(zmq.MAXMSGSIZE, self._largest_message(domain))
            # Bound what one peer can make the supervisor buffer before it is read.
            sock.setsockopt(zmq.RCVHWM, 64)
            # A reply to a peer that vanished is dropped silently, not an error.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
            # A local handshake takes well under a millisecond; a peer that
            # stalls it holds a descriptor, and (on the shared endpoint) the
            # time between its connect() and the pid lookup is a window for
            # pid reuse. libzmq's default is 30 s.
            sock.setsockopt(zmq.HANDSHAKE_IVL, _HANDSHAKE_MS)
            sock.bind(endpoint)
        except BaseException:
            if accepted is not None:
                accepted.close()
            sock.close(linger=0)
            raise
        self._ledgers[accepted.monitor] = (accepted, owner)
        self._poller.register(accepted.monitor, zmq.POLLIN)
        return sock, accepted

    # -- agents ---------------------------------------------------------------

    def start_agent(
        self,
        argv: Sequence[str],
        *,
        name: str,
        policy_name: str | None = None,
        parent: AgentProcess | None = None,
        agent_id: str | None = None,
        trace_id: str | None = None,
    ) -> AgentProcess:
        """Spawn an agent and make it known to the kernel and the poller.

        ``policy_name`` (default: ``name``) is the policy key its own requests
        are judged by; ``""`` gives it no ceilings of its own."""
        policy_name = name if policy_name is None else policy_name
        agent_id = agent_id or new_agent_id(name)
        router: zmq.Socket[bytes] | None = None
        accepted: AcceptedConnections | None = None
        endpoint: str | None = None
        if self.processes.confiner is not None:
            # A confined agent's connect() is made by the supervisor, so the
            # connection's SO_PEERCRED names the supervisor: the endpoint it
            # connects to, the agent's own, is what says who it is.
            self._agent_endpoints.mkdir(mode=0o700, exist_ok=True)
            endpoint = f"ipc://{self._agent_endpoints}/{next(self._endpoint_counter)}.sock"
            router, accepted = self._router(agent_id.encode(), endpoint, None)
        try:
            agent = self.processes.spawn(
                argv,
                agent_id=agent_id,
                name=name,
                policy_name=policy_name,
                parent=parent.agent_id if parent else None,
                stdin_devnull=parent is not None,
                endpoint=endpoint,
            )
        except BaseException:
            if router is not None:
                self._close_router(router)
            raise
        if router is not None and accepted is not None:
            self._ledgers[accepted.monitor] = (accepted, agent)
            self._routers[router] = agent
            self._poller.register(router, zmq.POLLIN)
        assert agent.control is not None
        self._poller.register(agent.control.fileno(), zmq.POLLIN)
        self.kernel.register_principal(
            Principal(agent.agent_id, policy_name, pid=agent.pid),
            parent=parent.agent_id if parent else None,
        )
        self._poller.register(agent.pidfd, zmq.POLLIN)
        self._rebudget()
        try:
            self._record_start(agent, argv, trace_id)
        except Exception:
            # Unrecorded, it must not run: its exit comes back through the pidfd.
            self.processes.send_signal(agent, signal.SIGKILL)
            raise
        return agent

    def _record_start(self, agent: AgentProcess, argv: Sequence[str], trace_id: str | None) -> None:
        self._emit(
            Event(
                EventType.AGENT_STARTED,
                time.time(),
                trace_id or new_trace_id(),
                principal=agent.agent_id,
                pid=agent.pid,
                detail={
                    "name": agent.name,
                    "policy_name": agent.policy_name,
                    "parent": agent.parent,
                    "argv": [a[:256] for a in argv[:32]],
                    "confined": self._confinement_record(agent),
                },
            )
        )

    def _confinement_record(self, agent: AgentProcess) -> str | dict[str, Any]:
        """``agent_started``'s ``confined``: ``"off"``, or the mode and what
        this machine could not enforce for it."""
        if agent.confinement is None:
            return "off"
        plan = agent.confinement.plan
        return {"mode": plan.mode, "not_enforced": list(plan.missing)}

    def _on_exit(self, agent: AgentProcess) -> None:
        """An agent exited: revoke everything it held, stop its sub-agents,
        answer whoever waits for it, kill what is left of its tree."""
        self._poller.unregister(agent.pidfd)
        if agent.control is not None:
            self._unwatch(agent.control.fileno())
        returncode = self.processes.reap(agent)
        now = time.time()
        trace_id = new_trace_id()
        # The kernel takes the capabilities away even if the store or the
        # trail fails while it does; such a failure must not stop the rest.
        revoked: list[str] = []
        # UnknownAgent: a spawn that failed, so it never held anything.
        with (
            self._reported("revoking the rights of an exited agent"),
            contextlib.suppress(UnknownAgent),
        ):
            revoked = self.kernel.revoke_all_for_agent(
                OPERATOR, agent.agent_id, now=now, trace_id=trace_id, cause="holder_exited"
            )
        with self._reported("recording an agent's exit"):
            self._record_exit(agent, returncode, revoked, now, trace_id)
        for child in self.processes.descendants(agent.agent_id):
            self.processes.stop(child, now, self._grace)
        for waiter in self._waiters.pop(agent.agent_id, []):
            self._answer(waiter, {"exit_code": returncode})
        self._peers = {k: v for k, v in self._peers.items() if v.agent is not agent}
        self._release(agent)
        self._rebudget()
        for child_id in list(agent.children):
            finished = self.processes.get(child_id)
            if finished is not None and not finished.running:
                self.processes.forget(finished)
        parent = self.processes.get(agent.parent) if agent.parent else None
        if parent is None:
            self.processes.forget(agent)
        else:
            # Kept for its parent's wait; an agent that keeps spawning
            # short-lived helpers keeps only the most recent ones' codes.
            parent.ended_children.append(agent.agent_id)
            while len(parent.ended_children) > _KEPT_ENDED_CHILDREN:
                oldest = self.processes.get(parent.ended_children.popleft())
                if oldest is not None and not oldest.running:
                    self.processes.forget(oldest)
        self.kernel.forget_principal(agent.agent_id)

    def _release(self, agent: AgentProcess) -> None:
        """Close a confined agent's endpoint, kill its whole tree, remove its
        scratch: nothing of it outlives it."""
        for router, owner in list(self._routers.items()):
            if owner is agent:
                del self._routers[router]
                self._poller.unregister(router)
                self._close_router(router)
        if agent.confinement is not None:
            with self._reported("releasing an agent's confinement"):
                agent.confinement.release()
            if agent.confinement.cgroup is None and not self.processes.running:
                # No cgroup to kill its tree (best-effort): the weaker
                # guarantee, its orphans killed once no agent runs.
                with self._reported("killing orphaned processes"):
                    kill_orphans(set())

    def _record_exit(
        self, agent: AgentProcess, returncode: int, revoked: list[str], now: float, trace_id: str
    ) -> None:
        self._emit(
            Event(
                EventType.AGENT_TERMINATED,
                now,
                trace_id,
                principal=agent.agent_id,
                pid=agent.pid,
                detail={
                    "name": agent.name,
                    "exit_code": returncode,
                    "reason": agent.exit_reason,
                    "revoked": len(revoked),
                },
            )
        )

    @contextlib.contextmanager
    def _reported(self, what: str) -> Iterator[None]:
        """Keep the loop alive through a failure in ``what``, and say so.

        Used only where the security effect is already done or cannot be
        undone (the kernel forgets first, then fails); anything else fails
        the request instead."""
        try:
            yield
        except Exception as error:
            _tell_operator(f"{what} failed", error)

    def stop_all(self, grace: float | None = None) -> None:
        """SIGTERM every agent, SIGKILL after the grace period, until all exited."""
        now = time.time()
        for agent in self.processes.running:
            self.processes.stop(agent, now, self._grace if grace is None else grace)
        while self.processes.running:
            self.turn(timeout=0.05)

    # -- the loop -------------------------------------------------------------

    def turn(self, timeout: float | None) -> None:
        """One pass of the loop; waits at most ``timeout`` seconds for work."""
        timeout = self._bounded(timeout)
        ready = dict(self._poller.poll(None if timeout is None else int(timeout * 1000) + 1))
        for fd in ready:
            exited = self.processes.by_pidfd(fd) if isinstance(fd, int) else None
            if exited is not None:
                self._on_exit(exited)
        if self._signals_r.fileno() in ready:
            self._drain_signal_pipe()
            self._brokered.collect()
            self._after_signals()
        for item in ready:
            controlled = self.processes.by_control(item) if isinstance(item, int) else None
            if controlled is not None:
                self._on_control(controlled)
        for item in ready:
            if item in self._ledgers and item is not self._accepted.monitor:
                self._drain_connections(item)
        if self._accepted.monitor in ready or self._zap in ready:
            # Before ZAP: an accept is queued before its handshake can end.
            self._drain_connections(self._accepted.monitor)
        if self._zap in ready:
            self._answer_zap()
        for item in ready:
            if item is self._socket:
                self._serve(item, self._shared_batch)
            elif item in self._routers:
                self._serve(item, 1)
        self._timers()

    def _serve(self, sock: zmq.Socket[bytes], batch: int) -> None:
        """Up to ``batch`` requests from one ROUTER socket.

        A confined agent's socket is its own, and mostly holds one request
        per turn: it is served one request a turn (the poller says when
        another waits), which spares trying it until it raises ``zmq.Again``
        (4.2 us, as much as a tenth of a validation) and takes the agents in
        turn. The shared socket is served in batches."""
        self._serving = sock
        for _ in range(batch):
            try:
                raw, user = self._receive(sock)
            except zmq.Again:
                break
            self._handle(raw, user)

    def _bounded(self, timeout: float | None) -> float | None:
        now = time.time()
        deadlines = [self.kernel.next_expiry(), self.processes.next_kill()]
        deadlines += [w.deadline for ws in self._waiters.values() for w in ws]
        due = [d - now for d in deadlines if d is not None]
        if due:
            soonest = max(0.0, min(due))
            timeout = soonest if timeout is None else min(timeout, soonest)
        return timeout

    def _timers(self) -> None:
        now = time.time()
        self.processes.kill_overdue(now)
        expiry = self.kernel.next_expiry()
        if expiry is not None and expiry <= now:
            with self._reported("expiring capabilities"):
                self.kernel.sweep(now=now, trace_id=new_trace_id())
        for agent_id, waiters in list(self._waiters.items()):
            for waiter in [w for w in waiters if w.deadline is not None and w.deadline <= now]:
                waiters.remove(waiter)
                self._answer(waiter, WaitTimeout(f"agent {agent_id} is still running"))
            if not waiters:
                del self._waiters[agent_id]
        if self._on_idle is not None:
            with self._reported("flushing the audit trail"):
                self._on_idle()

    def _answer(self, waiter: _Waiter, outcome: dict[str, Any] | CapsupError) -> None:
        """Send a held ``wait`` its reply, if the agent that asked still runs."""
        if not waiter.asker.running:
            return
        if isinstance(outcome, CapsupError):
            reply = p.error_reply(waiter.request_id, outcome, waiter.trace_id)
        else:
            reply = p.ok_reply(waiter.request_id, outcome, waiter.trace_id)
        self._send(waiter.envelope, reply, waiter.sock)

    # -- confined agents ------------------------------------------------------

    def _on_control(self, agent: AgentProcess) -> None:
        """The agent's descriptor socket is readable: the bootstrap's report
        (first, before the agent's code runs), else an ``open`` request."""
        control = agent.control
        assert control is not None
        confinement = agent.confinement
        if confinement is not None and confinement.enforced is None:
            self._on_report(agent, control)
            return
        handled = serve_descriptor_request(
            control,
            lambda data: self._open_for(agent, data),
            refuse=lambda error, data: self._refuse_descriptor_request(agent, error, data),
        )
        if not handled:  # every copy of the agent's end is closed
            self._unwatch(control.fileno())

    def _unwatch(self, fd: int) -> None:
        """Stop polling ``fd`` (once: the end of a descriptor socket is seen
        both when its last copy closes and when its agent exits)."""
        with contextlib.suppress(KeyError):
            self._poller.unregister(fd)

    def _open_for(self, agent: AgentProcess, data: bytes) -> tuple[bytes, int | None]:
        """Answer one request on ``agent``'s descriptor socket: the reply,
        and the descriptor it carries. The socket is the agent's by
        construction (one end of a pair made for it at its start)."""
        principal = Principal(agent.agent_id, agent.policy_name, pid=agent.pid)
        try:
            request = p.parse_request(data, max_bytes=self._max_bytes)
            args = p.parse_args(request)
            if not isinstance(args, p.OpenArgs):
                raise BadRequest(f"only open is served on the descriptor socket, not {request.op}")
        except CapsupError as error:
            return self._refuse_descriptor_request(agent, error, data), None
        trace_id = request.trace_id or new_trace_id()
        try:
            fd = open_for_agent(
                self.kernel, principal, args, now=time.time(), trace_id=trace_id, emit=self._emit
            )
        except CapsupError as error:
            return p.error_reply(request.id, error, trace_id), None
        except Exception as error:  # a bug must not take the supervisor down
            internal = self._internal(error, trace_id, _Peer(agent, principal), "open")
            return p.error_reply(request.id, internal, trace_id), None
        return p.ok_reply(request.id, {}, trace_id), fd

    def _refuse_descriptor_request(
        self, agent: AgentProcess, error: CapsupError, data: bytes
    ) -> bytes:
        """Record a descriptor-socket request that could not be read (as
        ``malformed_input``) and make its error reply."""
        request_id, trace_id = p.best_effort_ids(data)
        trace_id = trace_id or new_trace_id()
        try:
            self._violation(
                ViolationKind.MALFORMED_INPUT,
                error,
                trace_id,
                pid=agent.pid,
                principal=agent.agent_id,
            )
        except CapsupError as unrecorded:  # the trail is down: say that instead
            error = unrecorded
        return p.error_reply(request_id, error, trace_id)

    def _on_report(self, agent: AgentProcess, control: socket.socket) -> None:
        """Read what the bootstrap enforced; take over its seccomp listener."""
        confinement = agent.confinement
        assert confinement is not None
        try:
            data, fds, _, _ = socket.recv_fds(control, 4096, 1)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        try:
            report = json.loads(data) if data else None
            enforced = report.get("enforced") if isinstance(report, dict) else None
            if not isinstance(enforced, list) or not all(isinstance(e, str) for e in enforced):
                # EOF or garbage: the bootstrap failed, and the agent's exit
                # comes through its pidfd.
                enforced = []
            confinement.enforced = enforced[:32]
            if fds and "seccomp" in confinement.enforced:
                listener = fds.pop(0)
                try:
                    confinement.serve_connects(
                        listener,
                        lambda pid, path, reason: self._connect_refused(agent, pid, path, reason),
                    )
                except OSError as error:
                    # Without its connect broker the agent reaches nothing,
                    # and waits: stop it (its exit comes through its pidfd).
                    _tell_operator(f"cannot broker agent {agent.agent_id}'s connects", error)
                    self.processes.send_signal(agent, signal.SIGKILL)
        finally:
            for fd in fds:
                os.close(fd)
        if not data:
            self._unwatch(control.fileno())

    def _connect_refused(self, agent: AgentProcess, pid: int, path: str, reason: str) -> None:
        """Called on a connect broker's thread: queue the refusal for the
        loop (which owns the trail) and wake it."""
        with self._refused_connects_lock:
            if len(self._refused_connects) < _MAX_QUEUED_REFUSALS:
                self._refused_connects.append((agent.agent_id, pid, path, reason))
            else:
                overflow = self._refused_connects_overflow
                overflow[agent.agent_id] = overflow.get(agent.agent_id, 0) + 1
        with contextlib.suppress(OSError):
            self._signals_w.send(b"\0")

    def _after_signals(self) -> None:
        """Record refused connects; reap the orphans that came back to the
        subreaper."""
        with self._refused_connects_lock:
            refused = list(self._refused_connects)
            self._refused_connects.clear()
            overflow, self._refused_connects_overflow = self._refused_connects_overflow, {}
        for agent_id, pid, path, reason in refused:
            error = NotAuthorized(f"connect() to {path[:256]!r} refused: {reason}")
            with self._reported("recording a refused connect"):
                self._violation(
                    ViolationKind.SANDBOX_DENIED, error, new_trace_id(), pid=pid, principal=agent_id
                )
        for agent_id, count in overflow.items():
            error = NotAuthorized(f"{count} more connect() refusals, faster than they could queue")
            with self._reported("recording refused connects"):
                self._violation(
                    ViolationKind.SANDBOX_DENIED, error, new_trace_id(), principal=agent_id
                )
        if self._reaping_orphans:
            with self._reported("reaping orphaned processes"):
                reap_orphans({a.pid for a in self.processes.running})

    # -- signals --------------------------------------------------------------

    def install_signal_handlers(self, signums: Sequence[int]) -> None:
        """Route ``signums`` into the loop; they appear in :attr:`pending_signals`."""
        signal.set_wakeup_fd(self._signals_w.fileno(), warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def _drain_signal_pipe(self) -> None:
        try:
            while self._signals_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    # -- requests -------------------------------------------------------------

    def _receive(self, sock: zmq.Socket[bytes]) -> tuple[list[p.FrameData], str]:
        """One message's frames, and the User-Id its connection was given at
        the handshake.

        A ROUTER hands over a message whole: the routing id it prepends,
        which always has more frames after it, then the peer's frames, all
        already queued. The routing id is taken as plain bytes, the rest as
        Frame objects: ``more`` on a Frame is cheaper to read than
        ``getsockopt(RCVMORE)`` (which builds an enum on every call), and
        the User-Id is read from the first of them, since libzmq puts the
        connection's metadata on every frame it receives. A stranger's
        frames (a User-Id with no agent id) are only looked into for the ids
        to echo, so they are taken as views, not copied: a copy of a 1 MiB
        frame costs a fresh mapping and its page faults, more than the rest
        of the refusal."""
        recv = sock.recv
        routing_id = recv(_RECV)
        first = frame = recv(_RECV, copy=False)
        user = str(first.get("User-Id") or "")
        if user[:1] in ("|", ""):
            frames: list[p.FrameData] = [routing_id, frame.buffer]
            while frame.more:
                frame = recv(_RECV, copy=False)
                frames.append(frame.buffer)
            return frames, user
        frames = [routing_id, frame.bytes]
        while frame.more:
            frame = recv(_RECV, copy=False)
            frames.append(frame.bytes)
        return frames, user

    def _handle(self, raw: list[p.FrameData], user: str) -> None:
        started = time.perf_counter()
        envelope = p.routing_envelope(raw)
        op = "invalid"
        try:
            admitted = self._admit(raw, envelope, user)
            if admitted is not None:
                peer, request, args = admitted
                op = request.op  # a StrEnum: the wire name, without .value
                self._execute(envelope, peer, request, args)
        except Exception as error:  # a bug must not take the supervisor down
            self._internal_error(envelope, None, new_trace_id(), error)
        finally:
            if self._observe is not None:
                self._observe(op, time.perf_counter() - started)

    def _admit(
        self, raw: list[p.FrameData], envelope: list[bytes], user: str
    ) -> tuple[_Peer, p.Request, p.OpArgs] | None:
        """Authenticate and parse one message, or refuse it: a message from a
        stranger, or one that cannot be parsed, is answered and recorded as a
        violation under the same trace id, and None is returned."""
        payload: p.FrameData = b""
        peer: _Peer | None = None
        request: p.Request | None = None
        try:
            payload = p.request_payload(raw, envelope)
            peer = self._authenticate(user)
            request = p.parse_request(payload, max_bytes=self._max_bytes)
            return peer, request, p.parse_args(request)
        except CapsupError as error:
            request_id: p.RequestId | None
            if request is not None:
                request_id, trace_id = request.id, request.trace_id
            else:
                request_id, trace_id = p.best_effort_ids(payload)
            trace_id = trace_id or new_trace_id()
            kind = (
                ViolationKind.UNAUTHENTICATED
                if isinstance(error, Unauthenticated)
                else ViolationKind.MALFORMED_INPUT
            )
            try:
                self._violation(
                    kind,
                    error,
                    trace_id,
                    pid=peer.principal.pid if peer else _identity(user)[1],
                    principal=peer.principal.id if peer else None,
                )
            except CapsupError as unrecorded:  # the trail is down: say that instead
                error = unrecorded
            self._send(envelope, p.error_reply(request_id, error, trace_id))
            return None

    def _execute(
        self, envelope: list[bytes], peer: _Peer, request: p.Request, args: p.OpArgs
    ) -> None:
        """Carry out an admitted request and answer it (``wait`` perhaps later).
        Refusals from here on were recorded by whoever refused."""
        trace_id = request.trace_id or new_trace_id()
        result: dict[str, Any] | p.Packed | None
        try:
            if isinstance(args, _PROCESS_OPS):
                result = self._process_op(peer, args, envelope, request.id, trace_id)
                if result is None:
                    return  # a wait that will be answered later
            elif isinstance(args, p.OpenArgs):
                raise BadRequest(
                    "open hands over a descriptor, so it is served on the descriptor socket "
                    "($CAPSUP_FD_SOCKET), not here"
                )
            elif isinstance(args, _BROKERED_OPS):
                self._start_brokered(envelope, peer, request, args, trace_id)
                return  # answered once a worker has done it
            elif isinstance(args, _FILE_OPS):
                result = perform_file_op(
                    self.kernel,
                    peer.principal,
                    args,
                    now=time.time(),
                    trace_id=trace_id,
                    emit=self._emit,
                )
            else:
                result = self._kernel_op(peer.principal, args, trace_id)
            self._send(envelope, p.ok_reply(request.id, result, trace_id))
        except CapsupError as error:
            self._send(envelope, p.error_reply(request.id, error, trace_id))
        except Exception as error:  # a bug must not take the supervisor down
            self._internal_error(envelope, request.id, trace_id, error, peer, request.op)

    def _start_brokered(
        self,
        envelope: list[bytes],
        peer: _Peer,
        request: p.Request,
        args: p.BrokeredArgs,
        trace_id: str,
    ) -> None:
        """Validate an ``http`` or ``query`` now and perform it on a worker;
        the reply goes, once it is done, where the request came from, if the
        agent that asked still runs (its own endpoint is closed otherwise)."""
        sock = self._serving
        assert sock is not None
        if not _assigned_by_router(envelope[0]):
            # Answered later, so like a held wait: an id the peer chose is one
            # any process can take once the peer disconnects.
            chosen_id = BadRequest(
                f"{request.op} is answered later, so it needs a connection whose routing id "
                "the supervisor assigned; connect without setting ZMQ_ROUTING_ID"
            )
            self._refuse(chosen_id, peer, request.op, trace_id)

        def answer(result: Callable[[], dict[str, Any]]) -> None:
            try:
                reply = p.ok_reply(request.id, result(), trace_id)
            except CapsupError as error:
                reply = p.error_reply(request.id, error, trace_id)
            except Exception as error:  # a bug must not take the supervisor down
                internal = self._internal(error, trace_id, peer, request.op)
                reply = p.error_reply(request.id, internal, trace_id)
            if peer.agent.running:
                self._send(envelope, reply, sock)

        try:
            self._brokered.start(
                peer.principal,
                args,
                tree=self._tree_of(peer.agent),
                now=time.time(),
                trace_id=trace_id,
                answer=answer,
            )
        except Busy as busy:
            self._refuse(busy, peer, request.op, trace_id)

    def _tree_of(self, agent: AgentProcess) -> str:
        """The id of the top agent of ``agent``'s tree: brokered work is
        bounded per tree, so spawning sub-agents buys no more of it."""
        while agent.parent is not None:
            parent = self.processes.get(agent.parent)
            if parent is None:
                break
            agent = parent
        return agent.agent_id

    def _wake_loop(self) -> None:
        """Called on a worker thread: make the loop's poll return."""
        with contextlib.suppress(OSError):  # full: a wakeup is pending already
            self._signals_w.send(b"\0")

    def _kernel_op(
        self, principal: Principal, args: p.OpArgs, trace_id: str
    ) -> dict[str, Any] | p.Packed:
        """Dispatch to the kernel; a ``validate`` is timed for the metrics,
        allowed or refused."""
        now = time.time()
        if self._observe_validation is None or not isinstance(args, p.ValidateArgs):
            return dispatch_kernel_op(self.kernel, principal, args, now=now, trace_id=trace_id)
        started = time.perf_counter()
        try:
            return dispatch_kernel_op(self.kernel, principal, args, now=now, trace_id=trace_id)
        finally:
            self._observe_validation(time.perf_counter() - started)

    def _internal_error(
        self,
        envelope: list[bytes],
        request_id: p.RequestId | None,
        trace_id: str,
        error: Exception,
        peer: _Peer | None = None,
        op: str | None = None,
    ) -> None:
        """Answer a request that a bug in capsup stopped (see :meth:`_internal`)."""
        internal = self._internal(error, trace_id, peer, op)
        self._send(envelope, p.error_reply(request_id, internal, trace_id))

    def _internal(
        self, error: Exception, trace_id: str, peer: _Peer | None, op: str | None
    ) -> InternalError:
        """A request that a bug in capsup stopped: said on stderr (for whoever
        runs capsup) and recorded where the trail works; the refusal to send
        names only the exception's type: the peer is not told capsup's
        internals."""
        internal = InternalError(f"internal error: {type(error).__name__}")
        _tell_operator(f"internal error (trace {trace_id})", error)
        with contextlib.suppress(Exception):  # nothing is left to tell if this fails
            self._emit(_refusal_event(internal, peer, op, trace_id))
        return internal

    def _answer_zap(self) -> None:
        """Bind identity to a connection while it is made (ZAP, RFC 27).

        libzmq asks this handler about every new connection, with the peer's
        pid from SO_PEERCRED in the address. The process is matched now, by
        (pid, create time), to a spawned agent or its descendant, and the
        answer becomes the connection's User-Id, carried by every message on
        it. So a pid recycled later, or a socket handed to another process
        after its connector exited, can never change who the connection is.
        Unknown peers are let in as nobody, so they get an ``unauthenticated``
        reply rather than a silent hang.

        A connection to a confined agent's own endpoint (its ZAP domain is
        the agent id) is the agent only if the supervisor made it: a confined
        agent's ``connect()`` is performed by the supervisor, which connects
        it to that agent's endpoint and nowhere else, so the peer is the
        supervisor's own pid. Anyone else there is nobody.

        On the shared endpoint the pid is the one the kernel recorded at
        ``connect()``, and the handshake may end much later: a pid some
        connection's connector no longer holds is refused
        (:class:`~capsup.supervisor.peers.AcceptedConnections`), and a
        confined agent is never found there (it cannot connect there).

        A routing id the peer chose is not in the ZAP request (its identity
        frame is the ROUTER's own), so it cannot be refused here; see
        :meth:`_router` for how a chosen id is kept from colliding with an
        assigned one, and ``_assigned_by_router`` for held waits."""
        for _ in range(_BATCH):
            try:
                request = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(request) < 5:
                continue  # not a ZAP request libzmq would send; nothing to answer
            version, request_id, domain, address = request[:4]
            pid = _peer_pid(address.decode("ascii", "replace"))
            status, user = self._judge_connection(domain, pid)
            self._zap.send_multipart(
                [version, request_id, status, b"OK" if status == b"200" else b"refused", user, b""]
            )

    def _agent_endpoint_user(self, domain: bytes, pid: int | None) -> bytes | None:
        """The User-Id of a connection from ``pid`` to the agent's own
        endpoint (its ZAP domain is the agent id), or None for a process
        that may not connect there: only the supervisor, whose connect()
        it performs for the agent, or the agent itself where its connect()
        is its own (no seccomp in its plan: best-effort on a kernel
        without it)."""
        owner = self.processes.get(domain.decode("ascii", "replace"))
        if owner is None or not owner.running or owner.confinement is None:
            return None
        if pid == os.getpid():
            return f"{owner.agent_id}|{owner.pid}".encode()
        brokered = owner.confinement.plan.seccomp
        if pid is not None and not brokered and self.processes.identify(pid) is owner:
            return f"{owner.agent_id}|{pid}".encode()
        return None

    def _judge_connection(self, domain: bytes, pid: int | None) -> tuple[bytes, bytes]:
        """The ZAP status and User-Id (``AGENT_ID|PID``, the id empty for
        nobody) of a new connection."""
        if domain != b"capsup":
            user = self._agent_endpoint_user(domain, pid)
            if user is not None:
                return b"200", user
            # Anyone else is refused outright, not let in as nobody: nobody
            # has business there, and a connection let in could take the
            # routing id of one the agent closed (and a reply meant for it).
            # (Its connection was most likely shut down when accepted.)
            error = Unauthenticated(
                "a process that is not this agent connected to the agent's own endpoint"
            )
            with self._reported("recording a refused connection"):
                self._violation(ViolationKind.UNAUTHENTICATED, error, new_trace_id(), pid=pid)
            return b"400", b""
        if pid is not None and not self._accepted.connector_alive(pid):
            # Some connection from this pid was made by a process that has
            # died since: the pid is another's now, and which connection this
            # handshake belongs to cannot be told. Refuse; a genuine client
            # reconnects once libzmq drops the dead one's (the handshake
            # interval).
            return b"400", b""
        agent = self.processes.identify(pid) if pid is not None else None
        if agent is not None and agent.confinement is not None:
            # A confined agent never connects here (its connect() reaches
            # only its own endpoint): a process that looks like one of its
            # tree is a stranger holding a recycled pid.
            agent = None
        return b"200", f"{agent.agent_id if agent else ''}|{pid or 0}".encode()

    def _authenticate(self, user: str) -> _Peer:
        """The agent behind a connection's User-Id (set by :meth:`_answer_zap`);
        raises :class:`Unauthenticated` for anyone else."""
        peer = self._peers.get(user)
        if peer is not None and peer.agent.running:
            return peer
        agent_id, pid = _identity(user)
        agent = self.processes.get(agent_id) if agent_id else None
        if agent is None or not agent.running or pid is None:
            raise Unauthenticated(
                "this process is not an agent of this supervisor (identity comes from the "
                "operating system, not from the request)"
            )
        peer = _Peer(agent, Principal(agent.agent_id, agent.policy_name, pid=pid))
        self._peers[user] = peer
        return peer

    def _process_op(
        self,
        peer: _Peer,
        args: p.SpawnArgs | p.WaitArgs,
        envelope: list[bytes],
        request_id: p.RequestId,
        trace_id: str,
    ) -> dict[str, Any] | None:
        if isinstance(args, p.WaitArgs):
            child = self.processes.get(args.agent)
            if child is None:
                self._refuse(UnknownAgent(f"no agent {args.agent[:64]!r}"), peer, "wait", trace_id)
            if child.parent != peer.agent.agent_id:
                error = NotAuthorized("an agent may wait only for the sub-agents it spawned")
                self._violation(
                    ViolationKind.NOT_AUTHORIZED,
                    error,
                    trace_id,
                    pid=peer.principal.pid,
                    principal=peer.principal.id,
                )
                raise error
            if not child.running:
                return {"exit_code": child.returncode}
            if not _assigned_by_router(envelope[0]):
                # A late answer goes to whichever connection has this id
                # then; an id the peer chose is one any process can take
                # once the peer disconnects.
                chosen_id = BadRequest(
                    "a wait that must be answered later needs a connection whose routing id "
                    "the supervisor assigned; connect without setting ZMQ_ROUTING_ID"
                )
                self._refuse(chosen_id, peer, "wait", trace_id)
            waiting = self._waiters.setdefault(child.agent_id, [])
            if len(waiting) >= _MAX_WAITERS:
                error = NotAuthorized(f"more than {_MAX_WAITERS} waits on one agent")
                self._refuse(error, peer, "wait", trace_id)
            deadline = None if args.timeout is None else time.time() + args.timeout
            assert self._serving is not None
            waiting.append(
                _Waiter(peer.agent, self._serving, envelope, request_id, trace_id, deadline)
            )
            return None
        return self._spawn(peer, args, trace_id)

    def _spawn(self, peer: _Peer, args: p.SpawnArgs, trace_id: str) -> dict[str, Any]:
        """Delegate the grants to the new agent's id first, then start it: a
        refused delegation starts nothing, and a failed start revokes them."""
        now = time.time()
        name = args.name or Path(args.argv[0]).name
        # A sub-agent's name is a policy key only where the parent's entry
        # lists it in may_spawn; otherwise an agent could spawn a helper named
        # after a more privileged entry and be granted that entry's rights.
        policy_name = name if self.kernel.policy.may_spawn(peer.principal.name, name) else ""
        # Quotas: every agent costs the supervisor descriptors and memory.
        # spawn_failed, not not_authorized: the caller may spawn, and may
        # again once an agent exits.
        if self.processes.running_count >= self._max_agents:
            quota = f"{self._max_agents} agents run already ([supervisor] max_agents)"
            self._refuse(SpawnFailed(quota), peer, "spawn", trace_id)
        free = self._soft_descriptors - _open_descriptors()
        if free < _DESCRIPTOR_RESERVE:
            short = f"the supervisor has {free} descriptors left; an agent needs some of its own"
            self._refuse(SpawnFailed(short), peer, "spawn", trace_id)
        live = sum(1 for c in map(self.processes.get, peer.agent.children) if c and c.running)
        if live >= self._max_sub_agents:
            quota = f"this agent has {live} live sub-agents ([supervisor] max_sub_agents)"
            self._refuse(SpawnFailed(quota), peer, "spawn", trace_id)
        agent_id = new_agent_id(name)
        self.kernel.register_principal(Principal(agent_id, policy_name), parent=peer.agent.agent_id)
        delegated = []
        try:
            for grant in args.capabilities:
                delegation = Delegation(
                    agent_id,
                    grant.resource,
                    None if grant.operations is None else sorted(grant.operations),
                    grant.constraints,
                    grant.ttl,
                )
                delegated.append(
                    self.kernel.delegate(
                        peer.principal, grant.capability, delegation, now=now, trace_id=trace_id
                    )
                )
            try:
                child = self.start_agent(
                    args.argv,
                    name=name,
                    policy_name=policy_name,
                    parent=peer.agent,
                    agent_id=agent_id,
                    trace_id=trace_id,
                )
            except Exception as error:
                if isinstance(error, CapsupError):
                    self._refuse(error, peer, "spawn", trace_id)
                failure = SpawnFailed(f"cannot start {args.argv[0][:64]!r}: {error}")
                self._refuse(failure, peer, "spawn", trace_id, cause=error)
        except Exception:
            try:
                if delegated:
                    self.kernel.revoke_all_for_agent(
                        OPERATOR, agent_id, now=now, trace_id=trace_id, cause="spawn_failed"
                    )
            finally:
                self.kernel.forget_principal(agent_id)
            raise
        return {
            "agent_id": child.agent_id,
            "pid": child.pid,
            "capabilities": [c.to_wire() for c in delegated],
        }

    def _send(
        self, envelope: list[bytes], reply: bytes, sock: zmq.Socket[bytes] | None = None
    ) -> None:
        """Send ``reply`` to ``envelope`` on ``sock``, by default the socket
        being served."""
        # A peer that is gone or not reading gets nothing; nobody is left to tell.
        # Frame by frame with plain int flags: send_multipart's type checks
        # and enum arithmetic cost more than the sends on this hot path.
        if sock is None:
            sock = self._serving
            assert sock is not None
        try:
            for frame in envelope:
                _send_frame(sock, frame, _SEND_MORE)
            _send_frame(sock, reply, _SEND_LAST)
        except zmq.ZMQError:
            pass

    def _refuse(
        self,
        error: CapsupError,
        peer: _Peer,
        op: str,
        trace_id: str,
        cause: BaseException | None = None,
    ) -> NoReturn:
        """Record a refusal the server makes itself, then raise it (the
        kernel records its own): a ``wait`` or ``spawn`` it could not do."""
        self._emit(_refusal_event(error, peer, op, trace_id))
        raise error from cause

    def _violation(
        self,
        kind: ViolationKind,
        error: CapsupError,
        trace_id: str,
        *,
        pid: int | None = None,
        principal: str | None = None,
    ) -> None:
        self._emit(
            _denial_event(
                EventType.SECURITY_VIOLATION,
                error,
                trace_id,
                principal=principal,
                pid=pid,
                kind=kind.value,
            )
        )

    def _emit(self, event: Event) -> None:
        if self._sink is not None:
            self._sink(event)

    def _largest_message(self, domain: bytes) -> int:
        """What a ROUTER reads of one message before libzmq drops its sender.

        Agents' own endpoints, and the shared one when agents run
        unconfined (they speak there), take ``max_message_bytes`` and a
        little more (answered ``message_too_large``). When agents are
        confined, no agent speaks on the shared endpoint: only processes
        that are not agents reach it, and all they get is
        ``unauthenticated``, so it takes 64 KiB. A stranger then cannot make
        the supervisor take in a megabyte per message, nor hold one per
        stalled connection."""
        if domain == b"capsup" and self.processes.confiner is not None:
            return _STRANGER_MESSAGE_BYTES
        return self._max_bytes + _MESSAGE_SLACK

    def _rebudget(self) -> None:
        """Size the connection budgets to the descriptors the agents leave.

        Of what the process may open, a reserve is kept for the loop and
        each running agent's own descriptors are set aside; a quarter of the
        rest is the most either budget may take (and never more than
        ``max_connections``), so that half of it stays free for connections
        libzmq accepts before the loop sees them. Called when an agent
        starts or ends; a budget that shrinks below what is held refuses
        new connections until enough have closed."""
        agents = self.processes.running_count
        left = self._soft_descriptors - _DESCRIPTOR_RESERVE - _AGENT_DESCRIPTORS * agents
        total = max(1, min(self._max_connections, left // 4))
        self._connections.total = self._agent_connections.total = total

    def _close_router(self, router: zmq.Socket[bytes]) -> None:
        """Close a ROUTER and stop watching its connections."""
        for monitor, (accepted, _) in list(self._ledgers.items()):
            if accepted.router is router:
                del self._ledgers[monitor]
                self._poller.unregister(monitor)
                accepted.close()
        router.close(linger=0)

    def _drain_connections(self, monitor: zmq.Socket[bytes]) -> None:
        """Take in a ROUTER's new and ended connections; record each one
        shut down for going past a bound (through the refusal budget)."""
        accepted, owner = self._ledgers[monitor]
        for refused in accepted.drain():
            error: CapsupError
            if refused.stranger:
                error = Unauthenticated(f"connection to an agent's own endpoint: {refused.reason}")
            else:
                error = NotAuthorized(f"connection refused: {refused.reason}")
            kind = (
                ViolationKind.UNAUTHENTICATED
                if refused.stranger
                else ViolationKind.TOO_MANY_CONNECTIONS
            )
            with self._reported("recording a refused connection"):
                self._violation(
                    kind,
                    error,
                    new_trace_id(),
                    pid=refused.pid,
                    # A stranger is nobody; the agent's own connections past a
                    # bound are the agent's.
                    principal=None if refused.stranger or owner is None else owner.agent_id,
                )

    def close(self) -> None:
        self._brokered.close()
        for router in list(self._routers):
            self._close_router(router)
        self._routers.clear()
        self._close_router(self._socket)
        self._zap.close(linger=0)
        self._context.term()
        if self._restore_sigchld is not None:
            self._restore_sigchld()
        self._signals_r.close()
        self._signals_w.close()


@contextlib.contextmanager
def _io_thread_policy() -> Iterator[None]:
    """Start libzmq's I/O thread under ``SCHED_BATCH``.

    That thread only carries bytes between the sockets and the loop, and it
    wakes for every message in and out. Under the default policy each of
    those wakeups preempts whatever runs, most often the loop doing the
    security work; under ``SCHED_BATCH`` (same priority, no wakeup
    preemption) it runs when a CPU comes free instead. On the two-core
    benchmark machine with 8 agents that raised validations per second by
    about 12% and lowered p50, p95 and p99 latency (docs/performance.md).
    Threads inherit the policy of the thread that creates them, so this
    thread takes it for the moment libzmq starts its threads, and gives it
    back. Where the policy cannot be changed, or the operator chose another
    than the default for the supervisor, nothing is."""
    switched = enter_batch_scheduling()
    try:
        yield
    finally:
        if switched:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _tell_operator(what: str, error: BaseException) -> None:
    """One line on stderr for whoever runs capsup. It must not raise: it is
    said from the paths that keep the loop alive (stderr may be a closed
    pipe, and an exception's ``__str__`` is anybody's code)."""
    with contextlib.suppress(Exception):
        try:
            said = f"{type(error).__name__}: {error}"
        except Exception:
            said = type(error).__name__
        print(f"capsup: {what}: {said}", file=sys.stderr)


def _denial_event(
    event: EventType,
    error: CapsupError,
    trace_id: str,
    *,
    principal: str | None,
    pid: int | None,
    operation: str | None = None,
    **detail: str,
) -> Event:
    """The record of a refusal the server made itself: ``error`` says why."""
    return Event(
        event,
        time.time(),
        trace_id,
        principal=principal,
        pid=pid,
        operation=operation,
        decision="deny",
        reason=error.code,
        detail={**detail, "message": error.message[:256]},
    )


def _refusal_event(error: CapsupError, peer: _Peer | None, op: str | None, trace_id: str) -> Event:
    """``capability_denied`` for a request of ``peer``'s the server refused."""
    return _denial_event(
        EventType.CAPABILITY_DENIED,
        error,
        trace_id,
        principal=peer.principal.id if peer else None,
        pid=peer.principal.pid if peer else None,
        operation=op,
    )


def _assigned_by_router(routing_id: bytes) -> bool:
    """Whether ``routing_id`` has the form of the ids libzmq's ROUTER assigns
    (a zero byte, then a 32-bit counter), not one a peer chose in another
    form. libzmq's ``Identity`` metadata cannot tell: read as a C string,
    a chosen id that starts with a zero byte looks like no id at all."""
    return len(routing_id) == 5 and routing_id[0] == 0


def _identity(user: str) -> tuple[str, int | None]:
    """The agent id and pid in a User-Id that :meth:`Server._answer_zap` gave
    (``"AGENT_ID|PID"``, the agent id empty for a stranger). Split at the last
    ``|``: the pid is digits, whatever the id holds."""
    agent_id, _, pid_text = user.rpartition("|")
    pid = int(pid_text) if pid_text.isdigit() else 0
    return agent_id, pid if pid > 0 else None


def _peer_pid(address: str) -> int | None:
    """The pid in libzmq's ipc Peer-Address, ``host:uid:gid:pid``, if the peer
    runs as the supervisor's own user (agents are started as that user)."""
    parts = address.split(":")
    if len(parts) != 4 or not all(part.isdigit() for part in parts[1:]):
        return None
    uid, pid = int(parts[1]), int(parts[3])
    return pid if uid == os.getuid() and pid > 0 else None


def _open_descriptors() -> int:
    """How many descriptors the process holds now (a spawn is rare enough
    to count them)."""
    try:
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    except OSError:
        return 0


def exit_code_of(agent: AgentProcess) -> int:
    """What ``capsup run`` exits with: the agent's status, 128+N for signal N."""
    return exit_status(agent.returncode if agent.returncode is not None else 1)
