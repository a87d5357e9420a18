"""What a killed supervisor left behind, removed by the next one as it starts.

A supervisor that is SIGKILLed, or crashes, cleans up nothing. Its agents
die with it (``PR_SET_PDEATHSIG``), but two things stay:

- its runtime directory (``capsup run``'s): the endpoint sockets, the
  agents' scratch directories and whatever they wrote there;
- its cgroup, ``capsup-<pid>`` (:mod:`.cgroup`), and in it whatever an
  agent double-forked: a daemon no supervisor answers for any more.

:func:`sweep_leftovers` removes both, once it is sure their supervisor is
gone, and only what this user owns:

**Runtime directories** are named ``capsup-<pid>-<start>-XXXXXXXX``
(:class:`RuntimeDir`), ``<start>`` being the supervisor's start time in
clock ticks since boot (field 22 of ``/proc/PID/stat``: exact, where a
float of seconds is not), and the supervisor holds an exclusive ``flock``
on the directory for its life. A directory is its supervisor's while a
process with that pid *and* start time runs (a reused pid has another
start time), or while someone holds the lock: a supervisor in another pid
namespace sharing the parent directory, whose pid means nothing here (the
kernel drops the lock when its holder dies, however it dies). The name
covers the moment between ``mkdir`` and ``flock``; the lock covers the
namespaces. A directory is opened without following a symlink, checked
through that descriptor, and removed without following any symlink in it
(:func:`~.scratch.remove_scratch`); in a sticky ``/tmp`` or a private
``$XDG_RUNTIME_DIR`` nobody else can replace it by name meanwhile.

**Cgroups** ``capsup-<pid>``, beside where this supervisor makes its own
(:meth:`.cgroup.CgroupManager.setup`), carry no start time. One is its
supervisor's while process ``<pid>`` runs and none of the processes in it
started before that process: each descends from the supervisor that made
the cgroup, so none is older than it, and an older one means the pid was
reused. A dead one's processes are all killed and the cgroup removed. Not
told apart: a supervisor in another pid namespace sharing this one's
cgroup (whose daemons would be killed), so do not run such two side by side.

A leftover that cannot be removed (a process stuck in the kernel, a
permission) is reported, not raised: it must not keep every later
supervisor from starting, and it gains nothing from a new supervisor.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from capsup.agents.confine.errors import ConfinementError
from capsup.supervisor.confinement.cgroup import AgentCgroup, supervisor_places
from capsup.supervisor.confinement.scratch import remove_scratch

__all__ = ["RuntimeDir", "sweep_leftovers"]

_RUNTIME_DIR = re.compile(r"capsup-(\d+)-(\d+)-[a-z0-9_]+")
_CGROUP = re.compile(r"capsup-(\d+)")
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot; raises
    :class:`FileNotFoundError` (or :class:`ProcessLookupError`) if it is gone."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        # The command name, in parentheses, may hold spaces and parentheses.
        fields = stat.read().rpartition(b")")[2].split()
    return int(fields[19])


def _running(pid: int, start: int) -> bool:
    try:
        return _start_ticks(pid) == start
    except (FileNotFoundError, ProcessLookupError):
        return False


def _older(pid: int, start: int) -> bool:
    """Whether ``pid`` runs and started before ``start``."""
    try:
        return _start_ticks(pid) < start
    except (FileNotFoundError, ProcessLookupError):
        return False


class RuntimeDir:
    """A new runtime directory in ``parent`` (default: the temporary
    directory), mode 0700, named and locked as the module's docstring says,
    for as long as this object is not :meth:`remove`\\ d."""

    def __init__(self, parent: Path | None = None) -> None:
        pid = os.getpid()
        prefix = f"capsup-{pid}-{_start_ticks(pid)}-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._fd = os.open(self.path, _DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def remove(self) -> None:
        """Remove the directory and all in it, then give up the lock. What
        cannot be removed is left for the next supervisor's sweep."""
        try:
            with contextlib.suppress(ConfinementError):
                remove_scratch(self.path)
        finally:
            os.close(self._fd)


def sweep_leftovers(runtime_parent: Path | None) -> list[str]:
    """Kill and remove the cgroups of dead supervisors beside this one's,
    then remove dead supervisors' runtime directories in ``runtime_parent``
    (if given); see the module's docstring. Returns one line per leftover
    it could not remove."""
    problems: list[str] = []
    for group in _dead_cgroups(problems):
        try:
            group.kill()
            group.remove()
        except Exception as error:  # one cgroup never stops start-up
            problems.append(f"cannot remove a dead supervisor's cgroup: {_one_line(error)}")
    if runtime_parent is not None:
        _sweep_runtime_dirs(runtime_parent, problems)
    return problems


def _dead_cgroups(problems: list[str]) -> Iterator[AgentCgroup]:
    try:
        places = list(supervisor_places())
    except OSError as error:
        problems.append(f"cannot tell where dead supervisors' cgroups are: {error}")
        return
    for version, directory, cgroup in places:
        try:
            entries = [e for e in os.scandir(directory) if _CGROUP.fullmatch(e.name)]
        except OSError:
            continue  # not there, or not this user's to look into
        for entry in entries:
            pid = int(entry.name.removeprefix("capsup-"))
            try:
                info = entry.stat(follow_symlinks=False)
                if pid == os.getpid() or info.st_uid != os.geteuid() or not entry.is_dir():
                    continue
                group = AgentCgroup(
                    entry.name, version, Path(entry.path), posixpath.join(cgroup, entry.name)
                )
                if _cgroup_is_dead(pid, group):
                    yield group
            except (OSError, ConfinementError) as error:
                problems.append(f"cannot look into cgroup {entry.path}: {error}")


def _cgroup_is_dead(pid: int, group: AgentCgroup) -> bool:
    try:
        start = _start_ticks(pid)
    except (FileNotFoundError, ProcessLookupError):
        return True
    return any(_older(member, start) for member in group.members())


def _sweep_runtime_dirs(parent: Path, problems: list[str]) -> None:
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # no such directory: nothing was left in it
    try:
        with os.scandir(parent_fd) as listing:
            names = [entry.name for entry in listing]
    except OSError as error:
        os.close(parent_fd)
        problems.append(f"cannot list {parent} for dead supervisors' leftovers: {_one_line(error)}")
        return
    try:
        for name in names:
            try:
                _sweep_runtime_dir(parent, parent_fd, name)
            except Exception as error:  # one directory never stops start-up
                problems.append(
                    f"cannot remove a dead supervisor's runtime directory {parent / name}: "
                    f"{_one_line(error)}"
                )
    finally:
        os.close(parent_fd)


def _sweep_runtime_dir(parent: Path, parent_fd: int, name: str) -> None:
    """Remove ``parent/name`` if it is a dead supervisor's runtime directory
    of this user's; raises what stopped its removal."""
    found = _RUNTIME_DIR.fullmatch(name)
    if found is None or _running(int(found[1]), int(found[2])):
        return
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except OSError:
        return  # gone, a symlink, or another user's
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its supervisor lives, in another pid namespace
        remove_scratch(parent / name)
    finally:
        os.close(fd)


def _one_line(error: BaseException) -> str:
    """``error`` for one line of a start-up warning; its type named unless
    it is an OSError or a ConfinementError, whose text says what failed."""
    text = " ".join(str(error).split()) or "no detail"
    if isinstance(error, OSError | ConfinementError):
        return text
    return f"{type(error).__name__}: {text}"
