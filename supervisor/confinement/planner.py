"""Which paths, limits and steps one agent's confinement holds.

The table of what a confined agent may touch natively (everything else it
reaches through a capability):

=====================  ===========  ==============================================
what                   access       why
=====================  ===========  ==============================================
the runtime            read, exec   ``/usr``, ``/lib*``, ``/bin``, ``/sbin``, this
                                    interpreter's prefixes and virtual environment
the files of ``/etc``  read         dynamic linking, locale, TLS roots, time zones,
in ``ETC_FILES``                    users and hosts (``landlock.ETC_FILES``)
CPU topology           read         ``os.cpu_count()`` reads ``/sys/devices/system/cpu``
the agent's code       read         a ``.py`` agent's directory; for ``node a.js``
                                    the script's; never ``/`` or the home directory
scratch                read, write  private, 0700, ``TMPDIR`` and ``HOME``; removed
                                    when the agent ends
``/dev/shm``           read, write  a private tmpfs (POSIX semaphores, shared memory)
device files           read, write  ``/dev/null``, ``zero``, ``urandom``, the terminal
``sandbox.read/write``              what the policy entry grants for the whole life
=====================  ===========  ==============================================

Not the working directory, not ``$HOME``, not ``/tmp``, not ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import capsup.agents
from capsup.agents.confine import landlock
from capsup.agents.confine.plan import ConfinementPlan, Mode
from capsup.supervisor.confinement.sandbox import Sandbox
from capsup.supervisor.confinement.support import Support

__all__ = ["SHM_BYTES", "build_plan", "code_paths", "runtime_paths"]

#: The private /dev/shm of an agent: enough for multiprocessing's
#: semaphores and a modest shared array, not a way to pin host memory.
SHM_BYTES = 64 << 20

_SYSTEM_RUNTIME = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
_SYSTEM_READ = (
    "/sys/devices/system/cpu",
    # Debian's own interpreter reads its sitecustomize there.
    f"/etc/python{sys.version_info.major}.{sys.version_info.minor}",
)
#: A private tmpfs in the agent's mount namespace, never the host's.
_SHM = "/dev/shm"  # noqa: S108


def runtime_paths() -> tuple[str, ...]:
    """Read-and-execute: the system's programs and libraries, this
    interpreter's prefixes (a virtual environment's and its base's), and
    the directory capsup's agent package is imported from (an editable
    install lives outside every prefix)."""
    paths = [
        *_SYSTEM_RUNTIME,
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(capsup.agents.__file__).resolve().parent),
    ]
    return _unique(paths)


def code_paths(
    argv: Sequence[str],
    *,
    protected: Sequence[str] = (),
    parent: ConfinementPlan | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(read_exec, read_only)`` for the agent's own code.

    The program itself, when it lies outside the runtime, may be executed
    (``./agent.sh``); the directory of the first argument that is a file
    (``python agent.py``, ``node agent.js``, next to its ``node_modules``)
    is readable. A directory that would grant too much (``/``, the home
    directory, the temporary directory, or one that holds a ``protected``
    path: the runtime directory, the policy, the state, the trail) is
    narrowed to the file itself.

    A sub-agent's argv is chosen by its parent, an agent: naming a file
    there must not be a way to read it. So a sub-agent (``parent`` is the
    parent's plan) is granted only what its parent may already read."""
    runtime = runtime_paths()
    read_exec: list[str] = []
    program = shutil.which(argv[0]) if argv else None
    if program is not None:
        resolved = str(Path(program).resolve())
        if not any(_within(resolved, root) for root in runtime):
            read_exec.append(resolved)
    read_only: list[str] = []
    for arg in argv[1:]:
        if not arg.startswith("-") and _is_file(arg):
            script = Path(arg).resolve()
            wide = _too_wide(script.parent, protected)
            read_only.append(str(script if wide else script.parent))
            break
    if parent is not None:
        readable = (*parent.read_exec, *parent.read_only, *parent.read_write)
        read_exec = [p for p in read_exec if any(_within(p, r) for r in parent.read_exec)]
        read_only = [p for p in read_only if any(_within(p, r) for r in readable)]
    return tuple(read_exec), tuple(read_only)


def _is_file(arg: str) -> bool:
    """Whether ``arg`` names a file; an argument that cannot be a path (the
    code after ``python -c``, longer than a file name may be) is not one."""
    try:
        return Path(arg).is_file()
    except (OSError, ValueError):
        return False


def _too_wide(directory: Path, protected: Sequence[str]) -> bool:
    """Whether granting ``directory`` would grant more than an agent's code."""
    broad = {Path("/"), Path.home().resolve(), Path(tempfile.gettempdir()).resolve()}
    if directory in broad:
        return True
    return any(_within(str(Path(p).resolve()), str(directory)) for p in protected)


def terminal_devices() -> tuple[str, ...]:
    """The terminal(s) the agent inherits as stdin, stdout or stderr."""
    found = []
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                found.append(os.ttyname(fd))
    return _unique(found)


def build_plan(
    argv: Sequence[str],
    *,
    mode: Mode,
    sandbox: Sandbox,
    scratch: Path,
    control_fd: int,
    cgroup_procs: str | None,
    support: Support,
    protected: Sequence[str] = (),
    parent: ConfinementPlan | None = None,
) -> ConfinementPlan:
    """The plan for an agent started as ``argv`` (by ``parent``, for a
    sub-agent). In ``best-effort`` mode a step this machine cannot take is
    left out (and named in ``missing``); in ``required`` mode the caller
    refuses to start before it gets here."""
    code_exec, code_read = code_paths(argv, protected=protected, parent=parent)
    shm = SHM_BYTES if support.shm else 0
    missing = support.missing
    return ConfinementPlan(
        mode=mode,
        read_exec=_unique([*runtime_paths(), *code_exec]),
        read_only=_unique([*landlock.ETC_FILES, *_SYSTEM_READ, *code_read, *sandbox.read]),
        read_write=_unique([str(scratch), *([_SHM] if shm else []), *sandbox.write]),
        devices=_unique([*landlock.DEVICE_FILES, *terminal_devices()]),
        landlock=support.landlock_abi > 0,
        seccomp=support.seccomp,
        shm_bytes=shm,
        memory=sandbox.memory,
        open_files=sandbox.open_files,
        file_size=sandbox.file_size,
        cpu_seconds=sandbox.cpu_seconds,
        cgroup_procs=cgroup_procs,
        drop_privileges=support.root,
        control_fd=control_fd,
        missing=missing,
    )


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _unique(paths: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for p in paths if p))
