"""The trail a real ``capsup run`` writes: every event type, with its fields,
tied together by trace ids, verified against the head the state store kept."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from capsup.agents.errors import AuditUnavailable
from capsup.supervisor.audit import HEAD_META_KEY, parse_head, verify
from capsup.supervisor.audit_record import EVENT_FIELDS
from capsup.supervisor.config import parse_config
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.runtime import Runtime, RuntimeOptions
from capsup.supervisor.store import Store
from local_http import LocalServer

CAPSUP = str(Path(sys.executable).with_name("capsup"))

PARENT = """
import sys, time
from pathlib import Path
import zmq
from capsup.agents import AccessDenied, connect
from capsup.agents.client import ENDPOINT_ENV
import os

ws, child_script, marker, site = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
c = connect()
c.whoami()
# An API and a database, reached through the supervisor: http_request, database_query.
web = c.request(site, ["GET"], trace_id="T-HTTP")
assert c.http(web, "GET", site + "echo", trace_id="T-HTTP").status == 200
db = c.request("db://main", ["select"], trace_id="T-QUERY")
assert c.query(db, "SELECT n FROM t", trace_id="T-QUERY").rows == ((1,),)
cap = c.request(f"file://{ws}", ["read", "list"], ttl=60, trace_id="T-GRANT")
c.validate(cap, "read", f"{ws}/a.txt", trace_id="T-GRANT")
# Confined, the agent reads the file through the broker: a file_operation.
assert c.read_bytes(cap, f"{ws}/a.txt", trace_id="T-GRANT") == b"hello"
for attempt in [
    lambda: c.validate(cap, "read", f"{ws}/../outside.txt", trace_id="T-CONSTRAINT"),
    lambda: c.request("file:///etc", ["read"], trace_id="T-DENIED"),
    lambda: c.validate("cap_forged_123", "read", f"{ws}/a.txt", trace_id="T-FORGED"),
]:
    try:
        attempt()
        raise SystemExit("should have been denied")
    except AccessDenied:
        pass
short = c.request(f"file://{ws}", ["read"], ttl=0.3)
time.sleep(0.5)
try:
    c.validate(short, "read", f"{ws}/a.txt", trace_id="T-EXPIRED")
    raise SystemExit("should have expired")
except AccessDenied:
    pass
raw = zmq.Context.instance().socket(zmq.REQ)
raw.connect(os.environ[ENDPOINT_ENV])
for _ in range(120):  # past the refusal records' burst: a refusals_suppressed
    raw.send(b"\\xc1 this is not msgpack")
    assert raw.poll(10000), "no reply to garbage"
    raw.recv()
raw.close(linger=0)
helper = c.spawn(
    [sys.executable, child_script, cap.id, str(marker)],
    name="child",
    capabilities=[{"capability": cap.id, "operations": ["read"]}],
    trace_id="T-GRANT",
)
deadline = time.monotonic() + 20
while not marker.exists():
    assert time.monotonic() < deadline, "the child never got ready"
    time.sleep(0.05)
revoked = c.revoke(cap, trace_id="T-GRANT")
assert len(revoked) == 2, revoked
assert c.wait(helper.agent_id, timeout=20) == 0
c.close()
"""

CHILD = """
import sys, time
from pathlib import Path
from capsup.agents import AccessDenied, connect

stolen, marker = sys.argv[1], Path(sys.argv[2])
c = connect()
mine = c.list_my_capabilities()[0]
try:
    c.validate(stolen, "read", mine.resource.removeprefix("file://") + "/a.txt")
    raise SystemExit("a stolen id validated")
except AccessDenied:
    pass
marker.write_text("ready")
deadline = time.monotonic() + 20
while time.monotonic() < deadline:  # until the parent's revocation reaches my copy
    try:
        c.validate(mine, "read", mine.resource.removeprefix("file://") + "/a.txt")
    except AccessDenied:
        c.close()
        raise SystemExit(0)
    time.sleep(0.05)
raise SystemExit("never revoked")
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    """One real supervised run; returns (trail, state file, records)."""
    tmp = tmp_path_factory.mktemp("run")
    ws = tmp / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("hello")
    # The agents' code lies apart from the trail and the state: an agent's
    # code directory is readable to it (and to the sub-agents it starts).
    code = tmp / "code"
    code.mkdir()
    (code / "parent.py").write_text(textwrap.dedent(PARENT))
    (code / "child.py").write_text(textwrap.dedent(CHILD))
    # The agents run confined, as by default. The child says it is ready
    # with a file, so its policy entry (which the parent may spawn it under)
    # grants it a directory of its own to write: not the trail's.
    signals = tmp / "signals"
    signals.mkdir()
    database = tmp / "main.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (n INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")
    server = LocalServer()
    site = f"http://127.0.0.1:{server.port}/"
    config = tmp / "capsup.toml"
    config.write_text(
        '[agents.parent]\nmay_spawn = ["child"]\n'
        f'allow = [{{ resource = "file://{ws}", operations = ["read", "list"], '
        "max_ttl = 120, max_delegation_depth = 2 },\n"
        f'  {{ resource = "{site}", operations = ["GET"] }},\n'
        '  { resource = "db://main", operations = ["select"] }]\n'
        f'[agents.child]\nallow = []\nsandbox = {{ write = ["{signals}"] }}\n'
        f'[databases.main]\nurl = "sqlite://{database}"\n'
    )
    trail, state = tmp / "audit.jsonl", tmp / "state.db"
    command = [CAPSUP, "run", "--config", config, "--state", state, "--audit-log", trail]
    agent = [code / "parent.py", ws, code / "child.py", signals / "ready", site]
    try:
        done = subprocess.run(
            [*command, *agent],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.close()
    assert done.returncode == 0, (done.stdout, done.stderr)
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    return trail, state, records


def test_every_event_type_appears_with_every_field(
    run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, _, records = run
    seen = Counter(r["event"] for r in records)
    assert set(seen) == {str(e) for e in EventType}, seen
    for record in records:
        assert set(EVENT_FIELDS) | {"seq", "prev", "hash"} <= set(record)
    kinds = {r["detail"]["kind"] for r in records if r["event"] == "security_violation"}
    assert {"forged_id", "stolen_id", "malformed_input"} <= kinds
    agents = {r["detail"]["name"] for r in records if r["event"] == "agent_terminated"}
    assert agents == {"parent", "child"}


def test_one_trace_ties_request_grant_use_delegation_and_cascade(
    run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, _, records = run
    story = [r for r in records if r["trace_id"] == "T-GRANT"]
    events = [r["event"] for r in story]
    for needed in (
        "capability_requested",
        "capability_granted",
        "capability_validated",
        "file_operation",
        "capability_delegated",
    ):
        assert needed in events, events
    assert events.index("capability_requested") < events.index("capability_granted")
    root = next(r for r in story if r["event"] == "capability_granted")
    # The brokered read: what it used, what it touched and what came of it.
    (read,) = [r for r in story if r["event"] == "file_operation"]
    assert (read["capability_id"], read["resource"]) == (root["capability_id"], root["resource"])
    assert (read["operation"], read["decision"], read["reason"]) == ("read", "allow", None)
    path = root["resource"].removeprefix("file://") + "/a.txt"
    assert read["detail"] == {"target": path, "path": path, "bytes": 5, "result": "ok"}
    delegated = next(r for r in story if r["event"] == "capability_delegated")
    assert delegated["parent_id"] == root["capability_id"]
    revoked = [r for r in story if r["event"] == "capability_revoked"]
    assert {r["capability_id"] for r in revoked} == {
        root["capability_id"],
        delegated["capability_id"],
    }
    assert revoked[0]["detail"]["cascade_size"] == 2  # the first record sizes the cascade
    assert revoked[1]["detail"]["cascade_of"] == root["capability_id"]
    started = next(r for r in story if r["event"] == "agent_started")  # the spawn's effect
    assert started["principal"] == delegated["detail"]["holder"]
    acts = [r for r in story if r["event"] != "agent_started"]
    assert all(r["principal"] == root["principal"] for r in acts)


def test_refusals_carry_their_decision_and_reason(
    run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, _, records = run

    def first(event: str, trace: str) -> dict[str, Any]:
        return next(r for r in records if r["event"] == event and r["trace_id"] == trace)

    assert first("capability_denied", "T-DENIED")["reason"] == "denied_by_policy"
    assert first("constraint_violation", "T-CONSTRAINT")["decision"] == "deny"
    assert first("capability_validation_failed", "T-FORGED")["reason"] == "unknown_capability"
    late = first("capability_validation_failed", "T-EXPIRED")
    assert late["reason"] == "expired"
    expired = [r for r in records if r["event"] == "capability_expired"]
    assert [r["capability_id"] for r in expired] == [late["capability_id"]]
    assert expired[0]["seq"] < late["seq"]
    assert expired[0]["detail"]["cause"] == "expired"


def test_the_trail_verifies_against_the_head_the_store_kept(
    run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    trail, state, records = run
    store = Store(str(state))
    try:
        kept = store.get_meta(HEAD_META_KEY)
    finally:
        store.close()
    assert kept is not None
    head = parse_head(kept)
    assert head.seq == records[-1]["seq"] == len(records)
    assert verify([trail], head).ok
    done = subprocess.run(
        [CAPSUP, "audit", "verify", str(trail), "--head", kept],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout


def test_verify_reads_the_head_from_the_state_file_and_sees_a_cut(
    run: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    trail, state, _ = run
    before = state.read_bytes()
    done = subprocess.run(
        [CAPSUP, "audit", "verify", str(trail), "--store", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert state.read_bytes() == before  # evidence is read, never changed
    cut = tmp_path / "audit.jsonl"
    lines = trail.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:-3]))
    done = subprocess.run(
        [CAPSUP, "audit", "verify", str(cut), "--store", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert f"broken at seq {len(lines) - 2}: truncated" in done.stdout


def test_the_head_is_kept_once_a_turn_and_a_store_that_refuses_it_stops_the_trail(
    tmp_path: Path,
) -> None:
    """The head is stored at the end of a loop's turn, not at every write;
    when the store refuses it, the trail stops and requests fail closed."""
    runtime = Runtime(
        parse_config({}, source="<test>"),
        RuntimeOptions(
            endpoint=f"ipc://{tmp_path}/capsup.sock",
            state=str(tmp_path / "state.db"),
            audit_log=str(tmp_path / "audit.jsonl"),
            confine="off",
        ),
    )
    try:
        event = Event(EventType.AGENT_STARTED, 1.0, "t", principal="a")
        runtime.audit(event)
        head = runtime.audit.head
        assert runtime.store.get_meta(HEAD_META_KEY) != f"{head.seq}:{head.hash}"
        runtime.server.turn(timeout=0)  # the end of a turn keeps it
        assert runtime.store.get_meta(HEAD_META_KEY) == f"{head.seq}:{head.hash}"
        runtime.audit(event)
        runtime.store.close()  # the store now refuses every write
        with pytest.raises(sqlite3.ProgrammingError):
            runtime._on_idle()
        with pytest.raises(AuditUnavailable, match="cannot keep the audit head"):
            runtime.audit(event)
    finally:
        with contextlib.suppress(Exception):
            runtime.close()
