"""A real supervisor (a Runtime) in the test's own process, serving and
keeping its trail in a test's directory, and agents run under it to their end."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from capsup.supervisor.config import Config, parse_config
from capsup.supervisor.processes import AgentProcess
from capsup.supervisor.runtime import Runtime, RuntimeOptions


def start_runtime(
    directory: Path, config: Config | None = None, *, confine: str | None = None
) -> Runtime:
    """A Runtime serving at ``directory``/capsup.sock, its trail in
    ``directory``/audit.jsonl, under ``config`` (default: an empty one);
    ``confine`` None leaves it to the config ("required" unless it says)."""
    return Runtime(
        config or parse_config({}, source="<test>"),
        RuntimeOptions(
            endpoint=f"ipc://{directory}/capsup.sock",
            audit_log=str(directory / "audit.jsonl"),
            confine=confine,
        ),
    )


def run_agent(runtime: Runtime, directory: Path, body: str, *, name: str = "agent") -> AgentProcess:
    """Run ``body`` (dedented, as ``directory``/agent.py) as agent ``name`` of
    ``runtime``, serving it until it exits (30 s at most), which it must do
    with 0; then flush the trail, so that it holds all up to the agent's end."""
    script = directory / "agent.py"
    script.write_text(textwrap.dedent(body))
    agent = runtime.server.start_agent([sys.executable, str(script)], name=name)
    for _ in range(600):
        if not agent.running:
            break
        runtime.server.turn(timeout=0.05)
    assert agent.returncode == 0
    runtime.audit.flush()
    return agent


def read_trail(directory: Path) -> list[dict[str, Any]]:
    """The records of ``directory``/audit.jsonl, as they are on disk."""
    return [json.loads(line) for line in (directory / "audit.jsonl").read_text().splitlines()]
