"""Confinement benchmark: prints its figures; docs/performance.md records them.

    .venv/bin/python benchmarks/confinement.py [--starts 30] [--window 0.6] [--rounds 5]
        [--opens 5] [--reads 4] [--protocol-rounds 4] [--protocol-duration 2] [--bytecode]

Measures, in one run, each figure beside its yardstick, on whatever machine
runs it. Two real supervisors (:class:`~capsup.supervisor.runtime.Runtime`,
audit trail and metrics on, as shipped) live in this process, one confining
its agents (``confine = "required"``, the default) and one not
(``confine = "off"``, as ``capsup run --no-confine``); only one is driven
at a time, and each agent is reaped before the other supervisor runs.

1. Agent start-up: from just before ``server.start_agent`` to the moment the
   agent has the reply to its first ``whoami`` (the agent's own
   CLOCK_MONOTONIC reading, which every process on the host shares), with
   the supervisor's loop driven in between. It covers the supervisor's
   preparation (scratch directory, cgroup, own endpoint, plan), the
   bootstrap interpreter, the confinement steps, the agent's interpreter and
   imports, its brokered ``connect()`` and one round trip. Also printed: to
   the agent's first line of code. Confined and unconfined starts alternate,
   ``--starts`` of each.
2. Brokered ``read`` of a 4 KiB file: one confined agent calls
   ``Client.read_bytes(cap, path)`` in a loop for ``--window`` seconds, then
   ``Client.validate(cap, "read", path)`` on the same capability and file for
   as long, ``--rounds`` times; ops/s are counted by the agent.
3. ``open`` + native read of a 100 MiB file: a confined agent opens it with
   ``Client.open(cap, path, "rb", buffering=0)`` and reads it to the end with
   ``readinto`` a 1 MiB buffer; the yardstick is an unconfined agent doing
   the same with the builtin ``open``. The page cache is warmed first; each
   agent times open + read + close, ``--reads`` times, and ``--opens``
   agents of each kind alternate.
4. (No target of its own.) The protocol benchmark's 8-client ``validate``
   round (benchmarks/protocol.py's ``capsup_round``) against the confining
   and the unconfined supervisor, alternating, so the cost of confined
   agents' per-agent endpoints shows beside its yardstick. The 0.6x-of-echo
   target itself is checked by running benchmarks/protocol.py.

Bytecode: an agent's interpreters compile every module for which no bytecode
is cached (an editable install with ``PYTHONDONTWRITEBYTECODE`` set, which
agents inherit; a confined agent cannot write a ``__pycache__`` anywhere).
``--bytecode`` lets agents cache it under ``PYTHONPYCACHEPREFIX`` in a
directory of the run, as an installed package has it. Start-up, confined
or not, depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsup.supervisor.config import parse_config
from capsup.supervisor.processes import AgentProcess
from capsup.supervisor.runtime import Runtime
from protocol import capsup_round, load, machine, percentile, runtime_in, script, verdict

#: Targets from issue 14, on this 2-core machine.
TARGET_STARTUP_ADDED_MS = 30.0
TARGET_OPEN_RATIO = 0.9
SMALL_FILE_BYTES = 4 << 10
LARGE_FILE_BYTES = 100 << 20
CHUNK_BYTES = 1 << 20
PROTOCOL_CLIENTS = 8

# The agent, run as ``python agent.py MODE RESULT ARGS...`` from a file (a
# confined agent may read its script's directory). It writes its figures as
# JSON to RESULT, in a directory its policy entry's sandbox lets it write.
AGENT_CODE = r"""
import time
first_line = time.monotonic()
import json, sys

mode, result = sys.argv[1], sys.argv[2]
figures = {}
if mode == "startup":
    from capsup.agents import connect
    client = connect()
    client.whoami()
    figures = {"first_line": first_line, "whoami": time.monotonic()}
elif mode == "read":
    from capsup.agents import connect
    resource, path, window, rounds = sys.argv[3], sys.argv[4], float(sys.argv[5]), int(sys.argv[6])
    client = connect()
    cap = client.request(resource, ["read"])
    read = lambda: client.read_bytes(cap, path)
    validate = lambda: client.validate(cap, "read", path)
    assert len(read()) == 4096
    for _ in range(200):  # warm up: connection, caches
        read()
        validate()
    figures = {"read": [], "validate": []}
    monotonic = time.monotonic
    for _ in range(rounds):
        for kind, call in (("read", read), ("validate", validate)):
            count, start = 0, monotonic()
            end = start + window
            while monotonic() < end:
                call()
                count += 1
            figures[kind].append(count / (monotonic() - start))
elif mode in ("brokered", "direct"):
    resource, path, size, chunk, reads = sys.argv[3], sys.argv[4], *map(int, sys.argv[5:8])
    if mode == "brokered":
        from capsup.agents import connect
        client = connect()
        cap = client.request(resource, ["read"])
        opener = lambda: client.open(cap, path, "rb", buffering=0)
    else:
        opener = lambda: open(path, "rb", buffering=0)
    buffer = bytearray(chunk)
    seconds, opening = [], []
    perf_counter = time.perf_counter
    for _ in range(reads):
        t0 = perf_counter()
        with opener() as f:
            opened = perf_counter()
            total = 0
            while n := f.readinto(buffer):
                total += n
        seconds.append(perf_counter() - t0)
        opening.append(opened - t0)
        if total != size:
            sys.exit(f"read {total} bytes of {size}")
    figures = {"seconds": seconds, "open": opening}
with open(result, "w") as f:
    json.dump(figures, f)
"""


@dataclass
class Bench:
    """The two supervisors and the files they serve."""

    confined: Runtime
    unconfined: Runtime
    agent: Path
    results: Path
    data: Path

    def run(self, runtime: Runtime, args: Sequence[str], timeout: float = 120) -> dict[str, Any]:
        """Start the agent with ``args`` under ``runtime``, drive its loop
        until the agent is reaped, and return the figures it wrote."""
        agent, result = self._launch(runtime, args)
        return self._finish(runtime, agent, result, timeout)

    def start(self, runtime: Runtime) -> tuple[float, float, float]:
        """One start: (start_agent's own time, to the agent's first line, to
        its whoami reply), in ms."""
        t0 = time.monotonic()
        agent, result = self._launch(runtime, ["startup"])
        spawned = time.monotonic()
        marks = self._finish(runtime, agent, result, 30)
        return (
            (spawned - t0) * 1e3,
            (marks["first_line"] - t0) * 1e3,
            (marks["whoami"] - t0) * 1e3,
        )

    def _launch(self, runtime: Runtime, args: Sequence[str]) -> tuple[AgentProcess, Path]:
        result = self.results / f"{time.monotonic_ns()}.json"
        argv = [sys.executable, str(self.agent), args[0], str(result), *args[1:]]
        return runtime.server.start_agent(argv, name="bench"), result

    def _finish(
        self, runtime: Runtime, agent: AgentProcess, result: Path, timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while agent.running:
            runtime.server.turn(timeout=0.05)
            if time.monotonic() > deadline:
                raise SystemExit(f"an agent did not finish within {timeout:g} s")
        if agent.returncode != 0:
            raise SystemExit(f"an agent failed: exit code {agent.returncode}")
        figures: dict[str, Any] = json.loads(result.read_text())
        return figures


def make_runtime(base: Path, name: str, data: Path, confine: str, bytecode: Path | None) -> Runtime:
    """A supervisor whose ``bench`` agents may request ``file://`` capabilities
    on ``data`` and write (natively) only ``results`` and ``protocol``, where
    figures and protocol.py's handshake files go: ``data`` is reachable
    through the broker alone. With ``bytecode``, agents get
    ``$PYTHONPYCACHEPREFIX`` and may read that directory."""
    config = parse_config(
        {
            "supervisor": {"pass_environment": ["PYTHONPYCACHEPREFIX"] if bytecode else []},
            "agents": {
                "bench": {
                    "allow": [
                        {
                            "resource": data.as_uri(),
                            "operations": ["read", "list", "stat"],
                            "max_ttl": 3600,
                        }
                    ],
                    "sandbox": {
                        "read": [str(bytecode)] if bytecode else [],
                        "write": [str(base / "results"), str(base / "protocol")],
                    },
                }
            },
        },
        source="<benchmark>",
    )
    return runtime_in(base / name, config, confine)


def commit() -> str:
    """The checkout's short commit, and whether the tree differs from it."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' (with uncommitted changes)' if dirty else ''}"


def pcts(values: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return percentile(ordered, 50), percentile(ordered, 95)


def spread(values: Sequence[float], scale: float = 1e3, unit: str = "k") -> str:
    return "/".join(f"{v / scale:.1f}{unit}" for v in values)


# -- 1. start-up -------------------------------------------------------------------


def startup(bench: Bench, starts: int) -> tuple[float, float, float]:
    """Print the start-up figures; return (confined p50, unconfined p50, added p50) in ms."""
    modes = {"confined": bench.confined, "unconfined": bench.unconfined}
    for runtime in modes.values():  # warm up: imports, caches, the first cgroup
        for _ in range(2):
            bench.start(runtime)
    marks: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
    for i in range(starts):
        order = list(modes) if i % 2 == 0 else list(reversed(modes))
        for mode in order:
            marks[mode].append(bench.start(modes[mode]))
    print(f"\n1. agent start-up, {starts} starts each, alternating (ms from start_agent):")
    p50s: dict[str, float] = {}
    for mode, rows in marks.items():
        spawn50, spawn95 = pcts([r[0] for r in rows])
        line50, line95 = pcts([r[1] for r in rows])
        who50, who95 = pcts([r[2] for r in rows])
        p50s[mode] = who50
        print(
            f"  {mode:<10}  whoami reply p50 {who50:6.1f}  p95 {who95:6.1f}  |  "
            f"first line p50 {line50:6.1f}  p95 {line95:6.1f}  |  "
            f"start_agent itself p50 {spawn50:5.1f}  p95 {spawn95:5.1f}"
        )
    added = p50s["confined"] - p50s["unconfined"]
    first_added = statistics.median(r[1] for r in marks["confined"]) - statistics.median(
        r[1] for r in marks["unconfined"]
    )
    # Each confined start next to the unconfined one of its pair: background
    # load that comes and goes hits both of a pair.
    paired = statistics.median(
        c[2] - u[2] for c, u in zip(marks["confined"], marks["unconfined"], strict=True)
    )
    print(
        f"  added by confinement at p50: {added:.1f} ms (to the first line: {first_added:.1f}; "
        f"median of the {starts} pairs' differences: {paired:.1f})"
    )
    return p50s["confined"], p50s["unconfined"], added


# -- 2. brokered read --------------------------------------------------------------


def brokered_read(bench: Bench, window: float, rounds: int) -> float:
    """Print read and validate ops/s; return read / validate, the median of
    the rounds' ratios (each round's read and validate windows are adjacent,
    so a burst of background load that spans one round hits both)."""
    small = bench.data / "small.bin"
    figures = bench.run(
        bench.confined,
        ["read", bench.data.as_uri(), str(small), str(window), str(rounds)],
    )
    read: list[float] = figures["read"]
    validate: list[float] = figures["validate"]
    ratio = statistics.median(r / v for r, v in zip(read, validate, strict=True))
    print(
        f"\n2. brokered read of a {SMALL_FILE_BYTES // 1024} KiB file, one confined agent, "
        f"{rounds} x {window:g} s each, alternating (median round):"
    )
    print(f"  read_bytes  {statistics.median(read):>8,.0f} ops/s  [rounds {spread(read)}]")
    print(f"  validate    {statistics.median(validate):>8,.0f} ops/s  [rounds {spread(validate)}]")
    print(f"  read / validate: {ratio:.2f}x (median of the rounds' ratios)")
    return ratio


# -- 3. open + native read ---------------------------------------------------------


def open_and_read(bench: Bench, opens: int, reads: int) -> float:
    """Print MB/s brokered-open vs direct; return the ratio of the medians."""
    large = bench.data / "large.bin"
    with open(large, "rb", buffering=0) as f:  # warm the page cache for both
        while f.read(CHUNK_BYTES):
            pass
    args = [bench.data.as_uri(), str(large), str(LARGE_FILE_BYTES), str(CHUNK_BYTES), str(reads)]
    seconds: dict[str, list[float]] = {"brokered": [], "direct": []}
    opening: dict[str, list[float]] = {"brokered": [], "direct": []}
    for i in range(opens):
        order = ["brokered", "direct"] if i % 2 == 0 else ["direct", "brokered"]
        for mode in order:
            runtime = bench.confined if mode == "brokered" else bench.unconfined
            figures = bench.run(runtime, [mode, *args])
            seconds[mode] += figures["seconds"]
            opening[mode] += figures["open"]
    rates = {mode: [LARGE_FILE_BYTES / 1e6 / s for s in values] for mode, values in seconds.items()}
    mb = LARGE_FILE_BYTES >> 20
    print(
        f"\n3. open + read of a {mb} MiB file in {CHUNK_BYTES >> 20} MiB readinto chunks, "
        f"page cache warm; {opens} agents of each kind, {reads} reads each (MB/s):"
    )
    labels = {
        "brokered": "confined, Client.open",
        "direct": "unconfined, builtin open",
    }
    for mode, values in rates.items():
        p50 = statistics.median(values)
        best = max(values)
        per_read = statistics.median(seconds[mode]) * 1e3
        per_open = statistics.median(opening[mode]) * 1e3
        print(
            f"  {labels[mode]:<25} p50 {p50:>7,.0f} MB/s  best {best:>7,.0f} MB/s  "
            f"({per_read:.1f} ms per read, of which open {per_open:.2f})  "
            f"[{spread(values, 1, '')}]"
        )
    ratio = statistics.median(rates["brokered"]) / statistics.median(rates["direct"])
    print(f"  brokered / direct: {ratio:.2f}x (medians)")
    return ratio


# -- 4. protocol, confined vs unconfined --------------------------------------------


def protocol(bench: Bench, base: Path, rounds: int, duration: float) -> float:
    """protocol.py's capsup round at 8 clients on both supervisors; return
    confined / unconfined validations/s, the median of the repetitions'
    ratios (each repetition runs one round of each, back to back)."""
    resource = bench.data.as_uri()
    rates: dict[str, list[float]] = {"confined": [], "unconfined": []}
    p50s: dict[str, list[float]] = {"confined": [], "unconfined": []}
    for rep in range(rounds):
        order = ["confined", "unconfined"] if rep % 2 == 0 else ["unconfined", "confined"]
        for mode in order:
            runtime = bench.confined if mode == "confined" else bench.unconfined
            figures = capsup_round(
                runtime, base, f"{mode}-{rep}", PROTOCOL_CLIENTS, duration, resource
            )
            rates[mode].append(figures.rate)
            p50s[mode].append(figures.p50_us)
    print(
        f"\n4. protocol.py's capsup validate round, {PROTOCOL_CLIENTS} clients, "
        f"{rounds} x {duration:g} s each, alternating (median round):"
    )
    for mode, values in rates.items():
        print(
            f"  {mode:<10} {statistics.median(values):>8,.0f} validations/s  "
            f"p50 {statistics.median(p50s[mode]):>5.0f} us  [rounds {spread(values)}]"
        )
    ratio = statistics.median(
        c / u for c, u in zip(rates["confined"], rates["unconfined"], strict=True)
    )
    print(f"  confined / unconfined: {ratio:.2f}x (median of the repetitions' ratios)")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=30, help="agent starts of each kind")
    parser.add_argument("--window", type=float, default=0.6, help="seconds per read round")
    parser.add_argument("--rounds", type=int, default=5, help="read and validate rounds")
    parser.add_argument("--opens", type=int, default=5, help="agents of each kind for open")
    parser.add_argument("--reads", type=int, default=4, help="reads of the large file per agent")
    parser.add_argument("--protocol-rounds", type=int, default=4, help="0 to skip part 4")
    parser.add_argument("--protocol-duration", type=float, default=2.0, help="seconds per round")
    parser.add_argument(
        "--bytecode",
        action="store_true",
        help="let agents cache compiled modules (in a PYTHONPYCACHEPREFIX that confined agents "
        "may read), as an installed package has them; by default they inherit this process's "
        "PYTHONDONTWRITEBYTECODE, if set",
    )
    opts = parser.parse_args()

    print(f"machine: {machine()}")
    print(f"commit: {commit()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"before: {load()}")
    cache = "agents may not write bytecode" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    print(f"bytecode: {'cached (--bytecode)' if opts.bytecode else cache or 'as Python does'}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capsup-bench-") as tmp:
        base = Path(tmp)
        data = base / "data"
        data.mkdir()
        (data / "data.txt").write_text("hello\n")  # what protocol.py's clients validate
        (data / "small.bin").write_bytes(os.urandom(SMALL_FILE_BYTES))
        with open(data / "large.bin", "wb") as f:
            block = os.urandom(CHUNK_BYTES)
            for _ in range(LARGE_FILE_BYTES // CHUNK_BYTES):
                f.write(block)
        (base / "results").mkdir()
        (base / "protocol").mkdir()
        agent = script(base, "agent.py", AGENT_CODE)
        bytecode = None
        if opts.bytecode:
            # Written by the bootstraps and unconfined agents, read by all.
            bytecode = base / "pycache"
            bytecode.mkdir()
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
            os.environ["PYTHONPYCACHEPREFIX"] = str(bytecode)
        with (
            make_runtime(base, "confined", data, "required", bytecode) as confined,
            make_runtime(base, "unconfined", data, "off", bytecode) as unconfined,
        ):
            bench = Bench(confined, unconfined, agent, base / "results", data)
            confined_p50, unconfined_p50, added = startup(bench, opts.starts)
            read_ratio = brokered_read(bench, opts.window, opts.rounds)
            open_ratio = open_and_read(bench, opts.opens, opts.reads)
            protocol_ratio = None
            if opts.protocol_rounds:
                protocol_ratio = protocol(
                    bench, base / "protocol", opts.protocol_rounds, opts.protocol_duration
                )

    print("\ntargets (issue 14):")
    print(
        f"  start-up added at p50 < {TARGET_STARTUP_ADDED_MS:g} ms: {added:.1f} ms "
        f"({confined_p50:.1f} confined vs {unconfined_p50:.1f} unconfined)  "
        f"{verdict(added < TARGET_STARTUP_ADDED_MS)}"
    )
    print(f"  brokered read, ops/s and the ratio to validate: {read_ratio:.2f}x  (no target)")
    print(
        f"  open + native read >= {TARGET_OPEN_RATIO}x a direct read: {open_ratio:.2f}x  "
        f"{verdict(open_ratio >= TARGET_OPEN_RATIO)}"
    )
    print("  protocol >= 0.6x echo with 8 clients, agents confined: run benchmarks/protocol.py")
    if protocol_ratio is not None:
        print(
            f"  protocol, {PROTOCOL_CLIENTS} clients, confined / unconfined: "
            f"{protocol_ratio:.2f}x  (no target)"
        )
    print(f"\nafter: {load()}; total time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
