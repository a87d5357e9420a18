"""Property tests: nothing escapes the root, meet is a lattice meet, check never raises."""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

import ada_url
from capsup.validators import (
    DatabaseValidator,
    FilesystemValidator,
    HttpValidator,
    Use,
    Validator,
)
from capsup.validators.paths import glob_matches, is_within, normalize_glob, rebase_glob
from fs_world import Workspace
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

FS = FilesystemValidator()
HTTP = HttpValidator()
DB = DatabaseValidator({"main": "sqlite"})
# Module-scoped fixtures are safe across examples: the tree is never modified.
FIXTURE_OK = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- no path escapes the root ----------------------------------------------------

SEGMENTS = st.sampled_from(
    [
        "docs", "secrets", "readme.txt", "link_in", "link_out", "link_abs", "loop_a",
        "dangling_out", "up", "upup", "outside", "ws", "ws-evil", "%2e%2e", "new",
        "..", ".", "", "etc", "passwd",
    ]
)  # fmt: skip


def _encode(segment: str, how: int) -> str:
    """One of several spellings of a segment inside a file:// URI."""
    if how == 1:
        return urllib.parse.quote(segment, safe="")
    if how == 2:
        return "".join(f"%{byte:02x}" for byte in segment.encode())
    if how == 3:
        return urllib.parse.quote(urllib.parse.quote(segment, safe=""), safe="")  # double
    return segment


@FIXTURE_OK
@given(
    segments=st.lists(st.tuples(SEGMENTS, st.integers(0, 3)), max_size=8),
    as_uri=st.booleans(),
    operation=st.sampled_from(["read", "create", "list", "stat", "write"]),
)
def test_no_path_escapes_the_root(
    workspace: Workspace, segments: list[tuple[str, int]], as_uri: bool, operation: str
) -> None:
    if as_uri:
        target = "file://" + workspace.ws + "/" + "/".join(_encode(s, how) for s, how in segments)
        path = urllib.parse.unquote(target[7:])
    else:
        target = workspace.ws + "/" + "/".join(segment for segment, _ in segments)
        path = target
    decision = FS.check(workspace.resource, {}, Use(operation, target, 1))
    event(decision.reason or "allowed")
    if not decision.allowed:
        return
    # What the kernel would open: realpath follows the same rules for the
    # existing part, and O_PATH + /proc asks the kernel itself when it exists.
    assert is_within(os.path.realpath(path), workspace.ws)
    try:
        fd = os.open(path, os.O_PATH)
    except OSError:
        return
    try:
        assert is_within(os.readlink(f"/proc/self/fd/{fd}"), workspace.ws)
    finally:
        os.close(fd)


# -- a URL allowed under a prefix really is under it --------------------------------

HOSTS = st.sampled_from(
    [
        "api.example.com", "API.EXAMPLE.COM.", "api.example.com:443", "api.example.com:8443",
        "evil.com", "api.example.com@evil.com", "api.example.com\\@evil.com", "127.1",
        "0x7f.1", "[::ffff:127.0.0.1]", "api\u3002example.com", "api.example.com.evil.com",
        "", "api.example.com%2f",
    ]
)  # fmt: skip
PATH_PARTS = st.sampled_from(
    [
        "repos", "repository", "..", ".", "%2e%2e", "%2E.", "..%2f", "..;", "%252e%252e",
        "admin", "", "%72epos", "a b", "\t", "x?y", "x#y", "%00",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(["https", "https", "https", "http", "HTTPS", "ftp"]),
    host=st.one_of(st.just("api.example.com"), HOSTS),
    parts=st.lists(st.one_of(st.just("repos"), PATH_PARTS), max_size=6),
)
def test_allowed_urls_stay_under_the_prefix(scheme: str, host: str, parts: list[str]) -> None:
    url = f"{scheme}://{host}/" + "/".join(parts)
    decision = HTTP.check("https://api.example.com/repos", {}, Use("GET", url))
    event(decision.reason or "allowed")
    if not decision.allowed:
        return
    # what any WHATWG client (browsers, Node, the broker) would request
    parsed = ada_url.parse_url(url)
    assert parsed["hostname"].rstrip(".") == "api.example.com"
    assert parsed["port"] == ""
    assert parsed["username"] == parsed["password"] == ""
    path = urllib.parse.unquote(parsed["pathname"])
    assert path == "/repos" or path.startswith("/repos/")
    assert "/../" not in path + "/" and "\\" not in path


# -- check never raises ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    target=st.one_of(st.text(max_size=80), st.none(), st.integers()),
    statement=st.one_of(st.text(max_size=80), st.none()),
    size=st.one_of(st.none(), st.integers(-5, 5)),
)
def test_check_never_raises(target: Any, statement: Any, size: Any) -> None:
    checks: list[tuple[Validator, str, str]] = [
        (FS, "file:///tmp", "read"),
        (HTTP, "https://*.example.com/", "GET"),
        (DB, "db://main", "select"),
    ]
    for validator, resource, operation in checks:
        decision = validator.check(resource, {}, Use(operation, target, size, statement))
        assert decision.allowed in (True, False)
        for prefix in ("file:///tmp/", "https://a.example.com/"):
            validator.check(resource, {}, Use(operation, prefix + str(target), size, statement))
    DB.check("db://main", {"tables": ["t"]}, Use("select", "db://main", statement=str(target)))


# -- meet is a meet ---------------------------------------------------------------------

POSITIVE = st.integers(1, 10**9)
FS_CONSTRAINTS = st.fixed_dictionaries(
    {},
    optional={
        "deny": st.lists(st.sampled_from(["a", "b/*.key", "**/x", "c/d", ".git"]), max_size=4),
        "max_bytes": POSITIVE,
    },
)
HTTP_CONSTRAINTS = st.fixed_dictionaries(
    {},
    optional={
        "rate_limit": st.fixed_dictionaries(
            {
                "requests": POSITIVE,
                "per_seconds": st.one_of(
                    POSITIVE, st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False)
                ),
            }
        ),
        "max_bytes": POSITIVE,
    },
)
DB_CONSTRAINTS = st.fixed_dictionaries(
    {},
    optional={
        "tables": st.lists(st.sampled_from(["users", "Orders", "main.users", "s.t"]), max_size=4),
        "max_rows": POSITIVE,
    },
)
SCHEMES: list[tuple[Validator, st.SearchStrategy[dict[str, Any]]]] = [
    (FS, FS_CONSTRAINTS),
    (HTTP, HTTP_CONSTRAINTS),
    (DB, DB_CONSTRAINTS),
]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), which=st.integers(0, len(SCHEMES) - 1))
def test_meet_is_a_meet(data: st.DataObject, which: int) -> None:
    validator, strategy = SCHEMES[which]
    a, b, c = (validator.normalize_constraints(data.draw(strategy)) for _ in range(3))
    met = validator.meet_constraints(a, b)
    assert met == validator.meet_constraints(b, a)
    assert validator.constraints_within(met, a) is None
    assert validator.constraints_within(met, b) is None
    assert validator.meet_constraints(a, a) == a
    assert validator.meet_constraints(met, c) == validator.meet_constraints(
        a, validator.meet_constraints(b, c)
    )
    assert validator.normalize_constraints(met) == met


# -- within is a preorder on resources -----------------------------------------------------

HTTP_RESOURCES = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
    st.sampled_from(["http", "https"]),
    st.sampled_from(["x.com", "a.x.com", "*.x.com", "*.a.x.com", "b.a.x.com", "evilx.com"]),
    st.sampled_from(["", ":8080"]),
    st.sampled_from(["", "repos", "repos/a", "repository", "repos/a/b"]),
)


@settings(max_examples=300, deadline=None)
@given(a=HTTP_RESOURCES, b=HTTP_RESOURCES, c=HTTP_RESOURCES)
def test_http_within_is_a_preorder(a: str, b: str, c: str) -> None:
    a, b, c = (HTTP.canonical_resource(x) for x in (a, b, c))
    assert HTTP.resource_within(a, a)
    if HTTP.resource_within(a, b) and HTTP.resource_within(b, c):
        assert HTTP.resource_within(a, c)
    if HTTP.resource_within(a, b) and HTTP.resource_within(b, a):
        assert a == b


# -- a deny glob restated for a deeper root denies the same paths --------------------

GLOB_SEGMENTS = st.sampled_from(["a", "b", "c", "*", "?", "**", "[ab]", "[!a]", "a*", "*c"])
NAMES = st.sampled_from(["a", "b", "c", "ab", "ca", "abc"])


@settings(max_examples=500)
@given(
    pattern=st.lists(GLOB_SEGMENTS, min_size=1, max_size=5).map("/".join),
    relative=st.lists(NAMES, max_size=4).map("/".join),
    beneath=st.lists(NAMES, max_size=4).map("/".join),
)
def test_a_rebased_glob_denies_exactly_what_the_original_denied(
    pattern: str, relative: str, beneath: str
) -> None:
    """For any path ``beneath`` the new root ``relative``: the original glob
    denies ``relative/beneath`` iff the restated globs deny ``beneath`` (and a
    glob that denies the new root itself denies all of it)."""
    pattern = normalize_glob(pattern)
    rests = rebase_glob(pattern, relative)
    full = "/".join(part for part in (relative, beneath) if part)
    originally = glob_matches([pattern], full) is not None
    if rests is None:
        assert originally
    else:
        assert originally == (glob_matches(rests, beneath) is not None)
