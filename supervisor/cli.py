"""The ``capsup`` command line.

Each command lives in its own module and registers itself through a
``register(subparsers)`` function listed in :data:`COMMANDS`; the handler it
sets returns the process exit code. A user mistake raises :class:`UsageError`
and is printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

__all__ = ["EXIT_USAGE", "UsageError", "main"]

#: Exit status for a user mistake (bad flags, missing file, bad config).
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix; the message says what and how."""


Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: Modules that add sub-commands; each has ``register(subparsers)``.
COMMANDS: list[str] = [
    "capsup.supervisor.run_cli",
    "capsup.supervisor.audit_cli",
    "capsup.supervisor.sandbox_cli",
]


def _version() -> str:
    try:
        return version("capsup")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsup",
        description="Run AI agents under a capability-security supervisor.",
    )
    parser.add_argument("--version", action="version", version=f"capsup {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for module_name in COMMANDS:
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(handler(args))
    except UsageError as error:
        print(f"capsup: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
