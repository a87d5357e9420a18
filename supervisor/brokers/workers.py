"""Worker threads for brokered operations that wait on the outside world.

A brokered ``http`` or ``query`` waits on a server or a database for
milliseconds to seconds; ``validate`` takes microseconds. So the loop does
the kernel's part (validation, its audit record) and hands the slow part to
a worker; the worker's outcome comes back to the loop, which alone records
and replies (the audit trail, the metrics and the ZeroMQ sockets are the
loop's). The loop is woken by ``wake`` (the server's self-pipe) and calls
:meth:`BrokerWorkers.collect`.

In-flight work is bounded per agent tree and in all: each job holds a worker
for as long as the far end makes it wait, so without a bound one agent
could take every worker (and every descriptor) with slow requests. A job
past a bound is refused (:class:`~capsup.agents.errors.Busy`) before it
starts.

Workers are daemon threads: a supervisor that is stopping does not wait for
a slow server; the job's reply is simply never sent.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from capsup.agents.errors import Busy

__all__ = ["DEFAULT_PER_AGENT", "DEFAULT_TOTAL", "DEFAULT_WORKERS", "BrokerWorkers"]

#: Jobs in flight per agent tree (an agent and its sub-agents), and in all.
DEFAULT_PER_AGENT: Final = 8
DEFAULT_TOTAL: Final = 256
#: Worker threads, made as they are needed: one per job in flight, so a job
#: never waits behind another tree's slow ones.
DEFAULT_WORKERS: Final = DEFAULT_TOTAL

_T = TypeVar("_T")


class _Job(Generic[_T]):
    """One job: its result (or the exception it raised) once finished."""

    __slots__ = ("done", "key", "outcome", "work")

    def __init__(
        self, key: str, work: Callable[[], _T], done: Callable[[_T | BaseException], None]
    ) -> None:
        self.key = key
        self.work = work
        self.done = done
        self.outcome: _T | BaseException = RuntimeError("the job did not run")

    def run(self) -> None:
        try:
            self.outcome = self.work()
        except BaseException as error:  # handed to the loop, which decides
            self.outcome = error

    def finish(self) -> None:
        self.done(self.outcome)


class BrokerWorkers:
    """A bounded pool of daemon threads whose results the loop collects."""

    def __init__(
        self,
        wake: Callable[[], None],
        *,
        workers: int = DEFAULT_WORKERS,
        per_agent: int = DEFAULT_PER_AGENT,
        total: int = DEFAULT_TOTAL,
    ) -> None:
        if workers < 1 or per_agent < 1 or total < 1:
            raise ValueError("workers and bounds must be at least 1")
        self._wake = wake
        self._workers = workers
        self._per_agent = per_agent
        self._total = total
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._todo: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._finished: collections.deque[_Job[Any]] = collections.deque()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(
        self, key: str, work: Callable[[], _T], done: Callable[[_T | BaseException], None]
    ) -> None:
        """Run ``work`` on a worker, then ``done(result or exception)`` on the
        loop (in :meth:`collect`). ``key`` is the agent the job counts
        against. Raises :class:`Busy` past a bound; on the loop only."""
        if sum(self._in_flight.values()) >= self._total:
            raise Busy(f"{self._total} brokered requests are in flight already; retry later")
        if self._in_flight[key] >= self._per_agent:
            raise Busy(
                f"this agent and its sub-agents have {self._per_agent} brokered requests in "
                "flight already; retry once one is answered"
            )
        self._in_flight[key] += 1
        if len(self._threads) < min(self._workers, sum(self._in_flight.values())):
            thread = threading.Thread(target=self._run, name="capsup-broker", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._todo.put(_Job(key, work, done))

    def in_flight(self, key: str | None = None) -> int:
        """Jobs running or queued, of ``key`` or of all."""
        return sum(self._in_flight.values()) if key is None else self._in_flight[key]

    def collect(self) -> None:
        """Hand every finished job's outcome to its ``done`` (on the loop)."""
        while True:
            with self._lock:
                if not self._finished:
                    return
                job = self._finished.popleft()
            self._in_flight[job.key] -= 1
            if not self._in_flight[job.key]:
                del self._in_flight[job.key]
            job.finish()

    def close(self) -> None:
        """Stop the workers once they finish what they are doing (not waited for)."""
        for _ in self._threads:
            self._todo.put(None)
        self._threads.clear()

    def _run(self) -> None:
        while True:
            job = self._todo.get()
            if job is None:
                return
            job.run()
            with self._lock:
                self._finished.append(job)
            self._wake()
