"""Reading a file that holds a secret of the supervisor's: the audit key, a
credential a policy injects.

One rule for both: a regular file, named as itself (not through a symlink at
its last step, which could be pointed elsewhere before the supervisor
starts), that only its owner may read or write (a secret others can read is
no longer the supervisor's to keep), of bounded size, read through one
descriptor so that what was checked is what is read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["SecretFileError", "is_secret", "read_secret_file"]

#: (device, inode) of every secret read: the file broker refuses to open any
#: of them, whatever name reaches it (a hard link made after start-up).
_SECRETS: set[tuple[int, int]] = set()


class SecretFileError(ValueError):
    """The file cannot be a secret's: the message says why and what to do,
    without the file's name (the caller puts it where it belongs)."""


def read_secret_file(path: str, limit: int) -> bytes:
    """The bytes of ``path``, less one trailing newline (``echo SECRET >
    FILE`` makes one); raises :class:`SecretFileError` unless the file may
    hold a secret and holds at most ``limit`` bytes."""
    if not path.startswith("/") or "\0" in path:
        raise SecretFileError("must be an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP and Path(path).is_symlink():
            raise SecretFileError(
                "is a symlink; name the file it points to (a link could be pointed "
                "elsewhere before the supervisor starts)"
            ) from None
        raise SecretFileError(f"cannot be opened: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError("is not a regular file")
        if info.st_nlink != 1:
            raise SecretFileError(
                f"has {info.st_nlink} names (hard links): one may lie where an agent can read "
                "it; keep the secret under one name"
            )
        if info.st_mode & 0o077:
            raise SecretFileError(
                f"may be read or written by others (mode {info.st_mode & 0o777:o}): "
                f"chmod 600 {path}"
            )
        data = os.read(fd, limit + 2)
    except OSError as error:
        raise SecretFileError(f"cannot be read: {error.strerror}") from None
    finally:
        os.close(fd)
    if data.endswith(b"\n"):
        data = data[:-1]
    if len(data) > limit:
        raise SecretFileError(f"holds more than {limit} bytes")
    _SECRETS.add((info.st_dev, info.st_ino))
    return data


def is_secret(info: os.stat_result) -> bool:
    """Whether ``info`` is of a file this process read as a secret."""
    return (info.st_dev, info.st_ino) in _SECRETS
