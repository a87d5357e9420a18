"""A private scratch directory per agent (its ``TMPDIR``), and its removal.

Each agent gets one directory it may write, ``<parent>/<agent id>``, mode
0700, inside a parent that the supervisor owns and nobody else may enter
(also 0700): other agents and other users cannot reach it by name, and the
agent cannot touch anything beside it.

Removing it is the delicate part: the agent had the run of the tree and
may have left traps in it. It may plant a symlink to a directory outside
(removal must unlink the link, never empty its target), and it may make
directories unreadable or read-only (``chmod 000``) so that an unprivileged
supervisor could not list or empty them. :func:`remove_scratch` walks the
tree by file descriptor, one directory at a time: every directory is
opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's
descriptor (a symlink is never opened, only unlinked), given back its
``rwx`` for the owner through that same descriptor when the agent took it
away, then emptied and removed. ``shutil.rmtree`` is symlink-safe in the
same way, but its error hook gets a *path*, and a chmod by path would
follow a link the agent planted; hence the walk of its own.

The walk is iterative, with at most two directories open at a time: the
tree may be as deep as the agent made it (a recursion would stop at
Python's limit, about 1000 levels). Not handled: mount points inside the
tree (an agent cannot mount; its private ``/dev/shm`` lives in its own
namespace).

Errors raise :class:`~capsup.agents.confine.errors.ConfinementError` with
feature ``"scratch"``, naming the path and the errno.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from capsup.agents.confine._libc import describe_errno
from capsup.agents.confine.errors import ConfinementError

__all__ = ["make_scratch", "remove_scratch"]

_FEATURE = "scratch"
#: The directory's name is the agent id: one plain path component.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A handle on a directory that needs no permission on it (only on its
#: parent), so that one the agent made unreadable can still be reached.
_HANDLE = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OWNER_ALL = stat.S_IRWXU


def _fail(what: str, error: OSError) -> ConfinementError:
    return ConfinementError(_FEATURE, f"{what}: {describe_errno(error.errno or 0)}")


def make_scratch(parent: Path, agent_id: str, owner: tuple[int, int] | None = None) -> Path:
    """Create ``parent/agent_id``, mode 0700, owned by ``owner`` (uid, gid)
    if given (the user an agent runs as), and return its absolute path.

    ``parent`` is created (mode 0700) if missing; it must be a directory,
    not a symlink, owned by this process's user and closed to everyone
    else. The agent's directory must not exist yet: ``mkdir`` fails on any
    existing name, a symlink planted there included, and never follows it.
    Raises :class:`ValueError` for an id that is not one plain name."""
    if not _NAME.fullmatch(agent_id):
        raise ValueError(f"not an agent id: {agent_id!r}")
    try:
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o700)
        parent_fd = os.open(parent, _DIRECTORY)
    except OSError as error:
        raise _fail(f"cannot open the scratch parent {parent}", error) from None
    try:
        _check_private(parent_fd, parent)
        try:
            os.mkdir(agent_id, 0o700, dir_fd=parent_fd)
        except OSError as error:
            raise _fail(f"cannot create scratch directory {agent_id} in {parent}", error) from None
        try:
            _set_owner_and_mode(parent_fd, agent_id, owner)
        except OSError as error:
            os.rmdir(agent_id, dir_fd=parent_fd)
            raise _fail(f"cannot set up scratch directory {agent_id} in {parent}", error) from None
    finally:
        os.close(parent_fd)
    return parent.absolute() / agent_id


def _check_private(parent_fd: int, parent: Path) -> None:
    info = os.fstat(parent_fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfinementError(
            _FEATURE,
            f"scratch parent {parent} must be owned by uid {os.geteuid()} and closed to"
            f" others (it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})",
        )


def _set_owner_and_mode(parent_fd: int, name: str, owner: tuple[int, int] | None) -> None:
    fd = os.open(name, _DIRECTORY, dir_fd=parent_fd)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, 0o700)  # exactly: whatever the umask took away, and no more
    finally:
        os.close(fd)


def remove_scratch(path: Path) -> None:
    """Remove the scratch directory ``path`` and everything in it, without
    following any symlink in it (see the module's docstring); nothing
    happens if it is gone already. Kill the agent's processes first: one
    still writing could make a directory non-empty again. Raises
    :class:`ValueError` for a path that does not end in a name."""
    if path.name in ("", ".", ".."):
        raise ValueError(f"not a scratch directory's path: {path}")
    try:
        parent_fd = os.open(path.parent, _DIRECTORY)
    except FileNotFoundError:
        return
    except OSError as error:
        raise _fail(f"cannot open {path.parent} to remove {path.name}", error) from None
    try:
        _remove_directory(parent_fd, path.name)
    except OSError as error:
        raise _fail(f"cannot remove scratch directory {path}", error) from None
    finally:
        os.close(parent_fd)


@dataclass
class _Level:
    """One directory on the way down from the top to the one being emptied."""

    #: Its name in its parent directory.
    name: str
    #: ``(st_dev, st_ino)``: what ``..`` must be on the way back up to it.
    identity: tuple[int, int]
    #: Its subdirectories still to remove (its other entries are gone).
    pending: list[str]


def _remove_directory(parent_fd: int, name: str) -> None:
    """Empty and remove the directory ``name`` of ``parent_fd``; unlink it
    instead if it is not a directory (any more).

    Depth first, without recursion (the agent chose how deep its tree is)
    and with one open directory at a time plus one on the way up: a
    descriptor per level would run out on a tree deeper than the
    supervisor's descriptor limit. Each level keeps its name, its identity
    and its pending subdirectories; going back up opens ``..`` (never a
    symlink) and checks it is the directory it came from."""
    fd = _enter(parent_fd, name)
    if fd is None:
        return
    try:
        levels = [_Level(name, _identity(fd), _clear_files(fd))]
        while levels:
            level = levels[-1]
            if level.pending:
                child = level.pending.pop()
                below = _enter(fd, child)
                if below is not None:
                    os.close(fd)
                    fd = below
                    levels.append(_Level(child, _identity(fd), _clear_files(fd)))
                continue
            levels.pop()
            if not levels:
                break
            above = os.open("..", _DIRECTORY, dir_fd=fd)
            if _identity(above) != levels[-1].identity:
                os.close(above)
                raise OSError(errno.ESTALE, f"{level.name} was moved during its removal")
            os.close(fd)
            fd = above
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(level.name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent_fd)


def _enter(parent_fd: int, name: str) -> int | None:
    """Open the directory ``name`` of ``parent_fd`` for listing, first
    giving its owner back the ``rwx`` the agent may have taken away; None
    if it is gone, or was no directory (it is then unlinked)."""
    try:
        handle = os.open(name, _HANDLE, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)
        return None
    try:
        # The same inode as the handle, reached through procfs: no second
        # lookup of ``name`` that a swap could redirect.
        reopen = Path(f"/proc/self/fd/{handle}")
        if stat.S_IMODE(os.fstat(handle).st_mode) & _OWNER_ALL != _OWNER_ALL:
            reopen.chmod(_OWNER_ALL)
        return os.open(reopen, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(handle)


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _clear_files(fd: int) -> list[str]:
    """Unlink every entry of the directory ``fd`` that is not a directory
    (a symlink is unlinked, never followed); return the subdirectories."""
    with os.scandir(fd) as listing:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
    for entry, is_directory in entries:
        if not is_directory:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=fd)
    return [entry for entry, is_directory in entries if is_directory]
