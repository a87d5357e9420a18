"""Run a confinement step in a forked child, never in pytest itself.

The child runs a function and sends back what it returned (pickled) or the
traceback it raised; a child killed by a signal raises :class:`ChildKilled`
in the parent. Everything the child needs is imported before the fork: a
confined child may no longer be able to read the interpreter's library.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from typing import Any


class ChildKilled(Exception):
    """The child died of a signal before it could answer."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"child killed by {signal.Signals(signum).name}")
        self.signum = signum


def outcome(action: Callable[[], object]) -> str:
    """``"ok"``, or the errno name of the ``OSError`` that ``action`` raised."""
    try:
        action()
    except OSError as error:
        return errno.errorcode[error.errno or 0]
    return "ok"


def fork_child(function: Callable[[], Any]) -> tuple[int, int]:
    """Start ``function`` in a child; ``(pid, fd)`` for :func:`collect`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answers on the pipe, then exits without cleanup
        os.close(read_end)
        try:
            payload = pickle.dumps(("value", function()))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view) :]
        os._exit(0)
    os.close(write_end)
    return pid, read_end


def collect(pid: int, fd: int) -> Any:
    """The value the child returned; its exception as an ``AssertionError``."""
    chunks = []
    with os.fdopen(fd, "rb") as answers:
        while chunk := answers.read():
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise ChildKilled(os.WTERMSIG(status))
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise AssertionError(f"the child raised:\n{value}")
    return value


def in_child(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a forked child and return what it returned."""
    return collect(*fork_child(function))
