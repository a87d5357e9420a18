"""The ``db://`` validator: plain DML on a database the supervisor's config names.

A capability ``db://NAME`` lets its holder run single SELECT, INSERT, UPDATE
or DELETE statements (its operations) on that database, optionally only on
the tables listed in ``tables``. The SQL is parsed with sqlglot in the
database's dialect (see :mod:`capsup.validators.sql_scope`); anything that is
not one plain DML statement over allowed tables with allowed functions denies.
``max_rows`` is normalized here and enforced by the broker when it fetches.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from capsup.validators._common import (
    Normalizer,
    positive_int,
    string_list,
)
from capsup.validators._scheme import SchemeValidator
from capsup.validators.base import (
    ALLOW,
    Decision,
    ResourceError,
    Use,
    deny,
)
from capsup.validators.sql_scope import TableName, analyze
from sqlglot.dialects.dialect import Dialect

__all__ = ["DatabaseValidator"]

_TABLE_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _normalize_table(entry: str) -> str:
    """``Main.Users`` -> ``main.users``; one to three identifier parts."""
    parts = entry.split(".")
    if not 1 <= len(parts) <= 3 or not all(_TABLE_PART.fullmatch(part) for part in parts):
        raise ValueError(f"{entry[:100]!r} is not a table name like name or schema.name")
    return entry.lower()


@functools.lru_cache(maxsize=1024)
def _table_set(tables: tuple[str, ...]) -> frozenset[TableName]:
    return frozenset(tuple(entry.split(".")) for entry in tables)


def _intersection(first: list[str], second: list[str]) -> list[str]:
    return sorted(set(first) & set(second))


_MEET: Mapping[str, Callable[[Any, Any], Any]] = {"tables": _intersection, "max_rows": min}
_NORMALIZERS: Mapping[str, Normalizer] = {
    "tables": lambda key, value: string_list(key, value, _normalize_table),
    "max_rows": positive_int,
}


class DatabaseValidator(SchemeValidator):
    """Single DML statements on configured databases, parsed in their dialect."""

    schemes: ClassVar[frozenset[str]] = frozenset({"db"})
    operations: ClassVar[frozenset[str]] = frozenset({"select", "insert", "update", "delete"})
    kind: ClassVar[str] = "db"
    fold_operation = staticmethod(str.lower)
    constraint_normalizers = _NORMALIZERS
    constraint_meets = _MEET

    def __init__(self, databases: Mapping[str, str] | None = None) -> None:
        """``databases`` maps each database name to its sqlglot dialect ("sqlite", "postgres"...).

        An unknown dialect fails here, at configuration time, rather than as a
        deny on every query.
        """
        self._dialects: dict[str, str] = {}
        for name, dialect in (databases or {}).items():
            if (
                not name
                or not name.isascii()
                or any(ch in name for ch in "/?#@:%")
                or name != name.strip()
            ):
                raise ValueError(f"database name {name!r} is not allowed in a db:// URI")
            Dialect.get_or_raise(dialect)
            self._dialects[name] = dialect

    # -- the algebra -----------------------------------------------------------

    def canonical_resource(self, uri: str) -> str:
        """``db://NAME`` for a configured NAME; nothing after it."""
        if not isinstance(uri, str) or uri[:5].lower() != "db://":
            raise ResourceError("a database resource is db://NAME")
        name = uri[5:]
        if name not in self._dialects:
            raise ResourceError(f"no database named {name[:100]!r} is configured")
        return "db://" + name

    def resource_within(self, inner: str, outer: str) -> bool:
        return inner == outer

    # -- one use -----------------------------------------------------------------

    def decide(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        if use.operation not in self.operations:
            return deny("unknown_operation", f"{use.operation!r} is not a statement kind")
        if use.target != resource:
            return deny("wrong_database", "the statement is for another database")
        if not isinstance(use.statement, str):
            return deny("no_statement", "a db use needs the SQL statement")
        analysis = analyze(use.statement, self._dialects[resource[5:]])
        if analysis.reason:
            return deny(analysis.reason, analysis.detail)
        if analysis.kind != use.operation:
            return deny(
                "operation_mismatch", f"the statement is {analysis.kind}, not {use.operation}"
            )
        tables = constraints.get("tables")
        if tables is not None:
            outside = analysis.tables - _table_set(tuple(tables))
            if outside:
                names = ", ".join(sorted(".".join(name) for name in outside))
                return deny("table_not_allowed", f"not in tables: {names[:300]}")
        return ALLOW
