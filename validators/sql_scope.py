"""What one SQL statement does: its kind, every table it touches, and why not.

The database validator asks one question of a statement: which real tables
does it read or write? Answering it by collecting table names and subtracting
CTE names is wrong: ``SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s), s``
reads the real table ``s`` in the outer scope. So the walk here carries the
CTE names visible at each point (a CTE is visible to later CTEs of its WITH
and to the body; to itself only under RECURSIVE) and a table reference is a
CTE only where such a name is in scope and unqualified. DML targets are always
real tables. When in doubt the reference counts as a real table, which can
only make the validator stricter.

Statements are parsed with sqlglot in the database's dialect and the verdict
is cached (bounded LRU keyed by SQL text and dialect), so a repeated query
costs a dictionary lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import sqlglot
from capsup.validators._common import CONTROL_CHARS, has_control_char
from capsup.validators.base import Refusal
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect, NormalizationStrategy
from sqlglot.errors import SqlglotError

__all__ = [
    "MAX_SQL_LENGTH",
    "SAFE_FUNCTION_CALLS",
    "Analysis",
    "TableName",
    "analyze",
    "safe_functions",
]

#: Longer statements are refused before parsing, which bounds parse time and
#: what one cache entry can hold.
MAX_SQL_LENGTH = 65536
_CACHE_SIZE = 4096

#: A table as a tuple of normalized parts: ("users",) or ("main", "users").
TableName = tuple[str, ...]

_KINDS: dict[type[exp.Expr], str] = {
    exp.Select: "select",
    exp.Union: "select",
    exp.Intersect: "select",
    exp.Except: "select",
    exp.Insert: "insert",
    exp.Update: "update",
    exp.Delete: "delete",
}

#: Nodes that are statements (or make a query write) and may not appear
#: inside the one allowed statement. exp.DDL covers Insert and Create.
_NESTED_FORBIDDEN: tuple[type[exp.Expr], ...] = (
    exp.DML,
    exp.DDL,
    exp.Command,
    exp.Drop,
    exp.Alter,
    exp.Pragma,
    exp.Attach,
    exp.Detach,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Describe,
    exp.Set,
    exp.Use,
    exp.Into,
    exp.Analyze,
    exp.Grant,
    exp.Kill,
    exp.LoadData,
    exp.TruncateTable,
    exp.Comment,
    exp.Execute,
    exp.Declare,
)

#: sqlglot models some operators (AND, OR, ``->``, ``@>``, ``~``) as functions;
#: they only combine operands that are checked on their own.
_OPERATORS = (exp.Binary, exp.Connector)

#: Function calls a statement may make, written as SQL. They are parsed in
#: each dialect to learn which sqlglot node each becomes; any other function,
#: known to sqlglot or not (load_extension, readfile, pg_read_file, sleep,
#: randomblob ...), denies.
SAFE_FUNCTION_CALLS = (
    "count(*)", "count(x)", "sum(x)", "avg(x)", "min(x)", "max(x)", "total(x)",
    "group_concat(x)", "string_agg(x, ',')", "array_agg(x)",
    "min(x, y)", "max(x, y)", "abs(x)", "sign(x)", "round(x)", "round(x, 2)",
    "coalesce(x, y)", "ifnull(x, y)", "nullif(x, y)", "iif(x, y, z)",
    "CASE WHEN x THEN y ELSE z END", "EXISTS (SELECT 1)",
    "lower(x)", "upper(x)", "length(x)", "substr(x, 1, 2)", "substring(x, 1, 2)",
    "trim(x)", "ltrim(x)", "rtrim(x)", "replace(x, 'a', 'b')", "instr(x, 'a')",
    "concat(x, y)", "hex(x)", "typeof(x)", "unicode(x)", "char(65)",
    "printf('%d', x)", "format('%s', x)", "like(x, y)", "glob(x, y)",
    "CAST(x AS INTEGER)", "date(x)", "time(x)", "datetime(x)", "julianday(x)",
    "strftime('%Y', x)", "unixepoch(x)", "CURRENT_TIMESTAMP", "CURRENT_DATE", "now()",
    "date_trunc('day', x)", "EXTRACT(year FROM x)",
    "json(x)", "json_extract(x, '$.a')", "json_array(x)", "json_object('a', x)",
    "json_array_length(x)", "json_type(x)", "json_valid(x)",
    "row_number() OVER ()", "rank() OVER ()", "dense_rank() OVER ()",
    "lag(x) OVER ()", "lead(x) OVER ()",
    "x COLLATE NOCASE", "ARRAY[1, 2]",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Analysis:
    """A statement's kind and tables, or the reason it is refused outright."""

    kind: str = ""
    tables: frozenset[TableName] = frozenset()
    reason: str = ""
    detail: str = ""


class _Refused(Refusal):
    """The statement is refused; :func:`analyze` turns this into its verdict."""


@functools.lru_cache(maxsize=_CACHE_SIZE)
def analyze(sql: str, dialect: str) -> Analysis:
    """Parse ``sql`` in ``dialect`` and say what it does; never raises."""
    if len(sql) > MAX_SQL_LENGTH:
        return Analysis(reason="statement_too_long", detail=f"more than {MAX_SQL_LENGTH}")
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except Exception as error:  # ParseError, TokenError, RecursionError ...
        # sqlglot's messages quote the SQL with ANSI underlining: keep them printable
        message = CONTROL_CHARS.sub(" ", f"{type(error).__name__}: {error}")
        return Analysis(reason="unparseable", detail=message[:300])
    if not statements:
        return Analysis(reason="empty_statement", detail="no SQL statement")
    if len(statements) != 1:
        return Analysis(reason="multiple_statements", detail=f"{len(statements)} statements")
    try:
        return _analyze_statement(statements[0], dialect)
    except _Refused as refused:
        return Analysis(reason=refused.reason, detail=str(refused))
    except RecursionError:
        return Analysis(reason="unparseable", detail="the statement is nested too deeply")


def _analyze_statement(root: exp.Expr, dialect: str) -> Analysis:
    kind = _KINDS.get(type(root))
    if kind is None:
        raise _Refused("not_dml", f"{type(root).__name__} is not a plain DML statement")
    if isinstance(root, exp.Insert):
        _check_insert(root)
    walker = _Walker(dialect, root)
    walker.visit(root, frozenset())
    return Analysis(kind=kind, tables=frozenset(walker.tables))


def _check_insert(insert: exp.Insert) -> None:
    """An INSERT that may overwrite rows is also an UPDATE or DELETE: refuse it."""
    if str(insert.args.get("alternative") or "").upper() == "REPLACE":
        raise _Refused("upsert", "INSERT OR REPLACE deletes existing rows")
    conflict = insert.args.get("conflict")
    if isinstance(conflict, exp.OnConflict):
        action = str(conflict.args.get("action") or "").upper()
        if conflict.args.get("duplicate") or "NOTHING" not in action:
            raise _Refused("upsert", "an INSERT that updates on conflict")
    if insert.args.get("overwrite"):
        raise _Refused("upsert", "INSERT OVERWRITE replaces existing rows")


class _Walker:
    """Walks a statement with the CTE names in scope, collecting real tables."""

    def __init__(self, dialect: str, root: exp.Expr) -> None:
        self.strategy = Dialect.get_or_raise(dialect).normalization_strategy
        self.root = root
        self.tables: set[TableName] = set()
        self.classes, self.names = safe_functions(dialect)

    def visit(self, node: exp.Expr, ctes: frozenset[str]) -> None:
        if node is not self.root and isinstance(node, _NESTED_FORBIDDEN):
            raise _Refused("nested_statement", f"{type(node).__name__} inside the statement")
        if isinstance(node, exp.Func) and not isinstance(node, _OPERATORS):
            self._check_function(node)
        elif isinstance(node, exp.Table):
            self._table(node, ctes)
        elif isinstance(node, exp.In):
            self._in_table(node, ctes)
        if isinstance(node, exp.Insert | exp.Update | exp.Delete):
            self._dml_target(node)
        with_ = node.args.get("with_") or node.args.get("with")
        if isinstance(with_, exp.With):
            ctes = self._with(with_, ctes)
        for child in _children(node, skip=with_):
            self.visit(child, ctes)

    def _with(self, with_: exp.With, outer: frozenset[str]) -> frozenset[str]:
        """Visit the CTE bodies; return the names visible to the statement body."""
        recursive = bool(with_.args.get("recursive"))
        visible = set(outer)
        for cte in with_.expressions:
            name = self._fold(cte.args["alias"].this) if cte.args.get("alias") else ""
            if recursive and name:
                visible.add(name)
            self.visit(cte.this, frozenset(visible))
            if name:
                visible.add(name)
        return frozenset(visible)

    def _table(self, table: exp.Table, ctes: frozenset[str]) -> None:
        if isinstance(table.this, exp.Func):
            return  # a table-valued function; its Func node is checked on the way down
        if not isinstance(table.this, exp.Identifier):
            # A name sqlglot did not split into identifiers: a four-part
            # linked-server name (a Dot), a placeholder or a parameter. What
            # it reads cannot be named, so it cannot be allowed.
            raise _Refused("bad_table_name", f"{type(table.this).__name__} as a table name")
        name = self._name(table)
        if len(name) == 1 and name[0] in ctes:
            return
        self.tables.add(name)

    def _in_table(self, node: exp.In, ctes: frozenset[str]) -> None:
        """``x IN name`` reads the table (or CTE) ``name`` in SQLite; sqlglot
        parses the name as a column, so it is turned back into a table here."""
        field = node.args.get("field")
        if field is None or isinstance(field, exp.Func):
            return  # no table; a table-valued function is checked as a function
        if not isinstance(field, exp.Column):
            raise _Refused("unparseable", f"IN {type(field).__name__} is not understood")
        name = self._parts(field.parts)
        if not (len(name) == 1 and name[0] in ctes):
            self.tables.add(name)

    def _dml_target(self, node: exp.Insert | exp.Update | exp.Delete) -> None:
        """The table written is always a real table, whatever CTE is in scope."""
        target = node.this
        if isinstance(target, exp.Schema):
            target = target.this
        if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier):
            raise _Refused("not_dml", "the statement does not write a named table")
        self.tables.add(self._name(target))

    def _name(self, table: exp.Table) -> TableName:
        return self._parts(table.parts)

    def _parts(self, identifiers: list[exp.Expr]) -> TableName:
        parts = tuple(self._fold(part) for part in identifiers)
        for part in parts:
            if not part or any(ch in part for ch in "./\\:") or has_control_char(part):
                raise _Refused("bad_table_name", f"table name {part[:100]!r} is not allowed")
        return parts

    def _fold(self, identifier: exp.Expr) -> str:
        """An identifier as the database compares it, lower-cased where that is exact.

        ``tables`` entries are unquoted names, folded to lower case, so they
        can only name what an unquoted name names. A quoted identifier that
        differs from its own unquoted reading (``"Users"`` in PostgreSQL,
        ``"users"`` in Snowflake or Oracle, which fold unquoted names to upper
        case) is another table: it keeps its quotes, which no entry has, so
        it can only be denied.
        """
        if not isinstance(identifier, exp.Identifier):
            return identifier.name.lower()
        text: str = identifier.this
        strategy = self.strategy
        if strategy is NormalizationStrategy.CASE_INSENSITIVE:
            return text.lower()
        if not identifier.quoted:
            return text.lower() if strategy is not NormalizationStrategy.CASE_SENSITIVE else text
        unquoted_form = (
            text.upper() if strategy is NormalizationStrategy.UPPERCASE else text.lower()
        )
        return text.lower() if text == unquoted_form else f'"{text}"'

    def _check_function(self, func: exp.Func) -> None:
        if isinstance(func, exp.Anonymous):
            name = func.name.lower()
            if name not in self.names:
                raise _Refused("function_not_allowed", f"function {name[:100]!r} is not allowed")
        elif type(func) not in self.classes:
            raise _Refused("function_not_allowed", f"function {func.key!r} is not allowed")


def _children(node: exp.Expr, skip: object) -> Iterator[exp.Expr]:
    for value in node.args.values():
        if value is skip:
            continue
        if isinstance(value, exp.Expr):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, exp.Expr))


@functools.cache
def safe_functions(dialect: str) -> tuple[frozenset[type[exp.Expr]], frozenset[str]]:
    """The sqlglot node classes and anonymous function names that are allowed in ``dialect``.

    Derived by parsing :data:`SAFE_FUNCTION_CALLS` in the dialect, so the
    list is written once as SQL and holds in every dialect sqlglot knows.
    """
    classes: set[type[exp.Expr]] = set()
    names: set[str] = set()
    for call in SAFE_FUNCTION_CALLS:
        try:
            parsed = sqlglot.parse_one(f"SELECT {call}", read=dialect)
        except SqlglotError:
            continue
        for node in parsed.walk():
            if isinstance(node, exp.Anonymous):
                names.add(node.name.lower())
            elif isinstance(node, exp.Func):
                classes.add(type(node))
    return frozenset(classes), frozenset(names)
