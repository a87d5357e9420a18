"""The descriptor socket: a real SOCK_SEQPACKET pair, the supervisor's side
serving ``open`` through the real broker in one thread, the agent's side
asking for files in another."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker_world import World
from capsup.agents import descriptors
from capsup.agents import protocol as p
from capsup.agents.capability import Capability
from capsup.agents.client import Client
from capsup.agents.descriptors import (
    FD_SOCKET_ENV,
    MAX_DESCRIPTOR_MESSAGE_BYTES,
    DescriptorChannel,
    shared_channel,
)
from capsup.agents.errors import BadRequest, CapsupError, ConstraintViolation, SupervisorGone
from capsup.supervisor.brokers.descriptors import serve_descriptor_request


class Supervisor(threading.Thread):
    """The supervisor's end: serves requests until the agent's end closes.
    The kernel is used from this thread only."""

    def __init__(self, world: World, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.sock = sock
        self.handled = 0
        self.served = 0  # datagrams answered, the descriptor sent and closed
        self.delay = 0.0  # before answering the next request, once
        self.ended = threading.Event()

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            poller.poll()
            if not serve_descriptor_request(self.sock, self.handle):
                self.ended.set()
                return
            self.served += 1

    def settle(self) -> None:
        """Wait until every request handled was answered (and its descriptor,
        which lives in this same process, closed)."""
        deadline = time.monotonic() + 5
        while self.served < self.handled and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.served >= self.handled

    def handle(self, data: bytes) -> tuple[bytes, int | None]:
        """What the server's handler does: parse, refuse all but open, open."""
        self.handled += 1
        time.sleep(self.delay)
        self.delay = 0.0
        try:
            request = p.parse_request(data)
            args = p.parse_args(request)
            if not isinstance(args, p.OpenArgs):
                raise BadRequest(f"only open is served here, not {request.op}")
        except CapsupError as error:
            request_id, trace_id = p.best_effort_ids(data)
            return p.error_reply(request_id, error, trace_id or "t-bad"), None
        trace_id = request.trace_id or "t-open"
        try:
            fd = self.world.do_open(args, trace_id)
        except CapsupError as error:
            return p.error_reply(request.id, error, trace_id), None
        return p.ok_reply(request.id, {}, trace_id), fd


@pytest.fixture
def pair(world: World) -> Iterator[tuple[socket.socket, Supervisor]]:
    supervisor_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    supervisor = Supervisor(world, supervisor_end)
    supervisor.start()
    yield agent_end, supervisor
    agent_end.close()
    assert supervisor.ended.wait(5), "the supervisor side did not see the end"
    supervisor_end.close()


@contextlib.contextmanager
def leaving_no_descriptor(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> Iterator[tuple[DescriptorChannel, Capability]]:
    """A channel on the agent's end and a capability to read the workspace;
    fails if the block changes how many descriptors this process (which
    holds both ends) has open once the supervisor's side has settled,
    counted after a first open has made what is made lazily."""
    agent_end, supervisor = pair
    cap = world.grant(["read"])
    channel = DescriptorChannel(agent_end)
    os.close(channel.open(cap.id, str(world.ws / "a.txt"), "r"))
    supervisor.settle()
    before = len(os.listdir("/proc/self/fd"))
    yield channel, cap
    supervisor.settle()
    assert len(os.listdir("/proc/self/fd")) == before


def ask_raw(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> p.Reply:
    """Send a datagram as a hostile agent would; the reply (carrying no descriptor)."""
    ancillary = []
    if fds:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
    sock.sendmsg([data], ancillary)
    assert select.select([sock], [], [], 5)[0], "no reply"
    reply, passed, _, _ = sock.recvmsg(MAX_DESCRIPTOR_MESSAGE_BYTES, socket.CMSG_SPACE(16))
    assert passed == []
    return p.parse_reply(reply)


def test_a_descriptor_arrives_and_reads_the_file(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    agent_end, _ = pair
    cap = world.grant(["read"])
    fd = DescriptorChannel(agent_end).open(cap.id, str(world.ws / "a.txt"), "r", trace_id="T-1")
    try:
        assert os.read(fd, 100) == b"hello"
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    finally:
        os.close(fd)
    effect = world.recorder.events[-1]
    assert (effect.event, effect.trace_id, effect.detail["mode"]) == ("file_operation", "T-1", "r")


def test_a_refusal_arrives_as_its_error_and_nothing_leaks(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    with leaving_no_descriptor(world, pair) as (channel, cap):
        for _ in range(20):
            with pytest.raises(ConstraintViolation) as caught:
                channel.open(cap.id, str(world.outside / "secret"), "r")
            assert caught.value.reason == "outside_resource"
            os.close(channel.open(cap.id, str(world.ws / "a.txt"), "r"))


def test_an_oversize_datagram_is_refused(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    agent_end, supervisor = pair
    reply = ask_raw(agent_end, b"\x91" + b"\x00" * MAX_DESCRIPTOR_MESSAGE_BYTES)
    assert reply.error is not None and reply.error.code == "message_too_large"
    assert supervisor.handled == 0


def test_descriptors_the_agent_sends_are_closed_and_refused(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    agent_end, supervisor = pair
    cap = world.grant(["read"])
    readable, writable = os.pipe()
    try:
        request = p.encode(
            {"id": 9, "op": "open", "args": {"capability": cap.id, "resource": "/x", "mode": "r"}}
        )
        reply = ask_raw(agent_end, request, [writable])
        assert reply.id == 9
        assert reply.error is not None and reply.error.code == "bad_request"
        assert "ancillary" in reply.error.message
        os.close(writable)
        writable = -1
        # Every write end is closed, the supervisor's copy included: end of file.
        assert select.select([readable], [], [], 5)[0]
        assert os.read(readable, 1) == b""
    finally:
        os.close(readable)
        if writable >= 0:
            os.close(writable)
    assert supervisor.handled == 0


def test_an_empty_datagram_is_a_bad_request_not_the_end(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    agent_end, supervisor = pair
    reply = ask_raw(agent_end, b"")
    assert reply.error is not None and reply.error.code == "bad_request"
    assert not supervisor.ended.is_set()


def test_only_open_is_served(world: World, pair: tuple[socket.socket, Supervisor]) -> None:
    agent_end, _ = pair
    reply = ask_raw(agent_end, p.encode({"id": 3, "op": "whoami"}))
    assert reply.error is not None and reply.error.code == "bad_request"


def test_a_late_reply_is_skipped_and_its_descriptor_closed(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    _, supervisor = pair
    with leaving_no_descriptor(world, pair) as (channel, cap):
        supervisor.delay = 0.5
        with pytest.raises(SupervisorGone):
            channel.open(cap.id, str(world.ws / "a.txt"), "r", timeout=0.1)
        fd = channel.open(cap.id, str(world.ws / "sub" / "b.txt"), "r", timeout=5)
        try:
            assert os.read(fd, 100) == b"inner"  # this call's file, not the late one
        finally:
            os.close(fd)


def test_the_end_of_the_agents_socket_is_seen(world: World) -> None:
    supervisor_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with supervisor_end:
        assert serve_descriptor_request(supervisor_end, pytest.fail)  # nothing waiting
        agent_end.close()
        assert not serve_descriptor_request(supervisor_end, pytest.fail)


# -- the SDK: Client.open --------------------------------------------------------


def client(agent_end: socket.socket) -> Client:
    # Connecting does not contact anyone: only the descriptor socket is used.
    return Client("ipc:///nonexistent/capsup", descriptors=DescriptorChannel(agent_end))


def test_client_open_returns_ordinary_files(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    agent_end, _ = pair
    cap = world.grant(["read", "write", "create"])
    with client(agent_end) as c:
        with c.open(cap, world.ws / "a.txt") as text:
            assert text.read() == "hello"
            assert text.name == str(world.ws / "a.txt")
        with c.open(cap.id, str(world.ws / "a.txt"), "rb", buffering=0) as raw:
            assert raw.read() == b"hello"
        with c.open(cap, world.ws / "new.txt", "w", encoding="utf-8") as out:
            out.write("héllo\n")
        with c.open(cap, world.ws / "new.txt", "ab") as out:
            out.write(b"more")
        with c.open(cap, world.ws / "new.txt", "r+b") as both:
            assert both.read(3) == "héllo".encode()[:3]
            both.write(b"!")
    assert (world.ws / "new.txt").read_bytes() == "hé".encode() + b"!lo\nmore"


@pytest.mark.parametrize(
    ("mode", "kw"),
    [
        ("w+", {}),
        ("rw", {}),
        ("rbt", {}),
        ("rbb", {}),
        ("q", {}),
        ("rb", {"encoding": "utf-8"}),
        ("r", {"buffering": 0}),
    ],
)
def test_client_open_refuses_bad_modes_before_asking(
    world: World, pair: tuple[socket.socket, Supervisor], mode: str, kw: dict[str, object]
) -> None:
    agent_end, supervisor = pair
    with client(agent_end) as c, pytest.raises(ValueError):
        c.open("cap_x", world.ws / "a.txt", mode, **kw)  # type: ignore[arg-type]
    assert supervisor.handled == 0


def test_client_open_raises_the_supervisors_refusal(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    agent_end, _ = pair
    cap = world.grant(["read"])
    with client(agent_end) as c, pytest.raises(ConstraintViolation) as caught:
        c.open(cap, world.outside / "secret")
    assert caught.value.reason == "outside_resource"


def test_the_shared_channel_comes_from_the_environment(
    world: World,
    pair: tuple[socket.socket, Supervisor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_end, _ = pair
    monkeypatch.setattr(descriptors, "_shared", None)
    monkeypatch.delenv(FD_SOCKET_ENV, raising=False)
    with pytest.raises(SupervisorGone, match=FD_SOCKET_ENV):
        shared_channel()
    with socket.socket() as tcp:
        monkeypatch.setenv(FD_SOCKET_ENV, str(tcp.fileno()))
        with pytest.raises(SupervisorGone, match="SOCK_SEQPACKET"):
            shared_channel()
    monkeypatch.setenv(FD_SOCKET_ENV, str(agent_end.fileno()))
    cap = world.grant(["read"])
    channel = shared_channel()
    assert channel is shared_channel()
    assert channel.fileno() != agent_end.fileno()  # a duplicate, its own to close
    with Client("ipc:///nonexistent/capsup") as c, c.open(cap, world.ws / "a.txt") as f:
        assert f.read() == "hello"
    channel.close()
    monkeypatch.setattr(descriptors, "_shared", None)


def test_fork_keeps_the_channel_usable(
    world: World, pair: tuple[socket.socket, Supervisor]
) -> None:
    """A child forked while another thread held the channel's lock can still ask."""
    agent_end, _ = pair
    cap = world.grant(["read"])
    channel = DescriptorChannel(agent_end)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with channel._lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    reset: Callable[[], None] = channel.forked
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            reset()
            fd = channel.open(cap.id, str(world.ws / "a.txt"), "r", timeout=5)
            code = 0 if os.read(fd, 5) == b"hello" else 2
        finally:
            os._exit(code)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_closed_supervisor_end_is_supervisor_gone(world: World, tmp_path: Path) -> None:
    supervisor_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    supervisor_end.close()
    with agent_end, pytest.raises(SupervisorGone):
        DescriptorChannel(agent_end).open("cap_x", "/x", "r", timeout=1)
