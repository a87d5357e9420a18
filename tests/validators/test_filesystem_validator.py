"""Adversarial corpus for the file:// validator (see conftest.py for the tree)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from capsup.validators import FilesystemValidator, ResourceError, Use
from fs_world import Workspace

FS = FilesystemValidator()
ALLOW = "allow"
GLOBS = {"deny": ["secrets", "**/*.key", ".git"]}

# (operation, target template, constraints, size, expected decision or reason)
CASES: list[tuple[str, object, dict[str, Any], int | None, str]] = [
    # -- plainly inside -------------------------------------------------------
    ("read", "{ws}/docs/readme.txt", {}, None, ALLOW),
    ("read", "file://{ws}/docs/readme.txt", {}, None, ALLOW),
    ("read", "FILE://{ws}/docs/readme.txt", {}, None, ALLOW),
    ("list", "{ws}", {}, None, ALLOW),
    ("list", "{ws}/docs/", {}, None, ALLOW),
    ("stat", "{ws}/link_in/readme.txt", {}, None, ALLOW),
    ("read", "{ws}/docs/up/docs/readme.txt", {}, None, ALLOW),
    ("read", "{ws}/./docs//readme.txt", {}, None, ALLOW),
    ("read", "{ws}/docs/../docs/readme.txt", {}, None, ALLOW),
    ("read", "file://{ws}/docs/read%6De.txt", {}, None, ALLOW),
    ("read", "{ws}/%2e%2e/x", {}, None, ALLOW),  # a plain path is literal
    ("list", "file://{ws}/sub%20dir", {}, None, ALLOW),
    ("create", "{ws}/docs/new.txt", {}, None, ALLOW),
    ("create", "{ws}/newdir/deeper/file.txt", {}, None, ALLOW),
    ("create", "file://{ws}/docs/a%20b.txt", {}, None, ALLOW),
    ("write", "{ws}/docs/readme.txt", {}, 10, ALLOW),
    ("delete", "{ws}/docs/readme.txt", {}, None, ALLOW),
    ("read", "{ws}/docs/readme.txt", {"max_bytes": 1000}, None, ALLOW),
    ("read", "{ws}/docs/readme.txt", GLOBS, None, ALLOW),
    ("list", "{ws}/docs", {"max_bytes": 1}, None, ALLOW),  # a directory has no size to cap
    # -- traversal, plain and encoded ----------------------------------------
    ("read", "/etc/passwd", {}, None, "outside_resource"),
    ("read", "/", {}, None, "outside_resource"),
    ("read", "{ws}/../outside/secret.txt", {}, None, "outside_resource"),
    ("read", "{ws}-evil/file", {}, None, "outside_resource"),
    ("read", "{ws}/docs/../../outside/secret.txt", {}, None, "outside_resource"),
    ("read", "file://{ws}/%2e%2e/outside/secret.txt", {}, None, "outside_resource"),
    ("read", "file://{ws}/%2E%2E/outside/secret.txt", {}, None, "outside_resource"),
    ("read", "file://{ws}/.%2e/outside/secret.txt", {}, None, "outside_resource"),
    ("read", "file://{ws}/..%2foutside/secret.txt", {}, None, "outside_resource"),
    ("read", "file://{ws}/..%2Foutside%2Fsecret.txt", {}, None, "outside_resource"),
    ("read", "file://{ws}-evil/file", {}, None, "outside_resource"),
    ("read", "{ws}/link_in/../../outside/secret.txt", {}, None, "outside_resource"),
    # decoded exactly once: %252e%252e is the literal name "%2e%2e", not ".."
    ("read", "file://{ws}/%252e%252e/outside/secret.txt", {}, None, "not_found"),
    ("read", "{ws}/docs\\..\\..\\outside", {}, None, "not_found"),  # "\" is a name character
    # -- malformed encodings and characters ----------------------------------
    ("read", "file://{ws}/%c0%ae%c0%ae/outside", {}, None, "bad_encoding"),  # overlong "."
    ("read", "file://{ws}/%e0%80%ae", {}, None, "bad_encoding"),
    ("read", "file://{ws}/%ff", {}, None, "bad_encoding"),
    ("read", "file://{ws}/%zz", {}, None, "bad_encoding"),
    ("read", "file://{ws}/%2", {}, None, "bad_encoding"),
    ("read", "{ws}/docs/readme.txt\x00.png", {}, None, "control_character"),
    ("read", "file://{ws}/docs/readme.txt%00.png", {}, None, "control_character"),
    ("read", "{ws}/docs/\n/x", {}, None, "control_character"),
    ("read", "file://{ws}/docs/%0a", {}, None, "control_character"),
    ("read", "file://{ws}/docs/%1b[2J", {}, None, "control_character"),
    ("read", "{ws}/docs/readme\u0085.txt", {}, None, "control_character"),
    ("read", "docs/readme.txt", {}, None, "relative_path"),
    ("read", "./docs", {}, None, "relative_path"),
    ("read", "../etc/passwd", {}, None, "relative_path"),
    ("read", "", {}, None, "relative_path"),
    ("read", "~/x", {}, None, "relative_path"),
    ("read", "file://host{ws}/docs", {}, None, "bad_target"),
    ("read", "file://localhost{ws}/docs", {}, None, "bad_target"),
    ("read", "file:{ws}/docs", {}, None, "bad_target"),
    ("read", "http://example.com/", {}, None, "bad_target"),
    ("read", "C:\\Windows\\win.ini", {}, None, "bad_target"),
    ("read", "file://{ws}/docs/readme.txt?x=1", {}, None, "bad_target"),
    ("read", "file://{ws}/docs/readme.txt#frag", {}, None, "bad_target"),
    ("read", 42, {}, None, "bad_target"),
    ("read", None, {}, None, "bad_target"),
    ("read", "{ws}/" + "a/" * 3000, {}, None, "path_too_long"),
    # -- symlinks ------------------------------------------------------------
    ("read", "{ws}/link_out/secret.txt", {}, None, "symlink_escape"),
    ("read", "{ws}/link_abs/passwd", {}, None, "symlink_escape"),
    ("list", "{ws}/link_abs", {}, None, "symlink_escape"),
    ("read", "{ws}/docs/upup/outside/secret.txt", {}, None, "symlink_escape"),
    ("read", "{ws}/docs/up/../outside/secret.txt", {}, None, "symlink_escape"),  # not lexical
    ("read", "{ws}/docs/up/link_out/secret.txt", {}, None, "symlink_escape"),
    ("read", "file://{ws}/link_out%2fsecret.txt", {}, None, "symlink_escape"),
    ("create", "{ws}/dangling_out", {}, None, "symlink_escape"),
    ("write", "{ws}/dangling_out", {}, 1, "symlink_escape"),
    ("create", "{ws}/link_out/new.txt", {}, None, "symlink_escape"),
    ("read", "{ws}/loop_a", {}, None, "symlink_loop"),
    ("create", "{ws}/loop_a/x", {}, None, "symlink_loop"),
    # -- existence -----------------------------------------------------------
    ("read", "{ws}/nonexistent.txt", {}, None, "not_found"),
    ("stat", "{ws}/nope/deeper", {}, None, "not_found"),
    ("delete", "{ws}/nope", {}, None, "not_found"),
    # -- deny globs ----------------------------------------------------------
    ("read", "{ws}/secrets/key.pem", GLOBS, None, "denied_by_glob"),
    ("list", "{ws}/secrets", GLOBS, None, "denied_by_glob"),
    ("read", "{ws}/link_secret", GLOBS, None, "denied_by_glob"),
    ("read", "{ws}/notes.key", GLOBS, None, "denied_by_glob"),
    ("read", "{ws}/docs/../notes.key", {"deny": ["*.key"]}, None, "denied_by_glob"),
    ("list", "{ws}/.git", GLOBS, None, "denied_by_glob"),
    ("read", "{ws}/.git/config", GLOBS, None, "denied_by_glob"),
    ("read", "file://{ws}/%2egit/config", GLOBS, None, "denied_by_glob"),
    ("create", "{ws}/secrets/new", GLOBS, None, "denied_by_glob"),
    ("create", "{ws}/docs/deep/er/x.key", GLOBS, None, "denied_by_glob"),
    ("create", "{ws}/docs/newfile", {"deny": ["docs/new*"]}, None, "denied_by_glob"),
    ("read", "{ws}/docs/readme.txt", {"deny": ["docs/[a-s]eadme.txt"]}, None, "denied_by_glob"),
    ("read", "{ws}/docs/readme.txt", {"deny": ["**"]}, None, "denied_by_glob"),
    ("read", "{ws}/docs/readme.txt", {"deny": ["do?s"]}, None, "denied_by_glob"),
    # -- sizes and operations ------------------------------------------------
    ("read", "{ws}/docs/big.bin", {"max_bytes": 1000}, None, "too_large"),
    ("read", "{ws}/link_in/big.bin", {"max_bytes": 1000}, None, "too_large"),
    ("write", "{ws}/docs/x", {"max_bytes": 1000}, 2000, "too_large"),
    ("create", "{ws}/docs/x", {"max_bytes": 1000}, 1001, "too_large"),
    ("write", "{ws}/docs/x", {"max_bytes": 1000}, None, "size_unknown"),
    ("write", "{ws}/docs/x", {"max_bytes": 1000}, -1, "bad_size"),
    ("execute", "{ws}/docs/readme.txt", {}, None, "unknown_operation"),
    ("READ", "{ws}/docs/readme.txt", {}, None, "unknown_operation"),  # check takes canonical ops
]


@pytest.mark.parametrize(("operation", "target", "constraints", "size", "expected"), CASES)
def test_corpus(
    workspace: Workspace,
    operation: str,
    target: object,
    constraints: dict[str, Any],
    size: int | None,
    expected: str,
) -> None:
    concrete = workspace.fill(target) if isinstance(target, str) else target
    normalized = FS.normalize_constraints(constraints)
    decision = FS.check(workspace.resource, normalized, Use(operation, concrete, size))  # type: ignore[arg-type]
    assert (ALLOW if decision.allowed else decision.reason) == expected, decision.detail
    assert decision.allowed or decision.reason.replace("_", "").isalpha()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


def test_resource_file_is_its_own_root(workspace: Workspace) -> None:
    resource = FS.canonical_resource(f"file://{workspace.ws}/docs/readme.txt")
    assert FS.check(resource, {}, Use("read", f"{workspace.ws}/docs/readme.txt")).allowed
    assert FS.check(resource, {}, Use("read", f"{workspace.ws}/docs/big.bin")).reason == (
        "outside_resource"
    )


def test_root_resource_covers_everything(workspace: Workspace) -> None:
    assert FS.check("file:///", {}, Use("read", f"{workspace.ws}/docs/readme.txt")).allowed
    assert FS.check("file:///", {"deny": ["etc"]}, Use("read", "/etc/hostname")).reason == (
        "denied_by_glob"
    )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///", "file:///"),
        ("file:///ws/", "file:///ws"),
        ("file:///ws/./a/../b//", "file:///ws/b"),
        ("file:///ws/%7Euser", "file:///ws/~user"),
        ("file:///ws/100%25", "file:///ws/100%25"),
        ("file:///ws/a%20b", "file:///ws/a%20b"),
        ("file:///ws/caf%C3%A9", "file:///ws/caf%C3%A9"),
        ("FILE:///ws", "file:///ws"),
    ],
)
def test_canonical_resource(uri: str, expected: str) -> None:
    assert FS.canonical_resource(uri) == expected
    assert FS.canonical_resource(expected) == expected  # idempotent


def test_canonical_resource_resolves_symlinks(workspace: Workspace) -> None:
    assert FS.canonical_resource(f"file://{workspace.ws}/link_in") == f"file://{workspace.ws}/docs"
    assert FS.canonical_resource(f"file://{workspace.ws}/link_out") == (
        f"file://{workspace.tmp}/outside"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "/ws",
        "file://ws",
        "file://host/ws",
        "file:ws",
        "file:///ws/%00",
        "file:///ws/\x01",
        "file:///ws?x",
        "file:///ws#x",
        "file:///ws/%c0%ae",
        "file:///ws/%g0",
        "http:///ws",
    ],
)
def test_canonical_resource_rejects(uri: str) -> None:
    with pytest.raises(ResourceError):
        FS.canonical_resource(uri)


def test_canonical_resource_rejects_loops(workspace: Workspace) -> None:
    with pytest.raises(ResourceError):
        FS.canonical_resource(f"file://{workspace.ws}/loop_a")


@pytest.mark.parametrize("spelling", ["/{link}", "//{link}", "file:///{link}", "file:////{link}"])
def test_a_link_named_like_a_denied_file_is_denied_however_spelled(
    tmp_path: Path, spelling: str
) -> None:
    """Deleting a link removes the link itself, so its own name is what the
    glob must see. POSIX lets ``//`` at the start mean something else, and
    os.path.normpath keeps it; Linux does not, and neither may the check."""
    ws = Path(os.path.realpath(tmp_path))
    (ws / "pub.txt").write_text("x")
    (ws / "secret.key").symlink_to("pub.txt")
    resource = FS.canonical_resource(ws.as_uri())
    target = spelling.format(link=str(ws / "secret.key").lstrip("/"))
    decision = FS.check(resource, {"deny": ["*.key"]}, Use("delete", target))
    assert (decision.allowed, decision.reason) == (False, "denied_by_glob")


# -- deny globs ignore case ------------------------------------------------------------
# On a case-insensitive filesystem (ext4 or f2fs casefold directories, vfat,
# exFAT, NTFS, a CIFS mount) SECRET.KEY is the file secret.key, and the
# resolver keeps the caller's spelling. These trees are on a case-sensitive
# filesystem, so each spelling is a file of its own, which is what the
# validator sees either way: a name as the caller spelled it.


@pytest.fixture(scope="module")
def cased(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(ws, resource) of a tree whose names come in several cases."""
    ws = Path(os.path.realpath(tmp_path_factory.mktemp("cased")))
    for folder in ("Private", "DATA", "docs"):
        (ws / folder).mkdir()
    for name in (
        "SECRET.KEY", "Secret.Key", "secret.key", "Private/notes.txt", "DATA/x.txt",
        "DATA/Y.KEY", "Abc", "abc", "bbc", "docs/readme.txt", "Stra\u00dfe.txt",
        "\u017fecret.txt", "f\u0131le.txt",
    ):  # fmt: skip
        (ws / name).write_text("x")
    (ws / "LINK.KEY").symlink_to("docs/readme.txt")
    return str(ws), FS.canonical_resource(ws.as_uri())


@pytest.mark.parametrize(
    ("deny", "operation", "target", "expected"),
    [
        (["**/*.key"], "read", "SECRET.KEY", "denied_by_glob"),
        (["**/*.key"], "read", "Secret.Key", "denied_by_glob"),
        (["**/*.key"], "read", "DATA/Y.KEY", "denied_by_glob"),
        (["**/*.key"], "read", "file://{ws}/SECRET%2EKEY", "denied_by_glob"),
        (["**/*.key"], "delete", "LINK.KEY", "denied_by_glob"),  # the link's own name
        (["**/*.key"], "create", "docs/NEW.Key", "denied_by_glob"),
        (["*.KEY"], "read", "secret.key", "denied_by_glob"),  # the glob's case does not count
        (["secret.key"], "read", "SECRET.KEY", "denied_by_glob"),
        (["private/**"], "read", "Private/notes.txt", "denied_by_glob"),
        (["private/**"], "list", "Private", "denied_by_glob"),
        (["private"], "create", "PRIVATE/new.txt", "denied_by_glob"),
        (["PRIVATE/*.txt"], "read", "Private/notes.txt", "denied_by_glob"),
        (["data"], "read", "DATA/x.txt", "denied_by_glob"),
        # A negated class denies what it matches as spelled, and every other
        # spelling of it: abc is also spelled Abc, which [!a]bc matches.
        (["[!a]bc"], "read", "Abc", "denied_by_glob"),
        (["[!a]bc"], "read", "abc", "denied_by_glob"),
        (["[!a]bc"], "read", "bbc", "denied_by_glob"),
        (["[a-z]bc"], "read", "Abc", "denied_by_glob"),
        (["[A-Z]bc"], "read", "abc", "denied_by_glob"),
        (["strasse.txt"], "read", "Stra\u00dfe.txt", "denied_by_glob"),  # full folding
        (["STRA\u1e9eE.*"], "create", "strasse.txt", "denied_by_glob"),
        (["secret.*"], "read", "\u017fecret.txt", "denied_by_glob"),  # long s
        (["file.*"], "read", "f\u0131le.txt", "denied_by_glob"),  # dotless i
        (["?.KEY"], "create", "\u1e9e.key", "denied_by_glob"),  # ? is one character, any case
        (["[\u00df]*"], "create", "\u1e9e.txt", "denied_by_glob"),
        # ? and a class stand for one character of the name or of its folding,
        # never for two: ss.key is \u00df.key on ext4 casefold, but ?.key does
        # not deny it (reading ? as two characters backtracks exponentially).
        (["?.key"], "create", "ss.key", ALLOW),
        # ...and nothing that differs in more than case.
        (["**/*.key"], "read", "docs/readme.txt", ALLOW),
        (["private/**"], "read", "DATA/x.txt", ALLOW),
        (["[!a]bc"], "read", "docs/readme.txt", ALLOW),
        (["abd"], "read", "Abc", ALLOW),
        (["[!aA]bc"], "read", "Abc", ALLOW),  # no spelling of A is outside [aA]
    ],
)
def test_a_deny_glob_denies_every_case_of_a_name(
    cased: tuple[str, str], deny: list[str], operation: str, target: str, expected: str
) -> None:
    ws, resource = cased
    concrete = target.replace("{ws}", ws) if "{ws}" in target else f"{ws}/{target}"
    constraints = FS.normalize_constraints({"deny": deny})
    decision = FS.check(resource, constraints, Use(operation, concrete, 1))
    assert (ALLOW if decision.allowed else decision.reason) == expected, decision.detail


def test_a_capability_narrowed_to_another_case_keeps_denying(cased: tuple[str, str]) -> None:
    """A capability on ws denying data/*.key, narrowed to ws/DATA: the glob
    restated for DATA is *.key, which denies Y.KEY there as the parent did."""
    ws, resource = cased
    inner = FS.canonical_resource(f"file://{ws}/DATA")
    parent = FS.normalize_constraints({"deny": ["data/*.key"]})
    child = FS.rebase_constraints(parent, resource, inner)
    assert child == {"deny": ["*.key"]}
    for constraints, root in ((parent, resource), (child, inner)):
        assert FS.check(root, constraints, Use("read", f"{ws}/DATA/Y.KEY")).reason == (
            "denied_by_glob"
        )
        assert FS.check(root, constraints, Use("read", f"{ws}/DATA/x.txt")).allowed
