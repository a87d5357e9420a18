"""The scheme algebra the kernel relies on: within, operations, constraints, meet."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from capsup.validators import (
    ConstraintError,
    DatabaseValidator,
    FilesystemValidator,
    HttpValidator,
    OperationError,
    Validator,
    default_registry,
)
from capsup.validators._common import MAX_LIST_ENTRIES
from capsup.validators.filesystem import NAMED_DENY_LIMITS
from capsup.validators.paths import MAX_CLASS_RANGE, MAX_GLOB_LENGTH, MAX_GLOB_WILDCARDS

FS = FilesystemValidator()
HTTP = HttpValidator()
DB = DatabaseValidator({"main": "sqlite", "other": "sqlite"})


@pytest.mark.parametrize(
    ("validator", "inner", "outer", "expected"),
    [
        (FS, "file:///ws", "file:///ws", True),
        (FS, "file:///ws/a/b", "file:///ws", True),
        (FS, "file:///ws-evil", "file:///ws", False),
        (FS, "file:///ws", "file:///ws/a", False),
        (FS, "file:///wsx/a", "file:///ws", False),
        (FS, "file:///anything", "file:///", True),
        (FS, "file:///", "file:///ws", False),
        (FS, "file:///ws/a%20b", "file:///ws/a", False),
        (HTTP, "https://api.x.com/repos/a", "https://api.x.com/repos", True),
        (HTTP, "https://api.x.com/repos", "https://api.x.com/repos", True),
        (HTTP, "https://api.x.com/repository", "https://api.x.com/repos", False),
        (HTTP, "https://api.x.com/", "https://api.x.com/repos", False),
        (HTTP, "https://api.x.com/a", "https://api.x.com/", True),
        (HTTP, "http://api.x.com/repos", "https://api.x.com/repos", False),
        (HTTP, "https://api.x.com:8443/repos", "https://api.x.com/repos", False),
        (HTTP, "https://api.x.com/repos", "https://api.x.com:8443/repos", False),
        (HTTP, "https://a.x.com/r", "https://*.x.com/", True),
        (HTTP, "https://a.b.x.com/", "https://*.x.com/", True),
        (HTTP, "https://*.a.x.com/", "https://*.x.com/", True),
        (HTTP, "https://*.x.com/a", "https://*.x.com/", True),
        (HTTP, "https://*.x.com/", "https://*.x.com/a", False),
        (HTTP, "https://x.com/", "https://*.x.com/", False),
        (HTTP, "https://evilx.com/", "https://*.x.com/", False),
        (HTTP, "https://*.x.com/", "https://a.x.com/", False),
        (HTTP, "https://*.x.com/", "https://*.a.x.com/", False),
        (HTTP, "http://a.x.com/", "https://*.x.com/", False),
        (DB, "db://main", "db://main", True),
        (DB, "db://other", "db://main", False),
    ],
)
def test_resource_within(validator: Validator, inner: str, outer: str, expected: bool) -> None:
    assert validator.resource_within(inner, outer) is expected


@pytest.mark.parametrize(
    ("validator", "raw", "expected"),
    [
        (FS, ["READ", "write", "List"], {"read", "write", "list"}),
        (FS, ("stat", "create", "delete", "stat"), {"stat", "create", "delete"}),
        (HTTP, ["get", "Post", "DELETE"], {"GET", "POST", "DELETE"}),
        (HTTP, {"head", "options", "put", "patch"}, {"HEAD", "OPTIONS", "PUT", "PATCH"}),
        (DB, ["SELECT", "insert", "Update", "delete"], {"select", "insert", "update", "delete"}),
    ],
)
def test_normalize_operations(validator: Validator, raw: Any, expected: set[str]) -> None:
    assert validator.normalize_operations(raw) == frozenset(expected)


@pytest.mark.parametrize(
    ("validator", "raw"),
    [
        (FS, []),
        (FS, ["execute"]),
        (FS, ["read", 1]),
        (FS, ["read", None]),
        (FS, "read"),
        (FS, 42),
        (HTTP, ["TRACE"]),
        (HTTP, ["CONNECT"]),
        (HTTP, ["GET "]),
        (HTTP, [b"GET"]),
        (HTTP, ["po\u017ft"]),  # long s: str.upper() makes it "POST"
        (FS, ["\u0130nfo"]),  # no file op, but non-ASCII never folds
        (DB, ["drop"]),
        (DB, ["pragma"]),
        (DB, ["select", True]),
    ],
)
def test_normalize_operations_rejects(validator: Validator, raw: Any) -> None:
    with pytest.raises(OperationError):
        validator.normalize_operations(raw)


@pytest.mark.parametrize(
    ("validator", "raw", "expected"),
    [
        (FS, {}, {}),
        (
            FS,
            {"deny": ["b/*.key", "./a//", "a", "x/**/"], "max_bytes": 10},
            {"deny": ["a", "b/*.key", "x/**"], "max_bytes": 10},
        ),
        (FS, {"deny": ()}, {"deny": []}),
        (
            HTTP,
            {"rate_limit": {"requests": 5, "per_seconds": 1.5}, "max_bytes": 1},
            {"rate_limit": {"requests": 5, "per_seconds": 1.5}, "max_bytes": 1},
        ),
        (DB, {"tables": ["Users", "main.T", "users"]}, {"tables": ["main.t", "users"]}),
        (DB, {"tables": [], "max_rows": 100}, {"tables": [], "max_rows": 100}),
    ],
)
def test_normalize_constraints(validator: Validator, raw: Any, expected: Any) -> None:
    normalized = validator.normalize_constraints(raw)
    assert normalized == expected
    # plain values: survive the wire (msgpack) and the store (JSON) unchanged
    assert msgpack.unpackb(msgpack.packb(normalized)) == normalized
    assert json.loads(json.dumps(normalized)) == normalized
    assert validator.normalize_constraints(normalized) == normalized


@pytest.mark.parametrize(
    ("validator", "raw", "key"),
    [
        (FS, {"max_delegation_depth": 1}, "max_delegation_depth"),
        (FS, {"nope": 1}, "nope"),
        (FS, {"max_bytes": True}, "max_bytes"),
        (FS, {"max_bytes": 0}, "max_bytes"),
        (FS, {"max_bytes": -1}, "max_bytes"),
        (FS, {"max_bytes": 1.5}, "max_bytes"),
        (FS, {"max_bytes": "10"}, "max_bytes"),
        (FS, {"max_bytes": math.nan}, "max_bytes"),
        (FS, {"max_bytes": 2**64}, "max_bytes"),  # does not fit msgpack or SQLite
        (HTTP, {"rate_limit": {"requests": 1, "per_seconds": 1e300}}, "rate_limit.per_seconds"),
        (FS, {"deny": "secrets"}, "deny"),
        (FS, {"deny": [1]}, "deny"),
        (FS, {"deny": ["/etc"]}, "deny"),
        (FS, {"deny": ["../x"]}, "deny"),
        (FS, {"deny": ["a/../../x"]}, "deny"),
        (FS, {"deny": [""]}, "deny"),
        (FS, {"deny": ["./"]}, "deny"),
        (FS, {"deny": ["a\x00b"]}, "deny"),
        (FS, {"deny": ["logs/[z-a].txt"]}, "deny"),  # a reversed range is no pattern
        (FS, {"deny": ["a/" * 512 + "b"]}, "deny"),
        (FS, {"deny": ["*a" * 65]}, "deny"),
        (FS, {"deny": ["**/" * 32 + "*"]}, "deny"),  # ** counts two
        (FS, {"deny": ["[ab]" * 40 + "?" * 25]}, "deny"),
        (HTTP, {"rate_limit": {"requests": 5}}, "rate_limit"),
        (HTTP, {"rate_limit": {"requests": 5, "per_seconds": 1, "burst": 2}}, "rate_limit"),
        (HTTP, {"rate_limit": [5, 1]}, "rate_limit"),
        (HTTP, {"rate_limit": {"requests": True, "per_seconds": 1}}, "rate_limit.requests"),
        (HTTP, {"rate_limit": {"requests": 1.5, "per_seconds": 1}}, "rate_limit.requests"),
        (HTTP, {"rate_limit": {"requests": 0, "per_seconds": 1}}, "rate_limit.requests"),
        (HTTP, {"rate_limit": {"requests": 1, "per_seconds": math.nan}}, "rate_limit.per_seconds"),
        (HTTP, {"rate_limit": {"requests": 1, "per_seconds": math.inf}}, "rate_limit.per_seconds"),
        (HTTP, {"rate_limit": {"requests": 1, "per_seconds": -1}}, "rate_limit.per_seconds"),
        (HTTP, {"rate_limit": {"requests": 1, "per_seconds": False}}, "rate_limit.per_seconds"),
        (HTTP, {"deny": []}, "deny"),
        (DB, {"tables": "users"}, "tables"),
        (DB, {"tables": ["users; drop"]}, "tables"),
        (DB, {"tables": ['"users"']}, "tables"),
        (DB, {"tables": ["a.b.c.d"]}, "tables"),
        (DB, {"tables": ["a..b"]}, "tables"),
        (DB, {"max_rows": True}, "max_rows"),
        (DB, {"max_rows": 0}, "max_rows"),
        (DB, {"rate_limit": {"requests": 1, "per_seconds": 1}}, "rate_limit"),
    ],
)
def test_normalize_constraints_rejects(validator: Validator, raw: Any, key: str) -> None:
    with pytest.raises(ConstraintError, match=key):
        validator.normalize_constraints(raw)


def test_deny_globs_are_bounded_in_length_and_wildcards() -> None:
    """Defence in depth for globs an agent sends: matching is linear, and no
    policy needs a glob of more than MAX_GLOB_LENGTH characters or
    MAX_GLOB_WILDCARDS wildcards; beyond that a glob is refused, saying why."""
    longest = "a/" * (MAX_GLOB_LENGTH // 2 - 1) + "bc"
    wildest = "[ab]" * (MAX_GLOB_WILDCARDS - 2) + "*?"
    assert FS.normalize_constraints({"deny": [longest, wildest]}) == {
        "deny": sorted([longest, wildest])
    }
    with pytest.raises(ConstraintError, match=f"deny: glob .* longer than {MAX_GLOB_LENGTH}"):
        FS.normalize_constraints({"deny": [longest + "d"]})
    with pytest.raises(ConstraintError, match=f"{MAX_GLOB_WILDCARDS + 1} wildcards"):
        FS.normalize_constraints({"deny": [wildest + "*"]})
    # A class range costs its compile by the code points it spans.
    assert FS.normalize_constraints({"deny": ["[a-z]*.key", "[\u0100-\u0200]"]})
    with pytest.raises(ConstraintError, match=f"wider than {MAX_CLASS_RANGE}"):
        FS.normalize_constraints({"deny": ["[!\u0100-\U0001ffff]*"]})
    # Counted as given, before "./" and "//" are dropped.
    with pytest.raises(ConstraintError, match="longer than"):
        FS.normalize_constraints({"deny": ["./" * MAX_GLOB_LENGTH + "a"]})


def test_list_constraints_are_bounded_before_any_entry_is_compiled() -> None:
    """Each glob costs a compile: a request must not carry thousands of them
    (or a few huge ones) into the supervisor's loop. The bounds are checked
    before any entry is looked at, so a hostile list is refused at once."""
    at_most = [f"d{i}/*.key" for i in range(MAX_LIST_ENTRIES)]
    assert len(FS.normalize_constraints({"deny": at_most})["deny"]) == MAX_LIST_ENTRIES
    with pytest.raises(ConstraintError, match=f"more than {MAX_LIST_ENTRIES} entries"):
        FS.normalize_constraints({"deny": [*at_most, "one/more"]})
    with pytest.raises(ConstraintError, match=f"more than {MAX_LIST_ENTRIES} entries"):
        FS.normalize_constraints({"deny": ["[!a]*" * 16] * 60_000})
    with pytest.raises(ConstraintError, match=f"more than {MAX_LIST_ENTRIES} entries"):
        DB.normalize_constraints({"tables": [f"t{i}" for i in range(MAX_LIST_ENTRIES + 1)]})
    full = ["a" * 1000 + str(i) for i in range(4)]  # 4004 characters
    assert len(FS.normalize_constraints({"deny": full})["deny"]) == 4
    with pytest.raises(
        ConstraintError, match=f"characters, more than {NAMED_DENY_LIMITS.characters}"
    ):
        FS.normalize_constraints({"deny": [*full, "b" * 100]})
    classes = [f"*.[a-{letter}]" for letter in "bcdefghijklmnopq"] * 4  # 64 classes
    assert len(FS.normalize_constraints({"deny": classes})["deny"]) == 16
    with pytest.raises(
        ConstraintError, match=f"65 character classes.*more than {NAMED_DENY_LIMITS.classes}"
    ):
        FS.normalize_constraints({"deny": [*classes, "[x]"]})


@pytest.mark.parametrize(
    ("validator", "first", "second", "expected"),
    [
        (FS, {}, {}, {}),
        (FS, {"deny": ["b"]}, {"deny": ["a", "b"]}, {"deny": ["a", "b"]}),
        (FS, {"max_bytes": 5}, {"deny": ["a"]}, {"deny": ["a"], "max_bytes": 5}),
        (FS, {"max_bytes": 5}, {"max_bytes": 3}, {"max_bytes": 3}),
        (
            HTTP,
            {"rate_limit": {"requests": 5, "per_seconds": 1}},
            {"rate_limit": {"requests": 10, "per_seconds": 60}},
            {"rate_limit": {"requests": 5, "per_seconds": 60}},
        ),
        (DB, {"tables": ["a", "b"]}, {"tables": ["b", "c"]}, {"tables": ["b"]}),
        (DB, {"tables": ["a"]}, {"max_rows": 9}, {"tables": ["a"], "max_rows": 9}),
        (DB, {"tables": ["a"]}, {"tables": ["b"]}, {"tables": []}),
    ],
)
def test_meet(validator: Validator, first: Any, second: Any, expected: Any) -> None:
    assert validator.meet_constraints(first, second) == expected
    assert validator.meet_constraints(second, first) == expected


@pytest.mark.parametrize(
    ("validator", "child", "parent", "wider"),
    [
        (FS, {}, {}, None),
        (FS, {"max_bytes": 5}, {}, None),
        (FS, {}, {"max_bytes": 5}, "max_bytes"),
        (FS, {"max_bytes": 6}, {"max_bytes": 5}, "max_bytes"),
        (FS, {"deny": ["a", "b"]}, {"deny": ["a"]}, None),
        (FS, {"deny": ["b"]}, {"deny": ["a"]}, "deny"),
        (FS, {"deny": ["*.key"]}, {"deny": ["*.KEY"]}, "deny"),  # equal, but refused
        (FS, {"deny": ["*.KEY", "*.key"]}, {"deny": ["*.KEY"]}, None),
        (
            HTTP,
            {"rate_limit": {"requests": 1, "per_seconds": 10}},
            {"rate_limit": {"requests": 2, "per_seconds": 1}},
            None,
        ),
        (
            HTTP,
            {"rate_limit": {"requests": 3, "per_seconds": 10}},
            {"rate_limit": {"requests": 2, "per_seconds": 10}},
            "rate_limit",
        ),
        (DB, {"tables": ["a"]}, {"tables": ["a", "b"]}, None),
        (DB, {"tables": ["a", "c"]}, {"tables": ["a", "b"]}, "tables"),
        (DB, {}, {"tables": ["a"]}, "tables"),
        (DB, {"tables": []}, {"tables": ["a"]}, None),
    ],
)
def test_constraints_within(
    validator: Validator, child: Any, parent: Any, wider: str | None
) -> None:
    assert validator.constraints_within(child, parent) == wider


@pytest.mark.parametrize(
    ("deny", "inner", "expected"),
    [
        (["public/*.key"], "public", ["*.key"]),
        (["**/*.key"], "public", ["**/*.key"]),
        (["public/*.key"], "PUBLIC", ["*.key"]),  # the inner root's case does not count
        (["Public/Keys/*"], "public", ["Keys/*"]),  # the rest keeps its spelling
        (["PUBLIC/**/*.KEY"], "public/Keys", ["**/*.KEY"]),
        (["stra\u00dfe/x"], "STRASSE", ["x"]),
        (["[!p]ublic/x"], "Public", ["x"]),  # P is not in [p]
        (["[!pP]ublic/x"], "Public", []),
        (["other/x", "public/x"], "Public", ["x"]),
        (["data/**"], "DATA", None),  # the inner root itself is denied: refused
        (["data"], "Data/sub", None),
        (["*.KEY"], "secret.key", None),
        (["[!a]bc"], "abc", None),  # abc is also spelled Abc
        (["secret"], "\u017fecret", None),  # long s
    ],
)
def test_rebase_constraints_ignores_case(
    deny: list[str], inner: str, expected: list[str] | None
) -> None:
    """Deny globs restated for a deeper root that differs from what they
    name only in case: the new root is refused if a glob denies it in any
    case, and otherwise the restated globs deny what the wider ones did."""
    constraints = FS.normalize_constraints({"deny": deny, "max_bytes": 7})
    outer = "file:///ws"
    resource = FS.canonical_resource(f"file:///ws/{inner}")
    if expected is None:
        with pytest.raises(ConstraintError, match="is denied by the deny glob"):
            FS.rebase_constraints(constraints, outer, resource)
        return
    rebased = FS.rebase_constraints(constraints, outer, resource)
    assert rebased == ({"deny": expected, "max_bytes": 7} if expected else {"max_bytes": 7})


def test_meet_rejects_foreign_keys() -> None:
    with pytest.raises(ConstraintError):
        FS.meet_constraints({"tables": ["a"]}, {})


def test_default_registry() -> None:
    registry = default_registry({"main": "sqlite"})
    assert registry.schemes == {"file", "http", "https", "db"}
    assert isinstance(registry.for_uri("FILE:///x"), FilesystemValidator)
    assert registry.for_uri("http://x") is registry.for_uri("https://x")
    assert registry.for_uri("db://main").canonical_resource("db://main") == "db://main"
    assert default_registry().schemes == registry.schemes
