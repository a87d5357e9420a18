"""PostgreSQL: one allowed statement in a transaction of its own, with psycopg 3.

PostgreSQL offers a client no authorizer hook, so behind the validator's
verdict stand:

1. The statement's kind, checked again against the operations (the
   validator's own analysis, cached, so this costs a lookup).
2. A ``READ ONLY`` transaction when the capability allows only ``select``:
   the server refuses every write, ``nextval()`` and ``SELECT ... FOR
   UPDATE`` included.
3. One statement: the statement is always sent with the extended protocol,
   which refuses a second (a select as a server-side cursor's ``DECLARE``, a
   write in pipeline mode: see :func:`_write`).
4. ``statement_timeout`` for the transaction (``set_config(..., true)``, so
   it ends with it), lock waits included. It bounds each statement the broker
   sends: a select's ``DECLARE`` and each ``FETCH`` of its rows.
5. The privileges of the role in the URL: grant it only what capabilities
   over that database may use.

Placeholders are PostgreSQL's own, ``$1, $2, ...``: psycopg's raw cursors
send the statement as written and the parameters apart (server-side binding),
so ``%`` is an ordinary character. Too few parameters is ``bad_params``; the
server ignores parameters beyond the last placeholder.

A select is read through a server-side cursor, ``max_rows + 1`` rows at most,
so the cap bounds what leaves the server; its columns are known even when it
returns no row. A write runs as one ``execute``, which reports the rows it
changed; what its ``RETURNING`` clause returns is read whole and then capped
(a write's result is bounded by the write, and by the time limit).

Values come back as ``None``, ``bool``, ``int`` (``int2``/``int4``/``int8``/
``oid``), ``float`` (``float4``/``float8``), ``str`` (``text``, ``varchar``,
``char``, ``name``) and ``bytes`` (``bytea``). Every other type, numeric,
date and time types, interval, uuid, json, arrays, enums, ranges..., comes
back as ``str``: the text PostgreSQL writes for it (under the session's
``DateStyle`` and ``TimeZone``), so nothing is rounded or reinterpreted
(``numeric`` ``1.50`` is ``"1.50"``).

Connections are pooled per URL, :data:`MAX_IDLE` idle at most. Between two
calls a pooled connection has no open transaction; one that is broken or
cannot be brought back to that state is closed. A connection that was idle
and turns out dead (the server restarted) is replaced once, before the
statement is sent. Error messages never carry the URL's password.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

import psycopg
from capsup.supervisor.brokers.sql import (
    QueryLimits,
    QueryRefused,
    QueryResult,
    capped_rows,
    checked_params,
)
from capsup.validators.sql_scope import analyze
from psycopg import RawCursor, RawServerCursor, postgres
from psycopg.adapt import AdaptersMap
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader

__all__ = ["MAX_IDLE", "close_pools", "run_postgres"]

#: Idle connections kept per URL; more are closed when they come back.
MAX_IDLE: Final = 8
#: libpq's smallest connect timeout, in seconds.
_MIN_CONNECT_TIMEOUT: Final = 2

#: Types loaded as psycopg loads them; every other type is loaded as text.
_NATIVE_TYPES: Final = frozenset(
    {"bool", "int2", "int4", "int8", "oid", "float4", "float8"}
    | {"text", "varchar", "bpchar", "name", '"char"', "bytea"}
)

#: SQLSTATE -> the refusal's reason; any other error is ``database_error``.
_SQLSTATE_REASONS: Final[Mapping[str, str]] = {
    "57014": "timeout",  # query_canceled: statement_timeout
    "55P03": "timeout",  # lock_not_available
    "25006": "read_only",  # read_only_sql_transaction
    "08P01": "bad_params",  # protocol_violation: parameters that fit no placeholder
}


def _adapters() -> AdaptersMap:
    """psycopg's adapters, with every type but the native ones loaded as text.

    A type psycopg does not know (an enum, a composite, a domain's own OID) is
    loaded as text already.
    """
    adapters = AdaptersMap(psycopg.adapters)
    for info in postgres.types:
        if info.name not in _NATIVE_TYPES:
            adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:
            adapters.register_loader(info.array_oid, TextLoader)
    return adapters


_ADAPTERS: Final = _adapters()


class _Pool:
    """Idle connections to one URL, and the secrets its messages must not show."""

    def __init__(self, url: str) -> None:
        try:
            password = conninfo_to_dict(url).get("password")
        except psycopg.Error:
            raise QueryRefused("unavailable", "the database URL cannot be parsed") from None
        self.url = url
        self.secrets = tuple(secret for secret in (url, str(password or "")) if secret)
        self.idle: list[psycopg.Connection[Any]] = []
        self.lock = threading.Lock()

    def take(self) -> psycopg.Connection[Any] | None:
        with self.lock:
            return self.idle.pop() if self.idle else None

    def connect(self, limits: QueryLimits) -> psycopg.Connection[Any]:
        try:
            connection = psycopg.Connection.connect(
                self.url,
                autocommit=False,
                prepare_threshold=None,
                context=_ADAPTERS,
                cursor_factory=RawCursor,
                connect_timeout=max(_MIN_CONNECT_TIMEOUT, math.ceil(limits.time_limit)),
            )
        except psycopg.Error as error:
            raise _unreachable(self.scrub(str(error))) from None
        connection.server_cursor_factory = RawServerCursor
        return connection

    def give(self, connection: psycopg.Connection[Any]) -> None:
        """Keep ``connection`` for the next call if it is sound and there is room."""
        if not connection.broken and connection.info.transaction_status == TransactionStatus.IDLE:
            with self.lock:
                if len(self.idle) < MAX_IDLE:
                    self.idle.append(connection)
                    return
        connection.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()

    def scrub(self, message: str) -> str:
        for secret in self.secrets:
            message = message.replace(secret, "***")
        return message


_pools: dict[str, _Pool] = {}
_pools_lock = threading.Lock()


def _pool(url: str) -> _Pool:
    with _pools_lock:
        pool = _pools.get(url)
        if pool is None:
            pool = _pools[url] = _Pool(url)
        return pool


def close_pools() -> None:
    """Close every idle pooled connection (at the supervisor's shutdown)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


def run_postgres(
    url: str,
    statement: str,
    params: Sequence[object],
    *,
    operations: frozenset[str],
    limits: QueryLimits,
) -> QueryResult:
    """Run one statement the validator allowed on the PostgreSQL database at ``url``.

    ``operations`` are the capability's. Placeholders are ``$1, $2, ...``;
    ``params`` are bound in order. Raises :class:`QueryRefused`. Blocking:
    call it from a worker thread.
    """
    values = checked_params(params)
    analysis = analyze(statement, "postgres")
    if analysis.reason:
        raise QueryRefused("authorizer_denied", f"{analysis.reason}: {analysis.detail}")
    if analysis.kind not in operations:
        raise QueryRefused(
            "authorizer_denied", f"the statement is {analysis.kind}, not among the operations"
        )
    pool = _pool(url)
    connection = _begin(pool, read_only=not operations - {"select"}, limits=limits)
    try:
        if analysis.kind == "select":
            result = _select(connection, statement, values, limits)
        else:
            result = _write(connection, statement, values, limits)
        connection.commit()
    except (psycopg.Error, QueryRefused) as error:
        _rollback(connection)
        if isinstance(error, QueryRefused):
            raise
        raise _refusal(error, pool) from None
    except BaseException:
        connection.close()
        raise
    finally:
        pool.give(connection)
    return result


def _begin(pool: _Pool, *, read_only: bool, limits: QueryLimits) -> psycopg.Connection[Any]:
    """A connection in a new transaction with the time limit set, ready for the statement.

    A pooled connection that fails here (most likely it died while idle, as
    when the server restarts) is replaced, once, by a new one: nothing of the
    statement has been sent yet.
    """
    connection = pool.take()
    if connection is not None:
        try:
            _start(connection, read_only, limits)
        except psycopg.Error:
            connection.close()
        else:
            return connection
    connection = pool.connect(limits)
    try:
        _start(connection, read_only, limits)
    except psycopg.Error as error:
        connection.close()
        raise _refusal(error, pool) from None
    return connection


def _start(connection: psycopg.Connection[Any], read_only: bool, limits: QueryLimits) -> None:
    """The transaction's settings, all local to it. The validator lexes SQL
    as PostgreSQL does with ``standard_conforming_strings`` on (a backslash
    is an ordinary character in a string); a server or role configured
    otherwise would end the string where the validator does not, hiding
    tables and functions after it, so the setting is pinned."""
    connection.read_only = read_only
    milliseconds = str(max(1, int(limits.time_limit * 1000)))
    connection.execute(
        "SELECT set_config('statement_timeout', $1, true),"
        " set_config('standard_conforming_strings', 'on', true),"
        " set_config('backslash_quote', 'safe_encoding', true)",
        [milliseconds],
    )


def _select(
    connection: psycopg.Connection[Any],
    statement: str,
    values: tuple[object, ...],
    limits: QueryLimits,
) -> QueryResult:
    with connection.cursor(name="capsup_query") as cursor:
        cursor.execute(statement, values)
        columns = [column.name for column in cursor.description or ()]
        rows = capped_rows(cursor.fetchmany, limits)
    return QueryResult(columns=columns, rows=rows, rowcount=len(rows))


def _write(
    connection: psycopg.Connection[Any],
    statement: str,
    values: tuple[object, ...],
    limits: QueryLimits,
) -> QueryResult:
    with connection.cursor() as cursor:
        # Pipeline mode makes psycopg use the extended protocol even without
        # parameters; otherwise it sends a parameterless statement as a
        # simple query, which runs every statement in the text.
        with connection.pipeline():
            cursor.execute(statement, values)
        if cursor.description is None:
            return QueryResult(columns=[], rows=[], rowcount=cursor.rowcount)
        columns = [column.name for column in cursor.description]
        rows = capped_rows(cursor.fetchmany, limits)
    return QueryResult(columns=columns, rows=rows, rowcount=len(rows))


def _rollback(connection: psycopg.Connection[Any]) -> None:
    try:
        connection.rollback()
    except psycopg.Error:
        connection.close()


def _refusal(error: psycopg.Error, pool: _Pool) -> QueryRefused:
    message = pool.scrub(str(error))
    reason = _SQLSTATE_REASONS.get(error.sqlstate or "")
    if reason is None:
        reason = "unavailable" if isinstance(error, psycopg.OperationalError) else "database_error"
    if reason == "unavailable":
        return _unreachable(message)
    return QueryRefused(reason, f"{error.sqlstate or type(error).__name__}: {message}")


def _unreachable(detail: str) -> QueryRefused:
    """The refusal for a database that cannot be reached or refused the
    supervisor's login. What libpq said names the server's address and the
    role, which are the operator's to know: it goes to the supervisor's
    stderr, and the agent (and the trail) get a sentence without them."""
    print(f"capsup: database unavailable: {detail}", file=sys.stderr, flush=True)
    return QueryRefused(
        "unavailable",
        "the database cannot be reached, or refused the supervisor's connection "
        "(the supervisor's log says why)",
    )
