"""``openat2(2)`` through ctypes: an open whose path walk the kernel confines.

The brokers open what an agent names beneath a directory descriptor with
``RESOLVE_BENEATH``: the kernel refuses, atomically with the open, every
step that would leave that directory (``..`` above it, an absolute path or
symlink), so no check made beforehand can be raced. Linux 5.6+; elsewhere
the call fails with ``ENOSYS`` and the broker refuses (fails closed).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from typing import Any, Final

__all__ = [
    "RESOLVE_BENEATH",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "openat2",
]

#: The ``resolve`` flags of ``struct open_how`` (linux/openat2.h).
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04  # magic links included
RESOLVE_BENEATH: Final = 0x08

#: openat2's number on every architecture Linux added it to after 5.6 (the
#: unified syscall table), x86_64 and aarch64 included.
_SYS_OPENAT2: Final = 437
#: How often an open is tried again when the kernel answers ``EAGAIN``: it
#: does so for a ``..`` walked under ``RESOLVE_BENEATH`` while a rename or a
#: mount happened anywhere, rather than risk a wrong answer.
_EAGAIN_RETRIES: Final = 16


class _OpenHow(ctypes.Structure):
    """``struct open_how``."""

    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _syscall() -> Any:
    """libc's ``syscall``, loaded once."""
    function = ctypes.CDLL(None, use_errno=True).syscall
    function.restype = ctypes.c_long
    return function


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """Open ``path`` relative to ``dirfd`` (or ``AT_FDCWD``) under the
    ``resolve`` rules; the new descriptor, or :class:`OSError` with the errno.

    ``O_CLOEXEC`` is always added: a descriptor of the supervisor's must
    never leak into a process it starts."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    encoded = os.fsencode(path)
    if b"\0" in encoded:  # c_char_p would end the path there: another path
        raise ValueError("openat2: embedded null byte")
    syscall = _syscall()
    for _ in range(_EAGAIN_RETRIES):
        fd = int(
            syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dirfd),
                ctypes.c_char_p(encoded),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code != errno.EAGAIN:
            break
    raise OSError(code, f"openat2: {os.strerror(code)}", path)
