"""The file broker: the supervisor checks and performs a file operation in one step.

For each op the kernel first decides every operation the op needs
(``Kernel.validate``: its decision and its audit record), then the broker
performs it without ever walking a checked path string again:

1. The capability's root (canonical since grant time) is opened with
   ``O_PATH`` under ``RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``; a root
   that is one file is reached through its parent, opened so.
2. The target is opened relative to that descriptor, as named, with
   ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``: the kernel refuses,
   atomically with the open, ``..`` above the root, absolute symlinks and
   symlinks that lead out (``EXDEV``), and ``/proc`` magic links.
3. What was opened is checked again, purely, by the ``file://`` validator
   under the name the kernel gives it (``/proc/self/fd/N``), so a symlink
   swapped in after the kernel's check cannot lead to a name a ``deny`` glob
   covers; ``fstat`` on it decides its kind, its links and its size.
4. Only then is it read, written, listed or handed over: through the same
   descriptor (reopened through ``/proc/self/fd/N`` with the real flags), or
   for a new name and a removal, relative to the held parent directory.

Refusals are :class:`~capsup.agents.errors.ConstraintViolation` with a
``reason`` (docs/capabilities.md, "The file broker"); every outcome after
the kernel's allow, effect or refusal, is one ``file_operation`` record
with the request's trace id.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn, TypeVar

from capsup.agents import protocol as p
from capsup.agents.capability import Capability
from capsup.agents.errors import ConstraintViolation
from capsup.supervisor.brokers.effects import clip, effect_event
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.kernel import Kernel
from capsup.supervisor.principal import Principal
from capsup.supervisor.secret_file import is_secret
from capsup.validators import FilesystemValidator, Use
from capsup.validators.filesystem import TargetError, parse_target
from capsup.validators.openat2 import (
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    openat2,
)

__all__ = ["MAX_LISTING_BYTES", "REASONS", "open_for_agent", "perform_file_op"]

#: Most bytes of names one ``listdir`` reply may carry (counted as encoded,
#: with each entry's fields): what one ``read`` may carry.
MAX_LISTING_BYTES: Final = p.MAX_IO_BYTES

_AT_FDCWD: Final = -100
#: Mode bits of a file ``write`` or ``open`` creates, before the umask.
_NEW_FILE_MODE: Final = 0o666
#: Resolution beneath a directory capability's root: symlinks are followed
#: only while they stay beneath it.
_BENEATH: Final = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
#: Resolution of the root itself, and beneath the parent of a one-file root
#: (whose file must not be a symlink: it was canonical when granted).
_EXACT: Final = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
#: How ``/proc/self/fd/N`` names a file unlinked since it was opened.
_DELETED: Final = " (deleted)"
#: An estimate, from above, of what one listing entry costs encoded besides its name.
_ENTRY_OVERHEAD: Final = 40

#: The reason each errno is refused with; any other errno is ``os_error``.
_ERRNO_REASONS: Final[Mapping[int, str]] = {
    errno.ENOENT: "not_found",
    errno.EEXIST: "exists",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
    errno.ENOTEMPTY: "directory_not_empty",
    errno.EXDEV: "symlink_escape",  # RESOLVE_BENEATH: a step out of the root
    errno.ELOOP: "symlink_loop",
    errno.ENAMETOOLONG: "path_too_long",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "too_large",
    errno.EAGAIN: "resource_changed",  # openat2 kept seeing renames under a `..`
}

#: Every reason the broker itself refuses with (the validator's, found when
#: it checks again what was opened, come on top); docs/capabilities.md has them.
REASONS: Final = frozenset(
    {
        *_ERRNO_REASONS.values(),
        "os_error",
        "outside_resource",
        "magic_link",
        "not_a_regular_file",
        "hard_link",
        "too_many_entries",
        "resource_root",
        "resource_changed",
        "bad_target",
        "validator_error",
        "secret_file",
    }
)

_VALIDATOR: Final = FilesystemValidator()
_T = TypeVar("_T")


class _Refused(Exception):
    """The broker refuses; becomes a recorded :class:`ConstraintViolation`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# -- what each op needs ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mode:
    """How an op opens its file: the operations it always needs, the flags of
    the descriptor it then uses, and whether it may or must make the file
    (making one needs ``create`` as well)."""

    needs: tuple[str, ...]
    flags: int
    creates: Literal["never", "may", "must"]

    @property
    def writes(self) -> bool:
        return self.flags & (os.O_WRONLY | os.O_RDWR) != 0


#: ``open``'s modes, as builtins.open reads them.
_OPEN_MODES: Final[Mapping[str, _Mode]] = {
    "r": _Mode(("read",), os.O_RDONLY, "never"),
    "w": _Mode(("write",), os.O_WRONLY | os.O_TRUNC, "may"),
    "a": _Mode(("write",), os.O_WRONLY | os.O_APPEND, "may"),
    "x": _Mode(("create",), os.O_WRONLY, "must"),
    "r+": _Mode(("read", "write"), os.O_RDWR, "never"),
}

#: ``write``: the whole file (truncated first), at an offset, or at the end.
_WRITE_REPLACE: Final = _Mode(("write",), os.O_WRONLY | os.O_TRUNC, "may")
_WRITE_AT: Final = _Mode(("write",), os.O_WRONLY, "may")
_WRITE_APPEND: Final = _Mode(("write",), os.O_WRONLY | os.O_APPEND, "may")


# -- one use ----------------------------------------------------------------------


class _Use:
    """One brokered op of one principal: the kernel's checks, the pure
    re-checks, and the ``file_operation`` record of its outcome."""

    def __init__(
        self,
        kernel: Kernel,
        principal: Principal,
        op: str,
        args: p.FileOpArgs | p.OpenArgs,
        *,
        now: float,
        trace_id: str,
        emit: Callable[[Event], None],
    ) -> None:
        self.kernel = kernel
        self.principal = principal
        self.op = op
        self.capability_id = args.capability
        self.target = args.resource
        self.now = now
        self.trace_id = trace_id
        self.emit = emit
        self.cap: Capability | None = None
        #: The path the kernel names what was acted on by, once opened.
        self.path: str | None = None
        self.nbytes = 0

    def validate(self, operation: str, size: int | None = None) -> Capability:
        """The kernel's decision on ``operation`` (raises, recorded, if denied)."""
        cap = self.kernel.validate(
            self.principal,
            self.capability_id,
            Use(operation, self.target, size),
            now=self.now,
            trace_id=self.trace_id,
        )
        self.cap = cap
        if not cap.resource.startswith("file://"):
            raise _Refused("bad_target", f"{cap.id} is not a file:// capability")
        return cap

    def recheck(
        self, operations: Sequence[str], path: str, size: int | None = None
    ) -> Mapping[str, Any]:
        """The validator's verdict on what was opened, under its real name:
        pure, no audit record (the kernel made the one of this use). Returns
        the capability's constraints as the validator prepared them."""
        cap = self.held()
        self.path = path
        try:
            prepared = _VALIDATOR.prepare_constraints(cap.constraints)
        except Exception as error:  # a stored capability today's kernel would not make
            raise _Refused("validator_error", f"{type(error).__name__}: {error}") from None
        for operation in operations:
            decision = _VALIDATOR.check(cap.resource, prepared, Use(operation, path, size))
            if not decision.allowed:
                # The path opened goes to the audit record, not to the agent.
                raise _Refused(decision.reason, f"what was opened, checked: {decision.detail}")
        return prepared

    def attempt(self, action: Callable[[], _T]) -> _T:
        """``action``'s result; a refusal of the broker's or of the operating
        system's is recorded and raised as :class:`ConstraintViolation`. The
        kernel's own refusals pass through: it recorded them."""
        try:
            return action()
        except _Refused as refusal:
            self._refuse(refusal.reason, refusal.message)
        except OSError as error:
            reason = _ERRNO_REASONS.get(error.errno or 0, "os_error")
            self._refuse(reason, _describe(error))

    def done(self, **detail: Any) -> None:
        """Record the effect (after it: a trail that cannot take the record
        makes the request fail, the effect of a write or delete stays)."""
        self.emit(self._event(None, {"result": "ok", **detail}))

    def held(self) -> Capability:
        """The capability the kernel validated for this use."""
        if self.cap is None:
            raise _Refused("validator_error", "no capability was validated")  # a bug: fail closed
        return self.cap

    def _refuse(self, reason: str, message: str) -> NoReturn:
        cap = self.cap
        error = ConstraintViolation(
            f"{self.op}: {message}",
            reason=reason,
            capability_id=cap.id if cap else None,
            trace_id=self.trace_id,
        )
        self.emit(self._event(reason, {"result": "refused", "message": error.message}))
        raise error

    def _event(self, reason: str | None, detail: dict[str, Any]) -> Event:
        return effect_event(
            EventType.FILE_OPERATION,
            now=self.now,
            trace_id=self.trace_id,
            principal=self.principal,
            cap=self.cap,
            capability_id=self.capability_id,
            op=self.op,
            reason=reason,
            detail={
                "target": clip(self.target),
                "path": None if self.path is None else clip(self.path),
                "bytes": self.nbytes,
                **detail,
            },
        )


# -- where a target lies -------------------------------------------------------


@dataclass(slots=True)
class _Place:
    """A target, relative to a held directory beneath which it must stay."""

    #: ``O_PATH`` descriptor of the root directory, or of a one-file root's parent.
    dirfd: int
    #: The target as named, relative to ``dirfd`` (``.`` for the root itself).
    rel: str
    #: Its parent directory, relative to ``dirfd``.
    parent_rel: str
    #: Its last name, ``None`` when the target is the root directory itself.
    name: str | None
    #: openat2's resolve flags for the target.
    resolve: int

    def open_target(self, *, directory: bool = False) -> int:
        """An ``O_PATH`` descriptor of the target, symlinks followed as ``resolve`` allows."""
        flags = os.O_PATH | (os.O_DIRECTORY if directory else 0)
        return _open_beneath(self.dirfd, self.rel, flags, self.resolve)

    def open_parent(self) -> tuple[int, str]:
        """An ``O_PATH`` descriptor of the target's directory, and the name a
        new file gets or a removal removes there."""
        name = self.name
        if name is None:
            raise _Refused("resource_root", "the capability's own root directory")
        if name in (".", ".."):
            raise _Refused("bad_target", f"name the entry itself, not {name!r}")
        flags = os.O_PATH | os.O_DIRECTORY
        return _open_beneath(self.dirfd, self.parent_rel, flags, _BENEATH), name


def _locate(cap: Capability, target: str) -> _Place:
    """Where ``target`` (a path or ``file://`` URI) lies beneath ``cap``'s root,
    with the root (or a one-file root's parent) opened; close ``dirfd``.

    The path is taken as named: it must start with the root's own names
    (never through a symlink outside it) and may not climb above the root
    with ``..``; the rest is left to the kernel's walk beneath the root."""
    root = urllib.parse.unquote(cap.resource[len("file://") :], errors="strict")
    root_names = [name for name in root.split("/") if name]
    try:
        path = parse_target(target)
    except TargetError as error:  # the kernel's check parsed it: not reached
        raise _Refused(error.reason, str(error)) from None
    names = [name for name in path.split("/") if name not in ("", ".")]
    if names[: len(root_names)] != root_names:
        raise _Refused("outside_resource", f"{clip(target)} is not named beneath {root}")
    rest = names[len(root_names) :]
    depth = 0
    for name in rest:
        depth += -1 if name == ".." else 1
        if depth < 0:
            raise _Refused("outside_resource", f"{clip(target)} climbs above {root}")
    try:
        dirfd = _open_exact(root, os.O_PATH)
    except FileNotFoundError:
        if rest:
            raise
        return _one_file(root)  # a file the capability allows to be made
    try:
        is_directory = stat.S_ISDIR(os.fstat(dirfd).st_mode)
    except BaseException:
        os.close(dirfd)
        raise
    if is_directory:
        return _Place(
            dirfd,
            "/".join(rest) or ".",
            "/".join(rest[:-1]) or ".",
            rest[-1] if rest else None,
            _BENEATH,
        )
    os.close(dirfd)
    if rest:
        raise _Refused("not_a_directory", f"{root} is a file, not a directory")
    return _one_file(root)


def _one_file(root: str) -> _Place:
    """The place of a capability on one file: its name in its parent."""
    parent, _, name = root.rpartition("/")
    return _Place(_open_exact(parent or "/", os.O_PATH | os.O_DIRECTORY), name, ".", name, _EXACT)


def _open_exact(path: str, flags: int) -> int:
    """Open a capability's canonical root (or its parent), refusing any symlink."""
    try:
        return openat2(_AT_FDCWD, path, flags, _EXACT)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _Refused(
                "resource_changed", f"{path} is no longer what was granted: a symlink is there now"
            ) from None
        raise


def _open_beneath(dirfd: int, rel: str, flags: int, resolve: int) -> int:
    """``openat2`` beneath ``dirfd``; an ``ELOOP`` is told apart (a magic link,
    a loop, or a symlink where the rules allow none)."""
    try:
        return openat2(dirfd, rel, flags, resolve)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
    # O_PATH opens nothing; RESOLVE_BENEATH alone refuses a magic link with EXDEV.
    try:
        os.close(openat2(dirfd, rel, os.O_PATH, RESOLVE_BENEATH))
    except OSError as probe:
        if probe.errno == errno.EXDEV:
            raise _Refused("magic_link", f"{rel!r} goes through a /proc link") from None
        if probe.errno == errno.ELOOP:
            raise _Refused("symlink_loop", f"{rel!r}: a symlink loop") from None
        raise  # the tree changed since: say what the walk met now
    raise _Refused("resource_changed", f"{rel!r}: a symlink where the capability allows none")


def _real_path(fd: int) -> str:
    """The name the kernel gives what ``fd`` holds, now."""
    path = os.readlink(f"/proc/self/fd/{fd}")  # noqa: PTH115 -- a str is what is checked
    if not path.startswith("/") or path.endswith(_DELETED):
        raise _Refused("resource_changed", "what was opened was moved away or removed meanwhile")
    return path


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def _reopen(fd: int, flags: int) -> int:
    """A descriptor with ``flags`` of the very file an ``O_PATH`` ``fd`` holds
    (no path is walked: ``/proc/self/fd/N`` leads to the object)."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC | os.O_NOCTTY)


def _require_regular(info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise _Refused("is_a_directory", "a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise _Refused("not_a_regular_file", f"not a regular file ({_kind(info.st_mode)})")


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


# -- opening a file ------------------------------------------------------------------


def _open_file(use: _Use, mode: _Mode, size: int | None = None) -> int:
    """A descriptor of the target with ``mode``'s flags: an existing regular
    file, or (when ``mode`` allows and ``create`` is granted) a new one.

    Making a file needs ``create``, changing one needs ``write``: where a
    mode may do either, whether the file exists decides which the kernel is
    asked about. The look is made beneath the capability's root before the
    kernel's check (which refuses a stranger's id either way), and the open
    itself settles any race: a new file is made with ``O_EXCL``, an existing
    one opened without ``O_CREAT``."""
    needs = list(mode.needs)
    if mode.creates == "may" and not _exists(use):
        needs = ["create", *(n for n in needs if n != "write")]
        mode = _Mode(tuple(needs), mode.flags, "must")
    cap = use.validate(needs[0], size)
    for operation in needs[1:]:
        use.validate(operation, size)
    place = _locate(cap, use.target)
    try:
        if mode.creates == "must":
            return _create(use, place, mode, size)
        held = place.open_target()
        try:
            info = os.fstat(held)
            _require_regular(info)
            if is_secret(info):
                raise _Refused("secret_file", "the file is one of the supervisor's secrets")
            if mode.writes and info.st_nlink > 1:
                raise _Refused(
                    "hard_link", f"the file has {info.st_nlink} names: one may lie outside"
                )
            # The validator's size check stat()ed a name; this is the file handed on.
            max_bytes = None if mode.writes else _max_bytes(use)
            if max_bytes is not None and info.st_size > max_bytes:
                raise _Refused(
                    "too_large", f"the file has {info.st_size} bytes, max_bytes {max_bytes}"
                )
            use.recheck(needs, _real_path(held), size)
            return _reopen(held, mode.flags)
        finally:
            os.close(held)
    finally:
        os.close(place.dirfd)


def _exists(use: _Use) -> bool:
    """Whether the target names an existing file beneath the capability's
    root, looked at without following anything out of it. A capability
    that is unknown or of another kind answers False: the kernel's check
    that follows refuses it."""
    cap = use.kernel.get(use.capability_id)
    if cap is None or not cap.resource.startswith("file://"):
        return False
    try:
        place = _locate(cap, use.target)
    except (_Refused, OSError):
        return False
    try:
        held = place.open_target()
    except OSError:
        return False
    finally:
        os.close(place.dirfd)
    os.close(held)
    return True


def _create(use: _Use, place: _Place, mode: _Mode, size: int | None) -> int:
    """Make the target's name in its held directory (never through a symlink)."""
    if place.name is None:
        raise _Refused("exists", "the capability's own root exists")
    parent, name = place.open_parent()
    try:
        use.recheck(mode.needs, _join(_real_path(parent), name), size)  # "create" among them
        flags = mode.flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        return os.open(name, flags, _NEW_FILE_MODE, dir_fd=parent)
    finally:
        os.close(parent)


# -- the ops ---------------------------------------------------------------------


def _read(use: _Use, args: p.ReadArgs) -> dict[str, Any]:
    fd = _open_file(use, _OPEN_MODES["r"])
    try:
        limit = p.MAX_IO_BYTES if args.length is None else args.length
        max_bytes = _max_bytes(use)  # _open_file refused a file larger already
        if max_bytes is not None:
            limit = min(limit, max(0, max_bytes - args.offset))  # it may grow while read
        data = _pread(fd, limit, args.offset)
        use.nbytes = len(data)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return {"data": data, "eof": args.offset + len(data) >= size, "size": size}


def _write_mode(args: p.WriteArgs) -> _Mode:
    if args.append:
        return _WRITE_APPEND
    return _WRITE_REPLACE if args.offset is None else _WRITE_AT


def _write(use: _Use, args: p.WriteArgs) -> dict[str, Any]:
    fd = _open_file(use, _write_mode(args), len(args.data))
    try:
        max_bytes = _max_bytes(use)
        if max_bytes is not None:
            start = os.fstat(fd).st_size if args.append else args.offset or 0
            if start + len(args.data) > max_bytes:
                raise _Refused(
                    "too_large",
                    f"the file would reach {start + len(args.data)} bytes, max_bytes {max_bytes}",
                )
        view = memoryview(args.data)
        while use.nbytes < len(view):
            rest = view[use.nbytes :]
            if args.offset is None:
                written = os.write(fd, rest)
            else:
                written = os.pwrite(fd, rest, args.offset + use.nbytes)
            if written <= 0:  # a regular file takes all, or says why not
                raise _Refused("os_error", f"the file took {use.nbytes} of {len(view)} bytes")
            use.nbytes += written
    finally:
        os.close(fd)
    return {"written": use.nbytes}


def _listdir(use: _Use, args: p.ListdirArgs) -> dict[str, Any]:
    cap = use.validate("list")
    place = _locate(cap, use.target)
    try:
        held = place.open_target(directory=True)
        try:
            directory = _real_path(held)
            globs = use.recheck(("list",), directory).get("deny")
            fd = _reopen(held, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(held)
    finally:
        os.close(place.dirfd)
    try:
        entries = _entries(cap, globs, fd, directory)
    finally:
        os.close(fd)
    return {"entries": entries}


def _entries(cap: Capability, globs: Any, fd: int, directory: str) -> list[dict[str, Any]]:
    """The entries of the directory ``fd`` holds, each examined relative to
    it; names ``globs`` (the prepared ``deny``, if any) covers are left out,
    and names that are not UTF-8 (a msgpack str cannot carry them)."""
    root = urllib.parse.unquote(cap.resource[len("file://") :], errors="strict")
    prefix = directory[len(root) :].strip("/")
    entries: list[dict[str, Any]] = []
    budget = MAX_LISTING_BYTES
    with os.scandir(fd) as found:
        for entry in found:
            name = entry.name
            if not name.isascii() and not _is_utf8(name):
                continue
            if globs is not None and _denied(globs, f"{prefix}/{name}".lstrip("/")):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # gone since it was listed
                continue
            budget -= len(name.encode()) + _ENTRY_OVERHEAD
            if budget < 0:
                raise _Refused("too_many_entries", "more entries than one reply may carry")
            entries.append({"name": name, "kind": _kind(info.st_mode), "size": info.st_size})
    entries.sort(key=lambda e: str(e["name"]))
    return entries


def _is_utf8(name: str) -> bool:
    """Whether a name from the filesystem is text (undecodable bytes come
    back from ``os.fsdecode`` as lone surrogates)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _denied(globs: Any, relative: str) -> bool:
    try:
        return globs.first_match(relative) is not None
    except re.error as error:  # a stored glob today's kernel would not make
        raise _Refused("validator_error", f"a deny glob does not compile: {error}") from None


def _stat(use: _Use, args: p.StatArgs) -> dict[str, Any]:
    cap = use.validate("stat")
    place = _locate(cap, use.target)
    try:
        held = place.open_target()
        try:
            info = os.fstat(held)
            use.recheck(("stat",), _real_path(held))
        finally:
            os.close(held)
    finally:
        os.close(place.dirfd)
    return {
        "kind": _kind(info.st_mode),
        "size": info.st_size,
        "mtime": info.st_mtime,
        "mode": stat.S_IMODE(info.st_mode),
    }


def _delete(use: _Use, args: p.DeleteArgs) -> dict[str, Any]:
    cap = use.validate("delete")
    place = _locate(cap, use.target)
    try:
        parent, name = place.open_parent()
    finally:
        os.close(place.dirfd)
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        use.recheck(("delete",), _join(_real_path(parent), name))
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
    return {}


def _max_bytes(use: _Use) -> int | None:
    """The capability's ``max_bytes``; one that is not an int (a stored
    capability today's kernel would not make) refuses rather than lifts the cap."""
    value = use.held().constraints.get("max_bytes")
    if value is None or type(value) is int:
        return value
    raise _Refused("validator_error", f"max_bytes is a {type(value).__name__}, not an int")


def _pread(fd: int, limit: int, offset: int) -> bytes:
    """Up to ``limit`` bytes at ``offset``, fewer only at the end of the file."""
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = os.pread(fd, limit - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# -- the entry points ----------------------------------------------------------------

_OPS: Final[Mapping[type, tuple[str, Callable[[_Use, Any], dict[str, Any]]]]] = {
    p.ReadArgs: (p.Op.READ.value, _read),
    p.WriteArgs: (p.Op.WRITE.value, _write),
    p.ListdirArgs: (p.Op.LISTDIR.value, _listdir),
    p.StatArgs: (p.Op.STAT.value, _stat),
    p.DeleteArgs: (p.Op.DELETE.value, _delete),
}


def perform_file_op(
    kernel: Kernel,
    principal: Principal,
    args: p.FileOpArgs,
    *,
    now: float,
    trace_id: str,
    emit: Callable[[Event], None],
) -> dict[str, Any]:
    """Validate and perform ``read``, ``write``, ``listdir``, ``stat`` or
    ``delete`` for ``principal``; the wire result (for ``ok_reply``).

    Raises :class:`~capsup.agents.errors.CapsupError`: the kernel's refusals
    (recorded by the kernel) or the broker's ``ConstraintViolation``
    (recorded through ``emit`` as a refused ``file_operation``). Runs on the
    kernel's thread: it calls ``kernel.validate``."""
    op, action = _OPS[type(args)]
    use = _Use(kernel, principal, op, args, now=now, trace_id=trace_id, emit=emit)
    result = use.attempt(lambda: action(use, args))
    if isinstance(args, p.ListdirArgs):
        use.done(entries=len(result["entries"]))
    else:
        use.done()
    return result


def open_for_agent(
    kernel: Kernel,
    principal: Principal,
    args: p.OpenArgs,
    *,
    now: float,
    trace_id: str,
    emit: Callable[[Event], None],
) -> int:
    """Validate ``open`` and return a new descriptor of the regular file, owned
    by the caller (who passes it on and closes it), with the mode's flags:
    ``r`` ``O_RDONLY``, ``w`` ``O_WRONLY|O_TRUNC``, ``a`` ``O_WRONLY|O_APPEND``,
    ``x`` ``O_WRONLY`` on a file it makes, ``r+`` ``O_RDWR``; always
    ``O_CLOEXEC|O_NOCTTY``, ``O_CREAT|O_EXCL|O_NOFOLLOW`` when it makes one.
    FIFOs, devices, sockets and directories are refused without being
    opened for I/O (so nothing blocks). Raises as :func:`perform_file_op`."""
    mode = _OPEN_MODES[args.mode]
    use = _Use(kernel, principal, p.Op.OPEN.value, args, now=now, trace_id=trace_id, emit=emit)
    fd = use.attempt(lambda: _open_file(use, mode))
    try:
        use.done(mode=args.mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _describe(error: OSError) -> str:
    """What the operating system said, with the errno's name."""
    name = errno.errorcode.get(error.errno or 0, "E?")
    return f"{name}: {error.strerror or error}"
