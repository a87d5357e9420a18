"""Per-agent cgroups: a bound on an agent's processes, and a kill for its whole tree.

A process tree is not a boundary: a double-forked daemon (``setsid``, fork,
parent exits) leaves it, and a fork bomb outgrows any loop that walks it. A
cgroup is one: every descendant of a member is a member, whatever it does
with its parent, and ``pids.max`` makes ``fork()`` fail with ``EAGAIN`` once
the group holds that many tasks. The supervisor makes one cgroup per agent,
beneath a directory of its own, in whichever hierarchy it may write:

- **cgroup v2** (the unified hierarchy), where the supervisor's own cgroup
  (``0::/path`` in ``/proc/self/cgroup``) is writable and offers ``pids``.
  Its agents' cgroups get ``pids.max``, and ``cgroup.kill`` kills a whole
  group at once, with no window for a fork to slip through.
- **cgroup v1's pids hierarchy** (a hybrid machine: ``/sys/fs/cgroup/pids``,
  root-owned), beneath the supervisor's own v1 pids cgroup. v1 has no
  ``cgroup.kill`` and the pids controller cannot freeze, so :meth:`kill`
  SIGKILLs the members in passes until none is left; a member with SIGKILL
  pending cannot fork, and ``pids.max`` bounds how many a fork bomb can
  make between two passes, so the passes converge.

Layout: ``<the supervisor's cgroup>/capsup-<supervisor pid>/<agent id>``.

**How an agent joins.** The agent's bootstrap writes its own pid (``"0"``
means "the writer" too) into :attr:`AgentCgroup.procs_path` as its *first*
step, while it is still single-threaded, trusted code: before it unshares a
namespace (a new user namespace loses the right to write the host's
cgroupfs), drops privileges, applies Landlock and seccomp, and long before
it execs the agent. So no process of the agent ever exists outside the
cgroup: whatever it forks is born inside. The supervisor cannot do this for
the child from outside without a race (the child could fork first), and
``CLONE_INTO_CGROUP`` is v2-only and not exposed by :mod:`subprocess`.

**What keeps the agent in.** Nothing but its confinement: as uid 0 an agent
could write another cgroup's ``cgroup.procs``, were it not that Landlock
grants it nothing under ``/sys``. A cgroup bounds an unconfined agent only
as long as that agent does not try to leave.

``pids.max`` counts tasks, i.e. threads as well as processes: an agent
whose runtime starts threads (libzmq's I/O thread, a thread pool) needs a
bound that leaves room for them.

Errors raise :class:`~capsup.agents.confine.errors.ConfinementError` with
feature ``"cgroup"``, naming the file and the errno.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from capsup.agents.confine._libc import describe_errno
from capsup.agents.confine.errors import ConfinementError

__all__ = ["KILL_TIMEOUT", "AgentCgroup", "CgroupManager", "supervisor_places"]

_FEATURE = "cgroup"
_CONTROLLER = "pids"
#: The v2 leaf the supervisor moves itself into, once, so that its own
#: cgroup may delegate ``pids`` to its children ("no internal processes").
_SUPERVISOR_LEAF = "capsup-supervisor"
#: An agent id names a directory: one plain path component (``mkdir``
#: refuses one that a control file already has, such as ``tasks``).
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: How long :meth:`AgentCgroup.kill` waits for the last member to exit.
KILL_TIMEOUT = 2.0
#: The first and the longest pause between two kill passes, in seconds.
_FIRST_PAUSE = 0.0005
_LONGEST_PAUSE = 0.05

Version = Literal[1, 2]


def _fail(what: str, error: OSError) -> ConfinementError:
    return ConfinementError(_FEATURE, f"{what}: {describe_errno(error.errno or 0)}")


def _write(path: Path, text: str) -> None:
    """One ``write()`` to a cgroup control file (the kernel reads it whole)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _unescape(field: str) -> str:
    """A ``/proc/self/mountinfo`` path field, with its octal escapes undone."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _own_cgroup(proc_cgroup: str, version: Version) -> str | None:
    """The cgroup path of a process in the v2 hierarchy, or in v1's pids
    hierarchy, from the text of its ``/proc/PID/cgroup``."""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if version == 2 and hierarchy == "0" and controllers == "":
            return path
        if version == 1 and _CONTROLLER in controllers.split(","):
            return path
    return None


def _directory(version: Version, cgroup: str) -> Path | None:
    """Where ``cgroup`` (a path as ``/proc/PID/cgroup`` names it) is in a
    mounted hierarchy of ``version``, if one shows it."""
    if ".." in cgroup.split("/"):
        return None  # outside this cgroup namespace's root: not ours to manage
    fstype = "cgroup2" if version == 2 else "cgroup"
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            fields, super_fields = left.split(), right.split()
            if len(fields) < 5 or len(super_fields) < 3 or super_fields[0] != fstype:
                continue
            if version == 1 and _CONTROLLER not in super_fields[2].split(","):
                continue
            root, mount = _unescape(fields[3]), Path(_unescape(fields[4]))
            if root == "/":
                return mount / cgroup.lstrip("/")
            if cgroup == root or cgroup.startswith(root + "/"):
                return mount / cgroup[len(root) :].lstrip("/")
    return None


def supervisor_places() -> Iterator[tuple[Version, Path, str]]:
    """Where supervisors in this process's cgroups make their ``capsup-<pid>``
    directories, in each hierarchy that shows one: (version, directory,
    cgroup path as ``/proc`` names it). In v2 that is beside the
    supervisor's leaf (:func:`_delegate`) if it moved into one."""
    with open("/proc/self/cgroup", encoding="utf-8") as proc_cgroup:
        own = proc_cgroup.read()
    versions: tuple[Version, ...] = (2, 1)
    for version in versions:
        cgroup = _own_cgroup(own, version)
        directory = None if cgroup is None else _directory(version, cgroup)
        if cgroup is None or directory is None:
            continue
        if version == 2 and directory.name == _SUPERVISOR_LEAF:
            directory, cgroup = directory.parent, posixpath.dirname(cgroup)
        yield version, directory, cgroup


def _delegate(directory: Path, controller: str) -> Path:
    """Make ``controller`` available to the children of ``directory``, the v2
    cgroup this process is in; return the cgroup to create them in.

    cgroup v2 lets a non-root cgroup enable a controller for its children
    only while it holds no process itself. So if the plain attempt says
    ``EBUSY``, the supervisor moves itself (all its threads: one write of
    "0" to ``cgroup.procs``) into a leaf of its own and tries again; if
    that fails too (other processes share its cgroup), it moves back and
    removes the leaf, leaving things as it found them. Called a second time
    in the same process, it finds itself already in that leaf and changes
    nothing."""
    if directory.name == _SUPERVISOR_LEAF:
        parent = directory.parent
        if controller in (parent / "cgroup.subtree_control").read_text().split():
            return parent
    control = directory / "cgroup.subtree_control"
    if controller in control.read_text().split():
        return directory
    try:
        _write(control, f"+{controller}")
        return directory
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise
    leaf = directory / _SUPERVISOR_LEAF
    leaf.mkdir(exist_ok=True)
    _write(leaf / "cgroup.procs", "0")
    try:
        _write(control, f"+{controller}")
    except OSError:
        _write(directory / "cgroup.procs", "0")
        with contextlib.suppress(OSError):
            leaf.rmdir()
        raise
    return directory


def _members(directory: Path) -> list[int]:
    """The pids in ``directory`` and its child cgroups (zombies are not listed)."""
    pids: list[int] = []
    for subdirectory, _, _ in os.walk(directory):
        with contextlib.suppress(FileNotFoundError):
            procs = (Path(subdirectory) / "cgroup.procs").read_text()
            pids.extend(int(pid) for pid in procs.split())
    return pids


def _is_member(pid: int, version: Version, cgroup: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as proc_cgroup:
            own = _own_cgroup(proc_cgroup.read(), version)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return own is not None and (own == cgroup or own.startswith(cgroup + "/"))


def _kill_member(pid: int, version: Version, cgroup: str) -> None:
    """SIGKILL ``pid`` if it is (still) in ``cgroup``.

    The pid was read from ``cgroup.procs`` a moment ago; it may have exited
    and been reused since. The pidfd pins the process that holds the pid
    now; the membership check reads that same process's ``/proc`` entry (if
    it exited meanwhile, the signal through the pidfd fails with ESRCH and
    hits nobody). So only a member is ever signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if _is_member(pid, version, cgroup):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _kill(version: Version, directory: Path, cgroup: str, timeout: float) -> None:
    """Kill every member of ``directory`` and its children; return once none
    is left (zombies do not count: their parents reap them)."""
    if not directory.is_dir():
        return
    cgroup_kill = directory / "cgroup.kill"
    by_kernel = version == 2 and cgroup_kill.exists()
    try:
        if by_kernel:
            _write(cgroup_kill, "1")
        deadline = time.monotonic() + timeout
        pause = _FIRST_PAUSE
        while members := _members(directory):
            if not by_kernel:
                for pid in members:
                    _kill_member(pid, version, cgroup)
            if time.monotonic() >= deadline:
                raise ConfinementError(
                    _FEATURE,
                    f"{len(members)} processes still in {directory} {timeout:g} s after"
                    " SIGKILL (stuck in uninterruptible sleep?)",
                )
            time.sleep(pause)
            pause = min(2 * pause, _LONGEST_PAUSE)
    except OSError as error:
        raise _fail(f"cannot kill the processes in {directory}", error) from None


def _remove_tree(directory: Path) -> None:
    """``rmdir`` a cgroup and its child cgroups, deepest first. A cgroup
    directory holds only control files, which ``rmdir`` takes along; it
    refuses (``EBUSY``) a cgroup with a live member."""
    try:
        for subdirectory, _, _ in os.walk(directory, topdown=False):
            with contextlib.suppress(FileNotFoundError):
                Path(subdirectory).rmdir()
    except OSError as error:
        raise _fail(f"cannot remove cgroup {directory} (kill its processes first)", error) from None


@dataclass(frozen=True)
class AgentCgroup:
    """One agent's cgroup.

    ``cgroup`` is its path as ``/proc/PID/cgroup`` shows it (used to check
    membership), ``directory`` where it is mounted."""

    agent_id: str
    version: Version
    directory: Path
    cgroup: str

    @property
    def procs_path(self) -> str:
        """The file the agent's bootstrap writes its own pid (or ``"0"``)
        into to join, before anything else (see the module's docstring)."""
        return str(self.directory / "cgroup.procs")

    def members(self) -> list[int]:
        """The pids in the cgroup now (in no particular order)."""
        try:
            return _members(self.directory)
        except OSError as error:
            raise _fail(f"cannot list {self.directory}", error) from None

    def empty(self) -> bool:
        """Whether no live process is in the cgroup (also once removed)."""
        return not self.members()

    def kill(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL every process in the cgroup, daemons and fork bombs
        included, and wait until none is left; raises if some still are
        after ``timeout`` seconds. Blocks for as long as the kernel takes
        to end them (a few milliseconds)."""
        _kill(self.version, self.directory, self.cgroup, timeout)

    def remove(self) -> None:
        """Remove the cgroup, which must be empty (:meth:`kill` first);
        nothing happens if it is gone already."""
        _remove_tree(self.directory)


class CgroupManager:
    """The supervisor's cgroup directory, ``capsup-<pid>``, and the agents'
    cgroups beneath it. Make it (:meth:`setup` or :meth:`detect`) before
    the supervisor starts any process; :meth:`close` when it ends."""

    def __init__(self, version: Version, directory: Path, cgroup: str) -> None:
        self.version: Version = version
        #: The supervisor's directory, parent of its agents' cgroups.
        self.directory = directory
        self._cgroup = cgroup

    def describe(self) -> str:
        """One line for ``capsup sandbox-check``."""
        if self.version == 2:
            return f"cgroup v2 at {self.directory}: pids.max per agent, kill by cgroup.kill"
        return (
            f"cgroup v1 pids at {self.directory}: pids.max per agent,"
            " kill by SIGKILL passes (v1 has no cgroup.kill)"
        )

    @classmethod
    def setup(cls) -> CgroupManager:
        """Make the supervisor's cgroup directory in the first hierarchy that
        allows it: v2 with ``pids``, else v1's pids hierarchy. Raises
        :class:`ConfinementError` saying why neither could be had.

        One per supervisor process: its directory is named by the pid, and
        a directory of that name found here is taken for a dead supervisor's
        and replaced. In v2 this may move the supervisor into ``<its
        cgroup>/capsup-supervisor`` for good (see :func:`_delegate`)."""
        with open("/proc/self/cgroup", encoding="utf-8") as proc_cgroup:
            own = proc_cgroup.read()
        reasons = []
        for version in (2, 1):
            try:
                return cls._setup(version, own)
            except ConfinementError as error:
                reasons.append(f"v{version}: {error.message}")
        raise ConfinementError(
            _FEATURE,
            "no cgroup can bound an agent's processes ("
            + "; ".join(reasons)
            + "); run the supervisor as root on cgroup v1, or in a delegated cgroup v2"
            " subtree with the pids controller (systemd-run --scope -p Delegate=yes)",
        )

    @classmethod
    def detect(cls) -> CgroupManager | None:
        """:meth:`setup`, or None where no cgroup can be had."""
        try:
            return cls.setup()
        except ConfinementError:
            return None

    @classmethod
    def _setup(cls, version: Version, proc_cgroup: str) -> CgroupManager:
        own = _own_cgroup(proc_cgroup, version)
        name = "cgroup v2" if version == 2 else "the pids controller"
        if own is None:
            raise ConfinementError(_FEATURE, f"this process is in no cgroup of {name}")
        own_directory = _directory(version, own)
        if own_directory is None or not own_directory.is_dir():
            raise ConfinementError(_FEATURE, f"{name} is not mounted where {own} shows")
        parent = own_directory
        try:
            if version == 2:
                offered = (own_directory / "cgroup.controllers").read_text().split()
                if _CONTROLLER not in offered:
                    raise ConfinementError(_FEATURE, f"{own_directory} does not offer pids")
                parent = _delegate(own_directory, _CONTROLLER)
            base = parent / f"capsup-{os.getpid()}"
            _make_base(base)
            if version == 2:
                _write(base / "cgroup.subtree_control", f"+{_CONTROLLER}")
        except OSError as error:
            raise _fail(f"cannot make a cgroup beneath {parent}", error) from None
        # The same place as /proc/PID/cgroup will name it (v2: possibly
        # beside the supervisor's leaf, so relative to where it was).
        cgroup = posixpath.normpath(posixpath.join(own, os.path.relpath(base, own_directory)))
        return cls(version, base, cgroup)

    def create(self, agent_id: str, pids_max: int | None) -> AgentCgroup:
        """A new, empty cgroup for ``agent_id``, holding at most ``pids_max``
        tasks (threads count) if given. Raises :class:`ValueError` for an id
        that is not one plain name or a bound below 1."""
        if not _AGENT_ID.fullmatch(agent_id):
            raise ValueError(f"not an agent id: {agent_id!r}")
        if pids_max is not None and pids_max < 1:
            raise ValueError(f"pids_max must be at least 1, not {pids_max}")
        directory = self.directory / agent_id
        try:
            directory.mkdir()
        except OSError as error:
            raise _fail(f"cannot create cgroup {directory}", error) from None
        try:
            if pids_max is not None:
                _write(directory / "pids.max", str(pids_max))
        except OSError as error:
            directory.rmdir()
            raise _fail(f"cannot set pids.max in {directory}", error) from None
        return AgentCgroup(agent_id, self.version, directory, f"{self._cgroup}/{agent_id}")

    def close(self, timeout: float = KILL_TIMEOUT) -> None:
        """Kill whatever still runs in any agent's cgroup and remove the
        supervisor's directory with them; nothing happens if it is gone.
        In v2 the supervisor stays in its leaf."""
        _kill(self.version, self.directory, self._cgroup, timeout)
        _remove_tree(self.directory)


def _make_base(base: Path) -> None:
    """Create the supervisor's directory. One left by an earlier supervisor
    with this pid (which died, or this one could not have its pid) holds
    only dead agents' cgroups: remove it first."""
    try:
        base.mkdir()
    except FileExistsError:
        _remove_tree(base)
        base.mkdir()
