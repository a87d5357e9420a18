"""A private scratch directory per agent, and a removal the agent cannot
turn against the supervisor (supervisor/confinement/scratch.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from capsup.agents.confine.errors import ConfinementError
from capsup.supervisor.confinement.scratch import make_scratch, remove_scratch

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    directory = tmp_path / "scratch"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the scratch parent, with files an agent must not
    be able to have removed."""
    directory = tmp_path / "outside"
    (directory / "deep").mkdir(parents=True)
    (directory / "keep.txt").write_text("keep")
    (directory / "deep" / "keep.txt").write_text("keep")
    return directory


def test_make_scratch_is_private_and_named_after_the_agent(parent: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        scratch = make_scratch(parent, "agent-one-0123")
    finally:
        os.umask(old_umask)
    assert scratch == parent / "agent-one-0123"
    assert scratch.is_dir()
    assert mode(scratch) == 0o700
    assert scratch.stat().st_uid == os.geteuid()


def test_make_scratch_creates_a_missing_parent_closed_to_others(tmp_path: Path) -> None:
    scratch = make_scratch(tmp_path / "new", "agent-a")
    assert mode(tmp_path / "new") == 0o700
    assert scratch.parent == tmp_path / "new"


def test_make_scratch_returns_an_absolute_path(
    parent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(parent.parent)
    scratch = make_scratch(Path("scratch"), "agent-a")
    assert scratch == parent / "agent-a"


def test_make_scratch_gives_the_directory_to_its_owner(parent: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory away takes root")
    scratch = make_scratch(parent, "agent-a", owner=(NOBODY, NOBODY))
    info = scratch.stat()
    assert (info.st_uid, info.st_gid) == (NOBODY, NOBODY)
    assert mode(scratch) == 0o700


def test_make_scratch_refuses_an_existing_name(parent: Path) -> None:
    make_scratch(parent, "agent-a")
    with pytest.raises(ConfinementError, match="EEXIST") as raised:
        make_scratch(parent, "agent-a")
    assert raised.value.feature == "scratch"


def test_make_scratch_neither_follows_nor_reuses_a_planted_symlink(
    parent: Path, outside: Path
) -> None:
    outside.chmod(0o755)
    (parent / "agent-a").symlink_to(outside)
    with pytest.raises(ConfinementError, match="EEXIST"):
        make_scratch(parent, "agent-a")
    assert mode(outside) == 0o755


@pytest.mark.parametrize("parent_mode", [0o755, 0o770, 0o701])
def test_make_scratch_refuses_a_parent_open_to_others(parent: Path, parent_mode: int) -> None:
    parent.chmod(parent_mode)
    with pytest.raises(ConfinementError, match="closed to others"):
        make_scratch(parent, "agent-a")
    assert list(parent.iterdir()) == []


def test_make_scratch_refuses_a_parent_someone_else_owns(parent: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory away takes root")
    os.chown(parent, NOBODY, NOBODY)
    with pytest.raises(ConfinementError, match=f"it is uid {NOBODY}"):
        make_scratch(parent, "agent-a")


def test_make_scratch_refuses_a_symlink_as_parent(parent: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(parent)
    with pytest.raises(ConfinementError, match="ENOTDIR"):
        make_scratch(link, "agent-a")


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", ".hidden", "a\0b"])
def test_make_scratch_refuses_what_is_not_an_agent_id(parent: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not an agent id"):
        make_scratch(parent, bad)


def plant_traps(scratch: Path, outside: Path) -> None:
    """What a hostile agent leaves in its scratch directory: links out (to a
    directory, to a file, one nested), a read-only file, directories it
    made unreadable and unwritable."""
    (scratch / "to-outside").symlink_to(outside)
    (scratch / "to-file").symlink_to(outside / "keep.txt")
    nested = scratch / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "to-outside").symlink_to(outside)
    (nested / "file").write_text("x")
    (nested / "file").chmod(0o400)
    (scratch / "a" / "readonly.txt").write_text("x")
    (scratch / "a" / "readonly.txt").chmod(0o000)
    (scratch / "empty-locked").mkdir(mode=0o000)
    nested.chmod(0o000)
    (scratch / "a").chmod(0o500)
    scratch.chmod(0o500)


def assert_outside_intact(outside: Path) -> None:
    assert (outside / "keep.txt").read_text() == "keep"
    assert (outside / "deep" / "keep.txt").read_text() == "keep"


def test_remove_scratch_unlinks_symlinks_and_never_empties_their_targets(
    parent: Path, outside: Path
) -> None:
    scratch = make_scratch(parent, "agent-a")
    plant_traps(scratch, outside)
    remove_scratch(scratch)
    assert not scratch.exists()
    assert not scratch.is_symlink()
    assert list(parent.iterdir()) == []
    assert_outside_intact(outside)


def test_remove_scratch_unlinks_a_scratch_swapped_for_a_symlink(
    parent: Path, outside: Path
) -> None:
    scratch = make_scratch(parent, "agent-a")
    scratch.rmdir()
    scratch.symlink_to(outside)
    remove_scratch(scratch)
    assert not scratch.is_symlink()
    assert_outside_intact(outside)


def test_remove_scratch_is_quiet_about_what_is_gone(parent: Path, tmp_path: Path) -> None:
    scratch = make_scratch(parent, "agent-a")
    remove_scratch(scratch)
    remove_scratch(scratch)
    remove_scratch(tmp_path / "never" / "there")


@pytest.mark.parametrize("bad", ["/", ".", "..", "a/.."])
def test_remove_scratch_refuses_a_path_that_does_not_end_in_a_name(bad: str) -> None:
    with pytest.raises(ValueError, match="not a scratch directory"):
        remove_scratch(Path(bad))


def as_nobody(parent: Path, outside: Path) -> dict[str, object]:
    """Run as an unprivileged user (so without CAP_DAC_OVERRIDE, which lets
    root ignore the traps): plant the traps in one scratch directory and
    try shutil.rmtree on it, then in another and use remove_scratch."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    result: dict[str, object] = {}
    control = make_scratch(parent, "agent-control")
    plant_traps(control, outside)
    try:
        shutil.rmtree(control)
        result["rmtree"] = "removed"
    except PermissionError as error:
        result["rmtree"] = error.strerror
    scratch = make_scratch(parent, "agent-a")
    plant_traps(scratch, outside)
    remove_scratch(scratch)
    result["removed"] = not scratch.exists()
    remove_scratch(control)
    result["control_removed"] = not control.exists()
    return result


def in_child(
    parent: Path,
    outside: Path,
    function: Callable[[Path, Path], dict[str, object]] = as_nobody,
) -> dict[str, object]:
    """``function`` (:func:`as_nobody`) in a forked child (pytest keeps its root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 1
        try:
            report = json.dumps(function(parent, outside))
            status = 0
        except BaseException:
            report = json.dumps({"error": traceback.format_exc()})
        finally:
            os.write(write_end, report.encode())
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read()
    _, status = os.waitpid(pid, 0)
    result: dict[str, object] = json.loads(report)
    assert os.waitstatus_to_exitcode(status) == 0, result.get("error")
    return result


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user takes root")
    directory = Path(tempfile.mkdtemp(prefix="capsup-scratch-test-"))
    os.chown(directory, NOBODY, NOBODY)
    try:
        yield directory
    finally:
        # As root: what the traps left (if the test failed) cannot stop it.
        shutil.rmtree(directory)


def test_remove_scratch_undoes_an_agents_chmod_without_privileges(nobody_dir: Path) -> None:
    parent, outside = nobody_dir / "scratch", nobody_dir / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "deep" / "keep.txt").write_text("keep")
    for path in (outside, outside / "deep", outside / "keep.txt", outside / "deep" / "keep.txt"):
        os.chown(path, NOBODY, NOBODY)
    result = in_child(parent, outside)
    # The traps do stop a plain removal by an unprivileged supervisor...
    assert result["rmtree"] == "Permission denied"
    # ...and not this one, which leaves what the links point to alone.
    assert result["removed"] is True
    assert result["control_removed"] is True
    assert_outside_intact(outside)


DEEP = 5000


def make_deep_tree(top: Path, outside: Path, depth: int, lock_every: int = 0) -> None:
    """``top/d/d/.../d`` ``depth`` levels down, with a file, a link out and a
    side branch here and there; every ``lock_every``-th level made
    unreadable and unwritable (``chmod 000``) once its child exists. Built
    through descriptors: the path is far longer than PATH_MAX."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1, depth + 1):
            os.mkdir("d", dir_fd=fd)
            if level % 1000 == 0:
                os.mkdir("side", dir_fd=fd)
                os.symlink(outside, "out", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            if lock_every and level % lock_every == 0:
                os.fchmod(fd, 0)
            os.close(fd)
            fd = below
        leftover = os.open("leftover.txt", os.O_WRONLY | os.O_CREAT, 0o400, dir_fd=fd)
        os.close(leftover)
        os.symlink(outside, "to-outside", dir_fd=fd)
    finally:
        os.close(fd)


def test_remove_scratch_removes_a_tree_deeper_than_pythons_recursion_limit(
    parent: Path, outside: Path
) -> None:
    scratch = make_scratch(parent, "agent-a")
    make_deep_tree(scratch, outside, DEEP)
    remove_scratch(scratch)
    assert list(parent.iterdir()) == []
    assert_outside_intact(outside)


def deep_as_nobody(parent: Path, outside: Path) -> dict[str, object]:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    scratch = make_scratch(parent, "agent-a")
    make_deep_tree(scratch, outside, DEEP, lock_every=700)
    remove_scratch(scratch)
    return {"removed": not scratch.exists()}


def test_remove_scratch_undoes_chmod_deep_in_a_deep_tree_without_privileges(
    nobody_dir: Path,
) -> None:
    parent, outside = nobody_dir / "scratch", nobody_dir / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "deep" / "keep.txt").write_text("keep")
    for path in (outside, outside / "deep", outside / "keep.txt", outside / "deep" / "keep.txt"):
        os.chown(path, NOBODY, NOBODY)
    assert in_child(parent, outside, deep_as_nobody) == {"removed": True}
    assert_outside_intact(outside)
