"""The ops the supervisor performs off its loop: ``http`` and ``query``.

The server hands each such request here once it has been authenticated and
parsed. It is validated at once, on the loop (a refusal is answered at
once, as for any op), then performed on a worker (supervisor/brokers/
workers.py), and its reply made on the loop again when the worker is done:
the server's ``answer`` callback gets a function that returns the result or
raises the error, and sends it if the asker is still there to get it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

from capsup.agents import protocol as p
from capsup.agents.errors import CapsupError
from capsup.supervisor.brokers.http import HttpBroker
from capsup.supervisor.brokers.http_op import PreparedHttp, prepare_http
from capsup.supervisor.brokers.postgres_runner import close_pools
from capsup.supervisor.brokers.query_op import PreparedQuery, prepare_query
from capsup.supervisor.brokers.workers import BrokerWorkers
from capsup.supervisor.config import DatabaseConfig
from capsup.supervisor.events import Event
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.principal import Principal
from capsup.validators.sql_scope import analyze

__all__ = ["PARSE_ON_LOOP_BELOW", "Answer", "BrokeredOps"]

#: What the server is given when a brokered op is done: call it for the
#: result (or its error, raised).
Answer = Callable[[Callable[[], dict[str, Any]]], None]

#: Statements at least this long are parsed on a worker before the loop
#: validates them.
PARSE_ON_LOOP_BELOW = 1024


def _raise(error: CapsupError) -> dict[str, Any]:
    raise error


class BrokeredOps:
    """Validates ``http`` and ``query`` on the loop and performs them on workers."""

    def __init__(
        self,
        kernel: Kernel,
        databases: Mapping[str, DatabaseConfig],
        *,
        wake: Callable[[], None],
        emit: Callable[[Event], None],
    ) -> None:
        self._kernel = kernel
        self._databases = dict(databases)
        self._emit = emit
        self._workers = BrokerWorkers(wake)
        #: Made at the first ``http``: loading the system's TLS roots costs
        #: milliseconds that a supervisor without HTTP agents need not spend.
        self._http: HttpBroker | None = None

    def start(
        self,
        principal: Principal,
        args: p.BrokeredArgs,
        *,
        tree: str,
        now: float,
        trace_id: str,
        answer: Answer,
    ) -> None:
        """Validate ``args`` (raising, recorded, if refused) and start it; its
        outcome goes to ``answer`` on the loop, in :meth:`collect`. ``tree``
        names the agent tree the op counts against (its top agent's id).
        Raises :class:`~capsup.agents.errors.Busy` (not recorded: the caller
        does) when too many are in flight."""
        if isinstance(args, p.QueryArgs) and self._parse_apart(principal, args):
            # A long statement is parsed on a worker first (sqlglot takes a
            # millisecond per few hundred bytes): validating it on the loop
            # afterwards finds the analysis cached.
            database = self._databases[args.resource[5:]]
            self._workers.submit(
                tree,
                lambda: analyze(args.statement, database.dialect),
                lambda _: self._start_parsed(principal, args, tree, trace_id, answer),
            )
            return
        self._start(principal, args, tree=tree, now=now, trace_id=trace_id, answer=answer)

    def _parse_apart(self, principal: Principal, args: p.QueryArgs) -> bool:
        """Whether ``args`` is a statement worth parsing off the loop, under a
        capability the caller holds, on a configured database."""
        if len(args.statement) < PARSE_ON_LOOP_BELOW or args.resource[5:] not in self._databases:
            return False
        cap = self._kernel.get(args.capability)
        return cap is not None and cap.holder == principal.id

    def _start_parsed(
        self, principal: Principal, args: p.QueryArgs, tree: str, trace_id: str, answer: Answer
    ) -> None:
        """Continue a query whose statement a worker parsed (on the loop)."""
        try:
            self._start(
                principal, args, tree=tree, now=time.time(), trace_id=trace_id, answer=answer
            )
        except CapsupError as error:
            answer(functools.partial(_raise, error))

    def _start(
        self,
        principal: Principal,
        args: p.BrokeredArgs,
        *,
        tree: str,
        now: float,
        trace_id: str,
        answer: Answer,
    ) -> None:
        prepared: PreparedHttp | PreparedQuery
        if isinstance(args, p.HttpArgs):
            if self._http is None:
                self._http = HttpBroker()
            prepared = prepare_http(
                self._kernel,
                self._http,
                principal,
                args,
                now=now,
                trace_id=trace_id,
                emit=self._emit,
            )
        else:
            prepared = prepare_query(
                self._kernel,
                self._databases,
                principal,
                args,
                now=now,
                trace_id=trace_id,
                emit=self._emit,
            )
        finish: Callable[[Any], dict[str, Any]] = prepared.finish
        self._workers.submit(
            tree, prepared.perform, lambda outcome: answer(lambda: finish(outcome))
        )

    def in_flight(self, tree: str | None = None) -> int:
        """Brokered ops running or queued, of one agent tree or of all."""
        return self._workers.in_flight(tree)

    def collect(self) -> None:
        """Answer every op whose worker is done (on the loop)."""
        self._workers.collect()

    def close(self) -> None:
        """Stop the workers and close the connections kept for reuse."""
        self._workers.close()
        if self._http is not None:
            self._http.close()
        with contextlib.suppress(Exception):  # nothing is left to tell at shutdown
            close_pools()
