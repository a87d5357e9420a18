"""The SDK's brokered file methods over ZeroMQ, against a ROUTER in a thread
that answers each request as the server does: parse, then the real broker
on a real kernel."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq
from broker_world import World
from capsup.agents import protocol as p
from capsup.agents.client import Client, DirEntry, FileStat
from capsup.agents.errors import CapsupError, ConstraintViolation, OperationNotAllowed

BIG = p.MAX_IO_BYTES * 2 + 12345


class Router(threading.Thread):
    """Answers file ops until stopped; the kernel is used from this thread only."""

    def __init__(self, world: World, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.stopping = threading.Event()
        self.requests: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.socket.poll(50):
                continue
            routing, payload = self.socket.recv_multipart()
            self.socket.send_multipart([routing, self.answer(payload)])
        self.socket.close(linger=0)

    def answer(self, payload: bytes) -> bytes:
        request = p.parse_request(payload)
        self.requests.append(request.op.value)
        trace_id = request.trace_id or "t"
        try:
            args = p.parse_args(request)
            assert isinstance(
                args, p.ReadArgs | p.WriteArgs | p.ListdirArgs | p.StatArgs | p.DeleteArgs
            )
            result = self.world.do(args, trace_id)
        except CapsupError as error:
            return p.error_reply(request.id, error, trace_id)
        return p.ok_reply(request.id, result, trace_id)


@pytest.fixture
def served(world: World) -> Iterator[tuple[Client, Router]]:
    endpoint = f"ipc://{world.tmp}/sock"
    router = Router(world, endpoint)
    router.start()
    client = Client(endpoint, timeout=20)
    yield client, router
    client.close()
    router.stopping.set()
    router.join(5)


def test_read_bytes_in_chunks(world: World, served: tuple[Client, Router]) -> None:
    client, router = served
    content = bytes(range(256)) * (BIG // 256 + 1)
    (world.ws / "big").write_bytes(content)
    cap = world.grant(["read"])
    assert client.read_bytes(cap, world.ws / "big") == content
    assert router.requests.count("read") == 3
    part = client.read_bytes(cap, f"file://{world.ws}/big", offset=7, length=p.MAX_IO_BYTES + 9)
    assert part == content[7 : 7 + p.MAX_IO_BYTES + 9]
    assert (
        client.read_bytes(cap, world.ws / "big", offset=len(content) - 3, length=100)
        == (content[-3:])
    )
    assert client.read_bytes(cap, world.ws / "a.txt", length=0) == b""
    assert client.read_text(cap, world.ws / "sub" / "b.txt") == "inner"


def test_write_bytes_in_chunks(world: World, served: tuple[Client, Router]) -> None:
    client, _ = served
    cap = world.grant(["write", "create"])
    target = world.ws / "big"
    target.write_bytes(b"x" * (BIG + 100))  # longer than what replaces it
    content = bytes(range(251)) * (BIG // 251)
    assert client.write_bytes(cap, target, content) == len(content)
    assert target.read_bytes() == content
    assert client.write_bytes(cap, target, bytearray(b"tail"), append=True) == 4
    assert client.write_bytes(cap, target, memoryview(b"HEAD"), offset=0) == 4
    assert target.read_bytes() == b"HEAD" + content[4:] + b"tail"
    assert client.write_bytes(cap, world.ws / "empty", b"") == 0
    assert (world.ws / "empty").read_bytes() == b""


def test_listdir_stat_delete(world: World, served: tuple[Client, Router]) -> None:
    client, _ = served
    cap = world.grant(["list", "stat", "delete"])
    assert client.listdir(cap, world.ws) == [
        DirEntry("a.txt", "file", 5),
        DirEntry("sub", "dir", (world.ws / "sub").lstat().st_size),
    ]
    info = client.stat(cap, world.ws / "a.txt")
    assert isinstance(info, FileStat)
    assert (info.kind, info.size, info.mode) == (
        "file",
        5,
        (world.ws / "a.txt").stat().st_mode & 0o7777,
    )
    client.delete(cap, world.ws / "a.txt")
    assert not (world.ws / "a.txt").exists()


def test_refusals_are_raised(world: World, served: tuple[Client, Router]) -> None:
    client, _ = served
    cap = world.grant(["read"])
    with pytest.raises(ConstraintViolation) as caught:
        client.read_bytes(cap, world.outside / "secret")
    assert caught.value.reason == "outside_resource"
    with pytest.raises(OperationNotAllowed):
        client.write_bytes(cap, world.ws / "a.txt", b"x")
    with pytest.raises(ValueError):
        client.write_bytes(cap, world.ws / "a.txt", b"x", offset=1, append=True)
