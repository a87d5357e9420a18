"""Dropping capabilities, as root (as this machine and CI run the tests): a
child that dropped them cannot use root's powers, even after an execve, and
the same child without the drop can (so the test proves it tried)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from capsup.agents.confine.privileges import drop_privileges
from confine_child import in_child, outcome

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping capabilities needs root")

NOBODY = 65534
SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def capabilities_after_exec(drop: bool) -> dict[str, int]:
    """The capability sets of a shell that a uid-0 child executes."""

    def child() -> str:
        if drop:
            drop_privileges()
        command = ["/bin/sh", "-c", "grep Cap /proc/self/status"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    lines = str(in_child(child)).splitlines()
    return {key: int(value, 16) for key, value in (line.split(":") for line in lines)}


def test_every_set_is_empty_after_the_drop_even_across_a_uid_0_execve() -> None:
    after = capabilities_after_exec(drop=True)
    assert after == dict.fromkeys(SETS, 0)
    before = capabilities_after_exec(drop=False)
    assert before["CapEff"] != 0
    assert before["CapBnd"] != 0


@pytest.fixture
def nobodys_file(tmp_path: Path) -> Path:
    """A 0600 file owned by another uid, in a directory anyone may enter."""
    tmp_path.chmod(0o755)
    path = tmp_path / "secret"
    path.write_text("secret")
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    return path


def attempt(drop: bool, action: object) -> str:
    assert callable(action)

    def child() -> str:
        if drop:
            drop_privileges()
        return outcome(action)

    return str(in_child(child))


def test_chown_of_another_users_file_is_refused(nobodys_file: Path) -> None:
    assert attempt(True, lambda: os.chown(nobodys_file, 0, 0)) == "EPERM"
    assert nobodys_file.stat().st_uid == NOBODY
    assert attempt(False, lambda: os.chown(nobodys_file, 0, 0)) == "ok"
    assert nobodys_file.stat().st_uid == 0


def test_reading_another_users_private_file_is_refused(nobodys_file: Path) -> None:
    assert attempt(True, nobodys_file.read_bytes) == "EACCES"
    assert attempt(False, nobodys_file.read_bytes) == "ok"


def test_a_process_without_capabilities_is_left_alone() -> None:
    def child() -> int:
        os.setgid(NOBODY)
        os.setuid(NOBODY)  # clears every set but the bounding one
        drop_privileges()  # nothing to drop, and it cannot touch the bounding set
        with open("/proc/self/status") as status:
            bounding = next(line for line in status if line.startswith("CapBnd:"))
        return int(bounding.split(":")[1], 16)

    assert in_child(child) != 0


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_a_drop_that_cannot_be_done_fails_closed() -> None:
    """Root without CAP_SETPCAP cannot clear its bounding set: it must not go on."""
    code = (
        "from capsup.agents.confine.errors import ConfinementError\n"
        "from capsup.agents.confine.privileges import drop_privileges\n"
        "try:\n"
        "    drop_privileges()\n"
        "except ConfinementError as error:\n"
        "    print(error)\n"
    )
    command = ["setpriv", "--bounding-set=-setpcap", sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30)
    assert done.stdout.startswith("privileges: prctl(PR_CAPBSET_DROP 0) failed: EPERM")
