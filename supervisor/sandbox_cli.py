"""``capsup sandbox-check``: which guarantees this machine enforces.

One line per guarantee, ``ok`` or ``MISSING`` and how it is enforced (or why
not); the exit status is 1 when ``confine = "required"`` cannot be met, so a
deployment script can check before it relies on it.
"""

from __future__ import annotations

import argparse
from typing import Any

from capsup.supervisor.confinement.support import probe

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sandbox-check",
        help="say which confinement guarantees this machine enforces",
        description="Probe (in throw-away child processes) what this kernel lets capsup "
        "enforce on an agent, one line per guarantee. Exits 1 if confine = "
        '"required" cannot be met here.',
    )
    parser.set_defaults(handler=check)


def check(args: argparse.Namespace) -> int:
    support = probe()
    width = max(len(g.name) for g in support.guarantees)
    for guarantee in support.guarantees:
        verdict = "ok     " if guarantee.enforced else "MISSING"
        print(f"{guarantee.name:<{width}}  {verdict}  {guarantee.how}")
    if support.missing:
        print(
            f'confine = "required" cannot be met here (missing: {", ".join(support.missing)}); '
            '"best-effort" runs agents with what is there'
        )
        return 1
    print('confine = "required" can be met here')
    return 0
