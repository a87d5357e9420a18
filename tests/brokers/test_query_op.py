"""The query op on the loop: nothing is parsed for a caller without the
capability, and a long statement is parsed on a worker before the loop
validates it (a real kernel, a real SQLite file, real worker threads)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from capsup.agents import protocol as p
from capsup.agents.errors import CapsupError, NotHolder, Revoked, UnknownCapability
from capsup.supervisor.brokers.query_op import prepare_query
from capsup.supervisor.brokers.service import PARSE_ON_LOOP_BELOW, BrokeredOps
from capsup.supervisor.config import Config, parse_config
from capsup.supervisor.derive import CapabilityRequest
from capsup.supervisor.events import Event
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.principal import Principal
from capsup.supervisor.store import Store
from capsup.validators.sql_scope import analyze

ALICE = Principal("agent-alice", "alice", pid=1)
MALLORY = Principal("agent-mallory", "mallory", pid=2)


def _world(tmp_path: Path) -> tuple[Config, Kernel, str]:
    with sqlite3.connect(tmp_path / "main.db") as db:
        db.execute("CREATE TABLE t (k INTEGER, v TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(10)])
    config = parse_config(
        {
            "databases": {"main": {"url": f"sqlite://{tmp_path}/main.db"}},
            "agents": {
                "alice": {"allow": [{"resource": "db://main", "operations": ["select", "insert"]}]}
            },
        },
        source="<test>",
    )
    kernel = Kernel(store=Store(":memory:"), policy=config.policy, validators=config.validators)
    kernel.start(now=time.time(), trace_id="t")
    for principal in (ALICE, MALLORY):
        kernel.register_principal(principal)
    cap = kernel.request(
        ALICE, CapabilityRequest("db://main", ["select", "insert"]), now=time.time(), trace_id="t"
    )
    return config, kernel, cap.id


def _long_select(marker: str) -> str:
    """A statement past the length parsed on the loop, unique to the test."""
    padding = " OR ".join(f"k = {i}" for i in range(PARSE_ON_LOOP_BELOW // 8))
    return f"SELECT v FROM t WHERE ({padding}) AND v <> '{marker}' ORDER BY k"


@pytest.mark.parametrize(
    ("principal", "capability", "error"),
    [(ALICE, "cap_made_up", UnknownCapability), (MALLORY, None, NotHolder)],
)
def test_nothing_is_parsed_under_a_capability_the_caller_does_not_hold(
    tmp_path: Path, principal: Principal, capability: str | None, error: type[CapsupError]
) -> None:
    config, kernel, held = _world(tmp_path)
    statement = _long_select(f"unparsed-{principal.id}")
    before = analyze.cache_info().misses
    args = p.QueryArgs(capability or held, "db://main", statement)
    with pytest.raises(error):
        prepare_query(
            kernel, config.databases, principal, args, now=time.time(), trace_id="t", emit=print
        )
    assert analyze.cache_info().misses == before


def test_a_long_statement_is_parsed_on_a_worker_then_run(tmp_path: Path) -> None:
    config, kernel, held = _world(tmp_path)
    events: list[Event] = []
    ops = BrokeredOps(kernel, config.databases, wake=lambda: None, emit=events.append)
    answers: list[Callable[[], dict[str, Any]]] = []
    statement = _long_select("parsed-apart")
    try:
        ops.start(
            ALICE,
            p.QueryArgs(held, "db://main", statement),
            tree=ALICE.id,
            now=time.time(),
            trace_id="t",
            answer=answers.append,
        )
        assert ops.in_flight(ALICE.id) == 1  # the parse, on a worker
        deadline = time.monotonic() + 20
        while not answers and time.monotonic() < deadline:
            ops.collect()
            time.sleep(0.01)
        result = answers[0]()
    finally:
        ops.close()
    assert result["rows"] == [[f"v{i}"] for i in range(10)]
    assert [e.event for e in events][-1] == "database_query"


def test_a_capability_revoked_while_its_query_waited_is_not_used(tmp_path: Path) -> None:
    """The loop validated the query; the capability was revoked before a
    worker took it up: the worker checks again and does nothing."""
    config, kernel, held = _world(tmp_path)
    events: list[Event] = []
    args = p.QueryArgs(held, "db://main", "INSERT INTO t VALUES (99, 'late')")
    prepared = prepare_query(
        kernel, config.databases, ALICE, args, now=time.time(), trace_id="t", emit=events.append
    )
    kernel.revoke(ALICE, held, now=time.time(), trace_id="t")
    with pytest.raises(Exception) as raised:
        prepared.perform()
    with pytest.raises(Revoked):
        prepared.finish(raised.value)
    with sqlite3.connect(tmp_path / "main.db") as db:
        assert db.execute("SELECT count(*) FROM t WHERE k = 99").fetchone() == (0,)
    assert (events[-1].event, events[-1].reason) == ("database_query", "revoked")
