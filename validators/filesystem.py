"""The ``file://`` validator: a directory tree (or one file) on this host.

A capability ``file:///ws`` covers ``/ws`` and everything beneath it, compared
segment by segment after ``..`` and every symlink are resolved, so that
``/ws-evil``, ``/ws/../etc`` and ``/ws/link-to-etc`` all fall outside it.

What a validator cannot promise: the filesystem may change between this check
and the use (a directory swapped for a symlink). docs/capabilities.md says how
the broker closes that race.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from capsup.validators._common import (
    MAX_LIST_ENTRIES,
    Normalizer,
    bad_size,
    has_control_char,
    positive_int,
    string_list,
)
from capsup.validators._scheme import SchemeValidator
from capsup.validators.base import (
    ALLOW,
    ConstraintError,
    Decision,
    Refusal,
    ResourceError,
    Use,
    deny,
)
from capsup.validators.paths import (
    DenyGlobs,
    ResolveError,
    glob_shape,
    is_within,
    lexically_normal,
    normalize_glob,
    rebase_glob,
    resolve,
)

__all__ = [
    "HELD_DENY_LIMITS",
    "MAX_PATH_LENGTH",
    "NAMED_DENY_LIMITS",
    "DenyLimits",
    "FilesystemValidator",
    "TargetError",
    "parse_target",
]

#: Linux's PATH_MAX; a longer path cannot be opened anyway.
MAX_PATH_LENGTH = 4096

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
#: Characters left as they are in a canonical file URI; everything else,
#: ``%`` first of all, is percent-encoded so that decoding once is exact.
_SAFE = "/!$&'()*+,;=:@-._~"


@dataclass(frozen=True, slots=True)
class DenyLimits:
    """How large a deny list may be: globs, characters and character classes
    (``[`` characters) in all.

    Compiling a glob costs a few microseconds per character and a class
    about a hundred (each of its two readings takes a pass over the table of
    characters that fold to another), and a check matches every glob:
    these bound what an agent can make the supervisor's one loop spend on a
    list (docs/capabilities.md has the figures).
    """

    globs: int
    characters: int
    classes: int

    def check(self, globs: Sequence[str]) -> None:
        """Raise :class:`ValueError` saying which limit ``globs`` passes."""
        if len(globs) > self.globs:
            raise ValueError(f"holds {len(globs)} globs, more than {self.globs}")
        characters = sum(map(len, globs))
        if characters > self.characters:
            raise ValueError(f"holds {characters} characters, more than {self.characters}")
        classes = sum(glob.count("[") for glob in globs)
        if classes > self.classes:
            raise ValueError(f"holds {classes} character classes ('['), more than {self.classes}")


#: What one request or delegation may name (and a policy ceiling hold).
NAMED_DENY_LIMITS = DenyLimits(globs=MAX_LIST_ENTRIES, characters=4096, classes=64)
#: What one capability may hold, its ceiling's and every ancestor's globs
#: (restated for its root) included: a delegation adds to its parent's list.
HELD_DENY_LIMITS = DenyLimits(globs=512, characters=8192, classes=128)
#: Operations that may name a path that does not exist yet.
_CREATING = frozenset({"write", "create"})


class TargetError(Refusal):
    """A path or file URI is malformed; ``reason`` is the reason code."""


def parse_target(target: object) -> str:
    """The absolute path an absolute path or ``file://`` URI names.

    A URI is percent-decoded exactly once (so ``%252e`` is the name ``%2e``,
    never ``.``), as strict UTF-8 (so overlong encodings like ``%c0%ae`` are
    refused). A plain path is taken literally: ``%`` is a legal filename
    character. NUL and control characters, relative paths, other schemes,
    hosts, queries and fragments are refused.
    """
    if not isinstance(target, str):
        raise TargetError("bad_target", "the target must be a string")
    if len(target) > 3 * MAX_PATH_LENGTH:
        raise TargetError("path_too_long", "the target is too long")
    if has_control_char(target):
        raise TargetError("control_character", "control character in the target")
    if target[:7].lower() == "file://":
        path = _decode_uri_path(target)
    elif _URI_SCHEME.match(target):
        raise TargetError("bad_target", "not a path or a file:// URI")
    else:
        path = target
    if not path.startswith("/"):
        raise TargetError("relative_path", "the path must be absolute")
    if len(path) > MAX_PATH_LENGTH:
        raise TargetError("path_too_long", f"the path is longer than {MAX_PATH_LENGTH}")
    return path


def _decode_uri_path(uri: str) -> str:
    rest = uri[7:]
    if not rest.startswith("/"):
        raise TargetError("bad_target", "a file URI must have an empty host: file:///path")
    if "?" in rest or "#" in rest:
        raise TargetError("bad_target", "a file URI may not have a query or fragment")
    if "%" not in rest:  # nothing to decode (parse_target checked the whole URI)
        return rest
    if _BAD_ESCAPE.search(rest):
        raise TargetError("bad_encoding", "malformed percent-encoding")
    try:
        path = urllib.parse.unquote(rest, errors="strict")
    except UnicodeDecodeError:
        raise TargetError("bad_encoding", "percent-encoding is not valid UTF-8") from None
    if has_control_char(path):
        raise TargetError("control_character", "control character in the decoded path")
    return path


def _to_uri(path: str) -> str:
    return "file://" + urllib.parse.quote(path, safe=_SAFE)


@functools.lru_cache(maxsize=1024)
def _root_of(resource: str) -> str:
    """The resolved path of a canonical resource (its URI decoded once)."""
    return urllib.parse.unquote(resource[7:], errors="strict")


def _union(first: list[str], second: list[str]) -> list[str]:
    return sorted(set(first) | set(second))


_MEET: Mapping[str, Callable[[Any, Any], Any]] = {"deny": _union, "max_bytes": min}
_NORMALIZERS: Mapping[str, Normalizer] = {
    "deny": lambda key, value: string_list(
        key, value, normalize_glob, check_all=NAMED_DENY_LIMITS.check
    ),
    "max_bytes": positive_int,
}


class FilesystemValidator(SchemeValidator):
    """Paths beneath a resolved directory (or one file), with deny globs and a size cap."""

    schemes: ClassVar[frozenset[str]] = frozenset({"file"})
    operations: ClassVar[frozenset[str]] = frozenset(
        {"read", "write", "list", "stat", "create", "delete"}
    )
    kind: ClassVar[str] = "file"
    additive_constraints: ClassVar[frozenset[str]] = frozenset({"deny"})
    fold_operation = staticmethod(str.lower)
    constraint_normalizers = _NORMALIZERS
    constraint_meets = _MEET

    # -- the algebra -----------------------------------------------------------

    def canonical_resource(self, uri: str) -> str:
        """``file:///abs/dir`` with ``..`` and symlinks resolved, as of now.

        Resolving at grant time pins the capability to the directory that
        exists now: a symlink swapped in later cannot move the root.
        """
        if not isinstance(uri, str) or uri[:7].lower() != "file://":
            raise ResourceError("a file resource must be a file:///absolute/path URI")
        try:
            path = parse_target(uri)
            resolved = resolve(path)
        except (TargetError, ResolveError) as error:
            raise ResourceError(f"bad file resource: {error}") from None
        return _to_uri(resolved.path)

    def resource_within(self, inner: str, outer: str) -> bool:
        return is_within(_root_of(inner), _root_of(outer))

    def rebase_constraints(
        self, constraints: Mapping[str, Any], outer: str, inner: str
    ) -> dict[str, Any]:
        """Deny globs are relative to the resource: restate them for ``inner``."""
        patterns = constraints.get("deny")
        if not patterns or inner == outer:
            return dict(constraints)
        outer_root, inner_root = _root_of(outer), _root_of(inner)
        if not is_within(inner_root, outer_root):
            raise ConstraintError(f"{inner} is not within {outer}")
        relative = inner_root[len(outer_root) :].lstrip("/")
        rebased: set[str] = set()
        for pattern in patterns:
            rests = rebase_glob(pattern, relative)
            if rests is None:
                raise ConstraintError(f"{inner} is denied by the deny glob {pattern!r}")
            rebased.update(rests)
        result = {key: value for key, value in constraints.items() if key != "deny"}
        if rebased:
            result["deny"] = sorted(rebased)
        return result

    # -- one use -----------------------------------------------------------------

    def check_held_constraints(self, constraints: Mapping[str, Any]) -> None:
        """The deny list within :data:`HELD_DENY_LIMITS`."""
        patterns = constraints.get("deny")
        if patterns:
            try:
                HELD_DENY_LIMITS.check(patterns)
            except ValueError as error:
                raise ConstraintError(f"deny {error}, the most one capability may hold") from None

    def prepare_constraints(self, constraints: Mapping[str, Any]) -> Mapping[str, Any]:
        """The deny list as :class:`~capsup.validators.paths.DenyGlobs`, once
        checked to be what the kernel makes: a list of normalized globs within
        the limits (a stored capability may predate today's)."""
        patterns = constraints.get("deny")
        if not patterns:
            return constraints
        stored = string_list(
            "deny",
            patterns,
            _as_normalized,
            max_entries=HELD_DENY_LIMITS.globs,
            check_all=HELD_DENY_LIMITS.check,
        )
        return {**constraints, "deny": DenyGlobs.of(stored)}

    def decide(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        if use.operation not in self.operations:
            return deny("unknown_operation", f"{use.operation!r} is not a file operation")
        if bad_size(use.size):
            return deny("bad_size", "size must be a non-negative integer")
        root = _root_of(resource)
        path = parse_target(use.target)
        resolved = resolve(path)
        if not is_within(resolved.path, root):
            lexical = lexically_normal(path)
            if is_within(lexical, root):
                return deny("symlink_escape", "a symlink leads outside the resource")
            return deny("outside_resource", "the path is outside the resource")
        if not resolved.exists and use.operation not in _CREATING:
            return deny("not_found", "no such file or directory")
        globs = constraints.get("deny")
        if globs:
            if not isinstance(globs, DenyGlobs):  # normalized, not prepared
                globs = DenyGlobs(globs)
            decision = _check_globs(globs, root, path, resolved.path)
            if decision is not None:
                return decision
        max_bytes = constraints.get("max_bytes")
        if max_bytes is not None:
            return _check_size(max_bytes, use, resolved.path)
        return ALLOW


def _as_normalized(glob: str) -> str:
    """``glob`` if it is in the form :func:`normalize_glob` gives (not compiled)."""
    if glob_shape(glob) != glob:
        raise ValueError(f"glob {glob[:100]!r} is not normalized")
    return glob


def _check_globs(globs: DenyGlobs, root: str, path: str, resolved: str) -> Decision | None:
    """Deny if the resolved path, or the path as named, matches a deny glob.

    Both spellings are checked so that neither a symlink to a denied file nor
    a symlink named like a denied file gets around the glob.
    """
    named = lexically_normal(path)
    for candidate in (resolved,) if named == resolved else (resolved, named):
        if not is_within(candidate, root):
            continue
        relative = candidate[len(root) :].lstrip("/")
        matched = globs.first_match(relative)
        if matched is not None:
            return deny("denied_by_glob", f"matches the deny glob {matched!r}")
    return None


def _check_size(max_bytes: int, use: Use, path: str) -> Decision:
    """``max_bytes`` caps what is written (``use.size``) and what is read (the file size)."""
    if use.operation in _CREATING:
        if use.size is None:
            return deny("size_unknown", "max_bytes needs the size of what is written")
        if use.size > max_bytes:
            return deny("too_large", f"{use.size} bytes is more than max_bytes {max_bytes}")
    elif use.operation == "read":
        try:
            info = os.stat(path)  # noqa: PTH116 -- str paths on the hot path, no Path objects
        except OSError as error:  # gone or unreadable since it was resolved
            return deny("resolve_failed", str(error))
        if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
            return deny("too_large", f"the file has {info.st_size} bytes, max_bytes {max_bytes}")
    return ALLOW
