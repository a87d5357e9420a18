"""Namespaces of the agent's own: mount (for a private ``/dev/shm``), IPC
and network.

- Mount: Python's ``multiprocessing`` (Lock, Queue, Pool) needs POSIX
  semaphores, which glibc keeps as files in ``/dev/shm``. The host's
  ``/dev/shm`` is shared by every process of the machine (other agents' and
  the supervisor's segments included), so the agent gets its own: a fresh
  tmpfs, bounded in size, seen by the agent's processes only and gone with
  them.
- IPC: SysV shared memory, message queues and semaphores, and POSIX message
  queues, are found by key or name, not by path: Landlock does not see them,
  and in the host's IPC namespace the agent would read the host's segments
  and talk to anyone through a queue. (The seccomp filter refuses them too.)
- Network: Landlock's scope stops the agent's connects to abstract unix
  sockets outside its domain, not connects *to* the agent's: in the host's
  network namespace, a name it binds is reachable by any host process. Its
  own namespace has its own abstract names and one loopback interface,
  down: TCP and UDP reach nothing, whatever Landlock's ABI. Pathname unix
  sockets (its endpoint, its scratch) are files and work as before.

For a process without ``CAP_SYS_ADMIN``, a user namespace is new too, which
maps its uid and gid to themselves, so ``SO_PEERCRED`` and file ownership
look as before. The pid namespace stays the host's: the supervisor knows its
agents by pid.
"""

from __future__ import annotations

import ctypes
import os

from capsup.agents.confine._libc import capability_sets, describe_errno, libc
from capsup.agents.confine.errors import ConfinementError

__all__ = ["private_namespaces"]

_FEATURE = "namespaces"
_CLONE_NEWNS = 0x0002_0000
_CLONE_NEWIPC = 0x0800_0000
_CLONE_NEWUSER = 0x1000_0000
_CLONE_NEWNET = 0x4000_0000
_CLONE_PRIVATE = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWNET
_MS_NOSUID = 1 << 1
_MS_NODEV = 1 << 2
_MS_NOEXEC = 1 << 3
_MS_REC = 1 << 14
_MS_SLAVE = 1 << 19
_CAP_SYS_ADMIN = 21
_SHM = "/dev/shm"  # noqa: S108 (the mount point we replace, not a file in it)
#: Bytes of tmpfs per inode allowed: empty files cost kernel memory that the
#: size does not count, so their number is bounded too.
_BYTES_PER_INODE = 4096
_MIN_INODES = 1024


def private_namespaces(shm_bytes: int) -> None:
    """Move this process (and its future children) into new mount, IPC and
    network namespaces, and mount a private tmpfs of ``shm_bytes`` bytes on
    ``/dev/shm`` (``nosuid,nodev,noexec``, mode 1777). Call it
    single-threaded, before dropping capabilities.

    Raises ``ValueError`` for a size that is not positive (0 would mean no
    bound to tmpfs) and :class:`ConfinementError` (``"namespaces"``) when a
    namespace or mount is refused.
    """
    if isinstance(shm_bytes, bool) or not isinstance(shm_bytes, int) or shm_bytes <= 0:
        raise ValueError(f"private shm size {shm_bytes!r}: must be a positive number of bytes")
    if capability_sets()["CapEff"] & (1 << _CAP_SYS_ADMIN):
        _unshare(_CLONE_PRIVATE)
    else:
        uid, gid = os.getuid(), os.getgid()
        _unshare(_CLONE_NEWUSER | _CLONE_PRIVATE)
        # setgroups must be denied before an unprivileged gid_map is accepted.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    # Slave, not shared: nothing mounted here reaches the host, while the
    # host's unmounts still reach here (the agent never pins a filesystem
    # the operator wants to unmount).
    _mount(None, "/", None, _MS_REC | _MS_SLAVE, None)
    inodes = max(shm_bytes // _BYTES_PER_INODE, _MIN_INODES)
    _mount(
        "tmpfs",
        _SHM,
        "tmpfs",
        _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
        f"mode=1777,size={shm_bytes},nr_inodes={inodes}",
    )


def _unshare(flags: int) -> None:
    if libc().unshare(ctypes.c_int(flags)) != 0:
        reason = describe_errno(ctypes.get_errno())
        raise ConfinementError(_FEATURE, f"unshare({flags:#x}) failed: {reason}")


def _write(path: str, text: str) -> None:
    try:
        with open(path, "wb") as file:
            file.write(text.encode())
    except OSError as error:
        reason = describe_errno(error.errno or 0)
        raise ConfinementError(_FEATURE, f"writing {text!r} to {path} failed: {reason}") from None


def _mount(source: str | None, target: str, kind: str | None, flags: int, data: str | None) -> None:
    def c(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    result = libc().mount(c(source), c(target), c(kind), ctypes.c_ulong(flags), c(data))
    if result != 0:
        reason = describe_errno(ctypes.get_errno())
        raise ConfinementError(
            _FEATURE, f"mount {kind or 'propagation'} on {target} failed: {reason}"
        )
