"""The ``query`` op: the kernel's check on the loop, the statement on a worker.

1. On the loop (:func:`prepare_query`): the statement's kind (``select``,
   ``insert``, ``update``, ``delete``) is the operation the kernel
   validates, with the database's validator deciding the statement itself
   (one plain DML statement, tables within ``tables``, functions
   allowlisted), its audit record and rate limits. The bounds are the
   capability's ``max_rows`` within the broker's caps.
2. On a worker (:meth:`PreparedQuery.perform`): the database's runner
   performs it with ``params`` bound, behind a second line of its own
   (supervisor/brokers/sqlite_runner.py, postgres_runner.py).
3. On the loop (:meth:`PreparedQuery.finish`): the ``database_query`` record
   and the reply, or the error (supervisor/brokers/effects.py).

Which database a ``db://NAME`` is, and how it is reached, is the
supervisor's configuration (``[databases.NAME] url``): ``sqlite:///PATH``
or ``postgresql://...``. The URL, and any password in it, never leaves the
supervisor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from capsup.agents import protocol as p
from capsup.agents.capability import Capability
from capsup.supervisor.brokers.effects import EffectRecorder, clip
from capsup.supervisor.brokers.postgres_runner import run_postgres
from capsup.supervisor.brokers.sql import QueryLimits, QueryRefused, QueryResult
from capsup.supervisor.brokers.sqlite_runner import allowed_functions, run_sqlite
from capsup.supervisor.config import DatabaseConfig, sqlite_path
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.principal import Principal
from capsup.validators import Use
from capsup.validators.sql_scope import analyze

__all__ = ["PreparedQuery", "prepare_query"]

_OP: Final = p.Op.QUERY.value


@dataclass(frozen=True, slots=True)
class _Statement:
    """What a worker needs: where, what, and within which bounds."""

    database: DatabaseConfig
    statement: str
    params: tuple[p.SqlValue, ...]
    operations: frozenset[str]
    tables: frozenset[tuple[str, ...]] | None
    limits: QueryLimits


class PreparedQuery:
    """One validated ``query``, ready for a worker."""

    def __init__(
        self, kernel: Kernel, statement: _Statement, cap: Capability, record: EffectRecorder
    ) -> None:
        self._kernel = kernel
        self._statement = statement
        self._cap = cap
        self._record = record
        self._started = time.perf_counter()

    def perform(self) -> QueryResult:
        """Run the statement (on a worker: it blocks), unless the capability
        ended since the loop validated it (the job may have waited)."""
        if not self._kernel.is_live(self._cap.id, time.time()):
            raise QueryRefused("revoked", f"{self._cap.id} ended before the statement ran")
        s = self._statement
        if s.database.dialect == "sqlite":
            return run_sqlite(
                sqlite_path(s.database.url),
                s.statement,
                s.params,
                operations=s.operations,
                tables=s.tables,
                functions=allowed_functions(),
                limits=s.limits,
            )
        if s.database.dialect == "postgres":
            return run_postgres(
                s.database.url, s.statement, s.params, operations=s.operations, limits=s.limits
            )
        raise QueryRefused("unavailable", f"capsup has no broker for {s.database.dialect}")

    def finish(self, outcome: QueryResult | BaseException) -> dict[str, Any]:
        """Record the outcome and return the reply's result, or raise its error
        (on the loop); an exception that is not a refusal is a bug, re-raised."""
        seconds = round(time.perf_counter() - self._started, 6)
        if isinstance(outcome, QueryRefused):
            self._record.refused(outcome.reason, outcome.message, self._cap, seconds=seconds)
        if isinstance(outcome, BaseException):
            raise outcome
        self._record.done(
            self._cap, rows=len(outcome.rows), rowcount=outcome.rowcount, seconds=seconds
        )
        return {"columns": outcome.columns, "rows": outcome.rows, "rowcount": outcome.rowcount}


def prepare_query(
    kernel: Kernel,
    databases: Mapping[str, DatabaseConfig],
    principal: Principal,
    args: p.QueryArgs,
    *,
    now: float,
    trace_id: str,
    emit: Callable[[Event], None],
) -> PreparedQuery:
    """Validate ``args`` for ``principal`` and make the statement a worker runs.

    Raises :class:`~capsup.agents.errors.CapsupError`: the kernel's refusals
    (recorded by the kernel) or the broker's (a refused ``database_query``)."""
    database = databases.get(args.resource[5:]) if args.resource[:5] == "db://" else None
    # The kind is the operation validated; a statement that cannot be
    # analysed is validated as a select, and the validator refuses it with
    # its reason. Parsing is dear, so it waits until the capability is known
    # to be the caller's: a request under a stolen or made-up id is refused
    # by the kernel without it.
    held = kernel.get(args.capability)
    kind = ""
    if database is not None and held is not None and held.holder == principal.id:
        kind = analyze(args.statement, database.dialect).kind
    operation = kind or "select"
    cap = kernel.validate(
        principal,
        args.capability,
        Use(operation, args.resource, statement=args.statement),
        now=now,
        trace_id=trace_id,
    )
    record = EffectRecorder(
        EventType.DATABASE_QUERY,
        _OP,
        principal=principal,
        capability_id=args.capability,
        operation=operation,
        # The statement clipped; the parameters counted, never shown.
        detail={
            "database": clip(args.resource),
            "statement": clip(args.statement),
            "params": len(args.params),
        },
        now=now,
        trace_id=trace_id,
        emit=emit,
    )
    if database is None:  # the validator knows only configured databases: not expected
        record.refused("unavailable", f"no database {clip(args.resource, 100)!r}", cap)
    tables = cap.constraints.get("tables")
    statement = _Statement(
        database=database,
        statement=args.statement,
        params=args.params,
        operations=cap.operations,
        tables=None if tables is None else frozenset(tuple(t.split(".")) for t in tables),
        limits=QueryLimits.capped(max_rows=cap.constraints.get("max_rows")),
    )
    return PreparedQuery(kernel, statement, cap, record)
