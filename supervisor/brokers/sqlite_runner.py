"""SQLite: one allowed statement, run behind a read-only open, an authorizer and a clock.

Behind the validator's verdict stand, each on its own:

1. The open. A capability that allows only ``select`` gets a connection
   opened ``mode=ro``: SQLite itself refuses every write, whatever else is
   wrong. A writing capability gets ``mode=rw``, never ``rwc``: a database
   that is not there is ``unavailable``, not created. No database may be
   attached (``SQLITE_LIMIT_ATTACHED`` is 0), no value may outgrow what one
   protocol message carries (``SQLITE_LIMIT_LENGTH``), and the schema is not
   trusted to call functions with side effects (``trusted_schema`` off).
2. The authorizer (:class:`_Authorizer`), installed for each statement with
   that capability's rules: reads of tables within ``tables``; inserts,
   updates and deletes only of those tables and only when the operation is
   allowed; functions only from the validator's allowlist
   (:func:`allowed_functions`); selects and recursive CTEs. Everything else
   is denied: ATTACH, DETACH, PRAGMA, DDL, transactions, savepoints... SQLite
   asks while it compiles the statement, so a denied statement never runs.
   Reading the schema does not ask (SQLite loads it with the authorizer off),
   so a statement may touch ``sqlite_master`` only when ``tables`` allows it.
   The reads a view makes of its base tables are asked about like any other,
   so a view in ``tables`` needs its base tables there too: SQLite names the
   view as their source, but a CTE can take any name, so a source name proves
   nothing. A FROM item of which no column is read (``count(*)``) is asked
   about by its name as written, which may be a CTE's: such a read is allowed
   when no table or view of the database has that name.
3. One statement: ``sqlite3``'s ``execute`` refuses a second.
4. A clock: a progress handler interrupts the statement at its time limit;
   the busy timeout bounds lock waits by the same limit.

Every statement runs in a transaction of its own, committed only when it
succeeded and its rows fit the limits. Connections are kept per thread (the
broker's workers), per database and per mode, and reused. Installing an
authorizer expires every statement the connection has prepared
(``sqlite3_set_authorizer``), so a statement cached under one capability's
authorizer is compiled and authorized again under the next one's. Between
two calls a connection has no authorizer, no progress handler and no open
transaction; one that cannot be brought back to that state is closed.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from capsup.agents.protocol import MAX_MESSAGE_BYTES
from capsup.supervisor.brokers.sql import (
    QueryLimits,
    QueryRefused,
    QueryResult,
    capped_rows,
    checked_params,
)
from capsup.validators.sql_scope import analyze

__all__ = ["allowed_functions", "open_database", "run_sqlite"]

#: Virtual-machine steps between two looks at the clock: a few microseconds.
_CLOCK_STEPS: Final = 1000
#: Most columns of a result or a table (SQLite's own default is 2,000).
_MAX_COLUMNS: Final = 128

#: The error code (primary, low byte) of a failed statement -> the refusal's reason.
#: An authorizer denial is told apart by what the authorizer recorded, and an
#: interrupt is a timeout only when the clock ran out.
_ERROR_REASONS: Final[Mapping[int, str]] = {
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_BUSY: "timeout",
    sqlite3.SQLITE_LOCKED: "timeout",
    sqlite3.SQLITE_CANTOPEN: "unavailable",
    sqlite3.SQLITE_NOTADB: "unavailable",
    sqlite3.SQLITE_CORRUPT: "unavailable",
}

#: Authorizer action codes by name, for denial messages. Written out: some of
#: sqlite3's constants for action codes share values with its result codes.
_ACTION_NAMES: Final[Mapping[int, str]] = {
    getattr(sqlite3, f"SQLITE_{name}"): name
    for name in (
        "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE",
        "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "INSERT", "PRAGMA", "READ", "SELECT",
        "TRANSACTION", "UPDATE", "ATTACH", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE",
        "CREATE_VTABLE", "DROP_VTABLE", "FUNCTION", "SAVEPOINT", "RECURSIVE",
    )
}  # fmt: skip


def _fold(name: str) -> str:
    """A name as SQLite compares it: ASCII letters without case, nothing else folded
    (so the Kelvin sign is not a ``k`` here, as it is not in SQLite)."""
    return name.lower() if name.isascii() else name


class _Authorizer:
    """One statement's authorizer: the capability's rules, and the first denial."""

    __slots__ = ("denied", "functions", "operations", "schema_names", "tables")

    def __init__(
        self,
        operations: frozenset[str],
        tables: frozenset[tuple[str, ...]] | None,
        functions: frozenset[str],
    ) -> None:
        self.operations = operations
        self.tables = tables
        self.functions = functions
        #: The database's table and view names, set just before the statement.
        self.schema_names: frozenset[str] = frozenset()
        self.denied = ""

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None
    ) -> int:
        rule = _RULES.get(action)
        if rule is not None and rule(self, arg1, arg2, db):
            return sqlite3.SQLITE_OK
        if not self.denied:
            what = "".join(f" {arg}" for arg in (db, arg1, arg2) if arg)
            self.denied = f"the authorizer refused {_ACTION_NAMES.get(action, action)}{what}"
        return sqlite3.SQLITE_DENY

    def table_allowed(self, table: str | None, db: str | None) -> bool:
        """Whether ``tables`` names ``table`` of schema ``db``.

        An entry ``name`` names the table in any schema: unqualified, SQLite
        looks in ``temp`` then ``main``, and nothing else can be attached.
        An entry ``main.name`` names it only where SQLite says ``main``; it
        says nothing for a table read as a whole and written unqualified,
        which the validator would not match with ``main.name`` either.
        """
        if self.tables is None:
            return True
        if table is None:
            return False
        name = _fold(table)
        return (name,) in self.tables or (db is not None and (_fold(db), name) in self.tables)


#: An authorizer rule: (the statement's authorizer, the action's first three
#: arguments) -> allow? The fourth, the trigger or view (or CTE) on whose
#: behalf the access is made, is not consulted: see the module's docstring.
_Rule = Callable[[_Authorizer, str | None, str | None, str | None], bool]


def _always(_scope: _Authorizer, _arg1: str | None, _arg2: str | None, _db: str | None) -> bool:
    return True


def _read(scope: _Authorizer, table: str | None, column: str | None, db: str | None) -> bool:
    if scope.table_allowed(table, db):
        return True
    # no column read (column ""): the FROM item may be a CTE, which no table shadows
    return column == "" and table is not None and _fold(table) not in scope.schema_names


def _function(scope: _Authorizer, _arg1: str | None, name: str | None, _db: str | None) -> bool:
    return name is not None and _fold(name) in scope.functions


def _write(operation: str) -> _Rule:
    """The rule for a write: the operation allowed, the table within ``tables``."""

    def rule(scope: _Authorizer, table: str | None, _column: str | None, db: str | None) -> bool:
        return operation in scope.operations and scope.table_allowed(table, db)

    return rule


#: What the authorizer allows, by action; any action not here is denied.
_RULES: Final[Mapping[int, _Rule]] = {
    sqlite3.SQLITE_SELECT: _always,
    sqlite3.SQLITE_RECURSIVE: _always,
    sqlite3.SQLITE_READ: _read,
    sqlite3.SQLITE_FUNCTION: _function,
    sqlite3.SQLITE_INSERT: _write("insert"),
    sqlite3.SQLITE_UPDATE: _write("update"),
    sqlite3.SQLITE_DELETE: _write("delete"),
}


class _Clock:
    """A progress handler that interrupts the statement once its time is up."""

    __slots__ = ("deadline", "expired")

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.expired = False

    def __call__(self) -> int:
        if time.monotonic() > self.deadline:
            self.expired = True
        return self.expired


@functools.cache
def allowed_functions() -> frozenset[str]:
    """The SQLite functions the database validator allows, as SQLite's authorizer names them.

    Asked of the validator itself: each function this SQLite has (operators
    such as ``->`` included) is written as a call and analyzed in the sqlite
    dialect, so the authorizer allows exactly what the validator would.
    """
    identifier = re.compile(r"[a-z_][a-z0-9_]*")
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:
        functions = probe.execute("SELECT DISTINCT name, narg FROM pragma_function_list").fetchall()
    allowed: set[str] = set()
    for name, narg in functions:
        for count in [narg] if narg >= 0 else [1, 2, 3]:
            if identifier.fullmatch(name):
                call = f"{name}({', '.join(['x'] * count)})"
            else:
                call = f"x {name} y"
            # only parsed, never run: the names come from SQLite itself
            if not analyze(f"SELECT {call} FROM t", "sqlite").reason:  # noqa: S608
                allowed.add(name)
    return frozenset(allowed)


def _text(data: bytes) -> str | bytes:
    """TEXT as ``str``, or as the raw ``bytes`` when it is not UTF-8 (SQLite does
    not check what it stores), rather than failing the whole statement."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


#: Tables every database has that its schema does not list.
_BUILT_IN_TABLES: Final = frozenset(
    {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
)


class _Database:
    """One thread's connection to one database in one mode, and the names of its
    tables and views (read again whenever the schema changes)."""

    __slots__ = ("busy_timeout", "connection", "names", "schema_version")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.schema_version = -1
        self.names: frozenset[str] = _BUILT_IN_TABLES
        self.busy_timeout = -1

    def set_busy_timeout(self, seconds: float) -> None:
        """Wait for locks at most ``seconds`` (set only when it changes)."""
        milliseconds = int(seconds * 1000)
        if milliseconds != self.busy_timeout:
            self.connection.execute(f"PRAGMA busy_timeout = {milliseconds}")
            self.busy_timeout = milliseconds

    def schema_names(self) -> frozenset[str]:
        """The names of the tables and views, folded. Reads the database, so a
        file that is not one fails here, before the statement."""
        (version,) = self.connection.execute("PRAGMA schema_version").fetchone()
        if version != self.schema_version:
            rows = self.connection.execute(
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')"
            ).fetchall()
            self.names = _BUILT_IN_TABLES | {_fold(name) for (name,) in rows}
            self.schema_version = version
        return self.names


class _Databases(threading.local):
    """Each thread's open databases, by path and mode."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, bool], _Database] = {}

    def get(self, path: str, read_only: bool) -> _Database:
        database = self.open.get((path, read_only))
        if database is None:
            database = _Database(open_database(path, read_only=read_only))
            self.open[path, read_only] = database
        return database

    def discard(self, path: str, read_only: bool) -> None:
        database = self.open.pop((path, read_only), None)
        if database is not None:
            database.connection.close()


_databases = _Databases()


def open_database(path: str, *, read_only: bool) -> sqlite3.Connection:
    """A connection to the database file at ``path``, as the broker configures it.

    Read-only (``mode=ro``) or read-write (``mode=rw``); never created. The
    caller runs its own transactions (``isolation_level=None``).
    """
    uri = f"{Path(path).absolute().as_uri()}?mode={'ro' if read_only else 'rw'}"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as error:
        raise QueryRefused("unavailable", f"cannot open the database: {error}") from None
    connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_MESSAGE_BYTES)
    # A row is built whole before it is handed over: its columns times the
    # longest value is what one row may cost.
    connection.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, _MAX_COLUMNS)
    connection.execute("PRAGMA trusted_schema = OFF")
    connection.text_factory = _text
    return connection


def run_sqlite(
    path: str,
    statement: str,
    params: Sequence[object],
    *,
    operations: frozenset[str],
    tables: frozenset[tuple[str, ...]] | None,
    functions: frozenset[str],
    limits: QueryLimits,
) -> QueryResult:
    """Run one statement the validator allowed on the SQLite database at ``path``.

    ``operations`` and ``tables`` are the capability's (``tables`` as the
    validator normalizes them: lower-case name tuples, or ``None`` for every
    table), ``functions`` is normally :func:`allowed_functions`. Placeholders
    are ``?``; ``params`` are bound in order. Raises :class:`QueryRefused`.
    Blocking: call it from a worker thread.
    """
    values = checked_params(params)
    read_only = not operations - {"select"}
    database = _databases.get(path, read_only)
    connection = database.connection
    authorizer = _Authorizer(operations, tables, functions)
    clock = _Clock(limits.time_limit)
    try:
        database.set_busy_timeout(limits.time_limit)
        if read_only:
            # the schema's names and the statement in one read transaction
            connection.execute("BEGIN")
            authorizer.schema_names = database.schema_names()
        else:
            # read before the transaction begins: a transaction that has read
            # cannot wait for the write lock (SQLite refuses at once: deadlock)
            authorizer.schema_names = database.schema_names()
            connection.execute("BEGIN")
        connection.set_authorizer(authorizer)
        connection.set_progress_handler(clock, _CLOCK_STEPS)
        try:
            result = _execute(connection, statement, values, limits)
        finally:
            connection.set_progress_handler(None, 0)
            connection.set_authorizer(None)
        if connection.in_transaction:
            connection.execute("COMMIT")
    except (sqlite3.Error, QueryRefused) as error:
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error:
            _databases.discard(path, read_only)
        if isinstance(error, QueryRefused):
            raise
        raise _refusal(error, authorizer, clock, limits) from None
    except BaseException:
        _databases.discard(path, read_only)
        raise
    return result


def _execute(
    connection: sqlite3.Connection, statement: str, values: tuple[object, ...], limits: QueryLimits
) -> QueryResult:
    cursor = connection.execute(statement, values)
    try:
        if cursor.description is None:
            return QueryResult(columns=[], rows=[], rowcount=cursor.rowcount)
        # One row at a time (a step of the statement, in this process):
        # the byte bound is checked after every row, never a batch later.
        rows = capped_rows(cursor.fetchmany, limits, batch_rows=1)
        columns = [column[0] for column in cursor.description]
        return QueryResult(columns=columns, rows=rows, rowcount=len(rows))
    finally:
        cursor.close()


def _refusal(
    error: sqlite3.Error, authorizer: _Authorizer, clock: _Clock, limits: QueryLimits
) -> QueryRefused:
    if authorizer.denied:
        return QueryRefused("authorizer_denied", authorizer.denied)
    if isinstance(error, sqlite3.ProgrammingError):
        # sqlite3's own checks, before or after SQLite compiled the statement
        if str(error).startswith("You can only execute one statement"):
            return QueryRefused("multiple_statements", "the text holds more than one statement")
        return QueryRefused("bad_params", str(error))
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    if code == sqlite3.SQLITE_INTERRUPT and clock.expired:
        return QueryRefused("timeout", f"the statement ran longer than {limits.time_limit} s")
    reason = _ERROR_REASONS.get(code, "database_error")
    return QueryRefused(reason, f"{getattr(error, 'sqlite_errorname', 'SQLite')}: {error}")
