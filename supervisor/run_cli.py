"""``capsup run``: one agent under a foreground supervisor.

The agent inherits stdin, stdout and stderr; SIGINT, SIGTERM and SIGHUP reach
it; capsup exits with its exit status (128+N when signal N ended it) after
revoking its capabilities and flushing state. It should feel like running the
agent directly, with a kernel in between it and everything it touches.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from capsup.agents.bootstrap import EXIT_CANNOT_START
from capsup.agents.errors import AuditUnavailable
from capsup.supervisor.cli import UsageError
from capsup.supervisor.config import Config, ConfigError, load_config
from capsup.supervisor.confinement.leftovers import RuntimeDir
from capsup.supervisor.confinement.setup import ConfinementUnavailable
from capsup.supervisor.processes import AgentProcess
from capsup.supervisor.runtime import MetricsUnavailable, Runtime, RuntimeOptions
from capsup.supervisor.server import Server, exit_code_of, new_trace_id
from capsup.supervisor.store import StoreError

__all__ = ["register"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run an agent under a foreground supervisor",
        description="Run AGENT under a supervisor in the foreground. A .py file runs with "
        "this Python; anything else runs as a command (use -- before it).",
    )
    parser.add_argument("--config", metavar="FILE", help="policy and settings (TOML)")
    parser.add_argument("--name", help="the agent's policy name (default: the file's stem)")
    parser.add_argument("--state", metavar="PATH", help="SQLite state file (default: memory)")
    parser.add_argument("--audit-log", metavar="PATH", help="audit trail (JSON Lines)")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics there")
    parser.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="time an agent gets to exit after a signal before SIGKILL",
    )
    parser.add_argument(
        "--no-confine",
        action="store_true",
        help="run the agent without OS confinement (it can then reach anything this user can)",
    )
    parser.add_argument("agent", metavar="AGENT", help="agent script or command")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    parser.set_defaults(handler=run)


def agent_argv(agent: str, args: list[str]) -> tuple[list[str], str]:
    """The command line and the default policy name for AGENT."""
    if agent.endswith(".py"):
        path = Path(agent)
        if not path.is_file():
            raise UsageError(f"agent script not found: {agent}")
        return [sys.executable, str(path), *args], path.stem
    if shutil.which(agent) is None:
        raise UsageError(f"agent command not found: {agent} (is it on PATH?)")
    return [agent, *args], Path(agent).stem


def run(args: argparse.Namespace) -> int:
    argv, default_name = agent_argv(args.agent, list(args.args))
    try:
        config = load_config(args.config) if args.config else Config()
    except ConfigError as error:
        raise UsageError(f"{error}") from None
    grace = args.grace if args.grace is not None else config.settings.grace_period
    xdg_runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    runtime_dir = RuntimeDir(Path(xdg_runtime_dir) if xdg_runtime_dir else None)
    options = RuntimeOptions(
        endpoint=f"ipc://{runtime_dir.path}/capsup.sock",
        state=args.state or ":memory:",
        audit_log=args.audit_log,
        metrics=args.metrics,
        grace_period=grace,
        confine="off" if args.no_confine else None,
    )
    if args.no_confine:
        print(
            "capsup: warning: --no-confine: the agent can reach every file, socket and "
            "process this user can; capabilities bind only what it chooses to ask",
            file=sys.stderr,
        )
    try:
        runtime = Runtime(config, options)
    except ConfinementUnavailable as error:
        runtime_dir.remove()
        print(f"capsup: agent not started: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
    except (MetricsUnavailable, StoreError, AuditUnavailable) as error:
        runtime_dir.remove()
        raise UsageError(str(error)) from None
    with runtime:
        server = runtime.server
        server.install_signal_handlers(_FORWARDED)
        try:
            agent = server.start_agent(
                argv, name=args.name or default_name, trace_id=new_trace_id()
            )
        except ConfinementUnavailable as error:
            print(f"capsup: agent not started: {error}", file=sys.stderr)
            code = EXIT_CANNOT_START
        else:
            code = _serve_until_exit(server, agent, grace)
    runtime_dir.remove()
    return code


def _serve_until_exit(server: Server, agent: AgentProcess, grace: float) -> int:
    """Serve until ``agent`` exits, forwarding signals; its exit code."""
    while agent.running:
        server.turn(timeout=1.0)
        for signum in server.pending_signals:
            # A Ctrl-C typed at a terminal already reached the agent, which
            # shares our foreground process group; do not deliver it twice.
            if not (signum == signal.SIGINT and _terminal_sent_it()):
                server.processes.send_signal(agent, signum)
            server.processes.kill_later(agent, time.time() + grace)
        server.pending_signals.clear()
    server.stop_all()
    return exit_code_of(agent)


def _terminal_sent_it() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False
