"""Adversarial corpus for the db:// validator: statement kinds, scopes, functions."""

from __future__ import annotations

from typing import Any

import pytest
from capsup.validators import DatabaseValidator, ResourceError, Use
from capsup.validators.sql_scope import analyze

DB = DatabaseValidator(
    {"main": "sqlite", "pg": "postgres", "other": "sqlite", "ts": "tsql", "sf": "snowflake"}
)
ALLOW = "allow"
T = {"tables": ["orders", "users"]}
MAIN = "db://main"
PG = "db://pg"
TS = "db://ts"
SF = "db://sf"  # folds unquoted names to upper case

# (database, operation, sql, constraints, expected decision or reason)
CASES: list[tuple[str, str, object, dict[str, Any], str]] = [
    # -- allowed -------------------------------------------------------------
    (MAIN, "select", "SELECT * FROM users", T, ALLOW),
    (MAIN, "select", "select id from Users where id = ?", T, ALLOW),
    (MAIN, "select", "SELECT u.id, o.total FROM users u JOIN orders o ON o.uid = u.id", T, ALLOW),
    (MAIN, "select", 'SELECT * FROM "users"', T, ALLOW),
    (MAIN, "select", "SELECT * FROM [users]", T, ALLOW),
    (MAIN, "select", "SELECT * FROM `USERS`", T, ALLOW),
    (MAIN, "select", "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent", T, ALLOW),
    (MAIN, "select", "WITH users AS (SELECT * FROM users) SELECT * FROM users", T, ALLOW),
    (MAIN, "select", "WITH secrets AS (SELECT 1 AS x) SELECT * FROM secrets", T, ALLOW),
    (
        MAIN,
        "select",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) "
        "SELECT x FROM c",
        T,
        ALLOW,
    ),
    (
        MAIN,
        "select",
        "SELECT count(*), max(total), coalesce(name, '') FROM users GROUP BY name",
        T,
        ALLOW,
    ),
    (MAIN, "select", "SELECT * FROM users WHERE id IN (SELECT uid FROM orders)", T, ALLOW),
    (MAIN, "select", "SELECT * FROM users WHERE id IN orders", T, ALLOW),
    (MAIN, "select", "WITH ids AS (SELECT 1) SELECT * FROM users WHERE id IN ids", T, ALLOW),
    (MAIN, "select", "SELECT * FROM users WHERE id IN (1, 2)", T, ALLOW),
    (MAIN, "select", "SELECT id FROM users UNION SELECT id FROM orders", T, ALLOW),
    (MAIN, "select", "SELECT * FROM users WHERE id = 1 OR 1=1", T, ALLOW),
    (MAIN, "select", "SELECT * FROM users WHERE id = 1 /* ; DROP TABLE users */", T, ALLOW),
    (MAIN, "select", "SELECT * FROM users -- ; DROP TABLE users", T, ALLOW),
    (MAIN, "select", "SELECT * FROM users;", T, ALLOW),
    (MAIN, "select", "SELECT row_number() OVER (ORDER BY id), lower(name) FROM users", T, ALLOW),
    (MAIN, "select", "SELECT json_extract(data, '$.a'), data ->> '$.b' FROM users", T, ALLOW),
    (MAIN, "select", "SELECT CASE WHEN id > 1 THEN 'a' ELSE 'b' END FROM users", T, ALLOW),
    (MAIN, "select", "SELECT 1", T, ALLOW),
    (MAIN, "select", "SELECT * FROM anything_at_all", {}, ALLOW),
    (MAIN, "insert", "INSERT INTO orders (uid, total) VALUES (1, 2)", T, ALLOW),
    (MAIN, "insert", "INSERT INTO orders SELECT * FROM users", T, ALLOW),
    (MAIN, "insert", "INSERT OR IGNORE INTO users VALUES (1)", T, ALLOW),
    (MAIN, "insert", "INSERT INTO users VALUES (1) ON CONFLICT DO NOTHING", T, ALLOW),
    (MAIN, "update", "UPDATE users SET name = 'x' WHERE id = 1", T, ALLOW),
    (
        MAIN,
        "update",
        "UPDATE orders SET total = u.id FROM users u WHERE u.id = orders.uid",
        T,
        ALLOW,
    ),
    (MAIN, "delete", "DELETE FROM orders WHERE id = 1", T, ALLOW),
    (MAIN, "delete", "DELETE FROM orders WHERE uid IN (SELECT id FROM users)", T, ALLOW),
    (MAIN, "select", "SELECT * FROM main.users", {"tables": ["main.users"]}, ALLOW),
    (PG, "select", "SELECT * FROM USERS", T, ALLOW),
    (PG, "select", 'SELECT * FROM "users"', T, ALLOW),
    # -- tables outside `tables` --------------------------------------------
    (MAIN, "select", "SELECT * FROM secrets", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM users JOIN secrets ON 1", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM users, secrets", T, "table_not_allowed"),
    (
        MAIN,
        "select",
        "SELECT * FROM users WHERE id IN (SELECT id FROM secrets)",
        T,
        "table_not_allowed",
    ),
    # SQLite: `x IN table` reads the table (sqlglot parses the name as a column)
    (MAIN, "select", "SELECT * FROM users WHERE id IN secrets", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM users WHERE id NOT IN main.secrets", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM users WHERE id IN json_each('[1]')", T, "function_not_allowed"),
    (MAIN, "select", "SELECT (SELECT pw FROM secrets LIMIT 1) FROM users", T, "table_not_allowed"),
    (
        MAIN,
        "select",
        "SELECT * FROM users WHERE EXISTS (SELECT 1 FROM secrets)",
        T,
        "table_not_allowed",
    ),
    (
        MAIN,
        "select",
        "SELECT * FROM users ORDER BY (SELECT pw FROM secrets)",
        T,
        "table_not_allowed",
    ),
    (MAIN, "select", "SELECT * FROM (SELECT * FROM secrets) AS users", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM secrets AS users", T, "table_not_allowed"),
    (MAIN, "select", "SELECT id FROM users UNION SELECT pw FROM secrets", T, "table_not_allowed"),
    # CTE scope tricks: a CTE named like an allowed table, reading a forbidden one
    (
        MAIN,
        "select",
        "WITH users AS (SELECT * FROM secrets) SELECT * FROM users",
        T,
        "table_not_allowed",
    ),
    (
        MAIN,
        "select",
        "WITH x AS (SELECT * FROM secrets) SELECT * FROM users",
        T,
        "table_not_allowed",
    ),
    # the CTE is visible only inside the subquery; the outer `secrets` is the real table
    (
        MAIN,
        "select",
        "SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets), secrets",
        {"tables": []},
        "table_not_allowed",
    ),
    # a forward reference is not the later CTE in PostgreSQL: count it as a table
    (
        MAIN,
        "select",
        "WITH a AS (SELECT * FROM secrets), secrets AS (SELECT 1) SELECT * FROM a",
        T,
        "table_not_allowed",
    ),
    # without RECURSIVE a CTE does not see itself: the inner name is the real table
    (
        PG,
        "select",
        "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets",
        T,
        "table_not_allowed",
    ),
    (MAIN, "insert", "INSERT INTO users SELECT * FROM secrets", T, "table_not_allowed"),
    (MAIN, "insert", "INSERT INTO secrets VALUES (1)", T, "table_not_allowed"),
    (MAIN, "insert", "INSERT INTO secrets (a) VALUES (1)", T, "table_not_allowed"),
    # the written table is real even when a CTE of that name is in scope
    (
        MAIN,
        "insert",
        "WITH secrets AS (SELECT 1) INSERT INTO secrets SELECT * FROM secrets",
        T,
        "table_not_allowed",
    ),
    (MAIN, "update", "UPDATE users SET name = (SELECT pw FROM secrets)", T, "table_not_allowed"),
    (MAIN, "update", "UPDATE users SET name = s.pw FROM secrets s", T, "table_not_allowed"),
    (MAIN, "update", "UPDATE secrets SET pw = ''", T, "table_not_allowed"),
    (MAIN, "delete", "DELETE FROM secrets", T, "table_not_allowed"),
    (
        MAIN,
        "delete",
        "DELETE FROM users WHERE id IN (SELECT id FROM secrets)",
        T,
        "table_not_allowed",
    ),
    (MAIN, "select", "SELECT * FROM main.users", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM temp.users", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM main.secrets", {"tables": ["main.users"]}, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM users", {"tables": ["main.users"]}, "table_not_allowed"),
    (MAIN, "select", 'SELECT * FROM "Secrets"', T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM sqlite_master", T, "table_not_allowed"),
    (MAIN, "select", "SELECT * FROM users", {"tables": []}, "table_not_allowed"),
    (PG, "select", 'SELECT * FROM "Users"', T, "table_not_allowed"),
    (SF, "select", "SELECT * FROM users", T, ALLOW),
    (SF, "select", 'SELECT * FROM "USERS"', T, ALLOW),  # what users means there
    (SF, "select", 'SELECT * FROM "users"', T, "table_not_allowed"),  # another table
    (PG, "select", "SELECT * FROM pg_catalog.pg_shadow", T, "table_not_allowed"),
    (MAIN, "select", 'SELECT * FROM "a.b"', {}, "bad_table_name"),
    (MAIN, "select", 'SELECT * FROM "a\x1b[2Jb"', {}, "bad_table_name"),
    # Names sqlglot does not split into identifiers: what they read cannot be named.
    (TS, "select", "SELECT * FROM srv.hr.dbo.salaries", T, "bad_table_name"),
    (TS, "select", "SELECT * FROM users JOIN srv.hr.dbo.salaries s ON 1=1", T, "bad_table_name"),
    (PG, "select", "SELECT * FROM a.b.c.d", T, "bad_table_name"),
    (MAIN, "select", "SELECT * FROM ?", T, "bad_table_name"),
    (TS, "select", "SELECT * FROM @t", T, "bad_table_name"),
    (PG, "select", "SELECT * FROM $1", T, "bad_table_name"),
    # -- not one plain DML statement ------------------------------------------
    (MAIN, "select", "SELECT * FROM users; DROP TABLE users", T, "multiple_statements"),
    (MAIN, "select", "SELECT 1; SELECT 2", T, "multiple_statements"),
    (MAIN, "select", "", T, "empty_statement"),
    (MAIN, "select", " ; ", T, "empty_statement"),
    (MAIN, "select", "PRAGMA table_info(users)", T, "not_dml"),
    (MAIN, "select", "PRAGMA writable_schema = ON", T, "not_dml"),
    (MAIN, "select", "ATTACH DATABASE '/tmp/x.db' AS x", T, "not_dml"),
    (MAIN, "select", "DETACH DATABASE x", T, "not_dml"),
    (MAIN, "select", "VACUUM", T, "not_dml"),
    (MAIN, "select", "VACUUM INTO '/tmp/copy.db'", T, "not_dml"),
    (MAIN, "select", "BEGIN", T, "not_dml"),
    (MAIN, "select", "COMMIT", T, "not_dml"),
    (MAIN, "select", "CREATE TABLE x (a)", T, "not_dml"),
    (
        MAIN,
        "select",
        "CREATE TRIGGER t AFTER INSERT ON users BEGIN DELETE FROM users; END",
        T,
        "multiple_statements",
    ),
    (MAIN, "select", "DROP TABLE users", T, "not_dml"),
    (MAIN, "select", "ALTER TABLE users ADD COLUMN x", T, "not_dml"),
    (MAIN, "select", "REPLACE INTO users VALUES (1)", T, "not_dml"),
    (MAIN, "select", "EXPLAIN SELECT * FROM users", T, "not_dml"),
    (MAIN, "select", "VALUES (1)", T, "not_dml"),
    (PG, "select", "COPY users TO '/tmp/x'", T, "not_dml"),
    (PG, "select", "SET search_path = evil", T, "not_dml"),
    (PG, "select", "SELECT * INTO newtable FROM users", T, "nested_statement"),
    (
        PG,
        "select",
        "WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d",
        T,
        "nested_statement",
    ),
    (MAIN, "insert", "INSERT OR REPLACE INTO users VALUES (1)", T, "upsert"),
    (
        MAIN,
        "insert",
        "INSERT INTO users VALUES (1) ON CONFLICT(id) DO UPDATE SET name = 'x'",
        T,
        "upsert",
    ),
    # -- functions -------------------------------------------------------------
    (MAIN, "select", "SELECT load_extension('/tmp/evil.so')", T, "function_not_allowed"),
    (MAIN, "select", "SELECT readfile('/etc/passwd')", T, "function_not_allowed"),
    (MAIN, "select", "SELECT writefile('/tmp/x', 'y')", T, "function_not_allowed"),
    (MAIN, "select", "SELECT LOAD_EXTENSION('x')", T, "function_not_allowed"),
    (MAIN, "select", "SELECT randomblob(1000000000)", T, "function_not_allowed"),
    (MAIN, "select", "SELECT zeroblob(1000000000)", T, "function_not_allowed"),
    (MAIN, "select", "SELECT fts3_tokenizer('simple')", T, "function_not_allowed"),
    (MAIN, "select", "SELECT * FROM pragma_table_info('users')", T, "function_not_allowed"),
    (
        MAIN,
        "select",
        "SELECT * FROM users WHERE name = lower(edit(name))",
        T,
        "function_not_allowed",
    ),
    (MAIN, "select", "SELECT * FROM users WHERE id = 1 AND sleep(5)", T, "function_not_allowed"),
    (PG, "select", "SELECT pg_read_file('/etc/passwd')", T, "function_not_allowed"),
    (PG, "select", "SELECT pg_sleep(10)", T, "function_not_allowed"),
    (
        PG,
        "select",
        "SELECT query_to_xml('select * from secrets', true, true, '')",
        T,
        "function_not_allowed",
    ),
    (PG, "select", "SELECT set_config('search_path', 'evil', false)", T, "function_not_allowed"),
    (PG, "select", "TABLE secrets", T, "table_not_allowed"),
    (
        PG,
        "select",
        "SELECT * FROM users, LATERAL (SELECT * FROM secrets) s",
        T,
        "table_not_allowed",
    ),
    (PG, "select", "DO $$ BEGIN PERFORM 1; END $$", T, "not_dml"),
    (PG, "select", "SELECT lo_import('/etc/passwd')", T, "function_not_allowed"),
    (
        PG,
        "select",
        "SELECT * FROM dblink('host=evil', 'SELECT 1') AS t(a int)",
        T,
        "function_not_allowed",
    ),
    # -- kinds, parse failures, targets ----------------------------------------
    (MAIN, "insert", "SELECT * FROM users", T, "operation_mismatch"),
    (MAIN, "select", "DELETE FROM users", T, "operation_mismatch"),
    (MAIN, "delete", "UPDATE users SET x = 1", T, "operation_mismatch"),
    (MAIN, "update", "INSERT INTO users VALUES (1)", T, "operation_mismatch"),
    (MAIN, "select", "SELEC * FROM users", T, "unparseable"),
    (MAIN, "select", "SELECT * FROM users WHERE", T, "unparseable"),
    (MAIN, "select", "SELECT * FROM users WHERE name = 'unterminated", T, "unparseable"),
    (MAIN, "select", "SELECT " + "(" * 5000 + "1" + ")" * 5000, T, "unparseable"),
    (MAIN, "select", "SELECT 1 -- " + "x" * 70000, T, "statement_too_long"),
    (MAIN, "select", None, T, "no_statement"),
    ("db://other", "select", "SELECT * FROM users", T, "wrong_database"),
    ("DB://main", "select", "SELECT * FROM users", T, "wrong_database"),
    (MAIN, "drop", "DROP TABLE users", T, "unknown_operation"),
]


@pytest.mark.parametrize(("target", "operation", "sql", "constraints", "expected"), CASES)
def test_corpus(
    target: str, operation: str, sql: object, constraints: dict[str, Any], expected: str
) -> None:
    resource = target if target in (PG, TS, SF) else MAIN
    normalized = DB.normalize_constraints(constraints)
    use = Use(operation, target, statement=sql)  # type: ignore[arg-type]
    decision = DB.check(resource, normalized, use)
    assert (ALLOW if decision.allowed else decision.reason) == expected, decision.detail


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


def test_details_are_printable() -> None:
    decision = DB.check(MAIN, {}, Use("select", MAIN, statement="SELEC * FROM users"))
    assert decision.reason == "unparseable"
    assert decision.detail.isprintable()


def test_repeated_statements_come_from_the_cache() -> None:
    sql = "SELECT id FROM users WHERE id = 42 -- cache test"
    analyze(sql, "sqlite")
    before = analyze.cache_info().hits
    assert DB.check(MAIN, {"tables": ["users"]}, Use("select", MAIN, statement=sql)).allowed
    assert analyze.cache_info().hits == before + 1


def test_resources() -> None:
    assert DB.canonical_resource("db://main") == "db://main"
    assert DB.canonical_resource("DB://main") == "db://main"
    assert DB.resource_within("db://main", "db://main")
    assert not DB.resource_within("db://other", "db://main")
    for bad in ("db://nope", "db://main/x", "db://", "db://main?x", "sqlite:///x", "db://MAIN"):
        with pytest.raises(ResourceError):
            DB.canonical_resource(bad)


def test_unknown_dialect_fails_at_configuration() -> None:
    with pytest.raises(ValueError):
        DatabaseValidator({"x": "no-such-dialect"})
    with pytest.raises(ValueError):
        DatabaseValidator({"a/b": "sqlite"})
