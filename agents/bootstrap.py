"""Confine a new agent process, then become the agent.

The supervisor starts every agent as ``python -m capsup.agents.bootstrap
--supervisor PID [--batch] [--confine PLAN] -- ARGV...``. Before the agent's
own code runs, this:

- asks the kernel to SIGKILL the process when the supervisor dies
  (``PR_SET_PDEATHSIG``), then checks the supervisor did not die before that
  took effect: an agent must never outlive the supervisor that accounts for
  it (fail closed);
- sets ``PR_SET_NO_NEW_PRIVS`` so that nothing the agent executes can gain
  privileges through setuid binaries or file capabilities;
- with ``--batch``, puts the agent under ``SCHED_BATCH`` (see
  :func:`enter_batch_scheduling`);
- with ``--confine``, carries out the supervisor's plan
  (:mod:`capsup.agents.confine.apply`: cgroup, private ``/dev/shm``, limits,
  capabilities dropped, Landlock, seccomp) and reports what it enforced over
  the descriptor socket, handing over the seccomp listener with it; if any
  step fails, the agent does not start (exit 126, one line on stderr);
- replaces itself with the agent (``execvp``), keeping its pid and create
  time, which is how the supervisor identifies it.

Everything above survives ``execve``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys

__all__ = ["enter_batch_scheduling", "main"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
#: Exit status when the agent could not be started (as a shell's "not executable").
EXIT_CANNOT_START = 126
EXIT_NOT_FOUND = 127


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}) failed: {os.strerror(errno)}")


def enter_batch_scheduling() -> bool:
    """Move the calling thread from the default policy to ``SCHED_BATCH``.

    A batch thread has the same share of CPU time as before, but its wakeups
    do not preempt the thread that is running; it waits for the next
    scheduling decision instead. That is the right deal for agents, which
    are throughput work, next to a supervisor whose every request is on
    some agent's critical path, and for libzmq's I/O thread next to the
    supervisor's loop. It is a hint, not a limit: an agent may switch
    itself back. Returns whether the policy was changed; one the operator
    chose (``chrt``), or one a sandbox will not let go of, is left alone.
    """
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return False
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):  # refused, or not Linux
        return False
    return True


def _parse(args: list[str]) -> tuple[int, bool, str | None, list[str]] | None:
    """``--supervisor PID [--batch] [--confine PLAN] -- ARGV...``, or None."""
    supervisor: int | None = None
    batch = False
    plan: str | None = None
    while args and args[0] != "--":
        flag, args = args[0], args[1:]
        if flag == "--batch":
            batch = True
        elif flag in ("--supervisor", "--confine") and args:
            value, args = args[0], args[1:]
            if flag == "--confine":
                plan = value
            elif value.isdigit():
                supervisor = int(value)
            else:
                return None
        else:
            return None
    if supervisor is None or len(args) < 2:
        return None
    return supervisor, batch, plan, args[1:]


def _confine(text: str) -> bool:
    """Carry out the plan and report to the supervisor; False (after one
    line on stderr) if the agent must not start."""
    # The move into the agent's cgroup waits on the kernel for ~10 ms: start
    # it first, and import the rest meanwhile (confine() waits for it).
    from capsup.agents.confine.cgroup_join import Joining

    joining: Joining | None = None
    with contextlib.suppress(ValueError, AttributeError):  # the plan's own parse says
        procs = json.loads(text).get("cgroup_procs")
        joining = Joining(procs) if isinstance(procs, str) else None
    # Imported here: an unconfined agent's start-up should not pay for it.
    from capsup.agents.confine.apply import confine
    from capsup.agents.confine.errors import ConfinementError
    from capsup.agents.confine.plan import ConfinementPlan

    try:
        plan = ConfinementPlan.from_json(text)
        done = confine(plan, joining)
    except (ConfinementError, ValueError) as error:
        print(
            f"capsup: cannot confine the agent: {error} (`capsup sandbox-check` lists what "
            'this machine enforces; [supervisor] confine = "best-effort" or '
            "`capsup run --no-confine` runs it anyway)",
            file=sys.stderr,
        )
        return False
    fds = [done.listener] if done.listener is not None else []
    try:
        if plan.control_fd is not None:
            report = json.dumps({"enforced": done.enforced}).encode()
            with socket.socket(fileno=os.dup(plan.control_fd)) as control:
                socket.send_fds(control, [report], fds)
    except OSError as error:
        print(f"capsup: cannot report to the supervisor: {error}", file=sys.stderr)
        return False
    finally:
        # Whoever holds the listener answers the agent's connects: never the agent.
        for fd in fds:
            os.close(fd)
    return True


def main(argv: list[str] | None = None) -> int:
    parsed = _parse(sys.argv[1:] if argv is None else list(argv))
    if parsed is None:
        print(
            "usage: python -m capsup.agents.bootstrap --supervisor PID [--batch] "
            "[--confine PLAN] -- ARGV...",
            file=sys.stderr,
        )
        return 2
    supervisor, batch, plan, command = parsed
    if sys.platform.startswith("linux"):
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if batch:
        enter_batch_scheduling()
    if os.getppid() != supervisor:
        # The supervisor died between fork and prctl: nobody would revoke
        # what this agent obtains, so it must not start at all.
        return EXIT_CANNOT_START
    if plan is not None and not _confine(plan):
        return EXIT_CANNOT_START
    try:
        os.execvp(command[0], command)  # noqa: S606 - becoming the agent is the point
    except FileNotFoundError:
        print(f"capsup: agent command not found: {command[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as error:
        print(f"capsup: cannot start agent {command[0]}: {error.strerror}", file=sys.stderr)
        return EXIT_CANNOT_START


if __name__ == "__main__":
    sys.exit(main())
