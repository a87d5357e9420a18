"""Path resolution and deny globs for the filesystem validator.

A path that exists is resolved by the kernel itself: opened with ``O_PATH``
(which opens nothing: no read, no device side effects, no FIFO blocking)
through ``openat2(2)``. Without a symlink on the way (``RESOLVE_NO_SYMLINKS``
succeeds) the path is its own normal form: two system calls. Otherwise it is
opened again with ``RESOLVE_NO_MAGICLINKS`` and named by ``/proc/self/fd``:
four. Either way, at any depth, it is the very resolution a real ``open``
would do, ``..`` after a symlink and bind mounts included. Refusing magic
links is what makes the name trustworthy:
``/proc/PID/root`` and its kin lead into another mount namespace, where an
object outside the root can carry, there, a name inside it (and the same
name resolved again here leads through the same link to the same object,
so no after-the-fact comparison can tell).

Anything else (a missing component, a symlink loop, a directory the
supervisor may not search, a magic link, a kernel without ``openat2``) is
walked here component by
component with ``lstat``/``readlink`` (refusing ``/proc`` magic links, which
the kernel follows to an object, not to their text), rather than with
:func:`os.path.realpath`, because the validator needs to know what realpath
hides: whether a loop stopped the walk (realpath then returns the unresolved
path), whether the path exists, and why a component could not be examined.
Components that do not exist yet are kept lexically, which is what "resolve
the deepest existing ancestor" means for a file about to be created.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import stat
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capsup.validators._common import has_control_char
from capsup.validators.base import Refusal
from capsup.validators.openat2 import (
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    OpenHow,
    path_opener,
)

__all__ = [
    "MAX_GLOB_LENGTH",
    "MAX_CLASS_RANGE",
    "MAX_GLOB_WILDCARDS",
    "MAX_SYMLINK_HOPS",
    "DenyGlobs",
    "ResolveError",
    "Resolved",
    "fold_case",
    "glob_shape",
    "is_within",
    "lexically_normal",
    "normalize_glob",
    "rebase_glob",
    "resolve",
    "resolve_by_walking",
]

#: Linux's MAXSYMLINKS: more hops than this is a loop (ELOOP).
MAX_SYMLINK_HOPS = 40

#: The longest deny glob, in characters as given. Matching takes time bounded
#: by the path's length times the glob's; this bounds that product (a path is
#: at most PATH_MAX, 4096) and the cost of compiling a glob an agent sends.
MAX_GLOB_LENGTH = 1024
#: The most ``*``, ``?`` and ``[`` characters in one deny glob (``**`` is two).
#: Matching does not depend on it; compiling does, a class most (about a
#: tenth of a millisecond each, per reading), and no policy needs more than
#: a handful.
MAX_GLOB_WILDCARDS = 64
#: The widest range in a glob's character class, in code points (``a-z`` is
#: 25). Python's regex compiler builds a map of every code point a class
#: spans: a range over the whole of Unicode costs milliseconds per compile,
#: thousands of times the cost of ``[a-z]``, and a glob may come from an agent.
MAX_CLASS_RANGE = 256
_CLASS_RANGE = re.compile(r"(.)-(.)", re.DOTALL)


class ResolveError(Refusal):
    """A path cannot be resolved; ``reason`` is the validator's reason code."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """An absolute path with ``..`` and every symlink resolved.

    ``exists`` is false when some component is missing; the components from
    the first missing one on are lexical (they cannot be symlinks yet).
    """

    path: str
    exists: bool


def resolve(path: str) -> Resolved:
    """Resolve the absolute ``path`` as the kernel does.

    Raises :class:`ResolveError` on a symlink loop or when a component cannot
    be examined (for instance a directory the supervisor may not search):
    what cannot be resolved cannot be decided.
    """
    resolved = _resolve_existing(path)
    return resolved if resolved is not None else resolve_by_walking(path)


#: ``d_path`` marks an unlinked file so; a real name may end so too.
_DELETED = " (deleted)"


def _resolve_existing(path: str) -> Resolved | None:
    """The kernel's own resolution of an existing ``path``, or None when it
    cannot say (the walk then decides, and explains a failure). Raises
    :class:`ResolveError` for a path through a magic link."""
    open_path = path_opener()
    if open_path is None or "\0" in path:
        return None
    # Most paths hold no symlink at all. Then the kernel's ``..`` is the
    # lexical one, so an open that refuses every symlink proves the path
    # exists and is its own normal form: two system calls, no /proc.
    fd = open_path(path, _NO_SYMLINKS)
    if fd >= 0:
        os.close(fd)
        return Resolved(lexically_normal(path), True)
    if fd != -errno.ELOOP:  # missing, or not searchable: the walk explains
        return None
    fd_dir = _own_fd_dir()
    if fd_dir is None:
        return None
    fd = open_path(path, _NO_MAGIC_LINKS)
    if fd == -errno.ELOOP:
        # A symlink loop, or a magic link of any procfs mount, not only the
        # one at /proc that the walk recognizes by its device. The walk names
        # the loop, or the /proc link; whatever else it would answer, the
        # kernel met a link it refuses to follow, so the path is refused.
        resolve_by_walking(path)
        raise ResolveError("magic_link", f"{path[:200]!r} goes through a /proc link")
    if fd < 0:  # missing since the first open, or not searchable: the walk explains
        return None
    try:
        named = os.readlink(str(fd), dir_fd=fd_dir)
    except OSError:
        return None
    finally:
        os.close(fd)
    # Not a path: a name outside this process's root ("(unreachable)/..."),
    # or a file unlinked since it was opened. The walk answers those lexically.
    if not named.startswith("/") or named.endswith(_DELETED):
        return None
    return Resolved(named, True)


def lexically_normal(path: str) -> str:
    """The absolute ``path`` without empty, ``.`` and ``..`` segments (``//``
    is ``/`` on Linux, unlike :func:`os.path.normpath`'s POSIX reading)."""
    if "//" not in path and "/." not in path and (path == "/" or not path.endswith("/")):
        return path  # the common case, without a split
    parts: list[str] = []
    for name in path.split("/"):
        if name == "..":
            if parts:
                parts.pop()
        elif name not in ("", "."):
            parts.append(name)
    return "/" + "/".join(parts)


@functools.cache
def _own_fd_dir() -> int | None:
    """``/proc/self/fd``, opened once (it saves the kernel a walk through
    procfs on every resolution), or None without /proc.

    A forked child must not use its parent's: that directory lists the
    parent's descriptors, so fd N there is not the child's fd N. The child
    forgets it (leaving the descriptor to the parent, whose it is) and opens
    its own."""
    try:
        return os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # every path is walked


os.register_at_fork(after_in_child=_own_fd_dir.cache_clear)


# Module-level, so their memory outlives every call that points at it.
_HOW_NO_SYMLINKS = OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS)
_HOW_NO_MAGIC_LINKS = OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_MAGICLINKS)
_NO_SYMLINKS = ctypes.c_void_p(ctypes.addressof(_HOW_NO_SYMLINKS))
_NO_MAGIC_LINKS = ctypes.c_void_p(ctypes.addressof(_HOW_NO_MAGIC_LINKS))


@functools.cache
def _procfs_dev() -> int | None:
    """The device of the procfs mounted at /proc, whose symlinks are magic."""
    try:
        return Path("/proc").stat().st_dev
    except OSError:
        return None


def resolve_by_walking(path: str) -> Resolved:
    """Resolve ``path`` one component at a time, following at most
    :data:`MAX_SYMLINK_HOPS` symlinks, as the kernel's path walk does."""
    pending = path.split("/")
    pending.reverse()
    parts: list[str] = []
    missing_from: int | None = None  # index in parts of the first missing component
    hops = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if parts:
                parts.pop()
                if missing_from is not None and len(parts) <= missing_from:
                    missing_from = None
            continue
        parts.append(name)
        if missing_from is not None:
            continue
        current = "/" + "/".join(parts)
        try:
            info = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            missing_from = len(parts) - 1
            continue
        except OSError as error:
            raise ResolveError("resolve_failed", f"cannot examine {current!r}: {error}") from None
        if not stat.S_ISLNK(info.st_mode):
            continue
        if info.st_dev == _procfs_dev():
            # A process's root, cwd or fd: the kernel follows these to the
            # object, not the text, which can be in another mount namespace.
            raise ResolveError("magic_link", f"{current!r} is a /proc link, not followed")
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise ResolveError("symlink_loop", f"more than {MAX_SYMLINK_HOPS} symlinks")
        try:
            link = os.readlink(current)  # noqa: PTH115 -- str paths on the hot path, no Path objects
        except OSError as error:
            raise ResolveError("resolve_failed", f"cannot read link {current!r}: {error}") from None
        parts.pop()
        if link.startswith("/"):
            parts.clear()
        link_parts = link.split("/")
        link_parts.reverse()
        pending.extend(link_parts)
    return Resolved("/" + "/".join(parts), missing_from is None)


def is_within(inner: str, outer: str) -> bool:
    """Whether normalized absolute path ``inner`` is ``outer`` or beneath it, by segments."""
    if outer == "/":
        return inner.startswith("/")
    return inner == outer or inner.startswith(outer + "/")


def normalize_glob(pattern: str) -> str:
    """The canonical spelling of a deny glob, relative to the capability root,
    checked to compile: ``[z-a]``, and a class range wider than
    :data:`MAX_CLASS_RANGE`, are refused when given, not at each check.

    Raises :class:`ValueError` as :func:`glob_shape` does, and for a glob
    that is not a valid pattern.
    """
    glob = glob_shape(pattern)
    try:
        _compile(glob)
    except re.error as error:
        raise ValueError(f"glob {pattern[:100]!r} is not a valid pattern: {error}") from None
    return glob


def glob_shape(pattern: str) -> str:
    """:func:`normalize_glob` without compiling: the canonical spelling.

    Empty, ``.`` and trailing segments are dropped so equal globs compare
    equal; absolute globs and ``..`` are refused because a glob can only name
    things beneath the root it is attached to. So are globs longer than
    :data:`MAX_GLOB_LENGTH` or with more than :data:`MAX_GLOB_WILDCARDS`
    wildcards: no policy needs them, and an agent may send any glob.
    """
    if len(pattern) > MAX_GLOB_LENGTH:
        raise ValueError(f"glob {pattern[:100]!r}... is longer than {MAX_GLOB_LENGTH} characters")
    wildcards = pattern.count("*") + pattern.count("?") + pattern.count("[")
    if wildcards > MAX_GLOB_WILDCARDS:
        raise ValueError(
            f"glob {pattern[:100]!r} has {wildcards} wildcards ('*', '?', '['), "
            f"more than {MAX_GLOB_WILDCARDS}"
        )
    if has_control_char(pattern):
        raise ValueError("a glob may not hold control characters")
    if pattern.startswith("/"):
        raise ValueError(f"glob {pattern[:100]!r} must be relative to the resource")
    segments = [seg for seg in pattern.split("/") if seg not in ("", ".")]
    if ".." in segments:
        raise ValueError(f"glob {pattern[:100]!r} may not contain '..'")
    if not segments:
        raise ValueError("a glob may not be empty")
    return "/".join(segments)


class DenyGlobs:
    """A capability's deny list, compiled the first time it is checked and
    then kept with the capability.

    The kernel prepares each live capability's constraints when it takes the
    capability in, and the filesystem validator makes this then (through
    :meth:`of`). Compiled patterns kept here, and not only in a cache of
    bounded size, are what keep the cost of a check independent of every
    other capability: behind such a cache, an agent holding more distinct
    globs than it holds could make every check compile its list again.
    Compiling on the first check, not when the capability is made, keeps the
    compiling one message can cause to one list: a ``spawn`` of 64
    delegations restates its parents' globs 64 times (new strings, for a
    deeper root) and compiles none of them. Lists are shared by every
    capability that holds the same one, and compiled globs by every list
    that holds the same glob.
    """

    __slots__ = ("__weakref__", "_both", "_folded", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns)
        self._folded: tuple[re.Pattern[str], ...] | None = None
        # The second reading is needed only for a name with a character that
        # folds to several (``\u00df``); most lists never compile it.
        self._both: tuple[re.Pattern[str], ...] | None = None

    @classmethod
    def of(cls, patterns: Sequence[str]) -> DenyGlobs:
        """The live list of ``patterns``, made if no capability holds it yet."""
        key = tuple(patterns)
        globs = _LIVE_LISTS.get(key)
        if globs is None:
            globs = _LIVE_LISTS[key] = cls(key)
        return globs

    def first_match(self, relative: str) -> str | None:
        """The first glob that denies ``relative`` or one of its ancestors.

        ``relative`` is a path beneath the capability root without a leading
        slash ("" for the root itself). Matching an ancestor is what makes a
        denied directory deny everything inside it.

        Case does not count: a glob denies a name it matches in either of two
        readings, chosen name by name. By character: the glob matches the name
        as spelled, or respelled with characters that fold alike (``SECRET.KEY``
        for ``secret.key``, ``\u1e9e`` for ``\u00df``). Folded: the glob's
        folding matches the name's (:func:`fold_case`; ``stra\u00dfe`` denies
        ``STRASSE``), ``?`` and a class standing for one folded character.

        Raises :class:`re.error` for a glob that cannot be compiled (one
        stored before today's checks); the validator denies then.
        """
        folded = relative.lower() if relative.isascii() else fold_case(relative)
        if len(folded) == len(relative):
            # No character folds to several (ASCII never does): then the folded
            # reading matches whatever the by-character one would.
            if self._folded is None:
                self._folded = tuple(_shared(_LIVE_FOLDED, _compile, p) for p in self.patterns)
            for pattern, compiled in zip(self.patterns, self._folded, strict=True):
                if compiled.match(folded):
                    return pattern
            return None
        if self._both is None:
            self._both = tuple(_shared(_LIVE_BOTH, _compile_both, p) for p in self.patterns)
        both = "/".join(f"{fold_case(name)}\0{_by_character(name)}" for name in relative.split("/"))
        for pattern, compiled in zip(self.patterns, self._both, strict=True):
            if compiled.match(both):
                return pattern
        return None

    def __repr__(self) -> str:
        return f"DenyGlobs({list(self.patterns)!r})"


#: Every deny list some live capability holds.
_LIVE_LISTS: weakref.WeakValueDictionary[tuple[str, ...], DenyGlobs] = weakref.WeakValueDictionary()
#: Every glob some live :class:`DenyGlobs` holds, compiled (by its two
#: readings): entries go when the last list holding them does.
_LIVE_FOLDED: weakref.WeakValueDictionary[str, re.Pattern[str]] = weakref.WeakValueDictionary()
_LIVE_BOTH: weakref.WeakValueDictionary[str, re.Pattern[str]] = weakref.WeakValueDictionary()


def _shared(
    live: weakref.WeakValueDictionary[str, re.Pattern[str]],
    compile_glob: Callable[[str], re.Pattern[str]],
    pattern: str,
) -> re.Pattern[str]:
    compiled = live.get(pattern)
    if compiled is None:
        compiled = live[pattern] = compile_glob(pattern)
    return compiled


def fold_case(text: str) -> str:
    """``text`` with case folded away: two names that a case-insensitive
    filesystem may take for one file fold to the same string.

    Unicode full case folding (:meth:`str.casefold`, as ext4 and f2fs
    casefold directories fold, ``Stra\u00dfe`` -> ``strasse``), with the dotless
    i (U+0131) folded to ``i`` as well, because exFAT, NTFS and SMB servers
    compare upper-cased names and it upper-cases to ``I``. Folding works
    character by character, never yields ``/`` or an empty string, and its
    result folds to itself.
    """
    if text.isascii():
        return text.lower()  # what casefold gives for ASCII, and faster
    return text.casefold().replace("\u0131", "i")


def _by_character(text: str) -> str:
    """``text`` with each character replaced by the one that stands for all
    characters folding alike: its folding when that is one character, else
    the first character with that folding (``\u00df`` for ``\u00df`` and
    ``\u1e9e``, whose folding is ``ss``). As long as ``text``."""
    return text.translate(_representatives()[1])


def rebase_glob(pattern: str, relative: str) -> list[str] | None:
    """``pattern`` (relative to a root) said of the directory ``relative``
    beneath that root: the globs that deny, relative to it, exactly what
    ``pattern`` denies beneath it. None when ``pattern`` denies ``relative``
    itself or an ancestor of it, which denies everything there.

    Needed wherever a capability is narrowed to a deeper root: a glob copied
    unchanged would be read relative to the new root and deny other paths.
    Names are compared as :meth:`DenyGlobs.first_match` compares them, ignoring
    case, so ``data/**`` denies a new root spelled ``DATA`` and ``data/*.key``
    restated for ``DATA`` is ``*.key``. What remains of the pattern keeps its
    spelling; it ignores case again wherever it is checked.
    """
    segments = pattern.split("/")
    while segments and segments[-1] == "**":  # "a/**" matches what "a" matches
        segments.pop()
    names = [name for name in relative.split("/") if name]
    rests: set[str] = set()
    # States (glob segments consumed, names consumed); "**" may take any
    # number of names, so there can be several ways through.
    pending = [(0, 0)]
    seen: set[tuple[int, int]] = set()
    while pending:
        state = pending.pop()
        if state in seen:
            continue
        seen.add(state)
        at, taken = state
        if at == len(segments):
            return None  # matched names[:taken]: ``relative`` or an ancestor
        if taken == len(names):
            rests.add("/".join(segments[at:]))
        elif segments[at] == "**":
            pending += [(at + 1, taken), (at, taken + 1)]
        elif _segment_matches(segments[at], names[taken]):
            pending.append((at + 1, taken + 1))
    return _without_covered(rests)


def _without_covered(globs: set[str]) -> list[str]:
    """``globs`` without those another of them denies all of: ``**/X``
    denies whatever ``X`` or ``P/X`` denies (``**`` spans ``P``).

    A glob with several ``**`` restated for a deeper root gives one rest per
    way through, mostly covered so: 26 such globs gave 1612 rests, 52 of
    them needed. Only a glob kept can cover another, so what is left denies
    exactly what all of them did."""
    kept: list[str] = []
    tails: list[str] = []
    # "**/" globs first, shortest first: a covering glob comes before those
    # it covers (``**/**/X`` after ``**/X``).
    for glob in sorted(globs, key=lambda g: (not g.startswith("**/"), len(g), g)):
        if any(glob == tail or glob.endswith("/" + tail) for tail in tails):
            continue
        kept.append(glob)
        if glob.startswith("**/"):
            tails.append(glob[3:])
    return sorted(kept)


def _segment_matches(segment: str, name: str) -> bool:
    """Whether one glob segment denies one name, as :meth:`DenyGlobs.first_match` reads it."""
    folded = fold_case(name)
    if _compile_segment(segment, by_character=False).fullmatch(folded):
        return True
    return len(folded) != len(name) and bool(
        _compile_segment(segment, by_character=True).fullmatch(_by_character(name))
    )


@functools.lru_cache(maxsize=1024)
def _compile_segment(segment: str, *, by_character: bool) -> re.Pattern[str]:
    return re.compile(_segment_regex(segment, by_character=by_character), re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    """Translate a normalized glob into an anchored regular expression,
    matched against a folded path that no character of folds to several.

    ``*`` and ``?`` never cross a ``/``; ``**`` as a whole segment spans any
    number of segments; ``[...]`` is a character class (``[!...]`` negated).
    The regex matches (:meth:`re.Pattern.match`, not ``fullmatch``) the
    path up to the end of a name: the path or an ancestor of it.
    """
    return _glob_regex(
        pattern, lambda segment: f"(?>{_segment_regex(segment, by_character=False)}(?![^/]))"
    )


@functools.lru_cache(maxsize=1024)
def _compile_both(pattern: str) -> re.Pattern[str]:
    """:func:`_compile` for a path given as each name's folding, a NUL, and
    its by-character form: each glob segment matches a name in one reading
    or the other.

    Each choice is an atomic group: both alternatives take the whole name,
    so the first that matches is as good as the other, and a failure later
    on never tries the second (no backtracking that doubles per segment).
    """

    def either(segment: str) -> str:
        folded = _segment_regex(segment, by_character=False, one=_ONE_OF_BOTH)
        by_character = _segment_regex(segment, by_character=True, one=_ONE_OF_BOTH)
        return f"(?>{folded}\\0[^/]*+|[^/\\0]*+\\0{by_character}(?![^/]))"

    return _glob_regex(pattern, either)


def _glob_regex(pattern: str, name_regex: Callable[[str], str]) -> re.Pattern[str]:
    """The regex of a glob whose segment ``s`` matches one whole name where
    ``name_regex(s)`` does: an atomic group that ends at the name's end.

    It takes time bounded by the path's length times the glob's, however
    many ``**`` there are. The glob's segments are runs of names separated
    by ``**``, and a glob matching an ancestor, it ends in an implicit
    ``**`` too. The first run is anchored at the start; every later one is
    matched at its leftmost place after the one before, and that choice is
    final (an atomic group around a lazy skip of whole names). A run always
    takes as many names as it has segments, so its leftmost place also ends
    first, which leaves the most names for the runs after it: if the path
    matches at all, it matches so.
    """
    runs: list[list[str]] = [[]]
    for segment in pattern.split("/"):
        if segment != "**":
            runs[-1].append(segment)
        elif runs[-1] or len(runs) == 1:  # "**/**" skips what "**" skips
            runs.append([])
    if not runs[-1]:
        runs.pop()  # "a/**" matches what "a" matches
    if not any(runs):
        return re.compile("", re.DOTALL)  # "**" alone: everything, the root too
    # (?=.): a glob with a segment names something beneath the root, never
    # the root itself (whose relative path is ""), even if ``*`` could be empty.
    pieces = [r"(?=.)", "/".join(map(name_regex, runs[0]))]
    for index, run in enumerate(runs[1:]):
        names = "/".join(map(name_regex, run))
        if index == 0 and not runs[0]:  # a leading "**": from the first name on
            pieces.append(f"(?>(?:[^/]++/)*?{names})")
        else:  # after a name: from the next name on
            pieces.append(f"(?>(?:/[^/]++)*?/{names})")
    return re.compile("".join(pieces), re.DOTALL)


#: One character of a name: never ``/``, nor the NUL between two readings.
_ONE = "[^/]"
_ONE_OF_BOTH = "[^/\\0]"


def _segment_regex(segment: str, *, by_character: bool, one: str = _ONE) -> str:
    """The regex of one glob segment, for names folded (or, with
    ``by_character``, by character). ``one`` matches one character.

    Matched against a whole name, it takes time bounded by the name's length
    times the segment's, however many ``*`` there are. Between the stars are
    chunks of a fixed length (literals, ``?``, classes: one character each,
    or a letter's folding). The first chunk is anchored at the name's start
    and the last at its end, where ``one*`` before it backtracks over a
    single gap. Each chunk in between is taken at its leftmost place after
    the previous one, and that choice is final (an atomic group around a
    lazy gap): ending first, it leaves the most room for the chunks after
    it, so if the name matches at all, it matches so.
    """
    chunks: list[list[str]] = [[]]
    for atom in _segment_atoms(segment, by_character=by_character, one=one):
        if atom is not None:
            chunks[-1].append(atom)
        elif chunks[-1] or len(chunks) == 1:  # "a**b" is "a*b"
            chunks.append([])
    if len(chunks) == 1:  # no star
        return "".join(chunks[0])
    first, *middle, last = ("".join(chunk) for chunk in chunks)
    gaps = "".join(f"(?>{one}*?{chunk})" for chunk in middle)
    return f"{first}{gaps}{one}*{last}" if last else f"{first}{gaps}{one}*+"


def _segment_atoms(segment: str, *, by_character: bool, one: str) -> list[str | None]:
    """The regex of each character of a glob segment that is not ``*``, each
    of a fixed length, and None for each ``*``."""
    spell = _by_character if by_character else fold_case
    out: list[str | None] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            out.append(None)
        elif ch == "?":
            out.append(one)
        elif ch == "[":
            end = segment.find("]", i + 2 if segment[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = segment[i + 1 : end]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\").replace("[", "\\[").replace("^", "\\^")
                out.append(_class_regex(body, negate, by_character) + one)
                i = end
        else:
            out.append(re.escape(spell(ch)))
        i += 1
    return out


@functools.lru_cache(maxsize=1024)
def _class_regex(body: str, negate: bool, by_character: bool) -> str:
    """A lookahead for one character that a class (``body``, escaped for a
    regex class) admits, in a folded or by-character name: a character some
    member spells so (negated: some character outside the class and ``/``).

    A character that is spelled as itself stands for itself, so the class as
    written (negated or not) admits exactly those; the spellings of the
    others it admits are added, unless it admits them already (a negated
    class admits almost all: listed, they made each such class a regex of a
    thousand characters, a millisecond to compile). In a lookahead, which
    never backtracks, so that a character both admit gives one way through,
    not two; the character itself is then taken by ``one`` (never ``/``, so
    that ranges such as ``[.-0]`` do not match it).
    """
    # Checked before anything is compiled: the compiler pays for every code
    # point a range spans. (An escaped character pairs with its escape's
    # second character, which is the character itself.)
    for low, high in _CLASS_RANGE.findall(body):
        if ord(high) - ord(low) > MAX_CLASS_RANGE:
            raise re.error(f"class range {low}-{high} is wider than {MAX_CLASS_RANGE} characters")
    own = f"[{'^' if negate else ''}{body}]"
    admits = re.compile(own, re.DOTALL)  # raises re.error for [z-a]
    refuses = re.compile(f"[{'' if negate else '^'}{body}]", re.DOTALL)
    respelled, spelling = _single_spellings(by_character)
    # Whole strings through C, not a call per character of the table.
    spelled = refuses.sub("", respelled).translate(spelling)
    extra = set(admits.sub("", spelled))
    if extra:
        own += "|[" + "".join(re.escape(char) for char in sorted(extra)) + "]"
    return f"(?={own})"


@functools.cache
def _single_spellings(by_character: bool) -> tuple[str, dict[int, str]]:
    """The characters that a name folded (or, with ``by_character``, spelled
    by character) spells as another single character, in one string, and a
    :meth:`str.translate` table to that character."""
    spellings = _representatives()[0] if by_character else _unfolded()
    single = {char: spelled for char, spelled in spellings.items() if len(spelled) == 1}
    return "".join(single), {ord(char): spelled for char, spelled in single.items()}


#: Unicode assigns no cased character at or above this code point (planes 2
#: and up hold CJK, tags, variation selectors and private use); a test checks
#: it against the running Python's Unicode database.
_CASED_LIMIT = 0x20000


@functools.cache
def _unfolded() -> dict[str, str]:
    """Every character that does not fold to itself, with its folding, in
    code point order."""
    table: dict[str, str] = {}
    for code in range(_CASED_LIMIT):
        if 0xD800 <= code < 0xE000:  # surrogates: never in a decoded name
            continue
        char = chr(code)
        folded = fold_case(char)
        if folded != char:
            table[char] = folded
    return table


@functools.cache
def _representatives() -> tuple[dict[str, str], dict[int, str]]:
    """Every character that :func:`_by_character` replaces, with its
    replacement; and the same as a :meth:`str.translate` table."""
    first: dict[str, str] = {}
    for char, folded in _unfolded().items():
        if len(folded) > 1:
            first.setdefault(folded, char)
    table: dict[str, str] = {}
    for char, folded in _unfolded().items():
        spelled = folded if len(folded) == 1 else first[folded]
        if spelled != char:
            table[char] = spelled
    return table, {ord(char): spelled for char, spelled in table.items()}
