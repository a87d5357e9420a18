"""``openat2(2)`` through ctypes: an open whose path walk the kernel confines.

Two users, one wrapper: the file broker opens what an agent names beneath a
directory descriptor with ``RESOLVE_BENEATH`` (the kernel refuses,
atomically with the open, every step that would leave that directory:
``..`` above it, an absolute path or symlink), and the path resolver of the
``file://`` validator asks the kernel for its own resolution of a path
(:mod:`capsup.validators.paths`). Linux 5.6+, on the machines whose
unified system-call table gives it the number 437; elsewhere
:func:`openat2` fails with ``ENOSYS`` (the broker refuses: fail closed) and
:func:`path_opener` is None (the resolver walks the path instead).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import sys
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "AT_FDCWD",
    "RESOLVE_BENEATH",
    "RESOLVE_NO_MAGICLINKS",
    "RESOLVE_NO_SYMLINKS",
    "RESOLVE_NO_XDEV",
    "OpenHow",
    "openat2",
    "path_opener",
]

#: The ``resolve`` flags of ``struct open_how`` (linux/openat2.h).
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04  # magic links included
RESOLVE_BENEATH: Final = 0x08

AT_FDCWD: Final = -100
#: openat2's number (Linux 5.6+) on the machines of the unified system-call
#: table; elsewhere 437 may be another call, so it is never made there.
_SYS_OPENAT2: Final = 437
_OPENAT2_MACHINES: Final = frozenset(
    {"x86_64", "i686", "aarch64", "arm64", "armv7l", "riscv64", "ppc64le", "s390x", "loongarch64"}
)
#: How often an open is tried again when the kernel answers ``EAGAIN``: it
#: does so for a ``..`` walked under ``RESOLVE_BENEATH`` while a rename or a
#: mount happened anywhere, rather than risk a wrong answer.
_EAGAIN_RETRIES: Final = 16


class OpenHow(ctypes.Structure):
    """``struct open_how``."""

    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _syscall() -> Any:
    """libc's ``syscall``, loaded once; None where openat2 is not 437."""
    if sys.platform != "linux" or platform.machine() not in _OPENAT2_MACHINES:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_long
    return function


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """Open ``path`` relative to ``dirfd`` (or ``AT_FDCWD``) under the
    ``resolve`` rules; the new descriptor, or :class:`OSError` with the errno.

    ``O_CLOEXEC`` is always added: a descriptor of the supervisor's must
    never leak into a process it starts."""
    how = OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    encoded = os.fsencode(path)
    if b"\0" in encoded:  # c_char_p would end the path there: another path
        raise ValueError("openat2: embedded null byte")
    syscall = _syscall()
    if syscall is None:
        raise OSError(errno.ENOSYS, "openat2: not on this machine", path)
    code = errno.EAGAIN
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


@functools.cache
def path_opener() -> Callable[[str, ctypes.c_void_p], int] | None:
    """``open_path(path, how)``: openat2 relative to the working directory
    with a prepared ``struct open_how`` (a pointer the caller keeps alive),
    returning the descriptor or minus the errno: the resolver's form, built
    once, without the per-call conversions of :func:`openat2` (it runs once
    per validation). None where openat2 is missing (an old kernel, another
    machine, a seccomp filter that refuses it)."""
    syscall = _syscall()
    if syscall is None:
        return None
    number, at, size = (
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_size_t(ctypes.sizeof(OpenHow)),
    )

    def open_path(path: str, how: ctypes.c_void_p) -> int:
        fd = int(syscall(number, at, os.fsencode(path), how, size))
        return fd if fd >= 0 else -ctypes.get_errno()

    probe_how = OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_NO_MAGICLINKS)
    probe = open_path("/", ctypes.c_void_p(ctypes.addressof(probe_how)))
    if probe < 0:
        return None
    os.close(probe)
    return open_path
