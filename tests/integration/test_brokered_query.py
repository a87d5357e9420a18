"""Brokered ``query`` end to end: a confined agent under a real `capsup run`
reaches its databases only through the supervisor, on SQLite and on a real
PostgreSQL cluster.

Each database gets one run: the agent asks for its capabilities, performs a
list of steps (statements, and an ``open()`` of the database file) and writes
what came of each (the result, or the error's code, reason and message) to
a JSON file in the one directory its sandbox may write. The tests then read
three witnesses: those outcomes, the audit trail, and the database itself,
opened directly after the run. Every step carries its own trace id, so the
records of each step are found by it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from postgres_server import PostgresServer
from runner import CAPSUP, read_audit, write_agent

#: The agent: ``plan.json`` names the capabilities to ask for and the steps;
#: the outcomes go to ``OUT/outcomes.json`` (and stdout, which the tests
#: search for secrets, with the capability maps the agent was given).
AGENT = """
import json, sys
from capsup.agents import CapsupError, connect

plan = json.load(open(sys.argv[1]))
out = sys.argv[2]
client = connect()
caps, outcomes = {}, {}
for name, ask in plan["caps"].items():
    caps[name] = client.request(
        ask["resource"], ask["operations"], constraints=ask.get("constraints")
    )
outcomes["caps"] = {name: cap.id for name, cap in caps.items()}
print(repr(client.list_my_capabilities()))

def perform(step):
    if "open" in step:
        with open(step["open"], "rb") as f:
            return {"bytes": len(f.read())}
    result = client.query(
        caps[step["cap"]], step["sql"], step.get("params", ()), trace_id=step["id"]
    )
    return {"columns": list(result.columns), "rows": [list(row) for row in result.rows],
            "rowcount": result.rowcount}

for step in plan["steps"]:
    try:
        outcome = {"ok": True, **perform(step)}
    except CapsupError as error:
        outcome = {"ok": False, "code": error.code, "reason": error.reason,
                   "message": error.message}
    except OSError as error:
        outcome = {"ok": False, "code": type(error).__name__, "message": str(error)}
    outcomes[step["id"]] = outcome
print(json.dumps(outcomes))
with open(out + "/outcomes.json", "w") as f:
    json.dump(outcomes, f)
client.close()
"""

#: The ``[agents.main]`` entry: the sandbox's one writable directory is OUT.
AGENT_POLICY = """
[agents.main]
sandbox = {{ write = ["{out}"] }}
allow = [
{allow}
]
[supervisor]
grace_period = 1
"""


@dataclass
class Run:
    """What one `capsup run` left: the agent's outcomes and output, the trail."""

    outcomes: dict[str, Any]
    stdout: str
    stderr: str
    trail: bytes
    audit: list[dict[str, Any]]

    def cap(self, name: str) -> str:
        cap_id: str = self.outcomes["caps"][name]
        return cap_id

    def records(self, trace_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.audit
            if r["trace_id"] == trace_id and (event is None or r["event"] == event)
        ]

    def refused(self, step: str, code: str, reason: str | None) -> None:
        """Assert that the step was refused with ``code`` (and ``reason``)."""
        outcome = self.outcomes[step]
        assert not outcome["ok"], (step, outcome)
        assert (outcome["code"], outcome["reason"]) == (code, reason), (step, outcome)


def run_steps(
    root: Path,
    *,
    allow: Sequence[str],
    databases: Mapping[str, str],
    caps: Mapping[str, Mapping[str, Any]],
    steps: Sequence[Mapping[str, Any]],
    confine: bool = True,
) -> Run:
    """One `capsup run` of the agent as ``main``, under a config of its own:
    ``allow`` the ceilings (TOML inline tables), ``databases`` NAME -> URL."""
    root.mkdir(parents=True, exist_ok=True)
    # The agent's code directory is readable to it: keep it apart from the
    # databases; its results go to out/, its sandbox's one writable place.
    code, out = root / "code", root / "out"
    code.mkdir()
    out.mkdir()
    config = AGENT_POLICY.format(out=out, allow=",\n".join(allow))
    for name, url in databases.items():
        config += f'[databases.{name}]\nurl = "{url}"\n'
    (root / "capsup.toml").write_text(config)
    plan = code / "plan.json"
    plan.write_text(json.dumps({"caps": caps, "steps": steps}))
    agent = write_agent(code, "agent", AGENT)
    trail = root / "audit.jsonl"
    command = [*CAPSUP, "run", "--config", str(root / "capsup.toml"), "--audit-log", str(trail)]
    command += [] if confine else ["--no-confine"]
    proc = subprocess.run(
        [*command, "--name", "main", str(agent), str(plan), str(out)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    outcomes = json.loads((out / "outcomes.json").read_text())
    return Run(outcomes, proc.stdout, proc.stderr, trail.read_bytes(), read_audit(trail))


def assert_kernel_refused(run: Run, step: str, cap: str, reason: str) -> None:
    """The kernel refused ``step`` under ``cap`` (constraint_violation
    ``reason``): its own record under the step's trace id, naming the
    capability, and no statement reached the broker."""
    run.refused(step, "constraint_violation", reason)
    (violation,) = run.records(step, "constraint_violation")
    assert (violation["decision"], violation["reason"]) == ("deny", reason), violation
    assert violation["capability_id"] == run.cap(cap)
    assert run.records(step, "capability_validated") == []
    assert run.records(step, "database_query") == []


def assert_performed(run: Run, step: str, *, rowcount: int) -> dict[str, Any]:
    """``step`` went through: validated by the kernel, one allow
    ``database_query`` record with its row count."""
    assert run.outcomes[step]["ok"], (step, run.outcomes[step])
    assert len(run.records(step, "capability_validated")) == 1
    (record,) = run.records(step, "database_query")
    assert (record["decision"], record["reason"]) == ("allow", None), record
    assert record["detail"]["result"] == "ok"
    assert record["detail"]["rowcount"] == rowcount
    return record


def assert_broker_refused(run: Run, step: str, code: str, reason: str) -> None:
    """The kernel allowed ``step``; the broker refused it (or the database
    failed): one deny ``database_query`` record with the reason."""
    run.refused(step, code, reason)
    assert len(run.records(step, "capability_validated")) == 1
    (record,) = run.records(step, "database_query")
    assert (record["decision"], record["reason"]) == ("deny", reason), record
    assert record["detail"]["result"] == "refused"


def assert_one_record_per_performed_query(run: Run) -> None:
    """A ``database_query`` record for each statement the kernel let
    through, and none for those it refused."""
    validated = [r["trace_id"] for r in run.audit if r["event"] == "capability_validated"]
    recorded = [r["trace_id"] for r in run.audit if r["event"] == "database_query"]
    assert sorted(recorded) == sorted(validated)
    steps = {step for step in run.outcomes if step != "caps"}
    assert set(recorded) < steps


def query(step: str, cap: str, sql: str, *params: object) -> dict[str, Any]:
    return {"id": step, "cap": cap, "sql": sql, "params": list(params)}


# -- SQLite -----------------------------------------------------------------------

ITEMS = [(1, "apple"), (2, "banana"), (3, "cherry")]
#: The tables after a run: the one allowed insert went in, nothing else.
AFTER = [*ITEMS, (4, "date")]
SECRETS = [("hunter2",)]
INJECTION = "x' OR '1'='1"
#: A statement longer than what a record holds (512 characters).
LONG_SELECT = "SELECT id FROM items WHERE name = ? OR name = '" + "z" * 600 + "'"

#: Ceilings: the first covering one is granted. A select-only request gets
#: the first (``leak`` is a view over ``secrets``); a writing one the second.
SQLITE_ALLOW = [
    '{ resource = "db://main", operations = ["select"], '
    'constraints = { tables = ["items", "leak"] } }',
    '{ resource = "db://main", operations = ["select", "insert", "delete"], '
    'constraints = { tables = ["items"] } }',
]
SQLITE_CAPS = {
    "read": {"resource": "db://main", "operations": ["select"]},
    # the row cap in the request, met with the first ceiling
    "capped": {"resource": "db://main", "operations": ["select"], "constraints": {"max_rows": 2}},
    "rw": {"resource": "db://main", "operations": ["select", "insert", "delete"]},
    "rw_capped": {
        "resource": "db://main",
        "operations": ["select", "insert"],
        "constraints": {"max_rows": 1},
    },
}
SQLITE_STEPS = [
    query("sel", "read", "SELECT id, name FROM items WHERE name = ? ORDER BY id", "banana"),
    query("sel_all", "read", "SELECT id, name FROM items ORDER BY id"),
    query("injection", "read", "SELECT id FROM items WHERE name = ?", INJECTION),
    # the same string written into the statement: what binding prevents
    query("injection_control", "read", f"SELECT id FROM items WHERE name = '{INJECTION}'"),
    query("long", "read", LONG_SELECT, "apple"),
    query("outside", "read", "SELECT value FROM secrets"),
    query("outside_sub", "read", "SELECT name FROM items WHERE id IN (SELECT rowid FROM secrets)"),
    # the validator lets a view named in tables through; the authorizer sees
    # the read of the base table outside tables
    query("view_leak", "read", "SELECT value FROM leak"),
    query("stacked", "rw", "SELECT 1; DELETE FROM items"),
    query("pragma", "read", "PRAGMA table_info(items)"),
    query("pragma_function", "read", "SELECT name FROM pragma_table_info('items')"),
    query("load_extension", "read", "SELECT load_extension('/tmp/evil.so')"),
    query("capped_ok", "capped", "SELECT id FROM items WHERE id <= 2"),
    query("capped_over", "capped", "SELECT id FROM items"),
    query("insert_select_only", "read", "INSERT INTO items (id, name) VALUES (?, ?)", 9, "fig"),
    query("delete_select_only", "read", "DELETE FROM items"),
    query("insert_outside", "rw", "INSERT INTO secrets (value) VALUES (?)", "planted"),
    query("insert_duplicate", "rw", "INSERT INTO items (id, name) VALUES (?, ?)", 1, "dup"),
    # the first row goes in, the second breaks the CHECK: the whole write is undone
    query(
        "insert_check",
        "rw",
        "INSERT INTO items (id, name) SELECT id + 100, name || 'x' FROM items ORDER BY id",
    ),
    # runs, then returns more rows than the capability's max_rows: rolled back
    query(
        "insert_returning_over",
        "rw_capped",
        "INSERT INTO items (id, name) SELECT id + 200, name FROM items RETURNING id",
    ),
    query("insert", "rw", "INSERT INTO items (id, name) VALUES (?, ?)", 4, "date"),
    query("sel_after_insert", "read", "SELECT name FROM items WHERE id = ?", 4),
]


def make_sqlite(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT CHECK (length(name) <= 6))"
        )
        db.executemany("INSERT INTO items VALUES (?, ?)", ITEMS)
        db.execute("CREATE TABLE secrets (value TEXT)")
        db.executemany("INSERT INTO secrets VALUES (?)", SECRETS)
        db.execute("CREATE VIEW leak AS SELECT value FROM secrets")


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


@dataclass
class SqliteWorld:
    database: Path
    run: Run


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> SqliteWorld:
    root = tmp_path_factory.mktemp("sqlite")
    data = root / "data"
    data.mkdir()
    database = data / "main.db"
    make_sqlite(database)
    steps = [
        *SQLITE_STEPS,
        query("attach", "rw", f"ATTACH DATABASE '{data / 'attached.db'}' AS other"),
        {"id": "open_db", "open": str(database)},
    ]
    run = run_steps(
        root / "confined",
        allow=SQLITE_ALLOW,
        databases={"main": f"sqlite://{database}"},
        caps=SQLITE_CAPS,
        steps=steps,
    )
    return SqliteWorld(database, run)


def test_sqlite_select_within_tables_returns_rows_with_params_bound(
    sqlite_world: SqliteWorld,
) -> None:
    run = sqlite_world.run
    assert run.outcomes["sel"] == {
        "ok": True,
        "columns": ["id", "name"],
        "rows": [[2, "banana"]],
        "rowcount": 1,
    }
    assert run.outcomes["sel_all"]["rows"] == [list(row) for row in ITEMS]
    assert run.outcomes["sel_all"]["rowcount"] == 3
    # Bound, the injection string is a name that no row has...
    assert run.outcomes["injection"] == {"ok": True, "columns": ["id"], "rows": [], "rowcount": 0}
    # ...written into the statement, it would have matched every row.
    assert run.outcomes["injection_control"]["rows"] == [[1], [2], [3]]
    assert_performed(run, "sel", rowcount=1)
    assert_performed(run, "injection", rowcount=0)


def test_sqlite_a_table_outside_tables_is_refused_and_recorded(sqlite_world: SqliteWorld) -> None:
    run = sqlite_world.run
    for step in ("outside", "outside_sub"):
        assert_kernel_refused(run, step, "read", "table_not_allowed")
        assert "secrets" in run.outcomes[step]["message"]
    # A view named in tables passes the validator; SQLite's authorizer then
    # sees the read of its base table, which tables does not name.
    assert_broker_refused(run, "view_leak", "constraint_violation", "authorizer_denied")
    assert "secrets" in run.outcomes["view_leak"]["message"]
    assert "hunter2" not in json.dumps(run.outcomes)


def test_sqlite_stacked_attach_pragma_and_unlisted_functions_are_refused(
    sqlite_world: SqliteWorld,
) -> None:
    run = sqlite_world.run
    # A text that cannot be analysed is validated as a select (the kernel's
    # record names the capability it was tried under).
    assert_kernel_refused(run, "stacked", "rw", "multiple_statements")
    assert_kernel_refused(run, "attach", "rw", "not_dml")
    assert_kernel_refused(run, "pragma", "read", "not_dml")
    assert_kernel_refused(run, "pragma_function", "read", "function_not_allowed")
    assert_kernel_refused(run, "load_extension", "read", "function_not_allowed")
    # (SQLite's authorizer, behind the validator, would refuse each of them
    # too: tests/brokers/test_sql_broker.py shows it without the validator.)
    assert not (sqlite_world.database.parent / "attached.db").exists()
    assert sqlite_rows(sqlite_world.database, "SELECT id, name FROM items ORDER BY id") == AFTER


def test_sqlite_the_row_cap_refuses_more_rows_than_max_rows(sqlite_world: SqliteWorld) -> None:
    run = sqlite_world.run
    assert run.outcomes["capped_ok"]["rows"] == [[1], [2]]
    assert_performed(run, "capped_ok", rowcount=2)
    assert_broker_refused(run, "capped_over", "constraint_violation", "too_many_rows")
    assert "more than 2 rows" in run.outcomes["capped_over"]["message"]


def test_sqlite_denied_and_failed_writes_leave_the_database_unchanged(
    sqlite_world: SqliteWorld,
) -> None:
    run = sqlite_world.run
    for step in ("insert_select_only", "delete_select_only"):
        run.refused(step, "operation_not_allowed", None)
        (failed,) = run.records(step, "capability_validation_failed")
        assert failed["reason"] == "operation_not_allowed"
        assert run.records(step, "database_query") == []
    assert_kernel_refused(run, "insert_outside", "rw", "table_not_allowed")
    assert_broker_refused(run, "insert_duplicate", "upstream_error", "database_error")
    assert "UNIQUE" in run.outcomes["insert_duplicate"]["message"]
    assert_broker_refused(run, "insert_check", "upstream_error", "database_error")
    assert "CHECK" in run.outcomes["insert_check"]["message"]
    assert_broker_refused(run, "insert_returning_over", "constraint_violation", "too_many_rows")
    # Afterwards, read directly: only the one allowed insert is there.
    database = sqlite_world.database
    assert sqlite_rows(database, "SELECT id, name FROM items ORDER BY id") == AFTER
    assert sqlite_rows(database, "SELECT value FROM secrets") == SECRETS


def test_sqlite_an_allowed_insert_with_params_is_committed(sqlite_world: SqliteWorld) -> None:
    run = sqlite_world.run
    assert run.outcomes["insert"] == {"ok": True, "columns": [], "rows": [], "rowcount": 1}
    record = assert_performed(run, "insert", rowcount=1)
    assert (record["operation"], record["detail"]["params"]) == ("insert", 2)
    assert run.outcomes["sel_after_insert"]["rows"] == [["date"]]
    assert sqlite_rows(sqlite_world.database, "SELECT name FROM items WHERE id = 4") == [("date",)]


def test_sqlite_database_query_records(sqlite_world: SqliteWorld) -> None:
    run = sqlite_world.run
    record = assert_performed(run, "sel", rowcount=1)
    assert record["capability_id"] == run.cap("read")
    assert (record["resource"], record["operation"]) == ("db://main", "select")
    assert record["detail"]["database"] == "db://main"
    assert record["detail"]["statement"] == SQLITE_STEPS[0]["sql"]
    assert (record["detail"]["params"], record["detail"]["rows"]) == (1, 1)
    # The statement is clipped to what a record holds.
    long = assert_performed(run, "long", rowcount=1)
    assert len(long["detail"]["statement"]) == 512
    assert long["detail"]["statement"].endswith("...")
    assert LONG_SELECT.startswith(long["detail"]["statement"][:-3])
    assert_one_record_per_performed_query(run)
    # The database's file (its URL) never reaches the trail nor an error.
    path = str(sqlite_world.database).encode()
    assert path not in run.trail
    for step, outcome in run.outcomes.items():
        if step not in {"caps", "open_db"}:
            assert str(sqlite_world.database) not in json.dumps(outcome), step


def test_sqlite_the_confined_agent_cannot_open_the_database_itself(
    sqlite_world: SqliteWorld, tmp_path: Path
) -> None:
    outcome = sqlite_world.run.outcomes["open_db"]
    assert (outcome["ok"], outcome["code"]) == (False, "PermissionError"), outcome
    # Control: the same agent, step and config without confinement reads it.
    run = run_steps(
        tmp_path,
        allow=SQLITE_ALLOW,
        databases={"main": f"sqlite://{sqlite_world.database}"},
        caps={"read": SQLITE_CAPS["read"]},
        steps=[{"id": "open_db", "open": str(sqlite_world.database)}],
        confine=False,
    )
    assert run.outcomes["open_db"]["ok"], run.outcomes["open_db"]
    assert run.outcomes["open_db"]["bytes"] == sqlite_world.database.stat().st_size


# -- PostgreSQL -------------------------------------------------------------------

PG_DATABASE = "capsup_brokered_query"
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"

#: A select-only request gets the first ceiling (at most 2 rows: the row cap
#: in the ceiling), a writing one the second.
PG_ALLOW = [
    '{ resource = "db://pg", operations = ["select"], '
    'constraints = { tables = ["items"], max_rows = 2 } }',
    '{ resource = "db://pg", operations = ["select", "insert", "delete"], '
    'constraints = { tables = ["items"] } }',
    '{ resource = "db://down", operations = ["select"] }',
    '{ resource = "db://badpw", operations = ["select"] }',
]
PG_CAPS = {
    "read": {"resource": "db://pg", "operations": ["select"]},
    "rw": {"resource": "db://pg", "operations": ["select", "insert", "delete"]},
    "down": {"resource": "db://down", "operations": ["select"]},
    "badpw": {"resource": "db://badpw", "operations": ["select"]},
}
PG_STEPS = [
    query("sel", "read", "SELECT id, name FROM items WHERE name = $1 ORDER BY id", "banana"),
    query("injection", "read", "SELECT id FROM items WHERE name = $1", INJECTION),
    query("injection_control", "rw", f"SELECT id FROM items WHERE name = '{INJECTION}'"),
    query("capped_ok", "read", "SELECT id FROM items WHERE id <= 2 ORDER BY id"),
    query("capped_over", "read", "SELECT id FROM items"),
    query("outside", "read", "SELECT value FROM secrets"),
    query("stacked", "rw", "SELECT 1; DELETE FROM items"),
    # Writing functions the validator knows are off its allowlist: refused
    # before PostgreSQL sees them.
    query("nextval", "read", "SELECT nextval('s')"),
    query("pg_sleep", "read", "SELECT pg_sleep(10)"),
    # What the validator lets through and only the READ ONLY transaction
    # stops: a row lock, and public.lower(integer), a function the database
    # defines under an allowlisted name, which writes.
    query("for_update", "read", "SELECT id FROM items WHERE id = 1 FOR UPDATE"),
    query("for_update_control", "rw", "SELECT id FROM items WHERE id = 1 FOR UPDATE"),
    query("writing_function", "read", "SELECT lower(1)"),
    query("writing_function_control", "rw", "SELECT lower(2)"),
    query("insert_select_only", "read", "INSERT INTO items (id, name) VALUES ($1, $2)", 9, "fig"),
    query("insert_outside", "rw", "INSERT INTO secrets (value) VALUES ($1)", "planted"),
    query("insert_duplicate", "rw", "INSERT INTO items (id, name) VALUES ($1, $2)", 1, "dup"),
    query(
        "insert_check",
        "rw",
        "INSERT INTO items (id, name) SELECT id + 100, name || 'x' FROM items ORDER BY id",
    ),
    query("insert", "rw", "INSERT INTO items (id, name) VALUES ($1, $2)", 4, "date"),
    # pg_sleep is refused: a recursive CTE of allowlisted parts runs forever
    query("runaway", "read", RUNAWAY),
    query("down", "down", "SELECT 1"),
    query("badpw", "badpw", "SELECT 1"),
]


def pg_url(server: PostgresServer, database: str, *, password: str, port: int | None = None) -> str:
    return (
        f"postgresql://{server.user}:{quote(password, safe='')}@{server.host}:"
        f"{port or server.port}/{database}"
    )


def make_pg(server: PostgresServer) -> str:
    """A fresh database of the test's own; returns its URL."""
    with server.admin() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE}")
        admin.execute(f"CREATE DATABASE {PG_DATABASE}")
    url = pg_url(server, PG_DATABASE, password=server.password)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "CREATE TABLE items (id integer PRIMARY KEY, name text CHECK (length(name) <= 6))"
        )
        db.execute("INSERT INTO items VALUES (1, 'apple'), (2, 'banana'), (3, 'cherry')")
        db.execute("CREATE TABLE secrets (value text)")
        db.execute("INSERT INTO secrets VALUES ('hunter2')")
        db.execute("CREATE TABLE log (n integer)")
        db.execute("CREATE SEQUENCE s")
        db.execute(
            "CREATE FUNCTION public.lower(integer) RETURNS integer LANGUAGE sql "
            "AS 'INSERT INTO log (n) VALUES ($1) RETURNING n'"
        )
    return url


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as db:
        return db.execute(sql).fetchall()


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@dataclass
class PgWorld:
    url: str
    secrets: tuple[str, ...]
    run: Run


@pytest.fixture(scope="module")
def pg_world(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> PgWorld:
    url = make_pg(postgres)
    wrong = "wrong-" + postgres.password[::-1]
    with closed_port() as port:
        run = run_steps(
            tmp_path_factory.mktemp("pg"),
            allow=PG_ALLOW,
            databases={
                "pg": url,
                "down": pg_url(postgres, PG_DATABASE, password=postgres.password, port=port),
                "badpw": pg_url(postgres, PG_DATABASE, password=wrong),
            },
            caps=PG_CAPS,
            steps=PG_STEPS,
        )
    return PgWorld(url, (postgres.password, wrong), run)


def test_pg_select_within_tables_returns_rows_with_params_bound(pg_world: PgWorld) -> None:
    run = pg_world.run
    assert run.outcomes["sel"] == {
        "ok": True,
        "columns": ["id", "name"],
        "rows": [[2, "banana"]],
        "rowcount": 1,
    }
    assert run.outcomes["injection"] == {"ok": True, "columns": ["id"], "rows": [], "rowcount": 0}
    assert sorted(run.outcomes["injection_control"]["rows"]) == [[1], [2], [3]]
    record = assert_performed(run, "sel", rowcount=1)
    assert (record["resource"], record["detail"]["database"]) == ("db://pg", "db://pg")
    assert record["detail"]["statement"] == PG_STEPS[0]["sql"]
    assert_performed(run, "injection", rowcount=0)
    assert_one_record_per_performed_query(run)


def test_pg_tables_stacked_statements_and_unlisted_functions_are_refused(
    pg_world: PgWorld,
) -> None:
    run = pg_world.run
    assert_kernel_refused(run, "outside", "read", "table_not_allowed")
    assert_kernel_refused(run, "stacked", "rw", "multiple_statements")
    assert_kernel_refused(run, "nextval", "read", "function_not_allowed")
    assert_kernel_refused(run, "pg_sleep", "read", "function_not_allowed")
    assert pg_rows(pg_world.url, "SELECT last_value, is_called FROM s") == [(1, False)]
    assert pg_rows(pg_world.url, "SELECT id, name FROM items ORDER BY id") == AFTER


def test_pg_the_row_cap_of_the_ceiling_refuses_more_rows(pg_world: PgWorld) -> None:
    run = pg_world.run
    assert run.outcomes["capped_ok"]["rows"] == [[1], [2]]
    assert_broker_refused(run, "capped_over", "constraint_violation", "too_many_rows")


def test_pg_a_select_only_capability_runs_in_a_read_only_transaction(pg_world: PgWorld) -> None:
    run = pg_world.run
    for step in ("for_update", "writing_function"):
        assert_broker_refused(run, step, "constraint_violation", "read_only")
        assert "read-only transaction" in run.outcomes[step]["message"]
    # Controls: the same statements under a writing capability reach the
    # same server and write. (So ``tables`` bounds what a statement names,
    # not what a function it calls does: against that, the role's grants are
    # the line, as postgres_runner.py says.)
    assert run.outcomes["for_update_control"]["rows"] == [[1]]
    assert run.outcomes["writing_function_control"]["rows"] == [[2]]
    assert pg_rows(pg_world.url, "SELECT n FROM log") == [(2,)]


def test_pg_denied_and_failed_writes_leave_the_database_unchanged(pg_world: PgWorld) -> None:
    run = pg_world.run
    run.refused("insert_select_only", "operation_not_allowed", None)
    assert run.records("insert_select_only", "database_query") == []
    assert_kernel_refused(run, "insert_outside", "rw", "table_not_allowed")
    assert_broker_refused(run, "insert_duplicate", "upstream_error", "database_error")
    assert "23505" in run.outcomes["insert_duplicate"]["message"]
    assert_broker_refused(run, "insert_check", "upstream_error", "database_error")
    assert "23514" in run.outcomes["insert_check"]["message"]
    assert pg_rows(pg_world.url, "SELECT id, name FROM items ORDER BY id") == AFTER
    assert pg_rows(pg_world.url, "SELECT value FROM secrets") == SECRETS


def test_pg_an_allowed_insert_with_params_is_committed(pg_world: PgWorld) -> None:
    run = pg_world.run
    assert run.outcomes["insert"] == {"ok": True, "columns": [], "rows": [], "rowcount": 1}
    record = assert_performed(run, "insert", rowcount=1)
    assert (record["operation"], record["detail"]["params"]) == ("insert", 2)
    assert pg_rows(pg_world.url, "SELECT name FROM items WHERE id = 4") == [("date",)]


def test_pg_a_runaway_statement_meets_statement_timeout(pg_world: PgWorld) -> None:
    run = pg_world.run
    assert_broker_refused(run, "runaway", "upstream_error", "timeout")
    assert "57014" in run.outcomes["runaway"]["message"]
    (record,) = run.records("runaway", "database_query")
    assert 4.5 <= record["detail"]["seconds"] < 10, record


def test_pg_an_unreachable_database_is_unavailable(pg_world: PgWorld) -> None:
    run = pg_world.run
    assert_broker_refused(run, "down", "upstream_error", "unavailable")
    assert_broker_refused(run, "badpw", "upstream_error", "unavailable")
    for step in ("down", "badpw"):
        # The agent learns that, not where: the address and role stay the operator's.
        message = run.outcomes[step]["message"]
        assert "cannot be reached, or refused the supervisor's connection" in message
        assert "127.0.0.1" not in message and "port" not in message
    assert "password authentication failed" in run.stderr  # the operator's log says why


def test_pg_the_url_and_its_password_are_never_shown(pg_world: PgWorld) -> None:
    run = pg_world.run
    shown = {
        "trail": run.trail,
        "agent stdout": run.stdout.encode(),
        "capsup stderr": run.stderr.encode(),
        "outcomes": json.dumps(run.outcomes).encode(),
    }
    for secret in (pg_world.url, *pg_world.secrets):
        for where, text in shown.items():
            assert secret.encode() not in text, (where, secret)
    # the refusals that quote the database's own words did say something
    assert all(run.outcomes[step]["message"] for step in ("down", "badpw", "insert_duplicate"))
