"""Path resolution: the kernel's answer (O_PATH + /proc) and the walk agree.

``resolve`` asks the kernel for existing paths and walks the rest; the file
validator's containment check is only as good as both. These tests build
random trees of directories, files and symlinks (relative, absolute, ``..``,
dangling, loops) and compare the two on random paths through them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from capsup.validators import FilesystemValidator, Use, paths
from capsup.validators.paths import Resolved, ResolveError, resolve, resolve_by_walking
from hypothesis import given, settings
from hypothesis import strategies as st

NAMES = ["a", "b", "c"]
# What a symlink may point to; {root} is the tree's root.
LINK_TARGETS = [
    "a",
    "b/c",
    "..",
    "../..",
    ".",
    "missing",
    "a/../b",
    "{root}/a",
    "{root}/b/c",
    "{root}/missing/x",
    "/",
    "c",  # a loop when the link itself is c
]
KINDS = st.sampled_from(["dir", "file", "link"])


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """Entries (relative path, kind, link target), parents before children."""
    entries: list[tuple[str, str, str]] = []
    for first in NAMES:
        kind = draw(KINDS)
        entries.append((first, kind, draw(st.sampled_from(LINK_TARGETS))))
        if kind == "dir":
            for second in NAMES:
                entries.append(
                    (f"{first}/{second}", draw(KINDS), draw(st.sampled_from(LINK_TARGETS)))
                )
    return entries


def build(root: str, entries: list[tuple[str, str, str]]) -> None:
    for relative, kind, target in entries:
        where = os.path.join(root, relative)
        if kind == "dir":
            os.mkdir(where)
        elif kind == "file":
            Path(where).write_text("x")
        else:
            os.symlink(target.replace("{root}", root), where)


def outcome(resolver: object, path: str) -> Resolved | str:
    try:
        return resolver(path)  # type: ignore[operator,no-any-return]
    except ResolveError as error:
        return f"error:{error.reason}"


@settings(max_examples=300, deadline=None)
@given(
    entries=trees(),
    queries=st.lists(
        st.lists(st.sampled_from([*NAMES, "..", ".", "", "missing"]), max_size=5),
        min_size=1,
        max_size=8,
    ),
)
def test_the_kernels_resolution_matches_the_walk(
    entries: list[tuple[str, str, str]], queries: list[list[str]]
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = os.path.realpath(scratch)
        build(root, entries)
        for segments in queries:
            path = "/".join([root, *segments])
            assert outcome(resolve, path) == outcome(resolve_by_walking, path), path


def test_an_existing_path_is_answered_by_the_kernel(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "real").mkdir()
    (root / "real" / "f").write_text("x")
    (root / "link").symlink_to("real")
    assert paths._resolve_existing(str(root / "link" / "f")) == Resolved(
        str(root / "real" / "f"), True
    )
    # Without a symlink, the normal form of the path itself.
    assert paths._resolve_existing(f"{root}//real/./f/") is None  # a file is not a directory
    assert paths._resolve_existing(f"/..{root}//link/../real/./f") == Resolved(
        str(root / "real" / "f"), True
    )
    assert paths._resolve_existing(f"{root}//real/.././real/") == Resolved(str(root / "real"), True)
    # A missing component is the walk's to explain.
    assert paths._resolve_existing(str(root / "real" / "new")) is None
    assert resolve(str(root / "link" / "new")) == Resolved(str(root / "real" / "new"), False)


def test_a_name_ending_like_an_unlinked_file_is_walked(tmp_path: Path) -> None:
    # /proc shows an unlinked file as "NAME (deleted)"; a file may really be
    # called that, and must then resolve to itself, named by /proc (through
    # a symlink) or not.
    root = Path(os.path.realpath(tmp_path))
    odd = root / "notes (deleted)"
    odd.write_text("x")
    (root / "link").symlink_to(odd.name)
    assert paths._resolve_existing(str(root / "link")) is None
    assert resolve(str(root / "link")) == Resolved(str(odd), True)
    assert resolve(str(odd)) == Resolved(str(odd), True)


def test_a_symlink_loop_is_still_named_a_loop(tmp_path: Path) -> None:
    (tmp_path / "x").symlink_to("y")
    (tmp_path / "y").symlink_to("x")
    with pytest.raises(ResolveError) as caught:
        resolve(str(tmp_path / "x" / "f"))
    assert caught.value.reason == "symlink_loop"


def test_a_forked_child_reads_its_own_descriptors(tmp_path: Path) -> None:
    """After fork, the cached /proc/self/fd of the parent names the parent's
    descriptors; a child using it would resolve its fd N as the parent's."""
    root = Path(os.path.realpath(tmp_path))
    (root / "secret").write_text("s")
    (root / "mine").write_text("m")
    resolve(str(root / "mine"))  # the parent opens its fd dir
    parent_fd = os.open(root / "secret", os.O_RDONLY)  # the lowest free number
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child reports through its exit code
        try:
            os.close(parent_fd)  # the child's next open takes this number
            ok = resolve(str(root / "mine")) == Resolved(str(root / "mine"), True)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    os.close(parent_fd)  # only now: the child must see it open in the parent
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_proc_link_is_never_followed(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "real.txt").write_text("x")
    (root / "via_proc").symlink_to(f"/proc/self/root{root}")
    # Existing or not (the kernel refuses to follow it, the walk to read it
    # as text), even into this very mount namespace.
    for name in ("real.txt", "new.txt"):
        with pytest.raises(ResolveError) as caught:
            resolve(str(root / "via_proc" / name))
        assert caught.value.reason == "magic_link"


@pytest.fixture
def own_namespace() -> Iterator[Callable[[str], int]]:
    """Start ``sh -c SCRIPT`` in a new user and mount namespace, kept alive for
    the test; returns its pid. Skips where user namespaces are off."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    started: list[subprocess.Popen[str]] = []

    def start(script: str) -> int:
        proc = subprocess.Popen(
            ["unshare", "-Urm", "sh", "-c", f"{script} && echo ready && exec sleep 60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            pytest.skip("cannot make a mount namespace here (unprivileged user namespaces off?)")
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture
def other_namespace(tmp_path: Path, own_namespace: Callable[[str], int]) -> tuple[Path, Path, int]:
    """(ws, outside, pid): a process in its own mount namespace where ``ws``
    shows the contents of ``outside``."""
    root = Path(os.path.realpath(tmp_path))
    ws, outside = root / "ws", root / "outside"
    ws.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    return ws, outside, own_namespace(f"mount --bind {outside} {ws}")


def test_a_link_into_another_mount_namespace_does_not_escape(
    other_namespace: tuple[Path, Path, int],
) -> None:
    """Through /proc/PID/root, ``ws/innocent`` opens ``outside/secret.txt``
    while /proc names it ``ws/secret.txt``: a name inside the root for an
    object outside it. Neither resolution may take that name."""
    ws, _, pid = other_namespace
    (ws / "innocent").symlink_to(f"/proc/{pid}/root{ws}/secret.txt")
    (ws / "door").symlink_to(f"/proc/{pid}/root{ws}")
    validator = FilesystemValidator()
    resource = validator.canonical_resource(ws.as_uri())
    read = validator.check(resource, {}, Use("read", str(ws / "innocent")))
    create = validator.check(resource, {}, Use("create", str(ws / "door" / "new.txt"), size=1))
    assert (read.allowed, read.reason) == (False, "magic_link")
    assert (create.allowed, create.reason) == (False, "magic_link")


def test_a_name_given_back_by_another_namespace_is_not_taken(
    tmp_path: Path, own_namespace: Callable[[str], int]
) -> None:
    """The other namespace puts ``outside/secret.txt`` at ``ws/sub/door/f`` (a
    tmpfs over ``ws/sub``, a bind mount on ``f``); here ``ws/sub/door`` leads
    there through /proc/PID/root. /proc then names the secret by the very
    path that was asked for, and resolving that name again follows the same
    link to the same file, so no comparison afterwards can tell. Only
    refusing to follow the magic link can."""
    root = Path(os.path.realpath(tmp_path))
    ws, outside = root / "ws", root / "outside"
    (ws / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    door = ws / "sub" / "door"
    pid = own_namespace(
        f"mount -t tmpfs none {ws}/sub && mkdir {door} && touch {door}/f"
        f" && mount --bind {outside}/secret.txt {door}/f"
    )
    door.symlink_to(f"/proc/{pid}/root{door}")
    assert (door / "f").read_text() == "secret"  # the trap works
    validator = FilesystemValidator()
    resource = validator.canonical_resource(ws.as_uri())
    read = validator.check(resource, {}, Use("read", str(door / "f")))
    assert (read.allowed, read.reason) == (False, "magic_link")


def test_without_openat2_every_path_is_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old kernel or a seccomp filter that refuses openat2: the walk
    answers, the same answer, refusing magic links as before."""
    monkeypatch.setattr(paths, "path_opener", lambda: None)
    root = Path(os.path.realpath(tmp_path))
    (root / "real").mkdir()
    (root / "real" / "f").write_text("x")
    (root / "link").symlink_to("real")
    (root / "via_proc").symlink_to(f"/proc/self/root{root}")
    assert paths._resolve_existing(str(root / "link" / "f")) is None
    assert resolve(str(root / "link" / "f")) == Resolved(str(root / "real" / "f"), True)
    with pytest.raises(ResolveError) as caught:
        resolve(str(root / "via_proc" / "real"))
    assert caught.value.reason == "magic_link"


def test_a_magic_link_the_walk_cannot_recognize_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk knows procfs by the device of /proc, but every procfs mount
    has a device of its own (a container's /proc under the root, say). Its
    links are then read as text: ``fd/N`` of a pipe names a missing file
    inside the root, fine to create. The kernel refuses to follow the link,
    and that refusal stands."""
    monkeypatch.setattr(paths, "_procfs_dev", lambda: None)  # as for a second procfs
    root = Path(os.path.realpath(tmp_path))
    (root / "proc").symlink_to("/proc")
    read_end, write_end = os.pipe()
    try:
        via_fd = root / "proc" / "self" / "fd" / str(write_end)
        assert resolve_by_walking(str(via_fd)).exists is False  # read as text
        with pytest.raises(ResolveError) as caught:
            resolve(str(via_fd))
        assert caught.value.reason == "magic_link"
        validator = FilesystemValidator()
        resource = validator.canonical_resource(root.as_uri())
        write = validator.check(resource, {}, Use("write", str(via_fd), size=1))
        assert (write.allowed, write.reason) == (False, "magic_link")
    finally:
        os.close(read_end)
        os.close(write_end)
