"""Run agents under a real `capsup run`, over real sockets, and read the trail."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

CAPSUP = [sys.executable, "-m", "capsup.supervisor"]

# The agents write their findings into the test's directory: the policy
# grants it to them in their sandbox (they run confined, as by default).
POLICY = """
[agents.main]
sandbox = {{ write = ["{root}"]{sandbox} }}
may_spawn = ["helper"]
allow = [
  {{ resource = "file://{root}", operations = ["read", "list", "write", "create"], max_ttl = 600, max_delegation_depth = 3 }},
  {{ resource = "https://api.example.com/v1", operations = ["GET", "POST"], max_delegation_depth = 1 }},
]
[agents.helper]
sandbox = {{ write = ["{root}"] }}
allow = []
[supervisor]
grace_period = 1
{supervisor}
"""


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    audit: list[dict[str, Any]]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.audit if r["event"] == name]


def write_agent(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def write_idle_agent(root: Path) -> Path:
    """An agent that writes its endpoint to ``root/endpoint`` and idles until
    ``root/done`` exists, so a test can talk to its supervisor meanwhile."""
    return write_agent(
        root,
        "agent",
        f"""
        import os, time
        open("{root}/endpoint", "w").write(os.environ["CAPSUP_ENDPOINT"])
        while not os.path.exists("{root}/done"):
            time.sleep(0.05)
        """,
    )


def write_policy(root: Path, supervisor: str = "", sandbox: str = "") -> Path:
    """The test policy; ``supervisor`` holds more ``[supervisor]`` settings,
    ``sandbox`` more keys of the main agent's sandbox (``memory = "1GiB"``)."""
    path = root / "policy.toml"
    more = f", {sandbox}" if sandbox else ""
    path.write_text(POLICY.format(root=root, supervisor=supervisor, sandbox=more))
    return path


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(path: Path, timeout: float = 30) -> None:
    """Wait until an agent has written ``path`` (its way of saying it is ready)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def run_argv(
    root: Path,
    agent: Path,
    *args: str,
    extra: Sequence[str] = (),
    supervisor: str = "",
    sandbox: str = "",
    command: Sequence[str] = CAPSUP,
) -> list[str]:
    """`capsup run` of ``agent`` (with ``args``) as ``main``, under the test
    policy (see :func:`write_policy`) with root/audit.jsonl as its trail;
    ``extra`` are more options of ``run``, ``command`` what starts capsup."""
    return [
        *command,
        "run",
        "--config",
        str(write_policy(root, supervisor, sandbox)),
        "--audit-log",
        str(root / "audit.jsonl"),
        *extra,
        "--name",
        "main",
        str(agent),
        *args,
    ]


def start_capsup(
    root: Path,
    agent: Path,
    *extra: str,
    supervisor: str = "",
    env: dict[str, str] | None = None,
    command: Sequence[str] = CAPSUP,
) -> subprocess.Popen[bytes]:
    """`capsup run` in the background, as :func:`run_argv` says."""
    return subprocess.Popen(
        run_argv(root, agent, extra=extra, supervisor=supervisor, command=command),
        stdin=subprocess.DEVNULL,
        env=env,
    )


def capsup_run(
    root: Path,
    agent: Path,
    *args: str,
    timeout: float = 60,
    extra: tuple[str, ...] = (),
    supervisor: str = "",
    sandbox: str = "",
    env: dict[str, str] | None = None,
) -> Outcome:
    proc = subprocess.run(
        run_argv(root, agent, *args, extra=extra, supervisor=supervisor, sandbox=sandbox),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
        env=env,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, read_audit(root / "audit.jsonl"))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
