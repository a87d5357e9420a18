"""Per-agent cgroups: pids.max binds, and kill() ends the whole tree, daemons
and fork bombs included (supervisor/confinement/cgroup.py).

The pytest process plays the supervisor: it makes the cgroups, but never
joins one; each scenario runs in a child python that joins its cgroup as
its first step, as the agent's bootstrap does. The ``manager`` fixture's
close() kills whatever a failed test left in the cgroups and removes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from capsup.agents.confine.errors import ConfinementError
from capsup.supervisor.confinement.cgroup import (
    AgentCgroup,
    CgroupManager,
    _delegate,
)
from daemon_source import DAEMONIZE

UNIFIED = Path("/sys/fs/cgroup/unified")

#: Joins the cgroup, forks children that wait, until a fork is refused or
#: ``argv[2]`` children exist; says which; then waits to be killed.
FORK_UNTIL_REFUSED = r"""
import errno, os, signal, sys
with open(sys.argv[1], "w") as procs:
    procs.write("0")
made = 0
while made < int(sys.argv[2]):
    try:
        pid = os.fork()
    except OSError as error:
        print("refused", made, errno.errorcode[error.errno], flush=True)
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    made += 1
else:
    print("made", made, flush=True)
signal.pause()
"""

#: Joins the cgroup, starts a daemon, prints its pid and exits: the daemon
#: has left the process tree.
DOUBLE_FORK = (
    DAEMONIZE
    + r"""
import sys
with open(sys.argv[1], "w") as procs:
    procs.write("0")
print(daemonize(), flush=True)
"""
)

#: Joins the cgroup and forks without end, in every process.
FORK_BOMB = r"""
import os, sys
with open(sys.argv[1], "w") as procs:
    procs.write("0")
print("joined", flush=True)
os.closerange(0, 3)
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


@pytest.fixture
def manager() -> Iterator[CgroupManager]:
    try:
        cgroups = CgroupManager.setup()
    except ConfinementError as error:
        pytest.skip(f"no cgroup can be had on this machine: {error}")
    try:
        yield cgroups
    finally:
        cgroups.close()
    assert not cgroups.directory.exists()


@contextlib.contextmanager
def child(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A child python running ``script``; killed and reaped at the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 10)
    assert ready, "the child said nothing within 10 s"
    return process.stdout.readline().strip()


def exited(pidfd: int, timeout: float = 5.0) -> bool:
    """Whether the process behind ``pidfd`` ends within ``timeout``."""
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def test_setup_names_the_hierarchy_and_the_supervisor_directory(manager: CgroupManager) -> None:
    assert manager.directory.name == f"capsup-{os.getpid()}"
    assert manager.directory.is_dir()
    assert f"cgroup v{manager.version}" in manager.describe()
    assert str(manager.directory) in manager.describe()


def test_pids_max_refuses_the_fork_past_the_bound(manager: CgroupManager) -> None:
    cgroup = manager.create("agent-bounded", pids_max=8)
    with child(FORK_UNTIL_REFUSED, cgroup.procs_path, "50") as process:
        # The child itself is one of the 8.
        assert first_line(process) == "refused 7 EAGAIN"
        assert (cgroup.directory / "pids.current").read_text().strip() == "8"
        cgroup.kill()
        assert process.wait(timeout=5) == -signal.SIGKILL
    assert cgroup.empty()
    cgroup.remove()
    assert not cgroup.directory.exists()


def test_without_a_bound_the_same_forks_succeed(manager: CgroupManager) -> None:
    cgroup = manager.create("agent-unbounded", pids_max=None)
    with child(FORK_UNTIL_REFUSED, cgroup.procs_path, "20") as process:
        assert first_line(process) == "made 20"
        assert len(cgroup.members()) == 21
        cgroup.kill()
    assert cgroup.empty()


def test_kill_ends_a_daemon_that_left_the_process_tree(manager: CgroupManager) -> None:
    cgroup = manager.create("agent-daemon", pids_max=8)
    with child(DOUBLE_FORK, cgroup.procs_path) as process:
        daemon = int(first_line(process))
        assert process.wait(timeout=5) == 0
    pidfd = os.pidfd_open(daemon)
    try:
        # It lives on, no longer below anyone the supervisor knows...
        assert not exited(pidfd, 0)
        with open(f"/proc/{daemon}/stat") as stat:
            assert int(stat.read().rsplit(")", 1)[1].split()[1]) != process.pid
        # ...but it is still in the cgroup, and the cgroup's kill ends it.
        assert cgroup.members() == [daemon]
        cgroup.kill()
        assert exited(pidfd)
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
    assert cgroup.empty()
    cgroup.remove()


def test_kill_ends_a_fork_bomb_held_to_pids_max(manager: CgroupManager) -> None:
    cgroup = manager.create("agent-bomb", pids_max=16)
    with child(FORK_BOMB, cgroup.procs_path) as process:
        assert first_line(process) == "joined"
        events = cgroup.directory / "pids.events"
        refused = 0
        for _ in range(1000):  # until the bomb has hit the bound
            refused = int(events.read_text().split()[1])
            if refused:
                break
            select.select([], [], [], 0.005)
        assert refused > 0, "the fork bomb never reached pids.max"
        assert len(cgroup.members()) <= 16
        cgroup.kill()
        assert cgroup.empty()
        assert process.wait(timeout=5) == -signal.SIGKILL
    cgroup.remove()


def test_close_kills_what_is_left_and_removes_every_cgroup(manager: CgroupManager) -> None:
    cgroups = [manager.create(f"agent-{n}", pids_max=4) for n in range(2)]
    with child(DOUBLE_FORK, cgroups[0].procs_path) as process:
        daemon = int(first_line(process))
        process.wait(timeout=5)
    pidfd = os.pidfd_open(daemon)
    try:
        manager.close()
        assert exited(pidfd)
    finally:
        os.close(pidfd)
    assert not manager.directory.exists()
    manager.close()  # a second time: nothing left to do


def test_a_removed_cgroup_is_empty_and_removing_again_is_harmless(
    manager: CgroupManager,
) -> None:
    cgroup = manager.create("agent-gone", pids_max=None)
    cgroup.remove()
    assert cgroup.empty()
    cgroup.kill()
    cgroup.remove()


def test_remove_refuses_a_cgroup_that_still_has_a_process(manager: CgroupManager) -> None:
    cgroup = manager.create("agent-busy", pids_max=None)
    with child(FORK_UNTIL_REFUSED, cgroup.procs_path, "0") as process:
        assert first_line(process) == "made 0"
        with pytest.raises(ConfinementError, match="EBUSY") as raised:
            cgroup.remove()
        assert raised.value.feature == "cgroup"
        cgroup.kill()
    cgroup.remove()


def test_create_refuses_a_duplicate_id_and_what_is_not_an_id(manager: CgroupManager) -> None:
    manager.create("agent-once", pids_max=None)
    with pytest.raises(ConfinementError, match="EEXIST"):
        manager.create("agent-once", pids_max=None)
    for bad in ("../escape", "a/b", ".", "..", "", "cgroup.procs/x", ".hidden"):
        with pytest.raises(ValueError, match="not an agent id"):
            manager.create(bad, pids_max=None)
    with pytest.raises(ValueError, match="at least 1"):
        manager.create("agent-zero", pids_max=0)


# cgroup v2 paths. This machine's unified hierarchy offers no pids (v1 holds
# the controller), so setup() picks v1 here; these tests drive the v2 code
# directly in a cgroup of the unified hierarchy, where cgroup.kill exists.


@contextlib.contextmanager
def fresh_unified_cgroup() -> Iterator[Path]:
    """A new cgroup in the unified hierarchy; its processes killed and it
    removed at the end."""
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.skip(f"no cgroup v2 hierarchy at {UNIFIED}")
    directory = UNIFIED / f"capsup-test-{uuid.uuid4().hex[:12]}"
    try:
        directory.mkdir()
    except OSError as error:
        pytest.skip(f"cannot create a cgroup v2 at {directory}: {error.strerror}")
    cleanup = AgentCgroup("cleanup", 2, directory, "/" + directory.name)
    try:
        yield directory
    finally:
        cleanup.kill()
        cleanup.remove()


@pytest.fixture
def unified_cgroup() -> Iterator[Path]:
    with fresh_unified_cgroup() as directory:
        yield directory


def test_v2_kill_uses_cgroup_kill_and_ends_a_daemon(unified_cgroup: Path) -> None:
    assert (unified_cgroup / "cgroup.kill").exists()
    cgroup = AgentCgroup("agent-v2", 2, unified_cgroup, "/" + unified_cgroup.name)
    with child(DOUBLE_FORK, cgroup.procs_path) as process:
        daemon = int(first_line(process))
        process.wait(timeout=5)
    pidfd = os.pidfd_open(daemon)
    try:
        assert cgroup.members() == [daemon]
        cgroup.kill()
        assert exited(pidfd)
    finally:
        os.close(pidfd)
    assert cgroup.empty()


#: In a child: join ``argv[1]`` (a v2 cgroup), delegate ``argv[2]`` from it
#: (moving into a leaf if need be), then again from where it is now.
DELEGATE = r"""
import sys
from pathlib import Path
from capsup.supervisor.confinement.cgroup import _delegate
directory = Path(sys.argv[1])
(directory / "cgroup.procs").write_text("0")
def where():
    return open("/proc/self/cgroup").read().split("0::", 1)[1].split()[0]
try:
    print(_delegate(directory, sys.argv[2]), where())
except OSError as error:
    print("failed", error.errno, where())
    sys.exit()
print(_delegate(Path(str(directory) + "/capsup-supervisor"), sys.argv[2]), where())
"""


def delegate_in_child(directory: Path, controller: str) -> str:
    """What :data:`DELEGATE` prints, run on ``directory`` and ``controller``."""
    result = subprocess.run(
        [sys.executable, "-c", DELEGATE, str(directory), controller],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout


@pytest.fixture
def delegating() -> Iterator[tuple[Path, str]]:
    """A new v2 cgroup, and a controller the unified hierarchy offers,
    enabled for the root's children for the test (and disabled again after
    the cgroup is gone, if it was not enabled before)."""
    offered = (UNIFIED / "cgroup.controllers").read_text().split() if UNIFIED.is_dir() else []
    if not offered:
        pytest.skip(f"no cgroup v2 controller at {UNIFIED} to delegate")
    controller = offered[0]
    control = UNIFIED / "cgroup.subtree_control"
    was_enabled = controller in control.read_text().split()
    control.write_text(f"+{controller}")
    try:
        with fresh_unified_cgroup() as directory:
            yield directory, controller
    finally:
        if not was_enabled:
            control.write_text(f"-{controller}")


def test_v2_delegation_moves_the_supervisor_into_a_leaf_once(
    delegating: tuple[Path, str],
) -> None:
    unified_cgroup, v2_controller = delegating
    name = "/" + unified_cgroup.name
    first, second = delegate_in_child(unified_cgroup, v2_controller).splitlines()
    # It had to move (it lived in the cgroup it delegates from)...
    assert first == f"{unified_cgroup} {name}/capsup-supervisor"
    assert v2_controller in (unified_cgroup / "cgroup.subtree_control").read_text().split()
    # ...and asked again from its leaf, it neither moves nor nests.
    assert second == f"{unified_cgroup} {name}/capsup-supervisor"
    assert [p.name for p in unified_cgroup.iterdir() if p.is_dir()] == ["capsup-supervisor"]


def test_v2_delegation_moves_back_when_others_share_the_cgroup(
    delegating: tuple[Path, str],
) -> None:
    unified_cgroup, v2_controller = delegating
    with child(FORK_UNTIL_REFUSED, str(unified_cgroup / "cgroup.procs"), "0") as neighbour:
        assert first_line(neighbour) == "made 0"
        printed = delegate_in_child(unified_cgroup, v2_controller)
        assert printed.split() == ["failed", str(errno.EBUSY), "/" + unified_cgroup.name]
    assert not (unified_cgroup / "capsup-supervisor").exists()
    assert v2_controller not in (unified_cgroup / "cgroup.subtree_control").read_text().split()


def test_delegate_leaves_a_cgroup_alone_that_already_delegates(
    delegating: tuple[Path, str],
) -> None:
    unified_cgroup, v2_controller = delegating
    (unified_cgroup / "cgroup.subtree_control").write_text(f"+{v2_controller}")
    assert _delegate(unified_cgroup, v2_controller) == unified_cgroup
    assert not (unified_cgroup / "capsup-supervisor").exists()
