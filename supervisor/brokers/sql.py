"""The SQL broker: what every database shares when it runs an allowed statement.

The kernel's ``db://`` validator (:mod:`capsup.validators.database`) has
already allowed the statement: one plain DML statement of a kind among the
capability's operations, over tables within ``tables``, calling only
allowlisted functions. A runner then performs it, each with a second line of
its own behind that verdict:

- :mod:`.sqlite_runner`: a read-only connection for select-only
  capabilities and an authorizer that enforces the same rules inside SQLite;
- :mod:`.postgres_runner`: a ``READ ONLY`` transaction for select-only
  capabilities, the statement's kind checked again, and the role's grants.

What both guarantee, and what this module provides for them:

- Parameters are bound by the database, never interpolated, and only of the
  types the protocol carries (:func:`checked_params`). Placeholders are each
  database's own, and the statement text is never rewritten: ``?`` for
  SQLite, ``$1, $2, ...`` for PostgreSQL.
- At most ``max_rows`` rows, of at most about ``max_bytes`` bytes of values
  (by default what one protocol message carries), are fetched. A statement
  that would return more is refused (``too_many_rows``, ``too_many_bytes``)
  rather than cut short, so a partial answer is never taken for a whole one,
  and a write that returns too much is rolled back.
- A statement runs for at most ``time_limit`` seconds, waits for locks
  included.
- A write runs in a transaction of its own, committed only when everything
  succeeded: a refused or failed write leaves the database unchanged.
- Values come back as ``None``, ``bool``, ``int``, ``float``, ``str`` or
  ``bytes`` (what msgpack carries); each runner says how it gets there.
- Error messages name what failed; text the client chose is clipped to
  :data:`MAX_MESSAGE_CHARS` and never carries a connection's password.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from capsup.agents.protocol import MAX_MESSAGE_BYTES
from capsup.supervisor.audit_record import clip as clip_text
from capsup.validators._common import CONTROL_CHARS, MAX_INT

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "MAX_MESSAGE_CHARS",
    "MAX_BYTES",
    "MAX_ROWS",
    "MAX_TIME_LIMIT",
    "REASONS",
    "QueryLimits",
    "QueryRefused",
    "QueryResult",
    "capped_rows",
    "checked_params",
]

#: Why a statement the validator allowed was not performed.
REASONS: Final = frozenset(
    {
        # The capability was revoked, or expired, before the statement ran.
        "revoked",
        # The broker's second line refused what the validator let through:
        # SQLite's authorizer, or the PostgreSQL runner's check of the kind.
        "authorizer_denied",
        # The statement would return more than max_rows rows.
        "too_many_rows",
        # Its rows would hold more than max_bytes bytes of values.
        "too_many_bytes",
        # The time limit ran out (a lock wait included).
        "timeout",
        # A parameter of a type the protocol does not carry, an integer
        # beyond 64 bits, or a count the statement's placeholders refuse.
        "bad_params",
        # More than one statement in the text.
        "multiple_statements",
        # A write on a read-only connection or transaction.
        "read_only",
        # The database cannot be opened or reached.
        "unavailable",
        # Anything else the database refused, in its own words.
        "database_error",
    }
)

#: Rows a statement may return when the capability says nothing, and the most
#: any capability's ``max_rows`` may ask for.
MAX_ROWS: Final = 10_000
#: Seconds a statement may run unless the supervisor's configuration says
#: otherwise, and the most it may say.
DEFAULT_TIME_LIMIT: Final = 5.0
MAX_TIME_LIMIT: Final = 30.0
#: Bytes of values the rows of one result may hold, by default and at most:
#: what one protocol message carries.
MAX_BYTES: Final = MAX_MESSAGE_BYTES
#: Rows fetched at a time while the byte budget is counted.
#: Rows fetched at a time by default: the byte bound is checked between
#: batches, so a batch is what may be held beyond it.
_BATCH_ROWS: Final = 16
#: What a number or a null is counted as against the byte budget.
_SCALAR_BYTES: Final = 9

#: How much client-chosen text (SQL, database messages quoting it) an error carries.
MAX_MESSAGE_CHARS: Final = 512

#: The types a parameter may have: what msgpack decodes a scalar to. Exact
#: types, not subclasses, so no ``__str__`` or ``__index__`` of an agent's
#: choosing runs inside the driver.
_PARAM_TYPES: Final = frozenset({type(None), bool, int, float, str, bytes})


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names, the rows (each a list of plain values), and the row count.

    ``rowcount`` is the number of rows returned for a statement that returns
    rows (a select, or a write with ``RETURNING``), otherwise the number of
    rows the write changed.
    """

    columns: list[str]
    rows: list[list[object]]
    rowcount: int


class QueryRefused(Exception):
    """The statement was not performed, or was rolled back: ``reason`` says why.

    ``reason`` is one of :data:`REASONS`; ``message`` says what failed, with
    client-chosen text clipped and printable.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.reason = reason
        self.message = clip(message)
        super().__init__(f"{reason}: {self.message}")


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """How many rows a statement may return, how big, and for how long it may run.

    Building one outside ``1 <= max_rows <= MAX_ROWS``,
    ``0 < time_limit <= MAX_TIME_LIMIT`` and ``1 <= max_bytes <= MAX_BYTES``
    is an error; :meth:`capped` brings what a capability or the configuration
    asks for within those bounds.
    """

    max_rows: int = MAX_ROWS
    time_limit: float = DEFAULT_TIME_LIMIT
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        if isinstance(self.max_rows, bool) or not 1 <= self.max_rows <= MAX_ROWS:
            raise ValueError(f"max_rows must be 1 to {MAX_ROWS}, not {self.max_rows!r}")
        if not (math.isfinite(self.time_limit) and 0 < self.time_limit <= MAX_TIME_LIMIT):
            raise ValueError(
                f"time_limit must be above 0 and at most {MAX_TIME_LIMIT}, not {self.time_limit!r}"
            )
        if isinstance(self.max_bytes, bool) or not 1 <= self.max_bytes <= MAX_BYTES:
            raise ValueError(f"max_bytes must be 1 to {MAX_BYTES}, not {self.max_bytes!r}")

    @classmethod
    def capped(cls, max_rows: int | None = None, time_limit: float | None = None) -> QueryLimits:
        """Limits for a capability's ``max_rows`` (normalized by the validator:
        a positive int, or absent) and a configured time limit, each capped."""
        rows = MAX_ROWS if max_rows is None else min(max_rows, MAX_ROWS)
        seconds = DEFAULT_TIME_LIMIT if time_limit is None else min(time_limit, MAX_TIME_LIMIT)
        return cls(max_rows=rows, time_limit=seconds)


def clip(text: str) -> str:
    """``text`` made printable and cut to :data:`MAX_MESSAGE_CHARS`."""
    return clip_text(CONTROL_CHARS.sub(" ", text), MAX_MESSAGE_CHARS)


def checked_params(params: Sequence[object]) -> tuple[object, ...]:
    """``params`` as a tuple, or :class:`QueryRefused` (``bad_params``) naming the bad one."""
    if isinstance(params, str | bytes) or not isinstance(params, Sequence):
        raise QueryRefused("bad_params", f"params must be an array, not {type(params).__name__}")
    values = tuple(params)
    for index, value in enumerate(values):
        if type(value) not in _PARAM_TYPES:
            raise QueryRefused(
                "bad_params",
                f"parameter {index + 1} is {type(value).__name__}; "
                "a parameter is null, a boolean, an integer, a float, a string or bytes",
            )
        if type(value) is int and not -MAX_INT - 1 <= value <= MAX_INT:
            raise QueryRefused("bad_params", f"parameter {index + 1} does not fit in 64 bits")
    return values


def capped_rows(
    fetchmany: Callable[[int], Sequence[Sequence[object]]],
    limits: QueryLimits,
    batch_rows: int = _BATCH_ROWS,
) -> list[list[object]]:
    """The rows ``fetchmany`` gives, as lists, or a refusal once they exceed ``limits``.

    Rows are asked for in batches, never more in all than ``max_rows + 1``
    (enough to know there are too many), and the batches stop as soon as the
    values counted exceed ``max_bytes``: a string or bytes counts its length,
    anything else :data:`_SCALAR_BYTES`. So the limits bound what is fetched
    from the database, not only what is returned.
    """
    rows: list[list[object]] = []
    size = 0
    while True:
        wanted = min(batch_rows, limits.max_rows + 1 - len(rows))
        batch = fetchmany(wanted)
        for row in batch:
            rows.append(list(row))
            size += sum(
                len(value) if isinstance(value, str | bytes) else _SCALAR_BYTES for value in row
            )
        if len(rows) > limits.max_rows:
            raise QueryRefused(
                "too_many_rows",
                f"the statement returns more than {limits.max_rows} "
                f"row{'s' if limits.max_rows != 1 else ''}",
            )
        if size > limits.max_bytes:
            raise QueryRefused(
                "too_many_bytes", f"the rows hold more than {limits.max_bytes} bytes of values"
            )
        if len(batch) < wanted:
            return rows
