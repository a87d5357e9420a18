"""A real kernel over a real SQLite file, with a policy on real directories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from capsup.supervisor.config import Config, parse_config
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.principal import Principal
from capsup.supervisor.store import Store

T0 = 1_800_000_000.0


@dataclass
class Recorder:
    """An event sink that keeps everything, for assertions."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: EventType) -> list[Event]:
        return [e for e in self.events if e.event == kind]


@dataclass
class World:
    root: Path
    config: Config
    store_path: Path
    kernel: Kernel
    recorder: Recorder
    alice: Principal
    bob: Principal
    mallory: Principal
    reopen: Callable[[], Kernel]


def make_config(root: Path) -> Config:
    data = {
        "databases": {"main": {"url": f"sqlite:///{root}/main.db"}},
        "agents": {
            "alice": {
                "allow": [
                    {
                        "resource": f"file://{root}/data",
                        "operations": ["read", "list", "write", "create"],
                        "max_ttl": 7200,
                        "max_delegation_depth": 3,
                    },
                    {
                        "resource": "https://api.example.com/repos",
                        "operations": ["GET", "POST"],
                        "constraints": {"rate_limit": {"requests": 5, "per_seconds": 1}},
                        "max_delegation_depth": 2,
                    },
                    {
                        "resource": "db://main",
                        "operations": ["select", "insert"],
                        "constraints": {"tables": ["users", "orders"]},
                        "max_delegation_depth": 1,
                    },
                ]
            },
            "bob": {"allow": [{"resource": f"file://{root}/data/public", "operations": ["read"]}]},
        },
    }
    return parse_config(data, source="test-config")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    root = tmp_path.resolve()
    (root / "data" / "public").mkdir(parents=True)
    (root / "data" / "public" / "readme.txt").write_text("hello")
    (root / "data" / "notes.txt").write_text("notes")
    config = make_config(root)
    store_path = root / "state.db"
    recorder = Recorder()
    stores: list[Store] = []

    def open_kernel() -> Kernel:
        store = Store(store_path)
        stores.append(store)
        kernel = Kernel(
            store=store, policy=config.policy, validators=config.validators, sink=recorder
        )
        kernel.start(now=T0, trace_id="start")
        for principal in (alice, bob, mallory):
            kernel.register_principal(principal)
        return kernel

    alice = Principal("agent-alice", "alice", pid=1001)
    bob = Principal("agent-bob", "bob", pid=1002)
    mallory = Principal("agent-mallory", "mallory", pid=1003)
    kernel = open_kernel()
    yield World(root, config, store_path, kernel, recorder, alice, bob, mallory, open_kernel)
    for store in stores:
        store.close()
