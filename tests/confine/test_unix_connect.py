"""Brokered connect(): a confined agent reaches its endpoint and its own
scratch sockets, and nothing else.

Each test starts tests/confine/connect_agent.py, which loads the seccomp
filter with connect() notification and hands the listener to this process;
here a UnixConnectBroker answers for it. The refused addresses are real
listening sockets that this (unconfined) process does reach: the control.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from capsup.supervisor.confinement.unix_connect import UnixConnectBroker
from confine_child import outcome
from connect_agent import interface_names

AGENT = Path(__file__).with_name("connect_agent.py")


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):  # a client that connects and leaves
            if message := self.request.recv(64):
                self.request.sendall(b"echo:" + message)


class _EchoServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@dataclass
class Place:
    """Sockets on disk (and one abstract), as the supervisor would see them."""

    directory: str
    scratch: str
    endpoint: str  # the agent's endpoint: an echo server
    zmq_endpoint: str  # a ROUTER that echoes
    slow: str  # an endpoint with a full backlog
    slow_listener: socket.socket
    other: str  # someone else's socket
    inner: str  # a socket in the agent's scratch
    link: str  # scratch/link -> other
    abstract: str
    closers: list[Any] = field(default_factory=list)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.endpoint, self.zmq_endpoint, self.slow)


def _echo_server(address: str, place_closers: list[Any]) -> None:
    server = _EchoServer(address, _Echo)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    place_closers.append(lambda: (server.shutdown(), server.server_close()))


def _router(path: str, place_closers: list[Any]) -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{path}")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, message = router.recv_multipart()
                router.send_multipart([identity, b"echo:" + message])
        router.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    place_closers.append(lambda: (stop.set(), thread.join(), context.term()))


@pytest.fixture
def place() -> Iterator[Place]:
    directory = tempfile.mkdtemp(prefix="capsup-uc-")  # short: sun_path has 108 bytes
    scratch = os.path.join(directory, "scratch")
    os.mkdir(scratch, 0o700)
    closers: list[Any] = []
    slow = os.path.join(directory, "slow.sock")
    slow_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow_listener.bind(slow)
    slow_listener.listen(0)  # one pending connection fills it
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    filler.connect(slow)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    with pytest.raises(BlockingIOError):
        probe.connect(slow)
    probe.close()
    result = Place(
        directory=directory,
        scratch=scratch,
        endpoint=os.path.join(directory, "agent.sock"),
        zmq_endpoint=os.path.join(directory, "zmq.sock"),
        slow=slow,
        slow_listener=slow_listener,
        other=os.path.join(directory, "other.sock"),
        inner=os.path.join(scratch, "inner.sock"),
        link=os.path.join(scratch, "link"),
        abstract=f"\0capsup-uc-{os.getpid()}-{time.monotonic_ns()}",
        closers=closers,
    )
    for address in (result.endpoint, result.other, result.inner, result.abstract):
        _echo_server(address, closers)
    _router(result.zmq_endpoint, closers)
    os.symlink(result.other, result.link)
    yield result
    for close in closers:
        close()
    filler.close()
    slow_listener.close()
    shutil.rmtree(directory)


class Agent:
    """A confined agent process and the broker that answers its connects
    (``netns``: the agent in a network namespace of its own)."""

    def __init__(self, place: Place, *, netns: bool = False) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, str(AGENT), str(theirs.fileno()), *(["--netns"] if netns else [])],
            pass_fds=[theirs.fileno()],
            cwd=place.scratch,
        )
        theirs.close()
        ours.settimeout(30)
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        assert len(fds) == 1, "the agent sent no listener"
        self.refused: list[tuple[int, str, str]] = []
        self.broker = UnixConnectBroker(
            fds[0],
            endpoints=place.endpoints,
            scratch=place.scratch,
            on_refused=lambda tid, what, why: self.refused.append((tid, what, why)),
        )
        self.broker.start()
        self.channel = ours
        self.lines = ours.makefile("rwb")

    def __call__(self, *command: Any) -> Any:
        self.lines.write(json.dumps(command).encode() + b"\n")
        self.lines.flush()
        return json.loads(self.lines.readline())

    def refusal(self) -> tuple[int, str, str]:
        """The one refusal heard. ``on_refused`` runs on the broker's thread
        just after the agent has its answer: it may need a moment more."""
        deadline = time.monotonic() + 5
        while not self.refused and time.monotonic() < deadline:
            time.sleep(0.001)
        [only] = self.refused
        return only

    def exit(self) -> None:
        if self.process.poll() is None:
            self.lines.write(b'["exit"]\n')
            self.lines.flush()
            self.process.wait(timeout=10)
        self.lines.close()
        self.channel.close()


@pytest.fixture
def agent(place: Place) -> Iterator[Agent]:
    confined = Agent(place)
    yield confined
    confined.exit()
    confined.broker.close()


def _reach(address: str) -> str:
    """This process, unconfined, connects and exchanges a message."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(address)
        sock.sendall(b"ping")
        return sock.recv(64).decode()


def test_the_agents_endpoint_is_reached_and_a_message_round_trips(
    agent: Agent, place: Place
) -> None:
    assert agent("connect", place.endpoint) == ["ok", "echo:ping"]
    assert agent.refused == []


def test_a_pyzmq_dealer_reaches_a_router_on_its_endpoint(agent: Agent, place: Place) -> None:
    assert agent("dealer", place.zmq_endpoint) == "echo:hello"


def test_another_pathname_socket_is_refused(agent: Agent, place: Place) -> None:
    assert _reach(place.other) == "echo:ping"
    assert agent("connect", place.other) == ["EPERM"]
    tid, what, reason = agent.refusal()
    assert what == place.other and "endpoint" in reason
    assert tid == agent.process.pid


def test_a_symlink_in_scratch_to_another_socket_is_not_followed(agent: Agent, place: Place) -> None:
    assert _reach(place.link) == "echo:ping"
    assert agent("connect", place.link) == ["EPERM"]
    _, what, reason = agent.refusal()
    assert what == place.link and "ELOOP" in reason


def test_dot_dot_out_of_scratch_is_refused(agent: Agent, place: Place) -> None:
    escape = os.path.join(place.scratch, "..", "other.sock")
    assert _reach(escape) == "echo:ping"
    assert agent("connect", escape) == ["EPERM"]
    _, _, reason = agent.refusal()
    assert "EXDEV" in reason


def test_a_socket_inside_scratch_works(agent: Agent, place: Place) -> None:
    assert agent("connect", place.inner) == ["ok", "echo:ping"]


def test_an_absent_socket_in_scratch_is_enoent_not_a_refusal(agent: Agent, place: Place) -> None:
    assert agent("connect", os.path.join(place.scratch, "absent.sock")) == ["ENOENT"]
    assert agent.refused == []


def test_an_abstract_address_is_refused(agent: Agent, place: Place) -> None:
    assert _reach(place.abstract) == "echo:ping"
    assert agent("connect", place.abstract) == ["EPERM"]
    _, what, reason = agent.refusal()
    assert what.startswith("@") and "abstract" in reason


def test_a_relative_path_is_refused(agent: Agent, place: Place) -> None:
    # The agent's working directory is its scratch: unconfined, "inner.sock"
    # would name place.inner, which the agent may reach by its absolute path.
    assert agent("connect", "inner.sock") == ["EPERM"]
    _, what, reason = agent.refusal()
    assert what == "inner.sock" and "relative" in reason


def test_another_address_family_is_refused(agent: Agent) -> None:
    assert agent("connect_inet_address") == ["EPERM"]
    _, what, _ = agent.refusal()
    assert what == "address family 2"


def test_an_unreadable_address_is_refused(agent: Agent) -> None:
    assert agent("connect_unreadable") == ["EPERM"]
    _, _, reason = agent.refusal()
    assert "readable" in reason


def test_a_nonblocking_socket_sees_what_the_kernel_would_say(agent: Agent, place: Place) -> None:
    assert agent("connect_nonblocking", place.endpoint) == ["ok", "echo:ping"]
    assert agent("connect_nonblocking", place.slow) == ["EAGAIN"]  # full backlog


def test_the_agents_socket_options_are_kept(agent: Agent, place: Place) -> None:
    # Its own 5 s send timeout is back after the broker's 1 s bound.
    assert agent("options_kept", place.endpoint) == [1, [5, 0]]


def test_a_signal_during_a_brokered_connect_is_no_false_success(agent: Agent, place: Place) -> None:
    """The backlog stays full: the broker gives up after 1 s. The agent's
    SIGALRM handler runs meanwhile, and connect() reports the failure."""
    result, peer, alarms, elapsed = agent("connect_during_signal", place.slow, 0.2)
    assert (result, peer, alarms) == ("EAGAIN", "ENOTCONN", 1)
    assert elapsed >= 0.9


def test_a_signal_during_a_brokered_connect_that_then_succeeds(agent: Agent, place: Place) -> None:
    accepted: list[socket.socket] = []

    def make_room() -> None:
        time.sleep(0.5)
        accepted.append(place.slow_listener.accept()[0])

    helper = threading.Thread(target=make_room)
    helper.start()
    result, peer, alarms, elapsed = agent("connect_during_signal", place.slow, 0.2)
    helper.join()
    assert (result, peer, alarms) == ("ok", place.slow, 1)
    assert elapsed >= 0.4
    for sock in accepted:
        sock.close()


def test_a_grandchild_is_brokered_too(agent: Agent, place: Place) -> None:
    assert agent("in_grandchild", place.endpoint) == ["ok", "echo:ping"]
    assert agent("in_grandchild", place.other) == ["EPERM"]


def test_a_thread_is_brokered(agent: Agent, place: Place) -> None:
    assert agent("in_thread", place.endpoint) == [["ok", "echo:ping"], True]
    assert agent("in_thread", place.other) == [["EPERM"], True]


def test_the_agent_cannot_install_a_listener_of_its_own(agent: Agent) -> None:
    assert "EBUSY" in agent("second_listener")


def test_the_broker_stops_when_the_agent_is_gone(place: Place) -> None:
    confined = Agent(place)
    confined.exit()
    deadline = time.monotonic() + 5
    while confined.broker._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not confined.broker._thread.is_alive()
    confined.broker.close()
    confined.broker.close()  # idempotent


def test_close_stops_a_running_broker(agent: Agent, place: Place) -> None:
    agent.broker.close()
    assert not agent.broker._thread.is_alive()
    # With the listener closed, the kernel fails the agent's connects closed.
    assert agent("connect", place.endpoint) == ["ENOSYS"]


def test_a_brokered_connect_is_cheap(agent: Agent, place: Place) -> None:
    # About 120 us here (3 us unconfined); the bound only catches a regression.
    assert agent("median_connect_us", place.endpoint, 200) < 5000


# --- the broker connects a socket of its own (the review's hang) ---------------------


def test_the_agents_descriptor_holds_a_connected_socket_with_its_flags(
    agent: Agent, place: Place
) -> None:
    """The same number, now connected, of the same type, blocking or not
    and close-on-exec or not as the agent's socket was."""
    for nonblocking, inheritable in itertools.product((False, True), repeat=2):
        answer = agent("replaced", place.endpoint, "stream", nonblocking, inheritable)
        assert answer == [True, place.endpoint, nonblocking, inheritable, True]


def test_a_seqpacket_socket_is_replaced_by_a_seqpacket_socket(agent: Agent, place: Place) -> None:
    path = os.path.join(place.scratch, "seq.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(path)
        listener.listen()
        assert agent("replaced", path, "seqpacket", False, False) == [
            True,
            path,
            False,
            False,
            True,
        ]


def test_a_connected_or_listening_socket_gets_what_the_kernel_says(
    agent: Agent, place: Place
) -> None:
    with socket.socket(socket.AF_UNIX) as connected, socket.socket(socket.AF_UNIX) as listening:
        connected.connect(place.endpoint)
        listening.bind(os.path.join(place.directory, "listening.sock"))
        listening.listen()
        unconfined = [
            outcome(lambda s=s: s.connect(place.endpoint)) for s in (connected, listening)
        ]
    assert unconfined == ["EISCONN", "EINVAL"]
    assert agent("connect_again", place.endpoint) == ["EISCONN"]
    assert agent("connect_a_listener", place.endpoint) == ["EINVAL"]


def test_the_file_the_agent_connected_is_never_the_one_connected(
    agent: Agent, place: Place
) -> None:
    """The broker connects a socket of its own and puts it at the agent's
    descriptor: the agent's file (which a duplicate shares) stays
    unconnected, so nothing the agent does to it can make the broker wait."""
    for path in (place.endpoint, place.inner):
        assert agent("file_left_behind", path) == [path, "ENOTCONN"]


def test_the_agent_cannot_hold_the_broker_by_flipping_its_socket(
    agent: Agent, place: Place
) -> None:
    """A listener of the agent's with a full backlog, the connecting socket
    flipped between blocking and not (no send timeout) by a child all the
    while: each connect() ends within the broker's 1 s bound, the broker
    still answers, and closes at once. Before the fix, the broker's thread
    blocked forever (and this test failed on the 30 s read timeout)."""
    answers, longest = agent("toggled_connects", 4)
    assert answers == ["EAGAIN"]
    assert longest < 1.5
    assert agent("connect", place.endpoint) == ["ok", "echo:ping"]
    started = time.monotonic()
    agent.broker.close()
    assert time.monotonic() - started < 0.5


@pytest.fixture
def agent_in_netns(place: Place) -> Iterator[Agent]:
    if os.geteuid() != 0:
        pytest.skip("a network namespace for the test agent takes root")
    confined = Agent(place, netns=True)
    yield confined
    confined.exit()
    confined.broker.close()


def test_the_brokers_socket_is_made_in_the_agents_network_namespace(
    agent_in_netns: Agent, place: Place
) -> None:
    """Through a socket made in the host's namespace the agent would list the
    host's network interfaces (SIOCGIFCONF); its own namespace has none up."""
    with socket.socket(socket.AF_UNIX) as here:
        assert interface_names(here) != []  # the control: this namespace's
    assert agent_in_netns("interfaces", place.endpoint) == []
    assert agent_in_netns("interfaces", place.inner) == []
    assert agent_in_netns("connect", place.endpoint) == ["ok", "echo:ping"]
    assert agent_in_netns("dealer", place.zmq_endpoint) == "echo:hello"


def test_close_waits_a_moment_at_most_for_a_busy_broker(place: Place) -> None:
    """The agent's blocking connect() to a full backlog keeps the broker's
    thread for its 1 s bound; close() does not wait that long, and the
    thread answers the agent and closes the listener as it ends."""
    confined = Agent(place)
    try:
        confined.lines.write(json.dumps(["connect", place.slow]).encode() + b"\n")
        confined.lines.flush()
        time.sleep(0.3)  # the broker is in its connect() now
        started = time.monotonic()
        confined.broker.close()
        assert time.monotonic() - started < 0.5
        assert confined.broker._thread.is_alive()
        assert json.loads(confined.lines.readline()) == ["EAGAIN"]
        confined.broker._thread.join(5)
        assert not confined.broker._thread.is_alive()
        assert confined("connect", place.endpoint) == ["ENOSYS"]  # the listener is closed
    finally:
        confined.exit()
