"""Confined agents still work as programs: multiprocessing, their scratch,
their limits; and what confinement promises about their processes and
descriptors holds. Real `capsup run`, real agents."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest
from capsup.supervisor.confinement.sandbox import Sandbox
from capsup.supervisor.confinement.setup import ConfinementUnavailable, Confiner
from capsup.supervisor.confinement.support import Support
from runner import CAPSUP, capsup_run, write_agent


def test_multiprocessing_works_inside_a_confined_agent(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "pool",
        """
        import multiprocessing as mp

        def square(x):
            return x * x

        if __name__ == "__main__":
            for method in ("fork", "spawn", "forkserver"):
                ctx = mp.get_context(method)
                with ctx.Pool(2) as pool:
                    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
                queue, lock = ctx.Queue(), ctx.Lock()
                with lock:
                    queue.put(method)
                print("ok", queue.get(timeout=10))
            manager = mp.get_context("spawn").Manager()
            shared = manager.dict(a=1)
            print("manager", shared["a"])
            manager.shutdown()
        """,
    )
    out = capsup_run(tmp_path, agent, timeout=120)
    assert out.code == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["ok fork", "ok spawn", "ok forkserver", "manager 1"]


def test_scratch_is_private_and_removed(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "scratch",
        """
        import json, os, stat, tempfile
        tmp = os.environ["TMPDIR"]
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(b"mine")
        os.symlink("/etc", os.path.join(tmp, "planted"))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        print(json.dumps({"tmp": tmp, "home": os.environ["HOME"], "mode": mode, "made": f.name}))
        """,
    )
    out = capsup_run(tmp_path, agent)
    assert out.code == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["home"] == seen["tmp"] and seen["made"].startswith(seen["tmp"])
    assert seen["mode"] == 0o700
    assert not Path(seen["tmp"]).exists(), "the scratch directory outlived its agent"
    assert Path("/etc/passwd").exists()  # the planted symlink was not followed


def test_only_the_standard_descriptors_and_the_descriptor_socket_are_inherited(
    tmp_path: Path,
) -> None:
    agent = write_agent(
        tmp_path,
        "fds",
        """
        import os
        fds = []
        for fd in range(0, 1024):
            try:
                os.fstat(fd)
            except OSError:
                continue
            fds.append(fd)
        print(fds, os.environ["CAPSUP_FD_SOCKET"])
        """,
    )
    out = capsup_run(tmp_path, agent)
    assert out.code == 0, out.stderr
    fds_line = out.stdout.splitlines()[-1]
    fds, socket_fd = fds_line.rsplit(" ", 1)
    assert json.loads(fds) == [0, 1, 2, int(socket_fd)]


def test_a_memory_limit_hit_is_a_clear_error_and_the_supervisor_is_unharmed(
    tmp_path: Path,
) -> None:
    agent = write_agent(
        tmp_path,
        "hog",
        """
        try:
            hog = bytearray(1 << 30)
        except MemoryError:
            print("MemoryError")
            raise SystemExit(3)
        """,
    )
    out = capsup_run(tmp_path, agent, sandbox='memory = "512MiB"')
    assert out.code == 3, out.stderr
    assert out.stdout.strip() == "MemoryError"
    ended = out.events("agent_terminated")
    assert ended and ended[0]["detail"]["exit_code"] == 3


def test_the_process_bound_holds(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "forker",
        """
        import os, time
        children = []
        try:
            for _ in range(64):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
        except BlockingIOError as error:
            print("refused after", len(children))
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        """,
    )
    out = capsup_run(tmp_path, agent, sandbox="processes = 8")
    assert out.code == 0, out.stderr
    refused = out.stdout.strip()
    assert refused.startswith("refused after"), refused
    assert int(refused.split()[-1]) < 8


def test_required_refuses_to_start_without_a_guarantee(tmp_path: Path) -> None:
    """On a kernel without, say, Landlock's scopes, `required` starts
    nothing and names what is missing and the way out."""
    weak = Support(landlock_abi=5, seccomp=True, shm=True, cgroups="v1", subreaper=True, root=False)
    with pytest.raises(ConfinementUnavailable) as caught:
        Confiner("required", tmp_path, {"a": Sandbox()}, support=weak)
    message = str(caught.value)
    assert "landlock scope" in message and "best-effort" in message and "--no-confine" in message


def test_sandbox_check_says_what_is_enforced() -> None:
    proc = subprocess.run([*CAPSUP, "sandbox-check"], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (
        "landlock filesystem",
        "landlock tcp",
        "landlock scope",
        "seccomp",
        "unix sockets by path",
        "private /dev/shm",
        "process bound",
        "subreaper",
    ):
        assert any(line.startswith(name) and " ok " in line for line in lines), (name, lines)
    assert lines[-1] == 'confine = "required" can be met here'


def test_no_confine_runs_unconfined(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "free",
        """
        print(len(open("/etc/shadow").read()) > 0)
        """,
    )
    confined = capsup_run(tmp_path, agent)
    assert confined.code != 0 and "PermissionError" in confined.stderr
    free = capsup_run(tmp_path, agent, extra=("--no-confine",))
    assert free.code == 0 and free.stdout.strip() == "True", free.stderr


def test_sandbox_check_exits_non_zero_when_required_cannot_be_met(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a kernel without Landlock's scopes, `sandbox-check` says so on the
    guarantee's own line and exits 1."""
    from capsup.supervisor import sandbox_cli

    weak = Support(landlock_abi=5, seccomp=True, shm=True, cgroups="v1", subreaper=True, root=False)
    monkeypatch.setattr(sandbox_cli, "probe", lambda: weak)
    assert sandbox_cli.check(argparse.Namespace()) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("landlock scope") and "MISSING" in line for line in lines)
    assert lines[-1].startswith('confine = "required" cannot be met here (missing: landlock scope')
