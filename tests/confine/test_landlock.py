"""Landlock: each kind of rule denies in a confined child, and the same
attempt succeeds in an unconfined one (so the test proves it tried)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from capsup.agents.confine.errors import ConfinementError
from capsup.agents.confine.landlock import (
    DEVICE_FILES,
    ETC_FILES,
    FilesystemRules,
    abi_version,
    restrict_self,
)
from confine_child import in_child, outcome

ABI = abi_version()
pytestmark = pytest.mark.skipif(ABI < 1, reason="Landlock is not available")
needs_tcp = pytest.mark.skipif(ABI < 4, reason="TCP rules need Landlock ABI 4")
needs_scope = pytest.mark.skipif(ABI < 6, reason="scoping needs Landlock ABI 6")

#: What a dynamically linked program needs to start (absent ones are skipped).
SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin")


def attempt(rules: FilesystemRules | None, action: Callable[[], object]) -> str:
    """``action``'s outcome in a child, confined by ``rules`` (or not at all)."""

    def child() -> str:
        if rules is not None:
            restrict_self(rules)
        return outcome(action)

    return str(in_child(child))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """granted/ and other/, each with a file."""
    for name in ("granted", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file.txt").write_text(name)
    return tmp_path


def test_reading_a_file_outside_the_rules_is_denied(tree: Path) -> None:
    rules = FilesystemRules(read_only=(str(tree / "granted"),))
    assert attempt(rules, (tree / "other/file.txt").read_bytes) == "EACCES"
    assert attempt(rules, (tree / "granted/file.txt").read_bytes) == "ok"
    assert attempt(None, (tree / "other/file.txt").read_bytes) == "ok"


def test_listing_a_directory_not_granted_is_denied(tree: Path) -> None:
    rules = FilesystemRules(read_only=(str(tree / "granted"),))
    assert attempt(rules, lambda: os.listdir(tree / "other")) == "EACCES"
    assert attempt(rules, lambda: os.listdir(tree)) == "EACCES"  # the parent neither
    assert attempt(rules, lambda: os.listdir(tree / "granted")) == "ok"
    assert attempt(None, lambda: os.listdir(tree / "other")) == "ok"


def test_writing_outside_read_write_is_denied(tree: Path) -> None:
    rules = FilesystemRules(read_only=(str(tree / "other"),), read_write=(str(tree / "granted"),))
    assert attempt(rules, lambda: (tree / "other/new").write_text("x")) == "EACCES"
    assert attempt(rules, lambda: (tree / "other/file.txt").write_text("x")) == "EACCES"
    assert attempt(rules, lambda: (tree / "granted/new").write_text("x")) == "ok"
    assert attempt(None, lambda: (tree / "other/new").write_text("x")) == "ok"


#: What read_write allows and read_only does not: one action per right.
def _mkdir(d: Path) -> None:
    (d / "made").mkdir()


def _rmdir(d: Path) -> None:
    (d / "sub").rmdir()


def _unlink(d: Path) -> None:
    (d / "file.txt").unlink()


def _rename_across(d: Path) -> None:  # REFER: a file moving between directories
    (d / "file.txt").rename(d / "sub" / "moved.txt")


def _symlink(d: Path) -> None:
    (d / "link").symlink_to("file.txt")


def _mkfifo(d: Path) -> None:
    os.mkfifo(d / "fifo")


def _bind_unix(d: Path) -> None:  # MAKE_SOCK
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(d / "sock"))


def _truncate(d: Path) -> None:
    os.truncate(d / "file.txt", 0)


@pytest.mark.parametrize(
    "action", [_mkdir, _rmdir, _unlink, _rename_across, _symlink, _mkfifo, _bind_unix, _truncate]
)
def test_read_write_grants_every_right_and_read_only_none(
    tmp_path: Path, action: Callable[[Path], None]
) -> None:
    for name in ("ro", "rw"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "file.txt").write_text("x")
    rules = FilesystemRules(read_only=(str(tmp_path / "ro"),), read_write=(str(tmp_path / "rw"),))
    assert attempt(rules, lambda: action(tmp_path / "ro")) == "EACCES"
    assert attempt(rules, lambda: action(tmp_path / "rw")) == "ok"
    assert attempt(None, lambda: action(tmp_path / "ro")) == "ok"


def test_executing_from_a_read_only_directory_is_denied(tmp_path: Path) -> None:
    for name in ("ro", "exec"):
        (tmp_path / name).mkdir()
        shutil.copy("/bin/true", tmp_path / name / "true")
    rules = FilesystemRules(
        read_exec=(*SYSTEM, str(tmp_path / "exec")), read_only=(str(tmp_path / "ro"),)
    )

    def run(name: str) -> Callable[[], object]:
        return lambda: subprocess.run([tmp_path / name / "true"], check=True)

    assert attempt(rules, run("ro")) == "EACCES"
    assert attempt(rules, run("exec")) == "ok"
    assert attempt(None, run("ro")) == "ok"


def test_a_rule_on_a_regular_file_gets_file_rights_only(tree: Path) -> None:
    shutil.copy("/bin/true", tree / "true")
    rules = FilesystemRules(
        read_exec=(*SYSTEM, str(tree / "true")),
        read_only=(str(tree / "granted/file.txt"),),
        read_write=(str(tree / "other/file.txt"),),
    )
    # Directory rights on a file would be EINVAL from landlock_add_rule:
    # each of these three file rules was accepted, and works.
    assert attempt(rules, (tree / "granted/file.txt").read_bytes) == "ok"
    assert attempt(rules, lambda: (tree / "other/file.txt").write_text("y")) == "ok"
    assert attempt(rules, lambda: subprocess.run([tree / "true"], check=True)) == "ok"
    # ... and nothing beside them.
    assert attempt(rules, lambda: os.listdir(tree / "granted")) == "EACCES"
    assert attempt(rules, lambda: (tree / "granted/new").write_text("y")) == "EACCES"


def test_a_path_that_does_not_exist_is_skipped_and_reported(tree: Path) -> None:
    missing = str(tree / "missing")
    rules = FilesystemRules(read_only=(missing, str(tree / "granted")), read_write=(missing,))

    def child() -> object:
        report = restrict_self(rules)
        return report.skipped, outcome((tree / "granted/file.txt").read_bytes)

    assert in_child(child) == ((missing, missing), "ok")


def test_device_files_are_read_write_and_others_denied() -> None:
    rules = FilesystemRules(devices=("/dev/null",))

    def truncate_null() -> None:  # a shell's `> /dev/null`: O_TRUNC
        os.close(os.open("/dev/null", os.O_WRONLY | os.O_TRUNC))

    assert attempt(rules, truncate_null) == "ok"
    assert attempt(rules, lambda: open("/dev/zero", "rb").close()) == "EACCES"
    assert attempt(None, lambda: open("/dev/zero", "rb").close()) == "ok"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@needs_tcp
def test_tcp_connect_and_bind_are_denied(listener: socket.socket) -> None:
    address = listener.getsockname()

    def connect() -> None:  # a plain connect: create_connection would import a codec
        with socket.socket() as sock:
            sock.connect(address)

    def bind() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))

    rules = FilesystemRules()
    assert attempt(rules, connect) == "EACCES"
    assert attempt(rules, bind) == "EACCES"
    assert attempt(None, connect) == "ok"
    assert attempt(None, bind) == "ok"


@needs_tcp
def test_an_older_abi_leaves_its_newer_rights_alone(listener: socket.socket) -> None:
    address = listener.getsockname()

    def child() -> object:
        report = restrict_self(FilesystemRules(), abi=3)
        with socket.socket() as sock:
            sock.connect(address)
        return report.abi, report.tcp, report.scoped

    assert in_child(child) == (3, False, False)


def test_an_abi_the_kernel_lacks_is_refused() -> None:
    def child() -> str:
        try:
            restrict_self(FilesystemRules(), abi=ABI + 1)
        except ConfinementError as error:
            return error.feature
        return "restricted"

    assert in_child(child) == "landlock"


@needs_scope
def test_abstract_unix_sockets_outside_the_domain_are_refused() -> None:
    name = f"\0capsup-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(name)
        server.listen()

        def connect(address: str) -> Callable[[], None]:
            def go() -> None:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(address)

            return go

        def inside() -> None:  # the domain's own abstract socket stays reachable
            with socket.socket(socket.AF_UNIX) as own:
                own.bind(name + "-own")
                own.listen()
                connect(name + "-own")()

        assert attempt(FilesystemRules(), connect(name)) == "EPERM"
        assert attempt(FilesystemRules(), inside) == "ok"
        assert attempt(None, connect(name)) == "ok"


@needs_scope
def test_signals_outside_the_domain_are_refused() -> None:
    def to_parent() -> None:
        os.kill(os.getppid(), 0)

    def to_self() -> None:
        os.kill(os.getpid(), signal.SIGCONT)

    assert attempt(FilesystemRules(), to_parent) == "EPERM"
    assert attempt(FilesystemRules(), to_self) == "ok"
    assert attempt(None, to_parent) == "ok"


def test_the_etc_and_device_lists_are_enough_for_an_interpreter() -> None:
    """A Python under the runtime rules resolves names, users, time zones
    and TLS roots, writes to /dev/null, and still reads nothing else."""
    prefixes = (sys.prefix, sys.base_prefix, str(Path(__file__).parents[2]))
    rules = FilesystemRules(
        read_exec=(*SYSTEM, *prefixes), read_only=ETC_FILES, devices=DEVICE_FILES
    )
    script = (
        "import os, pwd, socket, ssl, time\n"
        "pwd.getpwuid(os.getuid())\n"
        "socket.getaddrinfo('localhost', 'https')\n"
        "time.localtime()\n"
        "assert ssl.create_default_context().cert_store_stats()['x509_ca'] > 0\n"
        "open('/dev/null', 'w').write('x')\n"
        "try:\n"
        "    open('/etc/shadow')\n"
        "except PermissionError:\n"
        "    print('denied')\n"
    )
    command = [sys.executable, "-c", script]
    env = {"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}

    def child() -> object:
        restrict_self(rules)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        return done.returncode, done.stdout, done.stderr

    assert in_child(child) == (0, "denied\n", "")
