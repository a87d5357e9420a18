"""Real-path benchmark: issue 17's table, measured on the supervisor users run.

    .venv/bin/python benchmarks/real_path.py [--repeat 3] [--duration 1.5] [--tree 100000]
        [--kills 20] [--restart 100000] [--verify 200000] [--quick]

"The real path" is a :class:`~capsup.supervisor.runtime.Runtime` in this
process, as ``capsup run`` builds it: audit trail and metrics on, state in a
SQLite file, agents unconfined (``confine="off"``; confinement is measured
by benchmarks/confinement.py). Its yardstick, measured in the same run, is
the kernel alone, as benchmarks/kernel.py measures it: a
:class:`~capsup.supervisor.kernel.Kernel` on a state file with no sink (no
trail, no metrics). Every measurement gets a fresh kernel or runtime, made,
used and released one at a time (so one's heap never weighs on the other's
garbage collections), the two paths alternating within each of ``--repeat``
runs so a burst of background load hits both. Rows print min / median /
max; a target is judged on the median (on p99 where it is a p99).

1. revoke a ``--tree``-node delegation tree: built as kernel.py builds it
   (a root, sqrt(N) children, the rest grandchildren) through the kernel's
   own calls; only the ``revoke`` is timed.
2. durable grants: in process (``request`` and the end of a loop turn,
   ``Runtime._on_idle``, per grant), and over the wire by 1 and 4 agents the
   runtime spawned, each looping ``request`` with one in flight for
   ``--duration`` seconds while this process drives the server's loop.
3. in-process ``validate``: under a ceiling whose validator allows
   everything (the kernel's checks, the trail and the metrics only), and
   through the ``file://`` validator; a loop turn ends every 64 validations
   (one batch of the shared endpoint).
4. an agent holding 10,000 capabilities is killed: the time of
   ``revoke_all_for_agent``, as the server calls it when an agent exits,
   for ``--kills`` agents (p50 and p99 over them).
5. restart on a state file with ``--restart`` live capabilities (holders of
   10,000 each, the default quota), written by the real path: a fresh
   process times ``Runtime()`` (the kernel alone: loading, then revoking the
   orphans as the runtime does) and reads its resident memory after. Per
   capability is what that exceeds a restart on an empty state file by,
   divided by ``--restart``; "extrapolated" is the empty restart's memory
   plus 1,000,000 times it.
6. ``capsup audit verify`` of a trail of ``--verify`` records (successful
   validations, as a busy trail mostly holds) through
   :func:`capsup.supervisor.audit.verify`, with the head the state store
   kept; the yardstick is reading the lines and ``json.loads`` alone.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from capsup.supervisor.audit import HEAD_META_KEY, parse_head, trail_files, verify
from capsup.supervisor.config import Config, Settings
from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
from capsup.supervisor.policy import Policy, parse_ceiling
from capsup.supervisor.principal import OPERATOR, Principal
from capsup.supervisor.runtime import Runtime, RuntimeOptions
from capsup.supervisor.store import Store
from capsup.validators import (
    FilesystemValidator,
    Use,
    ValidatorRegistry,
)
from kernel import AllowAll
from protocol import load, machine

ME = Principal("agent-bench", "bench")
BENCH_ROOT = "bench://r"
BENCH_USE = Use("use", "bench://r/x")
BENCH_REQUEST = CapabilityRequest("bench://r/x", ["use"])
#: One turn of the server's loop serves at most this many requests from the
#: shared endpoint; the in-process validate loops end a turn as often.
TURN_BATCH = 64
HOLDER_QUOTA = 10_000  # Settings().max_capabilities_per_agent, the default
TARGET_CAPS = 1_000_000  # the restart row's targets are for this many

# Targets from issue 17 (this 2-core machine).
TARGET_TREE_S = 0.5
TARGET_WIRE_GRANTS = 10_000.0
TARGET_VALIDATE = 300_000.0
TARGET_VALIDATE_FILE = 160_000.0
TARGET_KILL_P99_MS = 50.0
TARGET_RESTART_S = 5.0
TARGET_RSS_BYTES = 1 << 30
TARGET_BYTES_PER_CAP = 600.0
TARGET_VERIFY = 300_000.0

# A granting agent: ``python grant_agent.py WORKDIR INDEX DURATION``. It warms
# up, writes ready-INDEX, waits for the file "go" (the window's start, a
# CLOCK_MONOTONIC time every process shares), asks for a capability with one
# request in flight until the window ends, and writes its count to done-INDEX.
GRANT_AGENT = r"""
import os, sys, time
import msgpack, zmq

workdir, index, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(os.environ["CAPSUP_ENDPOINT"])
pack, unpack = msgpack.packb, msgpack.unpackb
args = {"resource": "bench://r/x", "operations": ["use"]}


def call(i):
    sock.send(pack({"id": i, "op": "request", "args": args}))
    reply = unpack(sock.recv())
    if reply.get("id") != i or not reply.get("ok"):
        sys.exit(f"request refused: {reply}")


for i in range(1, 51):
    call(i)
open(os.path.join(workdir, f"ready-{index}"), "w").close()
go = os.path.join(workdir, "go")
while not os.path.exists(go):
    time.sleep(0.001)
with open(go) as f:
    start = float(f.read())
while time.monotonic() < start:
    pass
end = start + duration
count = 0
while time.monotonic() < end:
    count += 1
    call(count + 1000)
with open(os.path.join(workdir, f"done-{index}"), "w") as f:
    f.write(str(count))
"""


# -- the two paths ----------------------------------------------------------------


def bench_config(data: Path) -> Config:
    """Policy "bench": ``bench://r`` (AllowAll, delegable) and ``file://`` on
    ``data``. One in-process principal takes far more than the default quota
    here (the kill and restart rows keep holders at the default's 10,000)."""
    validators = ValidatorRegistry([AllowAll(), FilesystemValidator()])
    allow = [
        {"resource": BENCH_ROOT, "operations": ["use"], "max_delegation_depth": 8},
        {"resource": data.as_uri(), "operations": ["read", "list", "stat"]},
    ]
    ceilings = tuple(
        parse_ceiling(item, validators, f"agents.bench.allow[{i}]") for i, item in enumerate(allow)
    )
    return Config(
        policy=Policy({"bench": ceilings}),
        settings=Settings(max_capabilities_per_agent=10**8, confine="off"),
        validators=validators,
        source="<benchmark>",
    )


def runtime_options(home: Path) -> RuntimeOptions:
    return RuntimeOptions(
        endpoint=f"ipc://{home}/capsup.sock",
        state=str(home / "state.db"),
        audit_log=str(home / "audit.jsonl"),
        confine="off",
    )


def bare_kernel(state: Path, config: Config) -> Kernel:
    """The kernel alone on ``state``: no sink, started."""
    kernel = Kernel(
        store=Store(str(state)),
        policy=config.policy,
        validators=config.validators,
        max_per_holder=config.settings.max_capabilities_per_agent,
    )
    kernel.start(now=time.time(), trace_id="bench")
    return kernel


@dataclass(frozen=True)
class Subject:
    """What one measurement drives: a kernel, how a turn of its loop ends,
    and (the real path) the runtime around it."""

    path: str
    home: Path
    kernel: Kernel
    end_turn: Callable[[], None]
    runtime: Runtime | None = None


def no_turn() -> None:
    """The kernel alone has no loop whose turn ends."""


@contextlib.contextmanager
def kernel_alone(home: Path, config: Config) -> Iterator[Subject]:
    home.mkdir()
    kernel = bare_kernel(home / "state.db", config)
    kernel.register_principal(ME)
    try:
        yield Subject("kernel", home, kernel, no_turn)
    finally:
        kernel.store.close()


@contextlib.contextmanager
def real_path(home: Path, config: Config) -> Iterator[Subject]:
    """A Runtime with its state file and trail in ``home`` (made here)."""
    home.mkdir()
    with Runtime(config, runtime_options(home)) as runtime:
        runtime.kernel.register_principal(ME)
        yield Subject("real", home, runtime.kernel, runtime._on_idle, runtime)


PATHS = {"kernel": kernel_alone, "real": real_path}
Runs = dict[str, list[float]]


def measure_once(
    make: Callable[[Path, Config], contextlib.AbstractContextManager[Subject]],
    home: Path,
    config: Config,
    measure: Callable[[Subject], dict[str, float]],
) -> dict[str, float]:
    with make(home, config) as subject:
        return measure(subject)


def on_both_paths(
    base: Path, tag: str, config: Config, runs: int, measure: Callable[[Subject], dict[str, float]]
) -> Runs:
    """``measure`` ``runs`` times on each path, alternating, a fresh subject
    each time, released (and its garbage collected) before the next."""
    got: Runs = defaultdict(list)
    for run in range(runs):
        for path, make in PATHS.items():
            figures = measure_once(make, base / f"{tag}-{run}-{path}", config, measure)
            gc.collect()
            for name, value in figures.items():
                got[name].append(value)
    return got


def grant_many(kernel: Kernel, who: Principal, n: int, request: CapabilityRequest) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        plan = [request] * min(1000, n - len(ids))
        ids += [c.id for c in kernel.request_for_plan(who, plan, now=time.time(), trace_id="b")]
    return ids


# -- 1. revoke a tree ---------------------------------------------------------------


def revoke_tree_seconds(subject: Subject, nodes: int) -> float:
    kernel = subject.kernel
    root = kernel.request(ME, CapabilityRequest(BENCH_ROOT, ["use"]), now=time.time(), trace_id="")
    fanout = max(1, int(nodes**0.5))
    now = time.time()
    middles = [
        kernel.delegate(ME, root.id, Delegation(ME.id), now=now, trace_id="").id
        for _ in range(min(fanout, nodes))
    ]
    for index in range(nodes - len(middles)):
        kernel.delegate(ME, middles[index % len(middles)], Delegation(ME.id), now=now, trace_id="")
    subject.end_turn()  # the building's last turn is not the revoke's
    start = time.perf_counter()
    revoked = kernel.revoke(ME, root.id, now=now, trace_id="")
    elapsed = time.perf_counter() - start
    assert len(revoked) == nodes + 1, len(revoked)
    return elapsed


# -- 2. durable grants ----------------------------------------------------------------


def grant_rate(subject: Subject, seconds: float) -> float:
    request, end_turn = subject.kernel.request, subject.end_turn
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        request(ME, BENCH_REQUEST, now=time.time(), trace_id="")
        end_turn()
        count += 1
    return count / (time.perf_counter() - start)


def wire_grant_rate(runtime: Runtime, work: Path, agents: int, duration: float) -> float:
    """Grants per second by ``agents`` agents over the wire, in a common window."""
    work.mkdir()
    code = work.parent / "grant_agent.py"
    if not code.exists():
        code.write_text(GRANT_AGENT)
    server = runtime.server
    procs = [
        server.start_agent(
            [sys.executable, str(code), str(work), str(i), str(duration)], name="bench"
        )
        for i in range(agents)
    ]
    deadline = time.monotonic() + 60 + duration
    go = work / "go"
    check_at = 0.0
    while True:
        server.turn(timeout=0.01)
        now = time.monotonic()
        if now < check_at:  # the bookkeeping is rare, so the loop stays the server's
            continue
        check_at = now + 0.05
        if not go.exists() and sum(1 for _ in work.glob("ready-*")) == agents:
            (work / "go.tmp").write_text(repr(now + 0.05))
            (work / "go.tmp").rename(go)
        if not any(agent.running for agent in procs):
            break
        if now > deadline:
            raise SystemExit("granting agents did not finish within a minute")
    failed = [agent.returncode for agent in procs if agent.returncode != 0]
    if failed:
        raise SystemExit(f"granting agents failed: exit codes {failed}")
    return sum(int((work / f"done-{i}").read_text()) for i in range(agents)) / duration


# -- 3. in-process validate ---------------------------------------------------------


def validate_rate(subject: Subject, ids: Sequence[str], use: Use, seconds: float) -> float:
    validate, end_turn = subject.kernel.validate, subject.end_turn
    turns = [ids[i : i + TURN_BATCH] for i in range(0, len(ids), TURN_BATCH)]
    now = time.time()
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for turn in turns:
            for cap_id in turn:
                validate(ME, cap_id, use, now=now, trace_id="")
            end_turn()
        count += len(ids)
    return count / (time.perf_counter() - start)


# -- 4. an agent is killed ------------------------------------------------------------


def kill_ms(subject: Subject) -> float:
    """Milliseconds to revoke everything an agent holding 10,000 held."""
    kernel = subject.kernel
    agent = Principal("agent-killed", "bench")
    kernel.register_principal(agent)
    grant_many(kernel, agent, HOLDER_QUOTA, BENCH_REQUEST)
    subject.end_turn()
    start = time.perf_counter()
    revoked = kernel.revoke_all_for_agent(
        OPERATOR, agent.id, now=time.time(), trace_id="", cause="holder_exited"
    )
    elapsed = time.perf_counter() - start
    assert len(revoked) == HOLDER_QUOTA, len(revoked)
    return elapsed * 1e3


# -- 5. restart ---------------------------------------------------------------------


def build_restart_state(home: Path, config: Config, live: int) -> None:
    """A state file and trail with ``live`` live capabilities, held by agents
    of ``HOLDER_QUOTA`` each, written by the real path."""
    with real_path(home, config) as subject:
        for n in range(0, live, HOLDER_QUOTA):
            holder = Principal(f"agent-holder-{n // HOLDER_QUOTA:05d}", "bench")
            subject.kernel.register_principal(holder)
            grant_many(subject.kernel, holder, min(HOLDER_QUOTA, live - n), BENCH_REQUEST)
            subject.end_turn()


def restart_in_child(source: Path | None, home: Path, data: Path, path: str) -> dict[str, float]:
    """Copy the state and trail of ``source`` to ``home`` (None: start empty)
    and restart on it in a fresh process."""
    if source is None:
        home.mkdir()
    else:
        shutil.copytree(source, home, ignore=shutil.ignore_patterns("*.sock", "*.lock"))
    argv = [sys.executable, __file__, "--restart-child", str(home), str(data), path]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"restart ({path}) failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def peak_rss() -> int:
    """This process's peak resident memory since its ``exec`` (``VmHWM``;
    ``getrusage``'s ``ru_maxrss`` carries the forking parent's over)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def restart_child(home: Path, data: Path, path: str) -> None:
    """In a fresh process: restart on ``home``, print the figures as JSON."""
    config = bench_config(data)
    start = time.perf_counter()
    if path == "real":
        runtime = Runtime(config, runtime_options(home))
        elapsed = time.perf_counter() - start
        close = runtime.close
    else:  # the kernel alone: load, then revoke the orphans as Runtime does
        kernel = bare_kernel(home / "state.db", config)
        for holder in sorted(kernel.holders()):
            kernel.revoke_all_for_agent(
                OPERATOR, holder, now=time.time(), trace_id="restart", cause="holder_gone"
            )
        elapsed = time.perf_counter() - start
        close = kernel.store.close
    after = psutil.Process().memory_info().rss
    peak = peak_rss()
    close()
    print(json.dumps({"seconds": elapsed, "after": after, "peak": peak}))


# -- 6. audit verify ------------------------------------------------------------------


def build_trail(home: Path, config: Config, records: int) -> Path:
    """A trail of about ``records`` records, written by the real path."""
    with real_path(home, config) as subject:
        assert subject.runtime is not None
        audit = subject.runtime.audit
        ids = grant_many(subject.kernel, ME, 1000, BENCH_REQUEST)
        audit.flush()
        validate = subject.kernel.validate
        now = time.time()
        for n in range(max(0, records - audit.head.seq)):
            validate(ME, ids[n % len(ids)], BENCH_USE, now=now, trace_id="")
            if n % TURN_BATCH == TURN_BATCH - 1:
                subject.end_turn()
    return audit.path


def verify_rate(trail: Path, state: Path) -> float:
    """Records per second of ``capsup audit verify --store STATE``: the files
    as the command finds them, the head the store kept."""
    with contextlib.closing(Store(str(state))) as store:
        head = store.get_meta(HEAD_META_KEY)
    expected = parse_head(head) if head else None
    start = time.perf_counter()
    result = verify(trail_files([trail], include_rotated=True), expected)
    elapsed = time.perf_counter() - start
    if not result.ok:
        raise SystemExit(f"the benchmark's trail does not verify: {result.message}")
    return result.records / elapsed


def parse_rate(trail: Path) -> float:
    """The yardstick: reading every line of the trail and ``json.loads`` alone."""
    loads = json.loads
    count = 0
    start = time.perf_counter()
    for path in trail_files([trail], include_rotated=True):
        with path.open("rb") as stream:
            for line in stream:
                loads(line)
                count += 1
    return count / (time.perf_counter() - start)


# -- report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """How a figure is shown: scaled by ``scale``, with ``fmt`` and a suffix."""

    fmt: str
    suffix: str
    scale: float = 1.0

    def show(self, value: float) -> str:
        return format(value * self.scale, self.fmt)


SECONDS = Unit(".3f", " s")
MS = Unit(".1f", " ms")
KRATE = Unit(",.1f", "k/s", 1e-3)
MIB = Unit(",.0f", " MiB", 2**-20)
BYTES = Unit(",.0f", " B/cap")


def spread(values: Sequence[float], unit: Unit) -> str:
    """min / median / max."""
    shown = " / ".join(unit.show(v) for v in (min(values), statistics.median(values), max(values)))
    return shown + unit.suffix


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


class Report:
    """Prints the rows, keeps the verdicts for the summary."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[str, str, str]] = []
        self._started = time.monotonic()

    def heading(self, text: str) -> None:
        self._started = time.monotonic()
        print(f"\n{text}")

    def line(self, label: str, values: Sequence[float], unit: Unit, note: str = "") -> None:
        print(f"  {label:<40} {spread(values, unit):>32}{note}")

    def judged(
        self,
        label: str,
        figure: str,
        values: Sequence[float],
        unit: Unit,
        target: str,
        ok: bool,
        note: str = "",
    ) -> None:
        self.line(label, values, unit, f"{note}   target {target}: {verdict(ok)}")
        self.verdicts.append((figure, target, verdict(ok)))

    def took(self) -> None:
        print(f"  (this row took {time.monotonic() - self._started:.0f} s)")

    def summary(self) -> None:
        print("\ntargets (issue 17, the real path, judged on the median unless said):")
        for figure, target, result in self.verdicts:
            print(f"  {figure:<54} {target:<22} {result}")


# -- the rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    opts: argparse.Namespace
    base: Path
    data: Path
    config: Config
    report: Report

    def both(self, tag: str, measure: Callable[[Subject], dict[str, float]]) -> Runs:
        return on_both_paths(self.base, tag, self.config, self.opts.repeat, measure)


def row_tree(bench: Bench) -> None:
    nodes = bench.opts.tree
    bench.report.heading(f"1. revoke a {nodes:,}-node delegation tree (the revoke call alone)")
    runs = bench.both("tree", lambda s: {s.path: revoke_tree_seconds(s, nodes)})
    bench.report.line("kernel alone", runs["kernel"], SECONDS)
    bench.report.judged(
        "real path (trail, metrics, state file)",
        f"revoke a {nodes:,}-node tree",
        runs["real"],
        SECONDS,
        f"< {TARGET_TREE_S} s",
        statistics.median(runs["real"]) < TARGET_TREE_S,
    )


def row_grants(bench: Bench) -> None:
    duration = bench.opts.duration
    bench.report.heading(f"2. durable grants ({duration:g} s windows)")

    def measure(subject: Subject) -> dict[str, float]:
        figures = {subject.path: grant_rate(subject, duration)}
        if subject.runtime is not None:
            for agents in (1, 4):
                work = subject.home / f"wire-{agents}"
                figures[f"wire{agents}"] = wire_grant_rate(subject.runtime, work, agents, duration)
        return figures

    runs = bench.both("grants", measure)
    bench.report.line("kernel alone", runs["kernel"], KRATE)
    bench.report.line("real path, in process", runs["real"], KRATE)
    bench.report.line("real path, wire, 1 agent", runs["wire1"], KRATE)
    bench.report.judged(
        "real path, wire, 4 agents",
        "durable grants over the wire, 4 agents",
        runs["wire4"],
        KRATE,
        f">= {TARGET_WIRE_GRANTS:,.0f}/s",
        statistics.median(runs["wire4"]) >= TARGET_WIRE_GRANTS,
    )


def row_validate(bench: Bench) -> None:
    duration = bench.opts.duration
    bench.report.heading(
        f"3. in-process validate ({duration:g} s windows, a loop turn every {TURN_BATCH})"
    )
    target = bench.data / "data.txt"
    file_use = Use("read", str(target))
    file_request = CapabilityRequest(bench.data.as_uri(), ["read"])

    def measure(subject: Subject) -> dict[str, float]:
        ids = grant_many(subject.kernel, ME, 1000, BENCH_REQUEST)
        files = grant_many(subject.kernel, ME, 1000, file_request)
        return {
            subject.path: validate_rate(subject, ids, BENCH_USE, duration),
            f"{subject.path}-file": validate_rate(subject, files, file_use, duration),
        }

    runs = bench.both("validate", measure)
    bench.report.line("kernel checks, kernel alone", runs["kernel"], KRATE)
    bench.report.judged(
        "kernel checks, real path",
        "validate, kernel checks + audit + metrics",
        runs["real"],
        KRATE,
        f">= {TARGET_VALIDATE:,.0f}/s",
        statistics.median(runs["real"]) >= TARGET_VALIDATE,
    )
    bench.report.line("file:// validator, kernel alone", runs["kernel-file"], KRATE)
    bench.report.judged(
        "file:// validator, real path",
        "validate through file://, audit + metrics",
        runs["real-file"],
        KRATE,
        f">= {TARGET_VALIDATE_FILE:,.0f}/s",
        statistics.median(runs["real-file"]) >= TARGET_VALIDATE_FILE,
    )


def row_kills(bench: Bench) -> None:
    kills = bench.opts.kills
    bench.report.heading(
        f"4. an agent holding {HOLDER_QUOTA:,} capabilities is killed: until all are revoked"
        f" ({kills} kills, state file)"
    )
    runs = on_both_paths(bench.base, "kill", bench.config, kills, lambda s: {s.path: kill_ms(s)})

    def p50_p99(values: Sequence[float]) -> str:
        return f"   p50 {percentile(values, 50):.1f} ms  p99 {percentile(values, 99):.1f} ms"

    bench.report.line("kernel alone", runs["kernel"], MS, p50_p99(runs["kernel"]))
    bench.report.judged(
        "real path (trail, metrics, state file)",
        f"killed agent's {HOLDER_QUOTA:,} revoked (p99 of {kills})",
        runs["real"],
        MS,
        f"p99 < {TARGET_KILL_P99_MS:g} ms",
        percentile(runs["real"], 99) < TARGET_KILL_P99_MS,
        p50_p99(runs["real"]),
    )


def row_restart(bench: Bench) -> None:
    live = bench.opts.restart
    share = TARGET_RESTART_S * live / TARGET_CAPS
    bench.report.heading(
        f"5. restart on a state file with {live:,} live capabilities (the targets are for"
        f" {TARGET_CAPS:,}; the figures for {live:,}, judged against the time target's"
        f" linear share, {share:.2f} s)"
    )
    source = bench.base / "restart-source"
    build_restart_state(source, bench.config, live)
    gc.collect()
    # Each restart next to one on an empty state file: the difference is
    # what the capabilities cost, without the fixed costs of a runtime.
    runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = defaultdict(list)
    for run in range(bench.opts.repeat):
        for path in ("kernel", "real"):
            home = bench.base / f"restart-{run}-{path}"
            empty = restart_in_child(None, home.with_name(home.name + "-empty"), bench.data, path)
            runs[path].append((empty, restart_in_child(source, home, bench.data, path)))
    report = bench.report
    for path, label in (("kernel", "kernel alone"), ("real", "real path")):
        seconds = [full["seconds"] for _, full in runs[path]]
        after = [full["after"] for _, full in runs[path]]
        per_cap = [(full["after"] - empty["after"]) / live for empty, full in runs[path]]
        at_target = [
            empty["after"] + (full["after"] - empty["after"]) / live * TARGET_CAPS
            for empty, full in runs[path]
        ]
        peak = [full["peak"] for _, full in runs[path]]
        if path == "kernel":
            report.line(f"{label}: until ready", seconds, SECONDS)
            report.line(f"{label}: resident memory after", after, MIB)
            report.line(f"{label}: added per capability", per_cap, BYTES)
            report.line(f"{label}: peak resident memory", peak, MIB)
            continue
        report.judged(
            f"{label}: until ready",
            f"restart with {live:,} live (share of < 5 s at 1M)",
            seconds,
            SECONDS,
            f"< {share:.2f} s",
            statistics.median(seconds) < share,
        )
        report.line(f"{label}: resident memory after", after, MIB)
        report.judged(
            f"{label}: added per capability",
            f"memory per capability after restart, {live:,}",
            per_cap,
            BYTES,
            f"<= {TARGET_BYTES_PER_CAP:.0f} B/cap",
            statistics.median(per_cap) <= TARGET_BYTES_PER_CAP,
        )
        report.judged(
            f"{label}: extrapolated to {TARGET_CAPS:,}",
            f"memory after restart, extrapolated to {TARGET_CAPS:,}",
            at_target,
            MIB,
            "< 1,024 MiB",
            statistics.median(at_target) < TARGET_RSS_BYTES,
        )
        report.line(f"{label}: peak resident memory", peak, MIB)


def row_verify(bench: Bench) -> None:
    records = bench.opts.verify
    bench.report.heading(f"6. capsup audit verify of a {records:,}-record trail (no key)")
    home = bench.base / "verify"
    trail = build_trail(home, bench.config, records)
    gc.collect()
    runs: Runs = defaultdict(list)
    for _ in range(bench.opts.repeat):
        runs["parse"].append(parse_rate(trail))
        runs["verify"].append(verify_rate(trail, home / "state.db"))
    bench.report.line("read + json.loads alone (yardstick)", runs["parse"], KRATE)
    bench.report.judged(
        "audit verify",
        f"audit verify, {records:,} records",
        runs["verify"],
        KRATE,
        f">= {TARGET_VERIFY / 1e3:,.0f}k records/s",
        statistics.median(runs["verify"]) >= TARGET_VERIFY,
    )


ROWS = (row_tree, row_grants, row_validate, row_kills, row_restart, row_verify)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, help="runs per row (default 3, 2 with --quick)")
    parser.add_argument("--duration", type=float, help="seconds per rate window (default 1.5)")
    parser.add_argument("--tree", type=int, help="nodes of the revoked tree (default 100,000)")
    parser.add_argument("--kills", type=int, help="agents killed (default 20)")
    parser.add_argument(
        "--restart", type=int, help="live capabilities at restart (default 100,000)"
    )
    parser.add_argument(
        "--verify", type=int, help="records of the verified trail (default 200,000)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller defaults: a smoke run")
    parser.add_argument("--restart-child", nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.restart_child:
        home, data, path = opts.restart_child
        restart_child(Path(home), Path(data), path)
        return 0
    defaults = {"repeat": 3, "duration": 1.5, "tree": 100_000, "kills": 20}
    defaults |= {"restart": 100_000, "verify": 200_000}
    if opts.quick:
        defaults = {"repeat": 2, "duration": 0.3, "tree": 10_000, "kills": 5}
        defaults |= {"restart": 10_000, "verify": 20_000}
    for name, value in defaults.items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)

    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"before: {load()}")
    print(
        f"each row: {opts.repeat} runs (min / median / max) of the kernel alone (state file, no"
        " sink) and the real path (Runtime: trail + metrics + state file, confine off)"
    )
    started = time.monotonic()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="capsup-real-") as tmp:
        base = Path(tmp)
        data = base / "data"
        data.mkdir()
        (data / "data.txt").write_text("hello\n")
        bench = Bench(opts, base, data, bench_config(data), report)
        for row in ROWS:
            row(bench)
            report.took()
    report.summary()
    print("  (the protocol's target, validate >= 0.6x the bare echo: benchmarks/protocol.py)")
    print(f"\nafter: {load()}; total time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
