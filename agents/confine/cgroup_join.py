"""Joining the agent's cgroup, started before anything else is imported.

Moving a process into a cgroup waits for the kernel's RCU grace period
(the cgroup threadgroup lock): 10-14 ms when the machine is not busy
migrating already, about a third of what confinement adds to an agent's
start. Nothing else the bootstrap does depends on it until the first step
of confinement, so the move runs on a thread while the bootstrap imports the
rest of :mod:`capsup.agents.confine`, and :func:`Joining.wait` gives its
result before any other step. This module imports only what the bootstrap
has already imported, so that starting the move costs nothing.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["Joining"]

#: How long the thread may take to leave the kernel after Python is done with it.
_THREAD_EXIT_WAIT = 1.0


class Joining:
    """Writes this process's pid into a ``cgroup.procs`` file, on a thread
    (writing the pid moves every thread of the process)."""

    def __init__(self, procs_path: str) -> None:
        self.procs_path = procs_path
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._join, name="capsup-cgroup-join")
        self._thread.start()

    def _join(self) -> None:
        try:
            with open(self.procs_path, "w") as procs:
                procs.write(str(os.getpid()))
        except OSError as error:
            self._error = error

    def wait(self) -> OSError | None:
        """Wait for the move; the error that stopped it, if one did.

        Also waits for the thread to be gone from the kernel, not just from
        Python (``join`` returns a moment before): ``unshare`` of a mount or
        user namespace, the next step, refuses a process with two threads."""
        self._thread.join()
        deadline = time.monotonic() + _THREAD_EXIT_WAIT
        tasks = "/proc/self/task"  # one entry per thread of this process
        while len(os.listdir(tasks)) > 1 and time.monotonic() < deadline:  # noqa: PTH208 - no pathlib in the bootstrap
            time.sleep(0.0001)
        return self._error
