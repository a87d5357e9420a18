"""The SQL broker's runners, on real databases: a SQLite file and a PostgreSQL
cluster the suite starts itself (postgres_server.py).

The statements here are given to the runners directly, without the
validator in front, so each test shows the runner's own line holding: the
authorizer, the read-only open or transaction, one statement, the clock and
the caps. Where a line sits behind another of the runner's own, the one in
front is switched off (monkeypatched) to show the one behind.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from capsup.supervisor.brokers import postgres_runner, sqlite_runner
from capsup.supervisor.brokers.postgres_runner import close_pools, run_postgres
from capsup.supervisor.brokers.sql import (
    MAX_BYTES,
    MAX_ROWS,
    MAX_TIME_LIMIT,
    QueryLimits,
    QueryRefused,
    QueryResult,
    checked_params,
)
from capsup.supervisor.brokers.sqlite_runner import allowed_functions, open_database, run_sqlite
from capsup.validators.sql_scope import Analysis, analyze
from postgres_server import PostgresServer

SELECT = frozenset({"select"})
ALL = frozenset({"select", "insert", "update", "delete"})
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


def refused(reason: str, run: Callable[..., object], *args: Any, **kwargs: Any) -> QueryRefused:
    with pytest.raises(QueryRefused) as info:
        run(*args, **kwargs)
    assert info.value.reason == reason, info.value
    return info.value


# -- the shared part -----------------------------------------------------------------


def test_limits_have_documented_caps_and_capped_clamps_what_a_capability_asks() -> None:
    assert QueryLimits() == QueryLimits(max_rows=MAX_ROWS, time_limit=5.0, max_bytes=MAX_BYTES)
    assert QueryLimits.capped(max_rows=10**9, time_limit=600) == QueryLimits(
        max_rows=MAX_ROWS, time_limit=MAX_TIME_LIMIT
    )
    assert QueryLimits.capped(max_rows=3).max_rows == 3
    for bad in ({"max_rows": 0}, {"max_rows": MAX_ROWS + 1}, {"max_rows": True}):
        with pytest.raises(ValueError, match="max_rows"):
            QueryLimits(**bad)
    for seconds in (0, -1, float("nan"), float("inf"), MAX_TIME_LIMIT + 1):
        with pytest.raises(ValueError, match="time_limit"):
            QueryLimits(time_limit=seconds)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ([object()], "parameter 1 is object"),
        ([1, {"a": 1}], "parameter 2 is dict"),
        ([[1, 2]], "parameter 1 is list"),
        ([bytearray(b"x")], "parameter 1 is bytearray"),
        ([2**63], "does not fit in 64 bits"),
        ([-(2**63) - 1], "does not fit in 64 bits"),
        ("abc", "params must be an array"),
        ({"a": 1}, "params must be an array"),
    ],
)
def test_params_of_other_types_are_refused(params: Any, says: str) -> None:
    assert says in refused("bad_params", checked_params, params).message


def test_params_of_the_protocol_types_pass() -> None:
    values = [None, True, 0, -(2**63), 2**63 - 1, 1.5, "é", b"\x00"]
    assert checked_params(values) == tuple(values)


def test_messages_are_clipped_and_printable() -> None:
    error = QueryRefused("database_error", "x\x1b[31m" + "y" * 5000)
    assert len(error.message) == 512 and "\x1b" not in error.message
    with pytest.raises(ValueError, match="unknown refusal reason"):
        QueryRefused("nope", "")


# -- SQLite --------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, data TEXT);
            CREATE TABLE secrets (id INTEGER PRIMARY KEY, token TEXT);
            CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
            CREATE VIEW user_names AS SELECT name FROM users;
            INSERT INTO users VALUES (1, 'ada', '{"a": 1}'), (2, 'bob', NULL), (3, 'cy', NULL);
            INSERT INTO secrets VALUES (1, 'hunter2');
            """
        )
    return path


def sq(
    path: Path,
    statement: str,
    params: Iterable[object] = (),
    *,
    operations: frozenset[str] = SELECT,
    tables: Iterable[str] | None = ("users",),
    limits: QueryLimits | None = None,
) -> QueryResult:
    return run_sqlite(
        str(path),
        statement,
        list(params),
        operations=operations,
        tables=None if tables is None else frozenset(tuple(t.split(".")) for t in tables),
        functions=allowed_functions(),
        limits=limits or QueryLimits(),
    )


def rows_of(path: Path, statement: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(statement).fetchall()


def test_sqlite_select_within_tables(db: Path) -> None:
    result = sq(db, "SELECT id, upper(name) AS n FROM users WHERE id >= ? ORDER BY id", [2])
    assert result == QueryResult(columns=["id", "n"], rows=[[2, "BOB"], [3, "CY"]], rowcount=2)
    empty = sq(db, "SELECT id FROM users WHERE id > 100")
    assert empty == QueryResult(columns=["id"], rows=[], rowcount=0)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT token FROM secrets",
        "SELECT name FROM users WHERE id IN (SELECT id FROM secrets)",
        "SELECT name FROM users JOIN main.secrets USING (id)",
        "SELECT count(*) FROM secrets",
        "SELECT name FROM users WHERE id IN secrets",
        # a CTE named like an allowed table does not make its body allowed
        "WITH users AS (SELECT token AS name FROM secrets) SELECT name FROM users",
        "SELECT sql FROM sqlite_master",
    ],
)
def test_sqlite_the_authorizer_stops_tables_outside_tables(db: Path, statement: str) -> None:
    error = refused("authorizer_denied", sq, db, statement)
    assert "READ" in error.message
    assert "hunter2" not in error.message


def test_sqlite_a_table_in_tables_is_read_and_qualified_entries_hold(db: Path) -> None:
    assert sq(db, "SELECT token FROM secrets", tables=["secrets"]).rows == [["hunter2"]]
    assert sq(db, "SELECT name FROM users", tables=["main.users"]).rowcount == 3
    assert sq(db, "SELECT count(*) FROM main.users", tables=["main.users"]).rows == [[3]]
    refused("authorizer_denied", sq, db, "SELECT name FROM users", tables=["temp.users"])
    # a read of a whole table, unqualified, is asked about with no schema: as
    # in the validator, main.users does not name it
    refused("authorizer_denied", sq, db, "SELECT count(*) FROM users", tables=["main.users"])


def test_sqlite_a_cte_read_as_a_whole_is_allowed_unless_a_table_has_its_name(db: Path) -> None:
    cte = "WITH r(n) AS (VALUES (1), (2)) SELECT count(*) FROM r"
    assert sq(db, cte, tables=()).rows == [[2]]
    shadowing = "WITH secrets(n) AS (VALUES (1)) SELECT count(*) FROM secrets"
    refused("authorizer_denied", sq, db, shadowing, tables=())
    # the names follow the schema as it changes
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("CREATE TABLE r (n)")
    refused("authorizer_denied", sq, db, cte, tables=())


def test_sqlite_a_view_needs_its_base_tables_in_tables(db: Path) -> None:
    refused("authorizer_denied", sq, db, "SELECT name FROM user_names", tables=["user_names"])
    both = sq(db, "SELECT name FROM user_names", tables=["user_names", "users"])
    assert both.rowcount == 3


@pytest.mark.parametrize(
    ("statement", "action"),
    [
        ("ATTACH DATABASE '{dir}/other.db' AS other", "ATTACH"),
        ("DETACH DATABASE main", "DETACH"),
        ("PRAGMA writable_schema = 1", "PRAGMA"),
        ("PRAGMA table_info(users)", "PRAGMA"),
        ("CREATE TABLE evil (x)", "CREATE_TABLE"),
        ("CREATE TEMP TABLE evil (x)", "CREATE_TEMP_TABLE"),
        ("CREATE TRIGGER t AFTER INSERT ON notes BEGIN DELETE FROM users; END", "CREATE_TRIGGER"),
        ("DROP TABLE secrets", "DROP_TABLE"),
        ("ALTER TABLE users ADD COLUMN x", "ALTER_TABLE"),
        ("BEGIN", "TRANSACTION"),
        ("SAVEPOINT s", "SAVEPOINT"),
        ("ANALYZE", "sqlite_stat1"),
    ],
)
def test_sqlite_the_authorizer_denies_everything_but_dml(
    db: Path, statement: str, action: str
) -> None:
    statement = statement.format(dir=db.parent)
    # every operation and every table: what is left is denied for what it is
    error = refused("authorizer_denied", sq, db, statement, operations=ALL, tables=None)
    assert action in error.message
    assert not (db.parent / "other.db").exists() and not (db.parent / "copy.db").exists()
    assert rows_of(db, "SELECT count(*) FROM sqlite_master") == [(4,)]


def test_sqlite_vacuum_into_never_writes_a_copy(db: Path) -> None:
    # SQLite does not ask its authorizer about VACUUM (only about the ATTACH it
    # makes); every statement runs in a transaction of its own, where VACUUM cannot
    statement = f"VACUUM INTO '{db.parent}/copy.db'"
    for operations in (SELECT, ALL):
        error = refused("database_error", sq, db, statement, operations=operations, tables=None)
        assert "within a transaction" in error.message
    assert not (db.parent / "copy.db").exists()


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT load_extension('/tmp/x.so')",
        "SELECT randomblob(16)",
        "SELECT random()",
        "SELECT sqlite_version()",
        "SELECT name FROM users WHERE zeroblob(10) IS NOT NULL",
    ],
)
def test_sqlite_functions_outside_the_allowlist_are_denied(db: Path, statement: str) -> None:
    assert "FUNCTION" in refused("authorizer_denied", sq, db, statement).message


def test_sqlite_allowlisted_functions_and_operators_run(db: Path) -> None:
    result = sq(
        db,
        "SELECT lower(name), length(name), json_extract(data, '$.a'), data ->> '$.a',"
        " coalesce(data, 'none'), name LIKE 'a%', count(*) OVER () FROM users WHERE id = 1",
    )
    assert result.rows == [["ada", 3, 1, 1, '{"a": 1}', 1, 1]]


def test_sqlite_the_function_allowlist_is_the_validators() -> None:
    names = allowed_functions()
    assert {"lower", "count", "json_extract", "->", "->>", "like", "coalesce"} <= names
    assert not {"load_extension", "randomblob", "random", "sqlite_version", "zeroblob"} & names
    assert analyze("SELECT randomblob(16)", "sqlite").reason == "function_not_allowed"


def test_sqlite_writes_need_the_operation_and_the_table(db: Path) -> None:
    inserted = sq(
        db, "INSERT INTO notes (body) VALUES (?)", ["hi"], operations=ALL, tables=["notes"]
    )
    assert inserted == QueryResult(columns=[], rows=[], rowcount=1)
    returned = sq(db, "UPDATE users SET name = ? WHERE id < 3 RETURNING id", ["z"], operations=ALL)
    assert sorted(returned.rows) == [[1], [2]] and returned.rowcount == 2
    refused("authorizer_denied", sq, db, "DELETE FROM users", operations=SELECT | {"insert"})
    refused("authorizer_denied", sq, db, "DELETE FROM secrets", operations=ALL)
    refused("authorizer_denied", sq, db, "INSERT INTO secrets VALUES (9, 'x')", operations=ALL)
    assert rows_of(db, "SELECT count(*) FROM secrets") == [(1,)]
    assert rows_of(db, "SELECT count(*) FROM users") == [(3,)]


def test_sqlite_a_select_only_capability_is_read_only_even_if_the_authorizer_allowed_writes(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the authorizer misconfigured to allow every insert: mode=ro still refuses
    monkeypatch.setitem(sqlite_runner._RULES, sqlite3.SQLITE_INSERT, lambda *args: True)
    refused("read_only", sq, db, "INSERT INTO users (name) VALUES ('eve')", operations=SELECT)
    assert rows_of(db, "SELECT count(*) FROM users") == [(3,)]
    connection = open_database(str(db), read_only=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        connection.execute("DELETE FROM users")
    connection.close()


def test_sqlite_a_missing_database_is_unavailable_and_not_created(tmp_path: Path) -> None:
    for operations in (SELECT, ALL):
        refused("unavailable", sq, tmp_path / "nothing.db", "SELECT 1", operations=operations)
    assert not (tmp_path / "nothing.db").exists()
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    refused("unavailable", sq, tmp_path / "junk.db", "SELECT 1")


def test_sqlite_stacked_statements_are_refused_before_any_runs(db: Path) -> None:
    refused("multiple_statements", sq, db, "SELECT 1; DROP TABLE users", tables=None)
    refused(
        "multiple_statements",
        sq,
        db,
        "INSERT INTO users (name) VALUES ('eve'); DELETE FROM secrets",
        operations=ALL,
        tables=None,
    )
    assert rows_of(db, "SELECT count(*) FROM users UNION ALL SELECT count(*) FROM secrets") == [
        (3,),
        (1,),
    ]


def test_sqlite_params_are_bound_never_interpolated(db: Path) -> None:
    assert sq(db, "SELECT id FROM users WHERE name = ?", ["x' OR '1'='1"]).rows == []
    payload = "'); DROP TABLE users; --"
    sq(db, "INSERT INTO users (name) VALUES (?)", [payload], operations=ALL)
    assert sq(db, "SELECT name FROM users WHERE id = 4").rows == [[payload]]
    values = [None, True, -(2**63), 1.25, "é", b"\x00\xff"]
    echoed = sq(db, "SELECT ?, ?, ?, ?, ?, ?", values, tables=())
    assert echoed.rows == [[None, 1, -(2**63), 1.25, "é", b"\x00\xff"]]


def test_sqlite_bad_params_are_refused(db: Path) -> None:
    refused("bad_params", sq, db, "SELECT ?", [object()])
    refused("bad_params", sq, db, "SELECT ?", [1, 2], tables=())
    refused("bad_params", sq, db, "SELECT ?, ?", [1], tables=())


def test_sqlite_the_row_cap_refuses_rather_than_truncates(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.executemany("INSERT INTO notes (body) VALUES (?)", [("n",)] * 600)
    notes = ["notes"]
    assert (
        sq(db, "SELECT id FROM notes", tables=notes, limits=QueryLimits(max_rows=600)).rowcount
        == 600
    )
    error = refused(
        "too_many_rows",
        sq,
        db,
        "SELECT id FROM notes",
        tables=notes,
        limits=QueryLimits(max_rows=599),
    )
    assert "599" in error.message
    refused(
        "too_many_bytes",
        sq,
        db,
        "SELECT body FROM notes",
        tables=notes,
        limits=QueryLimits(max_bytes=100),
    )


def test_sqlite_a_write_refused_after_it_ran_leaves_the_database_unchanged(db: Path) -> None:
    before = rows_of(db, "SELECT * FROM users ORDER BY id")
    refused(
        "too_many_rows",
        sq,
        db,
        "UPDATE users SET name = ? RETURNING id",
        ["x"],
        operations=ALL,
        limits=QueryLimits(max_rows=2),
    )
    error = refused(
        "database_error",
        sq,
        db,
        "INSERT INTO users (id, name) VALUES (10, 'a'), (1, 'clash')",
        operations=ALL,
    )
    assert "UNIQUE" in error.message
    assert rows_of(db, "SELECT * FROM users ORDER BY id") == before
    # and the thread's connection is usable afterwards, with no transaction left open
    assert sq(db, "UPDATE users SET name = 'ok' WHERE id = 3", operations=ALL).rowcount == 1
    assert rows_of(db, "SELECT name FROM users WHERE id = 3") == [("ok",)]


def test_sqlite_a_runaway_statement_is_interrupted_at_its_time_limit(db: Path) -> None:
    start = time.monotonic()
    error = refused("timeout", sq, db, RUNAWAY, tables=(), limits=QueryLimits(time_limit=0.2))
    assert 0.2 <= time.monotonic() - start < 2
    assert "0.2 s" in error.message
    finite = RUNAWAY.replace("FROM r)", "FROM r WHERE n < 1000)")
    assert sq(db, finite, tables=(), limits=QueryLimits(time_limit=0.2)).rows == [[1000]]


def test_sqlite_a_lock_wait_counts_against_the_time_limit(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        start = time.monotonic()
        refused("timeout", sq, db, "DELETE FROM notes", operations=ALL, tables=["notes"],
                limits=QueryLimits(time_limit=0.2))  # fmt: skip
        assert time.monotonic() - start < 2
        holder.execute("ROLLBACK")


def test_sqlite_a_cached_statement_is_authorized_again_for_the_next_capability(db: Path) -> None:
    assert sq(db, "SELECT token FROM secrets", tables=["secrets"]).rows == [["hunter2"]]
    refused("authorizer_denied", sq, db, "SELECT token FROM secrets", tables=["users"])
    refused("authorizer_denied", sq, db, "SELECT token FROM secrets", tables=["users"])
    assert sq(db, "SELECT token FROM secrets", tables=None).rows == [["hunter2"]]


def test_sqlite_text_that_is_not_utf8_comes_back_as_bytes(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("INSERT INTO notes (body) VALUES (CAST(x'ff41' AS TEXT))")
    assert sq(db, "SELECT body FROM notes", tables=["notes"]).rows == [[b"\xffA"]]


def test_sqlite_worker_threads_each_get_their_own_connections(db: Path) -> None:
    def work(n: int) -> int:
        sq(db, "INSERT INTO notes (body) VALUES (?)", [f"n{n}"], operations=ALL, tables=["notes"])
        return sq(db, "SELECT count(*) FROM users WHERE id = ?", [n % 3 + 1]).rows[0][0]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(work, range(200))) == [1] * 200
    assert rows_of(db, "SELECT count(*) FROM notes") == [(200,)]


# -- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg(postgres: PostgresServer) -> Iterator[PostgresServer]:
    with postgres.admin() as admin:
        admin.execute(
            """
            CREATE TYPE mood AS ENUM ('ok', 'sad');
            CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL);
            CREATE TABLE kinds (
                n numeric, d date, ts timestamptz, u uuid, j jsonb, a int[], b bytea,
                f float8, bo bool, iv interval, m mood, big int8, s smallint, t text
            );
            CREATE TABLE many (id int);
            INSERT INTO many SELECT generate_series(1, 600);
            CREATE SEQUENCE counter;
            CREATE FUNCTION add_user(name text) RETURNS bigint LANGUAGE sql AS
                $$ INSERT INTO users SELECT max(id) + 1, $1 FROM users; SELECT count(*) FROM users $$;
            """
        )
    yield postgres
    close_pools()


@pytest.fixture
def users(pg: PostgresServer) -> Iterator[PostgresServer]:
    with pg.admin() as admin:
        admin.execute("TRUNCATE users; INSERT INTO users VALUES (1, 'ada'), (2, 'bob'), (3, 'cy')")
    yield pg


def run_pg(
    server: PostgresServer,
    statement: str,
    params: Iterable[object] = (),
    *,
    operations: frozenset[str] = SELECT,
    limits: QueryLimits | None = None,
) -> QueryResult:
    return run_postgres(
        server.url, statement, list(params), operations=operations, limits=limits or QueryLimits()
    )


def pg_rows(server: PostgresServer, statement: str) -> list[tuple[object, ...]]:
    with server.admin() as admin:
        return admin.execute(statement).fetchall()


@pytest.fixture
def validator_fooled(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make the runner's own kind check see any statement as ``kind``, as if the
    validator were wrong: what stands behind it must hold alone."""

    def fool(kind: str) -> None:
        monkeypatch.setattr(postgres_runner, "analyze", lambda *_: Analysis(kind=kind))

    return fool


def test_pg_select_with_params(users: PostgresServer) -> None:
    result = run_pg(users, "SELECT id, upper(name) AS n FROM users WHERE id >= $1 ORDER BY id", [2])
    assert result == QueryResult(columns=["id", "n"], rows=[[2, "BOB"], [3, "CY"]], rowcount=2)
    # a select that returns no row still has its columns
    assert run_pg(users, "SELECT id, name FROM users WHERE id > 100") == QueryResult(
        columns=["id", "name"], rows=[], rowcount=0
    )
    # % is an ordinary character: placeholders are $n
    assert run_pg(users, "SELECT name FROM users WHERE name LIKE 'a%'").rows == [["ada"]]


def test_pg_types_come_back_as_plain_values(pg: PostgresServer) -> None:
    with pg.admin() as admin:
        admin.execute("SET TimeZone = 'UTC'")
        admin.execute(
            "INSERT INTO kinds VALUES (1.50, '2024-01-02', '2024-01-02 03:04:05+00',"
            " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{1,2}', '\\x00ff',"
            " 0.5, true, '1 day 02:00', 'sad', 9223372036854775807, 7, 'é')"
        )
    row = run_pg(pg, "SELECT n, d, u, j, a, b, f, bo, iv, m, big, s, t FROM kinds").rows[0]
    assert row == [
        "1.50", "2024-01-02", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", '{"a": [1, 2]}', "{1,2}",
        b"\x00\xff", 0.5, True, "1 day 02:00:00", "sad", 9223372036854775807, 7, "é",
    ]  # fmt: skip
    (timestamp,) = run_pg(pg, "SELECT ts FROM kinds").rows[0]
    assert isinstance(timestamp, str) and timestamp.startswith("2024-01-02 ")


def test_pg_params_are_bound_never_interpolated(users: PostgresServer) -> None:
    assert run_pg(users, "SELECT id FROM users WHERE name = $1", ["x' OR '1'='1"]).rows == []
    payload = "'); DROP TABLE users; --"
    run_pg(users, "INSERT INTO users VALUES (4, $1)", [payload], operations=ALL)
    assert pg_rows(users, "SELECT name FROM users WHERE id = 4") == [(payload,)]
    echoed = run_pg(users, "SELECT $1::int8, $2::float8, $3::text, $4::bytea, $5::bool",
                    [-(2**63), 1.25, "é", b"\x00", False])  # fmt: skip
    assert echoed.rows == [[-(2**63), 1.25, "é", b"\x00", False]]


def test_pg_bad_params_are_refused(users: PostgresServer) -> None:
    refused("bad_params", run_pg, users, "SELECT $1::int, $2::int", [1])
    refused("bad_params", run_pg, users, "SELECT $1::int", [object()])


def test_pg_a_kind_outside_the_operations_is_refused_before_the_server(
    users: PostgresServer,
) -> None:
    error = refused("authorizer_denied", run_pg, users, "DELETE FROM users", operations=SELECT)
    assert "delete" in error.message
    refused("authorizer_denied", run_pg, users, "SELECT pg_sleep(1)")
    refused("authorizer_denied", run_pg, users, "SELECT 1; DELETE FROM users", operations=ALL)
    assert pg_rows(users, "SELECT count(*) FROM users") == [(3,)]


def test_pg_a_select_only_capability_runs_in_a_read_only_transaction(
    users: PostgresServer, validator_fooled: Callable[[str], None]
) -> None:
    refused("read_only", run_pg, users, "SELECT id FROM users FOR UPDATE")
    assert run_pg(users, "SELECT id FROM users FOR UPDATE", operations=ALL).rowcount == 3
    # a select that writes, if the validator let one through
    validator_fooled("select")
    refused("read_only", run_pg, users, "SELECT add_user('eve')")
    refused("read_only", run_pg, users, "SELECT nextval('counter')")
    assert pg_rows(users, "SELECT count(*) FROM users") == [(3,)]
    assert run_pg(users, "SELECT add_user('eve')", operations=ALL).rows == [[4]]


def test_pg_a_select_is_only_ever_declared_as_a_cursor(
    users: PostgresServer, validator_fooled: Callable[[str], None]
) -> None:
    validator_fooled("select")
    for write in (
        "DELETE FROM users",
        "WITH d AS (DELETE FROM users RETURNING id) SELECT * FROM d",
    ):
        refused("database_error", run_pg, users, write, operations=ALL)
    assert pg_rows(users, "SELECT count(*) FROM users") == [(3,)]


def test_pg_stacked_statements_are_refused_by_the_server(
    users: PostgresServer, validator_fooled: Callable[[str], None]
) -> None:
    validator_fooled("select")
    error = refused("database_error", run_pg, users, "SELECT 1; DELETE FROM users", operations=ALL)
    assert "multiple commands" in error.message
    validator_fooled("insert")
    # without parameters too: psycopg would otherwise send a simple query
    for params in ([], [5]):
        statement = "INSERT INTO users VALUES (5, 'eve'); DELETE FROM users"
        if params:
            statement = statement.replace("(5,", "($1,")
        error = refused("database_error", run_pg, users, statement, params, operations=ALL)
        assert "multiple commands" in error.message
    assert pg_rows(users, "SELECT count(*) FROM users") == [(3,)]


def test_pg_writes_report_rows_changed_and_commit(users: PostgresServer) -> None:
    assert run_pg(users, "UPDATE users SET name = $1 WHERE id < 3", ["z"], operations=ALL) == (
        QueryResult(columns=[], rows=[], rowcount=2)
    )
    returned = run_pg(users, "INSERT INTO users VALUES (7, 'g') RETURNING id, name", operations=ALL)
    assert returned == QueryResult(columns=["id", "name"], rows=[[7, "g"]], rowcount=1)
    assert pg_rows(users, "SELECT id, name FROM users ORDER BY id") == [
        (1, "z"), (2, "z"), (3, "cy"), (7, "g"),
    ]  # fmt: skip


def test_pg_a_failed_write_leaves_the_database_unchanged(users: PostgresServer) -> None:
    refused("too_many_rows", run_pg, users, "UPDATE users SET name = 'x' RETURNING id",
            operations=ALL, limits=QueryLimits(max_rows=2))  # fmt: skip
    error = refused("database_error", run_pg, users,
                    "INSERT INTO users VALUES (10, 'a'), (1, 'clash')", operations=ALL)  # fmt: skip
    assert error.message.startswith("23505")
    assert pg_rows(users, "SELECT id, name FROM users ORDER BY id") == [
        (1, "ada"), (2, "bob"), (3, "cy"),
    ]  # fmt: skip


def test_pg_the_row_cap_bounds_what_is_fetched(pg: PostgresServer) -> None:
    assert run_pg(pg, "SELECT id FROM many", limits=QueryLimits(max_rows=600)).rowcount == 600
    error = refused(
        "too_many_rows", run_pg, pg, "SELECT id FROM many", limits=QueryLimits(max_rows=599)
    )
    assert "599" in error.message
    refused("too_many_bytes", run_pg, pg, "SELECT id FROM many", limits=QueryLimits(max_bytes=100))


def test_pg_a_runaway_statement_meets_statement_timeout(
    pg: PostgresServer, validator_fooled: Callable[[str], None]
) -> None:
    start = time.monotonic()
    refused("timeout", run_pg, pg, RUNAWAY, limits=QueryLimits(time_limit=0.2))
    validator_fooled("select")
    refused("timeout", run_pg, pg, "SELECT pg_sleep(5)", limits=QueryLimits(time_limit=0.2))
    assert time.monotonic() - start < 3
    assert run_pg(pg, "SELECT 1 AS one").rows == [[1]]


def test_pg_a_wrong_password_is_unavailable_and_never_shown(
    pg: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "Wr0ng-pass-" + "q" * 8
    url = pg.url_with(password=wrong)
    error = refused("unavailable", run_postgres, url, "SELECT 1", [], operations=SELECT,
                    limits=QueryLimits())  # fmt: skip
    # The agent learns that, not where: the address and the role are the operator's.
    assert "refused the supervisor's connection" in error.message
    assert str(pg.port) not in error.message and pg.user not in error.message
    said = capsys.readouterr().err  # the operator's log says why
    assert "password authentication failed" in said and wrong not in said
    assert wrong not in error.message and wrong not in str(error)
    dead = f"postgresql://capsup:{wrong}@127.0.0.1:1/postgres"
    error = refused("unavailable", run_postgres, dead, "SELECT 1", [], operations=SELECT,
                    limits=QueryLimits())  # fmt: skip
    assert wrong not in error.message


def test_pg_pooled_connections_killed_while_idle_are_replaced(users: PostgresServer) -> None:
    def burst() -> None:
        barrier = threading.Barrier(3)

        def one(_: int) -> None:
            barrier.wait()
            assert run_pg(users, "SELECT count(*) FROM users").rows == [[3]]

        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(one, range(3)))

    burst()
    with users.admin() as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    burst()


def test_pg_an_unparseable_url_is_unavailable() -> None:
    error = refused("unavailable", run_postgres, "postgresql://a:b@h:notaport/x?bad", "SELECT 1",
                    [], operations=SELECT, limits=QueryLimits())  # fmt: skip
    assert "b@h" not in error.message


def test_pg_strings_are_lexed_as_the_validator_lexes_them(users: PostgresServer) -> None:
    """With standard_conforming_strings off (a server's or a role's setting),
    PostgreSQL reads '\\' as an escaped quote and the string runs on, so a
    statement the validator reads as one string and a comment reads a table
    to the server. The runner pins the setting for its transaction."""
    statement = "SELECT '\\' --', name FROM users\n"
    with users.admin() as admin:
        admin.execute(f"ALTER ROLE {users.user} SET standard_conforming_strings = off")
    try:
        with psycopg.connect(users.url) as direct:  # the attack, without the pin
            assert len(direct.execute(statement).fetchall()) == 3
        result = run_pg(users, statement)
        assert result.rows == [["\\"]]
    finally:
        with users.admin() as admin:
            admin.execute(f"ALTER ROLE {users.user} RESET standard_conforming_strings")
