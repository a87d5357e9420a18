"""Invariant 9, tried as a hostile agent would: every way around the
capabilities by plain OS means fails under a default `capsup run`, and the
very same attempt works under `capsup run --no-confine`, which proves that
each one really tried.

The agent is tests/integration/hostile_agent.py; it reports one JSON line per
attempt. The targets (a secret, TCP/UDP/unix listeners, the policy file,
the virtual environment) are set up here, outside the agent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pty
import pwd
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from runner import CAPSUP, alive, read_audit

HOSTILE = Path(__file__).resolve().parent / "hostile_agent.py"
ABSTRACT = f"capsup-escape-test-{os.getpid()}"
_abstract_names = itertools.count()

POLICY = """
[agents.hostile]
allow = []
[agents.parent]
may_spawn = ["hostile"]
allow = []
[supervisor]
grace_period = 1
"""


@dataclass
class Targets:
    values: dict[str, Any]
    config: Path
    root: Path


def _serve_forever(server: socket.socket, greeting: bytes) -> None:
    """Accept and greet until the listening socket is closed."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):
            conn.sendall(greeting)


@contextlib.contextmanager
def make_targets(tmp_path: Path) -> Iterator[Targets]:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("the operator's secret")
    secret.chmod(0o600)
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = str(tmp_path / "other.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen()
    abstract = socket.socket(socket.AF_UNIX)
    abstract_name = f"{ABSTRACT}-{next(_abstract_names)}"
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    dgram_path = str(tmp_path / "dgram.sock")
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(dgram_path)
    listeners = [tcp, unix, abstract]
    for server in listeners:
        threading.Thread(target=_serve_forever, args=(server, b"hello"), daemon=True).start()
    values = {
        "secret": str(secret),
        "outside": str(outside),
        "home": pwd.getpwuid(os.getuid()).pw_dir,
        "config": str(config),
        "site_packages": sysconfig.get_paths()["purelib"],
        "tcp_port": tcp.getsockname()[1],
        "udp_port": udp.getsockname()[1],
        "unix_path": unix_path,
        "abstract": abstract_name,
        "unix_dgram": dgram_path,
    }
    yield Targets(values, config, tmp_path)
    for sock in [*listeners, udp, dgram]:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def run_capsup(
    targets: Targets, flags: Sequence[str], name: str, *argv: str, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`capsup run` of the agent ``argv`` as ``name``, with ``flags``, under
    the targets' policy and in their directory, to its end."""
    return subprocess.run(
        [*CAPSUP, "run", "--config", str(targets.config), *flags, "--name", name, *argv],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=targets.root,
    )


def run_hostile(targets: Targets, *flags: str, **more: Any) -> tuple[dict[str, Any], Any]:
    """Run the hostile agent with a pseudo-terminal as its stdin; returns its
    attempts by name and the completed process."""
    values = dict(targets.values, **more)
    audit = targets.root / f"audit{'-'.join(flags)}.jsonl"
    primary, secondary = pty.openpty()
    try:
        proc = run_capsup(
            targets,
            ["--audit-log", str(audit), *flags],
            "hostile",
            str(HOSTILE),
            json.dumps(values),
            stdin=secondary,
        )
    finally:
        os.close(secondary)
        os.close(primary)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    attempts = {line["attempt"]: line for line in lines if "attempt" in line}
    attempts["_daemon"] = next((line["daemon"] for line in lines if "daemon" in line), None)
    attempts["_audit"] = read_audit(audit)
    return attempts, proc


ESCAPES = [
    "read_secret",
    "list_outside",
    "list_home",
    "write_outside",
    "rewrite_config",
    "drop_pth_in_venv",
    "cat_secret",
    "tcp_connect",
    "tcp_bind",
    "udp_send",
    "unix_path_connect",
    "unix_abstract_connect",
    "unix_datagram_sendto",
    "signal_supervisor",
    "ptrace_supervisor",
    "supervisor_environ",
    "io_uring",
    "netlink",
    "user_namespace",
    "type_into_terminal",
]


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], ...]]:
    """The hostile agent confined, then with --no-confine (module-wide: each
    run tries everything once)."""
    with make_targets(tmp_path_factory.mktemp("escapes")) as t:
        confined, proc = run_hostile(t, daemon=True)
        assert proc.returncode == 0, proc.stderr
        free, proc_free = run_hostile(t, "--no-confine", daemon=True)
        assert proc_free.returncode == 0, proc_free.stderr
        yield confined, free, {"confined": proc, "free": proc_free}
        daemon = free["_daemon"]
        if daemon:
            with contextlib.suppress(psutil.Error):
                psutil.Process(daemon).kill()


@pytest.mark.parametrize("attempt", ESCAPES)
def test_each_escape_fails_confined_and_works_unconfined(
    both_runs: tuple[dict[str, Any], ...], attempt: str
) -> None:
    confined, free, _ = both_runs
    assert attempt in free, f"the unconfined run did not try {attempt}"
    assert free[attempt]["worked"], f"{attempt} did not work even unconfined: {free[attempt]}"
    assert attempt in confined, f"the confined run did not try {attempt}"
    assert not confined[attempt]["worked"], f"{attempt} worked confined: {confined[attempt]}"


def test_a_confined_agent_cannot_reach_the_shared_endpoint(
    both_runs: tuple[dict[str, Any], ...],
) -> None:
    """Only its own endpoint is brokered; the shared one (where an agent's
    pid would be looked up) is out of reach, and the refusal is recorded."""
    confined, _, _ = both_runs
    assert not confined["unix_shared_endpoint"]["worked"]
    refused = [
        r
        for r in confined["_audit"]
        if r["event"] == "security_violation" and r["detail"].get("kind") == "sandbox_denied"
    ]
    assert refused, "a refused connect() must be audited"


def test_a_daemon_dies_with_its_confined_agent(both_runs: tuple[dict[str, Any], ...]) -> None:
    confined, free, _ = both_runs
    assert confined["_daemon"] and free["_daemon"]
    deadline = time.monotonic() + 5
    while psutil.pid_exists(confined["_daemon"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(confined["_daemon"]), "the confined agent's daemon outlived it"
    assert alive(free["_daemon"]), "unconfined, the daemon should have survived (it tried)"


def test_confined_run_records_what_was_enforced(both_runs: tuple[dict[str, Any], ...]) -> None:
    confined, free, _ = both_runs
    started = [r for r in confined["_audit"] if r["event"] == "agent_started"]
    assert started[0]["detail"]["confined"] == {"mode": "required", "not_enforced": []}
    started_free = [r for r in free["_audit"] if r["event"] == "agent_started"]
    assert started_free[0]["detail"]["confined"] == "off"


def test_no_confine_warns_in_one_line(both_runs: tuple[dict[str, Any], ...]) -> None:
    _, _, procs = both_runs
    warnings = [
        line for line in procs["free"].stderr.splitlines() if line.startswith("capsup: warning")
    ]
    assert len(warnings) == 1 and "--no-confine" in warnings[0]
    assert "capsup: warning" not in procs["confined"].stderr


PARENT = """
import json, os, sys
from capsup.agents import connect
targets = json.loads(sys.argv[2])
targets["agent_pid"] = os.getpid()
targets["only"] = ["signal_agent", "ptrace_agent", "agent_memory"]
with connect() as client:
    sub = client.spawn([sys.executable, sys.argv[1], json.dumps(targets)], name="hostile")
    print(json.dumps({"sub_exit": client.wait(sub.agent_id, timeout=60)}), flush=True)
"""


@pytest.mark.parametrize("confined", [True, False], ids=["confined", "unconfined"])
def test_a_sub_agent_cannot_reach_its_parent_agent(tmp_path: Path, confined: bool) -> None:
    """A sub-agent with nothing ptraced its parent agent and acted as it: each
    confined agent is its own Landlock domain, so signals, ptrace and the
    parent's /proc are out of its reach (and reachable unconfined)."""
    with make_targets(tmp_path) as t:
        parent = tmp_path / "code" / "parent.py"
        parent.parent.mkdir()
        parent.write_text(PARENT)
        # The sub-agent's script lies in the parent's code directory: a
        # sub-agent may read only what its parent may.
        hostile = shutil.copy(HOSTILE, parent.parent / HOSTILE.name)
        flags = [] if confined else ["--no-confine"]
        proc = run_capsup(t, flags, "parent", str(parent), str(hostile), json.dumps(t.values))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    attempts = {line["attempt"]: line["worked"] for line in lines if "attempt" in line}
    assert set(attempts) == {"signal_agent", "ptrace_agent", "agent_memory"}, proc.stdout
    assert all(worked is not confined for worked in attempts.values()), attempts


SPAWNER = """
import json, sys
from capsup.agents import connect
secret = sys.argv[1]
reader = "import sys; print(open(sys.argv[1]).read())"
with connect() as client:
    sub = client.spawn([sys.executable, "-c", reader, secret])
    print(json.dumps({"sub_exit": client.wait(sub.agent_id, timeout=60)}), flush=True)
"""


@pytest.mark.parametrize("confined", [True, False], ids=["confined", "unconfined"])
def test_naming_a_file_in_a_sub_agents_argv_grants_nothing(tmp_path: Path, confined: bool) -> None:
    """A sub-agent's argv is the parent's choice: a file named there must not
    become readable to it (the planner grants a sub-agent only what its
    parent may already read)."""
    with make_targets(tmp_path) as t:
        code = tmp_path / "code"
        code.mkdir()
        (code / "spawner.py").write_text(SPAWNER)
        flags = [] if confined else ["--no-confine"]
        proc = run_capsup(t, flags, "parent", str(code / "spawner.py"), t.values["secret"])
    assert proc.returncode == 0, proc.stderr
    assert ("the operator's secret" in proc.stdout) is not confined, proc.stdout
    exit_line = json.loads(proc.stdout.splitlines()[-1])
    assert (exit_line["sub_exit"] != 0) is confined


def test_an_agent_beside_the_policy_cannot_read_it(tmp_path: Path) -> None:
    """An agent script that lies in the policy's directory gets only itself:
    its directory would hold the policy, the trail or the state."""
    with make_targets(tmp_path) as t:
        agent = tmp_path / "beside.py"
        agent.write_text(
            "import sys\n"
            "try:\n"
            f"    open({str(t.config)!r}).read(); print('read')\n"
            "except PermissionError:\n"
            "    print('refused')\n"
        )
        proc = subprocess.run(
            [*CAPSUP, "run", "--config", str(t.config), "--name", "hostile", str(agent)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused"
