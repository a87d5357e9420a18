"""A real kernel with a policy on real directories, and the file broker over it."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from capsup.agents import protocol as p
from capsup.agents.capability import Capability
from capsup.supervisor.brokers.files import open_for_agent, perform_file_op
from capsup.supervisor.derive import CapabilityRequest
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.policy import Policy, parse_ceiling
from capsup.supervisor.principal import Principal
from capsup.supervisor.store import Store
from capsup.validators import default_registry

T0 = 1_800_000_000.0
ALL_OPS = ["read", "write", "list", "stat", "create", "delete"]


@dataclass
class Recorder:
    """An event sink that keeps everything; ``on_validated`` (if set) runs once
    at the next allowed use, between the kernel's check and the broker's open."""

    events: list[Event] = field(default_factory=list)
    on_validated: Callable[[], None] | None = None

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.event == EventType.CAPABILITY_VALIDATED and self.on_validated is not None:
            hook, self.on_validated = self.on_validated, None
            hook()

    def of(self, kind: EventType) -> list[Event]:
        return [e for e in self.events if e.event == kind]


@dataclass
class World:
    tmp: Path
    ws: Path
    outside: Path
    kernel: Kernel
    recorder: Recorder
    alice: Principal
    traces: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def grant(
        self,
        operations: list[str] | None = None,
        constraints: dict[str, Any] | None = None,
        resource: Path | str | None = None,
    ) -> Capability:
        uri = resource if isinstance(resource, str) else f"file://{resource or self.ws}"
        request = CapabilityRequest(uri, operations or ALL_OPS, constraints, None, {})
        return self.kernel.request(self.alice, request, now=T0, trace_id="grant")

    def trace(self) -> str:
        return f"t-{next(self.traces)}"

    def do(self, args: p.FileOpArgs, trace_id: str | None = None) -> dict[str, Any]:
        return perform_file_op(
            self.kernel,
            self.alice,
            args,
            now=T0,
            trace_id=trace_id or self.trace(),
            emit=self.recorder,
        )

    def do_open(self, args: p.OpenArgs, trace_id: str | None = None) -> int:
        trace_id = trace_id or self.trace()
        return open_for_agent(
            self.kernel, self.alice, args, now=T0, trace_id=trace_id, emit=self.recorder
        )

    def open(self, cap: Capability, path: Path | str, mode: str) -> int:
        return self.do_open(p.OpenArgs(cap.id, str(path), mode))

    def read(self, cap: Capability, path: Path | str, **kw: Any) -> dict[str, Any]:
        return self.do(p.ReadArgs(cap.id, str(path), **kw))

    def write(self, cap: Capability, path: Path | str, data: bytes, **kw: Any) -> dict[str, Any]:
        return self.do(p.WriteArgs(cap.id, str(path), data, **kw))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    tmp = tmp_path.resolve()
    ws, outside = tmp / "ws", tmp / "outside"
    ws.mkdir()
    outside.mkdir()
    (ws / "a.txt").write_bytes(b"hello")
    (ws / "sub").mkdir()
    (ws / "sub" / "b.txt").write_bytes(b"inner")
    (outside / "secret").write_bytes(b"SECRET")
    registry = default_registry()
    ceilings = [
        parse_ceiling({"resource": f"file://{tmp}", "operations": ALL_OPS}, registry, "t"),
        parse_ceiling({"resource": "file:///proc", "operations": ["read", "stat"]}, registry, "p"),
    ]
    recorder = Recorder()
    store = Store(tmp / "state.db")
    kernel = Kernel(
        store=store,
        policy=Policy(ceilings={"alice": ceilings}),
        validators=registry,
        sink=recorder,
    )
    kernel.start(now=T0, trace_id="start")
    alice = Principal("agent-alice", "alice", pid=os.getpid())
    kernel.register_principal(alice)
    yield World(tmp, ws, outside, kernel, recorder, alice)
    store.close()
