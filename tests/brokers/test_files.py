"""The file broker against a real kernel and real files: every op works inside
its capability, and nothing outside is reached, however the path is spelled
or the tree is changed between the kernel's check and the broker's open."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from broker_world import World
from capsup.agents import protocol as p
from capsup.agents.errors import ConstraintViolation, OperationNotAllowed
from capsup.supervisor.brokers import files
from capsup.supervisor.events import EventType
from capsup.supervisor.secret_file import SecretFileError, read_secret_file
from capsup.validators.openat2 import RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, openat2

OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY,
    "a": os.O_WRONLY | os.O_APPEND,
    "x": os.O_WRONLY,
    "r+": os.O_RDWR,
}


def refused(reason: str, action: Any, *args: Any, **kw: Any) -> ConstraintViolation:
    with pytest.raises(ConstraintViolation) as caught:
        action(*args, **kw)
    assert caught.value.reason == reason, caught.value
    return caught.value


def last_file_event(world: World) -> Any:
    return world.recorder.of(EventType.FILE_OPERATION)[-1]


# -- inside, every op works ------------------------------------------------------


def test_read_whole_and_in_parts(world: World) -> None:
    cap = world.grant(["read"])
    assert world.read(cap, world.ws / "a.txt") == {"data": b"hello", "eof": True, "size": 5}
    assert world.read(cap, world.ws / "a.txt", offset=1, length=2) == {
        "data": b"el",
        "eof": False,
        "size": 5,
    }
    assert world.read(cap, f"file://{world.ws}/sub/b.txt", offset=5)["data"] == b""
    assert world.read(cap, f"{world.ws}/./sub//b.txt")["data"] == b"inner"


def test_write_replaces_writes_at_and_appends(world: World) -> None:
    cap = world.grant(["write", "create"])
    target = world.ws / "new.txt"
    assert world.write(cap, target, b"hello world") == {"written": 11}
    assert world.write(cap, target, b"HELLO", offset=0) == {"written": 5}
    assert world.write(cap, target, b"!", append=True) == {"written": 1}
    assert target.read_bytes() == b"HELLO world!"
    assert world.write(cap, target, b"short") == {"written": 5}
    assert target.read_bytes() == b"short"


def test_listdir_reports_every_kind(world: World) -> None:
    (world.ws / "link").symlink_to("a.txt")
    os.mkfifo(world.ws / "fifo")
    cap = world.grant(["list"])
    entries = world.do(p.ListdirArgs(cap.id, str(world.ws)))["entries"]
    assert [(e["name"], e["kind"]) for e in entries] == [
        ("a.txt", "file"),
        ("fifo", "other"),
        ("link", "symlink"),
        ("sub", "dir"),
    ]
    assert entries[0]["size"] == 5
    assert last_file_event(world).detail["entries"] == 4


def test_listdir_leaves_out_what_a_deny_glob_covers(world: World) -> None:
    (world.ws / "secrets").mkdir()
    (world.ws / "sub" / "id.key").write_text("k")
    cap = world.grant(["list"], {"deny": ["secrets", "**/*.key"]})
    names = [e["name"] for e in world.do(p.ListdirArgs(cap.id, str(world.ws)))["entries"]]
    assert names == ["a.txt", "sub"]
    inner = world.do(p.ListdirArgs(cap.id, str(world.ws / "sub")))["entries"]
    assert [e["name"] for e in inner] == ["b.txt"]


def test_stat_follows_symlinks_inside(world: World) -> None:
    (world.ws / "link").symlink_to("sub")
    cap = world.grant(["stat"])
    info = world.do(p.StatArgs(cap.id, str(world.ws / "a.txt")))
    assert (info["kind"], info["size"]) == ("file", 5)
    assert info["mode"] == stat.S_IMODE((world.ws / "a.txt").stat().st_mode)
    assert info["mtime"] == pytest.approx((world.ws / "a.txt").stat().st_mtime)
    assert world.do(p.StatArgs(cap.id, str(world.ws / "link")))["kind"] == "dir"


def test_delete_files_links_and_empty_directories(world: World) -> None:
    (world.ws / "empty").mkdir()
    (world.ws / "link").symlink_to("a.txt")
    cap = world.grant(["delete"])
    for name in ("link", "empty", "sub/b.txt", "sub"):
        assert world.do(p.DeleteArgs(cap.id, str(world.ws / name))) == {}
        assert not (world.ws / name).exists() and not (world.ws / name).is_symlink()
    assert (world.ws / "a.txt").read_bytes() == b"hello"  # the link went, not its target


def test_delete_refuses_a_full_directory_and_the_root(world: World) -> None:
    cap = world.grant(["delete"])
    refused("directory_not_empty", world.do, p.DeleteArgs(cap.id, str(world.ws / "sub")))
    refused("resource_root", world.do, p.DeleteArgs(cap.id, str(world.ws)))
    refused("bad_target", world.do, p.DeleteArgs(cap.id, f"{world.ws}/sub/.."))
    assert (world.ws / "sub" / "b.txt").exists()


def test_the_broker_knows_every_mode_of_the_protocol() -> None:
    assert set(files._OPEN_MODES) == set(p.OPEN_MODES) == set(OPEN_FLAGS)


@pytest.mark.parametrize("mode", ["r", "w", "a", "r+"])
def test_open_gives_a_descriptor_with_the_modes_flags(world: World, mode: str) -> None:
    cap = world.grant(["read", "write"])
    fd = world.open(cap, world.ws / "a.txt", mode)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert flags & (os.O_ACCMODE | os.O_APPEND) == OPEN_FLAGS[mode]
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        if "r" in mode:
            assert os.read(fd, 10) == b"hello"
        else:
            os.write(fd, b"!")
    finally:
        os.close(fd)
    expected = {"r": b"hello", "r+": b"hello", "w": b"!", "a": b"hello!"}[mode]
    assert (world.ws / "a.txt").read_bytes() == expected


def test_open_x_makes_a_new_file_only(world: World) -> None:
    cap = world.grant(["create"])
    fd = world.open(cap, world.ws / "made.txt", "x")
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
    os.write(fd, b"made")
    os.close(fd)
    assert (world.ws / "made.txt").read_bytes() == b"made"
    refused("exists", world.open, cap, world.ws / "made.txt", "x")
    refused("exists", world.open, cap, world.ws, "x")


def test_every_effect_is_recorded_with_the_validations_trace_id(world: World) -> None:
    cap = world.grant(["read"])
    world.do(p.ReadArgs(cap.id, str(world.ws / "a.txt")), trace_id="T-READ")
    traced = [e for e in world.recorder.events if e.trace_id == "T-READ"]
    assert [e.event for e in traced] == [
        EventType.CAPABILITY_VALIDATED,
        EventType.FILE_OPERATION,
    ]
    effect = traced[1]
    assert (effect.operation, effect.decision, effect.capability_id) == ("read", "allow", cap.id)
    assert effect.detail["bytes"] == 5 and effect.detail["result"] == "ok"
    assert effect.detail["path"] == str(world.ws / "a.txt")


# -- a capability on one file -----------------------------------------------------


def test_a_capability_on_one_file(world: World) -> None:
    cap = world.grant(["read", "write", "list", "stat"], resource=world.ws / "a.txt")
    assert world.read(cap, world.ws / "a.txt")["data"] == b"hello"
    assert world.write(cap, world.ws / "a.txt", b"bye") == {"written": 3}
    refused("not_a_directory", world.do, p.ListdirArgs(cap.id, str(world.ws / "a.txt")))
    with pytest.raises(ConstraintViolation):
        world.read(cap, world.ws / "sub" / "b.txt")


def test_a_capability_on_a_file_yet_to_be_made(world: World) -> None:
    cap = world.grant(["write", "create"], resource=world.ws / "out.txt")
    assert world.write(cap, world.ws / "out.txt", b"made") == {"written": 4}
    assert (world.ws / "out.txt").read_bytes() == b"made"


# -- rights: create vs write ------------------------------------------------------


def test_making_a_file_needs_create_changing_one_needs_write(world: World) -> None:
    write_only = world.grant(["write"])
    assert world.write(write_only, world.ws / "a.txt", b"changed") == {"written": 7}
    with pytest.raises(OperationNotAllowed):
        world.write(write_only, world.ws / "new.txt", b"x")
    with pytest.raises(OperationNotAllowed):
        world.open(write_only, world.ws / "new.txt", "w")
    assert not (world.ws / "new.txt").exists()

    create_only = world.grant(["create"])
    with pytest.raises(OperationNotAllowed):
        world.write(create_only, world.ws / "a.txt", b"x")
    with pytest.raises(OperationNotAllowed):
        world.open(create_only, world.ws / "a.txt", "a")
    os.close(world.open(create_only, world.ws / "new.txt", "x"))
    # A write or an open that makes the file needs create alone.
    assert world.write(create_only, world.ws / "made.txt", b"new") == {"written": 3}
    os.close(world.open(create_only, world.ws / "made-too.txt", "w"))
    with pytest.raises(OperationNotAllowed):  # now it exists: changing it needs write
        world.write(create_only, world.ws / "made.txt", b"again")
    assert (world.ws / "made.txt").read_bytes() == b"new"

    both = world.grant(["write", "create"])
    assert world.write(both, world.ws / "newer.txt", b"x") == {"written": 1}
    os.close(world.open(both, world.ws / "newest.txt", "a"))


def test_r_plus_needs_read_and_write(world: World) -> None:
    with pytest.raises(OperationNotAllowed):
        world.open(world.grant(["read"]), world.ws / "a.txt", "r+")
    with pytest.raises(OperationNotAllowed):
        world.open(world.grant(["write"]), world.ws / "a.txt", "r+")


# -- outside, nothing --------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "{ws}/../outside/secret",
        "{ws}/sub/../../outside/secret",
        "{outside}/secret",
        "file://{ws}/%2E%2E/outside/secret",
        "{ws}-evil/secret",
    ],
)
def test_paths_outside_are_refused(world: World, spelling: str) -> None:
    twin = world.tmp / "ws-evil"
    twin.mkdir()
    (twin / "secret").write_bytes(b"SECRET")
    cap = world.grant()
    target = spelling.format(ws=world.ws, outside=world.outside)
    for action in (
        lambda: world.read(cap, target),
        lambda: world.write(cap, target, b"pwned"),
        lambda: world.do(p.StatArgs(cap.id, target)),
        lambda: world.do(p.DeleteArgs(cap.id, target)),
        lambda: world.open(cap, target, "r"),
    ):
        with pytest.raises(ConstraintViolation) as caught:
            action()
        assert caught.value.reason == "outside_resource", caught.value
    assert (world.outside / "secret").read_bytes() == b"SECRET"
    assert (twin / "secret").read_bytes() == b"SECRET"


@pytest.mark.parametrize("link", ["../outside", "{outside}"])
def test_a_symlink_inside_that_points_out_is_refused(world: World, link: str) -> None:
    (world.ws / "out").symlink_to(link.format(outside=world.outside))
    cap = world.grant()
    target = world.ws / "out" / "secret"
    refused("symlink_escape", world.read, cap, target)
    refused("symlink_escape", world.open, cap, target, "r")
    refused("symlink_escape", world.write, cap, target, b"pwned")
    assert (world.outside / "secret").read_bytes() == b"SECRET"


def test_an_absolute_symlink_is_refused_even_when_it_points_inside(world: World) -> None:
    # The kernel's walk beneath the root refuses every absolute symlink
    # (RESOLVE_BENEATH): stricter than the validator, which resolves it.
    (world.ws / "abs").symlink_to(world.ws / "a.txt")
    (world.ws / "rel").symlink_to("a.txt")
    cap = world.grant(["read"])
    refused("symlink_escape", world.read, cap, world.ws / "abs")
    assert world.read(cap, world.ws / "rel")["data"] == b"hello"


def test_a_path_named_through_a_symlink_outside_the_root_is_refused(world: World) -> None:
    (world.tmp / "alias").symlink_to(world.ws)
    cap = world.grant(["read"])
    # The validator resolves it inside; the broker takes paths as named.
    refused("outside_resource", world.read, cap, world.tmp / "alias" / "a.txt")


def test_a_magic_link_is_refused(world: World) -> None:
    # /proc/PID/root leads to a process's root directory, whatever its text says.
    cap = world.grant(["read"], resource=f"file:///proc/{os.getpid()}")
    refused("magic_link", world.read, cap, f"/proc/{os.getpid()}/root/etc/hostname")


def test_the_broker_itself_refuses_a_magic_link_beneath_its_root() -> None:
    proc = os.open(f"/proc/{os.getpid()}", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(files._Refused) as caught:
            files._open_beneath(proc, "root/etc/hostname", os.O_PATH, files._BENEATH)
        assert caught.value.reason == "magic_link"
        # Without RESOLVE_NO_MAGICLINKS and RESOLVE_BENEATH the same walk succeeds.
        os.close(openat2(proc, "root/etc/hostname", os.O_PATH, 0))
        with pytest.raises(OSError):
            openat2(proc, "root/etc/hostname", os.O_PATH, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(proc)


# -- the tree changes between the kernel's check and the broker's open ---------------


def swap_for_symlink(directory: Path, link_text: str) -> None:
    directory.rename(directory.with_name(directory.name + ".real"))
    directory.symlink_to(link_text)


@pytest.mark.parametrize("link", ["../outside", "{outside}"])
def test_a_directory_swapped_for_an_outbound_symlink_after_the_check(
    world: World, link: str
) -> None:
    cap = world.grant(["read", "write"])
    world.recorder.on_validated = lambda: swap_for_symlink(
        world.ws / "sub", link.format(outside=world.outside)
    )
    (world.outside / "b.txt").write_bytes(b"SECRET")
    error = refused("symlink_escape", world.read, cap, world.ws / "sub" / "b.txt")
    assert b"SECRET" not in error.message.encode()
    effect = last_file_event(world)
    assert (effect.decision, effect.reason, effect.detail["result"]) == (
        "deny",
        "symlink_escape",
        "refused",
    )
    assert effect.trace_id == world.recorder.of(EventType.CAPABILITY_VALIDATED)[-1].trace_id


def test_a_deny_glob_reached_through_a_symlink_swapped_in(world: World) -> None:
    (world.ws / "secrets").mkdir()
    (world.ws / "secrets" / "b.txt").write_bytes(b"DENIED")
    cap = world.grant(["read", "write"], {"deny": ["secrets"]})
    world.recorder.on_validated = lambda: swap_for_symlink(world.ws / "sub", "secrets")
    refused("denied_by_glob", world.read, cap, world.ws / "sub" / "b.txt")
    # The same swap before the check: the kernel refuses it (proof the glob applies).
    refused("denied_by_glob", world.read, cap, world.ws / "sub" / "b.txt")
    world.recorder.on_validated = None
    assert (world.ws / "secrets" / "b.txt").read_bytes() == b"DENIED"


def test_a_directory_swapped_before_a_create_is_checked_where_it_lands(world: World) -> None:
    (world.ws / "secrets").mkdir()
    cap = world.grant(["write", "create"], {"deny": ["secrets"]})
    world.recorder.on_validated = lambda: swap_for_symlink(world.ws / "sub", "secrets")
    refused("denied_by_glob", world.write, cap, world.ws / "sub" / "new.txt", b"x")
    assert list((world.ws / "secrets").iterdir()) == []


RACER = """
import os, sys
ws, target = sys.argv[1], sys.argv[2]
real, link, spare = f"{ws}/dir", f"{ws}/link", f"{ws}/dir.real"
os.symlink(target, link)
while True:
    os.rename(real, spare)
    os.rename(link, real)
    os.rename(real, link)
    os.rename(spare, real)
"""


@pytest.mark.slow
@pytest.mark.parametrize("link", ["../outside", "{outside}"])
def test_race_swapping_a_directory_never_reads_outside(world: World, link: str) -> None:
    """Another process swaps ``dir`` for a symlink out, as fast as it can,
    while the broker reads ``dir/file`` thousands of times."""
    (world.ws / "dir").mkdir()
    (world.ws / "dir" / "file").write_bytes(b"inside")
    (world.outside / "file").write_bytes(b"SECRET")
    cap = world.grant(["read"])
    racer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(RACER),
            str(world.ws),
            link.format(outside=world.outside),
        ]
    )
    outcomes: dict[str, int] = {}
    try:
        time.sleep(0.05)
        for _ in range(5000):
            try:
                data = world.read(cap, world.ws / "dir" / "file")["data"]
            except ConstraintViolation as error:
                outcome = f"{error.reason}"
            else:
                assert data != b"SECRET"
                assert data == b"inside"
                outcome = "read"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        racer.kill()
        racer.wait()
    # The broker's own refusals: the kernel had allowed, and the tree changed.
    late = [e.reason for e in world.recorder.of(EventType.FILE_OPERATION) if e.decision == "deny"]
    print(outcomes, "refused by the broker:", {r: late.count(r) for r in set(late)})
    assert outcomes.get("read", 0) > 0, outcomes  # it really read while racing
    assert "symlink_escape" in late, outcomes  # and met the swap after the kernel's check


# -- hard links, sizes, special files ------------------------------------------------


def test_writes_through_a_hard_link_are_refused(world: World) -> None:
    os.link(world.outside / "secret", world.ws / "linked")
    cap = world.grant(["read", "write"])
    refused("hard_link", world.write, cap, world.ws / "linked", b"pwned")
    for mode in ("w", "a", "r+"):
        refused("hard_link", world.open, cap, world.ws / "linked", mode)
    assert (world.outside / "secret").read_bytes() == b"SECRET"
    # The same write to a file with one name works (proof the check is on links).
    assert world.write(cap, world.ws / "a.txt", b"fine") == {"written": 4}


def test_a_secret_is_refused_under_any_name(world: World) -> None:
    """The supervisor's secrets (the audit key, injected credentials) are
    known by inode: a hard link made after they were read, inside a granted
    directory, reaches no agent (and a secret with two names is not read)."""
    key = world.outside / "audit.key"
    key.write_text("k" * 40)
    key.chmod(0o600)
    assert read_secret_file(str(key), 4096) == b"k" * 40
    os.link(key, world.ws / "innocent.txt")
    cap = world.grant(["read"])
    refused("secret_file", world.read, cap, world.ws / "innocent.txt")
    refused("secret_file", world.open, cap, world.ws / "innocent.txt", "r")
    with pytest.raises(SecretFileError, match="has 2 names"):
        read_secret_file(str(key), 4096)
    assert world.read(cap, world.ws / "a.txt")["data"] == b"hello"


def test_max_bytes_on_read(world: World) -> None:
    (world.ws / "ten").write_bytes(b"0123456789")
    (world.ws / "eleven").write_bytes(b"0123456789A")
    cap = world.grant(["read"], {"max_bytes": 10})
    assert world.read(cap, world.ws / "ten", length=100)["data"] == b"0123456789"
    refused("too_large", world.read, cap, world.ws / "eleven")
    # Grown past max_bytes between the kernel's check and the open: the broker's fstat.
    world.recorder.on_validated = lambda: (world.ws / "ten").write_bytes(b"x" * 11)
    refused("too_large", world.read, cap, world.ws / "ten")


def test_max_bytes_on_write(world: World) -> None:
    cap = world.grant(["write", "create"], {"max_bytes": 10})
    target = world.ws / "out"
    assert world.write(cap, target, b"0123456789") == {"written": 10}
    refused("too_large", world.write, cap, target, b"0123456789A")
    refused("too_large", world.write, cap, target, b"xy", offset=9)
    refused("too_large", world.write, cap, target, b"x", append=True)
    assert target.read_bytes() == b"0123456789"
    assert world.write(cap, target, b"AB", offset=8) == {"written": 2}
    # A descriptor cannot be held to a size: open for writing is refused.
    refused("size_unknown", world.open, cap, target, "a")


def test_special_files_are_refused_without_blocking(world: World) -> None:
    os.mkfifo(world.ws / "fifo")
    cap = world.grant(["read", "write"])
    outcome: list[str] = []

    def attempt() -> None:
        for action in (
            lambda: world.open(cap, world.ws / "fifo", "r"),
            lambda: world.open(cap, world.ws / "fifo", "w"),
            lambda: world.read(cap, world.ws / "fifo"),
            lambda: world.write(cap, world.ws / "fifo", b"x"),
        ):
            try:
                action()
            except ConstraintViolation as error:
                outcome.append(str(error.reason))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "an open of a FIFO blocked"
    assert outcome == ["not_a_regular_file"] * 4
    refused("is_a_directory", world.open, cap, world.ws / "sub", "r")
    refused("is_a_directory", world.read, cap, world.ws / "sub")


def test_missing_files(world: World) -> None:
    cap = world.grant()
    refused("not_found", world.read, cap, world.ws / "nothing")
    refused("not_found", world.write, cap, world.ws / "no" / "dir" / "file", b"x")
    refused("not_found", world.do, p.DeleteArgs(cap.id, str(world.ws / "nothing")))
    refused("not_found", world.read, cap, world.ws / "a.txt" / "x")  # the validator's word


def test_the_oses_refusals_are_constraint_violations_with_the_errno(world: World) -> None:
    locked = world.ws / "locked"
    locked.mkdir()
    (locked / "f").write_bytes(b"x")
    cap = world.grant()
    locked.chmod(0o500)  # root ignores this; make the directory immutable instead
    try:
        subprocess.run(["chattr", "+i", str(locked)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("chattr +i is not available here")
    try:
        error = refused("permission_denied", world.do, p.DeleteArgs(cap.id, str(locked / "f")))
        assert "EPERM" in error.message
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_every_reason_of_the_broker_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "capabilities.md").read_text()
    broker = text[text.index("## The file broker") :]
    assert sorted(r for r in files.REASONS if f"| `{r}` |" not in text) == []
    assert "| `hard_link` |" in broker


def test_a_symlink_loop(world: World) -> None:
    (world.ws / "loop").symlink_to("loop")
    cap = world.grant(["read"])
    refused("symlink_loop", world.read, cap, world.ws / "loop")
    ws_fd = os.open(world.ws, os.O_PATH | os.O_DIRECTORY)
    try:  # the broker's own walk says the same
        with pytest.raises(files._Refused) as caught:
            files._open_beneath(ws_fd, "loop", os.O_PATH, files._BENEATH)
        assert caught.value.reason == "symlink_loop"
    finally:
        os.close(ws_fd)


def test_a_root_swapped_for_a_symlink_is_refused(world: World) -> None:
    cap = world.grant(["read"])
    world.ws.rename(world.tmp / "moved")
    world.ws.symlink_to(world.outside)
    with pytest.raises(ConstraintViolation) as caught:
        world.read(cap, world.ws / "secret")
    assert caught.value.reason in {"symlink_escape", "outside_resource"}  # the validator's word
    # Swapped after the kernel's check: the broker's own refusal.
    world.ws.unlink()
    world.tmp.joinpath("moved").rename(world.ws)
    world.recorder.on_validated = lambda: (
        world.ws.rename(world.tmp / "moved"),
        world.ws.symlink_to(world.outside),
    )
    refused("resource_changed", world.read, cap, world.ws / "a.txt")
