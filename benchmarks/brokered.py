"""Brokered HTTP and SQL benchmark: prints its figures; docs/performance.md records them.

    .venv/bin/python benchmarks/brokered.py [--duration 2] [--slow-duration 4] [--repeat 3]

Measures, in one run, on whatever machine runs it, with a real supervisor
(:class:`~capsup.supervisor.runtime.Runtime`, audit trail and metrics on, as
shipped) in this process and confined agents it spawned, which measure
their own latencies, per call, through the SDK (:mod:`capsup.agents`):

a. a brokered ``GET`` of a 1 KiB body (``Client.http``) against a local
   HTTP/1.1 server in a process of its own, next to the yardstick: the same
   request sent directly, over a reused connection, by an unconfined
   process (with httpcore, the library the broker uses, and with httpx),
   started under the same scheduling policy as the agents;
b. a brokered one-row ``select`` on SQLite (``Client.query``), next to the
   same statement through ``validate`` alone (the protocol round trip,
   without running it) and run with :mod:`sqlite3` in this process;
c. ``validate`` of one agent while a second agent keeps eight slow HTTP
   calls (the server answers after ``--slow-delay`` seconds) in flight,
   re-issuing each as soon as it is answered, next to the same ``validate``
   with nothing in flight.

The kinds of each part alternate, round after round (``--repeat``), so a
burst of background load hits all of them; each printed figure is the
median of the rounds' figures, with every round's p50 beside it (p99 in
part c). The added cost of brokering is the median of the rounds' paired
differences of p50.
"""

from __future__ import annotations

import argparse
import array
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capsup.supervisor.config import Config, parse_config
from capsup.supervisor.processes import AgentProcess
from capsup.supervisor.runtime import Runtime
from protocol import like_an_agent, load, machine, percentile, runtime_in, verdict

#: Targets from issue 16, on this 2-core machine.
TARGET_ADDED_P50_US = 500.0
TARGET_SELECT_P50_US = 150.0
TARGET_LOADED_P99_MS = 5.0
#: Slow calls the loading agent keeps in flight (the per-agent bound).
SLOW_CALLS = 8
STATEMENT = "SELECT v FROM t WHERE k = ?"
KEY = 42

# The local server: ``python server.py PORT_FILE DELAY`` serves /kib (1024
# bytes), /slow (a few bytes, after DELAY seconds) and /stats (how many
# /slow requests it holds now, the most it ever held, and how many it
# answered, as JSON), over HTTP/1.1 with keep-alive, a thread per connection.
SERVER_CODE = r"""
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, delay = sys.argv[1], float(sys.argv[2])
KIB = b"x" * 1024
lock = threading.Lock()
slow = {"active": 0, "max_active": 0, "answered": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        if self.path == "/kib":
            body = KIB
        elif self.path == "/slow":
            with lock:
                slow["active"] += 1
                slow["max_active"] = max(slow["max_active"], slow["active"])
            time.sleep(delay)
            with lock:
                slow["active"] -= 1
                slow["answered"] += 1
            body = b"slow"
        elif self.path == "/stats":
            with lock:
                body = json.dumps(slow).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


server = Server(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"""

# What every measuring process runs: for each phase KIND.TAG named on its
# command line, wait for the file go-PHASE (which holds the phase's length in
# seconds), call ACTIONS[KIND] for that long, timing each call, and write the
# latencies (ns, int64) to lat-PHASE. Each action is warmed up 200 times first.
PHASES_CODE = r"""
import array, os, sys, time


def run_phases(workdir, phases, actions):
    for action in actions.values():
        for _ in range(200):
            action()
    clock, monotonic = time.perf_counter_ns, time.monotonic
    for phase in phases:
        action = actions[phase.split(".")[0]]
        go = os.path.join(workdir, f"go-{phase}")
        while not os.path.exists(go):
            time.sleep(0.001)
        with open(go) as f:
            seconds = float(f.read())
        lat = array.array("q")
        end = monotonic() + seconds
        while monotonic() < end:
            t0 = clock()
            action()
            lat.append(clock() - t0)
        out = os.path.join(workdir, f"lat-{phase}")
        with open(out + ".tmp", "wb") as f:
            lat.tofile(f)
        os.rename(out + ".tmp", out)
"""

# The confined probe: ``python probe.py WORKDIR SITE DB PHASE...``.
# http: a brokered GET of SITE/kib; query: the brokered select; validate:
# the same select through validate only.
PROBE_CODE = (
    PHASES_CODE
    + r"""
from capsup.agents import connect

workdir, site, db, phases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
client = connect()
web = client.request(site, ["GET"])
data = client.request(db, ["select"])
url = site + "kib"


def http():
    response = client.http(web, "GET", url)
    if response.status != 200 or len(response.body) != 1024:
        sys.exit(f"brokered GET: {response.status}, {len(response.body)} bytes")


def query():
    if client.query(data, STATEMENT, (KEY,)).rows != ((f"v{KEY}",),):
        sys.exit("brokered select: not the row expected")


def validate():
    client.validate(data, "select", db, statement=STATEMENT)


run_phases(workdir, phases, {"http": http, "query": query, "validate": validate})
"""
)

# The yardstick, unconfined: ``python direct.py WORKDIR URL PHASE...``.
# httpcore: a pool of one kept-alive connection, as the broker uses;
# httpx: an httpx.Client, as an agent's own code might.
DIRECT_CODE = (
    PHASES_CODE
    + r"""
import httpcore, httpx

workdir, url, phases = sys.argv[1], sys.argv[2], sys.argv[3:]
pool = httpcore.ConnectionPool(max_connections=1)
client = httpx.Client()


def core():
    response = pool.request("GET", url)
    if response.status != 200 or len(response.content) != 1024:
        sys.exit(f"direct GET: {response.status}, {len(response.content)} bytes")


def x():
    response = client.get(url)
    if response.status_code != 200 or len(response.content) != 1024:
        sys.exit(f"direct GET: {response.status_code}, {len(response.content)} bytes")


run_phases(workdir, phases, {"httpcore": core, "httpx": x})
"""
)

# The confined loader: ``python loader.py WORKDIR SITE N`` keeps N brokered
# GETs of SITE/slow in flight (a thread and a client each, one capability)
# while the file "load" exists, until the file "stop" does; then it writes
# what the calls got to loader.json.
LOADER_CODE = r"""
import collections, json, os, sys, threading, time
from capsup.agents import CapsupError, connect

workdir, site, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cap = connect().request(site, ["GET"]).id
outcomes = collections.Counter()
lock = threading.Lock()


def keep_one():
    client = connect()
    client.http(cap, "GET", site + "kib")  # the connection, before any window
    while not os.path.exists(os.path.join(workdir, "stop")):
        if not os.path.exists(os.path.join(workdir, "load")):
            time.sleep(0.005)
            continue
        try:
            outcome = str(client.http(cap, "GET", site + "slow", timeout=20).status)
        except CapsupError as error:
            outcome = error.code
        with lock:
            outcomes[outcome] += 1


threads = [threading.Thread(target=keep_one) for _ in range(n)]
for thread in threads:
    thread.start()
open(os.path.join(workdir, "loader-ready"), "w").close()
for thread in threads:
    thread.join()
with open(os.path.join(workdir, "loader.json"), "w") as f:
    json.dump(outcomes, f)
"""


@dataclass(frozen=True)
class Figures:
    """One phase's latencies, in microseconds."""

    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, ns: Sequence[float]) -> Figures:
        us = sorted(v / 1e3 for v in ns)
        return cls(len(us), percentile(us, 50), percentile(us, 95), percentile(us, 99))


def median_of(rounds: Sequence[Figures]) -> Figures:
    """Each figure's median over the rounds (``count``: the total)."""
    return Figures(
        sum(f.count for f in rounds),
        statistics.median(f.p50 for f in rounds),
        statistics.median(f.p95 for f in rounds),
        statistics.median(f.p99 for f in rounds),
    )


def row(label: str, rounds: Sequence[Figures], each: str = "p50") -> str:
    """The medians, and each round's ``each`` (p50, p95 or p99)."""
    m = median_of(rounds)
    spread = "/".join(f"{getattr(f, each):.0f}" for f in rounds)
    return (
        f"  {label:<40} p50 {m.p50:>6.0f} us  p95 {m.p95:>6.0f} us  p99 {m.p99:>6.0f} us  "
        f"n={m.count:<7,} [round {each}s {spread}]"
    )


class Bench:
    """The supervisor, the processes that measure, and the loop driven while waiting."""

    def __init__(self, runtime: Runtime, base: Path) -> None:
        self.runtime = runtime
        self.code = base / "code"
        self.work = base / "work"
        self.agents: list[AgentProcess] = []
        self.children: list[subprocess.Popen[bytes]] = []

    def script(self, name: str, code: str) -> Path:
        path = self.code / f"{name}.py"
        path.write_text(f"STATEMENT = {STATEMENT!r}\nKEY = {KEY!r}\n{code}")
        return path

    def start_agent(self, name: str, code: str, *args: str) -> AgentProcess:
        """A confined agent of the supervisor (policy "bench"), as it starts them."""
        argv = [sys.executable, str(self.script(name, code)), str(self.work), *args]
        agent = self.runtime.server.start_agent(argv, name="bench")
        self.agents.append(agent)
        return agent

    def start_child(self, name: str, code: str, *args: str) -> subprocess.Popen[bytes]:
        """An unconfined process, scheduled as the agents are."""
        argv = [sys.executable, str(self.script(name, code)), str(self.work), *args]
        child = subprocess.Popen(like_an_agent(argv))
        self.children.append(child)
        return child

    def stop_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()

    def drive(self, until: Callable[[], bool], timeout: float, what: str) -> None:
        """Serve until ``until()``, asked every 20 ms (so that the loop stays
        bare); fail if a measuring process failed or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        turn = self.runtime.server.turn
        while not until():
            codes = [a.returncode for a in self.agents if not a.running and a.returncode != 0]
            codes += [c.returncode for c in self.children if c.poll() not in (None, 0)]
            if codes:
                raise SystemExit(f"a measuring process failed (exit {codes}) before {what}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            ask = time.monotonic() + 0.02
            while time.monotonic() < ask:
                turn(timeout=0.02)

    def phase(self, name: str, seconds: float) -> Figures:
        """Open phase ``name`` for ``seconds``; serve until its latencies are on file."""
        go = self.work / f"go-{name}"
        tmp = self.work / f"go-{name}.tmp"
        tmp.write_text(repr(seconds))
        tmp.rename(go)
        lat = self.work / f"lat-{name}"
        self.drive(lat.exists, seconds + 60, f"the end of phase {name}")
        values = array.array("q")
        values.frombytes(lat.read_bytes())
        return Figures.of(values)


def local_sqlite(path: Path, seconds: float) -> Figures:
    """The select with :mod:`sqlite3` in this process, per call (nobody else working)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for _ in range(200):
            db.execute(STATEMENT, (KEY,)).fetchall()
        clock = time.perf_counter_ns
        lat = array.array("q")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = clock()
            rows = db.execute(STATEMENT, (KEY,)).fetchall()
            lat.append(clock() - t0)
    finally:
        db.close()
    if rows != [(f"v{KEY}",)]:
        raise SystemExit(f"direct select: {rows!r}, not the row expected")
    return Figures.of(lat)


def make_database(path: Path) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        db.executemany("INSERT INTO t VALUES (?, ?)", ((k, f"v{k}") for k in range(1, 1001)))
    db.close()


def start_server(base: Path, delay: float) -> tuple[subprocess.Popen[bytes], str]:
    """The local server, in a process of its own; it and its base URL."""
    code = base / "server.py"
    code.write_text(SERVER_CODE)
    port_file = base / "port"
    server = subprocess.Popen([sys.executable, str(code), str(port_file), str(delay)])
    deadline = time.monotonic() + 10
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the local HTTP server did not start")
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port_file.read_text()}/"


def slow_stats(site: str) -> dict[str, int]:
    """What the server says of its /slow requests (asked from this process)."""
    with urllib.request.urlopen(site + "stats", timeout=5) as response:
        stats: dict[str, int] = json.load(response)
    return stats


def bench_config(site: str, database: Path, work: Path) -> Config:
    return parse_config(
        {
            "agents": {
                "bench": {
                    "allow": [
                        {"resource": site, "operations": ["GET"]},
                        {"resource": "db://main", "operations": ["select"]},
                    ],
                    "sandbox": {"write": [str(work)]},
                }
            },
            "databases": {"main": {"url": f"sqlite://{database}"}},
        },
        source="<brokered benchmark>",
    )


@dataclass(frozen=True)
class SlowLoad:
    #: What the loader's slow calls got: {"200": n, error code: n, ...}.
    outcomes: dict[str, int]
    #: The server's /stats at the end.
    stats: dict[str, int]


def measure(
    bench: Bench, site: str, database: Path, opts: argparse.Namespace
) -> tuple[dict[str, list[Figures]], SlowLoad]:
    """Every phase, kinds interleaved round after round; the figures by kind."""
    rounds = range(opts.repeat)
    ab = ("httpcore", "httpx", "http", "query", "validate")
    probe_phases = [f"{kind}.{r}" for r in rounds for kind in ab[2:]]
    probe_phases += [f"validate.{kind}.{r}" for r in rounds for kind in ("alone", "slow")]
    bench.start_agent("probe", PROBE_CODE, site, "db://main", *probe_phases)
    bench.start_child(
        "direct", DIRECT_CODE, site + "kib", *(f"{k}.{r}" for r in rounds for k in ab[:2])
    )
    got: dict[str, list[Figures]] = {kind: [] for kind in (*ab, "sqlite3", "alone", "slow")}
    work = bench.work
    try:
        for r in rounds:  # a. and b.
            for kind in ab:
                got[kind].append(bench.phase(f"{kind}.{r}", opts.duration))
            got["sqlite3"].append(local_sqlite(database, opts.duration))
            print(".", end="", flush=True)
        loader = bench.start_agent("loader", LOADER_CODE, site, str(SLOW_CALLS))
        bench.drive((work / "loader-ready").exists, 60, "the loader to be ready")
        for r in rounds:  # c.
            got["alone"].append(bench.phase(f"validate.alone.{r}", opts.duration))
            (work / "load").touch()
            bench.drive(
                lambda: slow_stats(site)["active"] == SLOW_CALLS,
                30,
                f"{SLOW_CALLS} slow calls in flight",
            )
            got["slow"].append(bench.phase(f"validate.slow.{r}", opts.slow_duration))
            (work / "load").unlink()
            bench.drive(lambda: slow_stats(site)["active"] == 0, 30, "the slow calls' answers")
            print(".", end="", flush=True)
        (work / "stop").touch()
        bench.drive(lambda: not loader.running, 30, "the loader's end")
        bench.drive(
            lambda: (
                not any(a.running for a in bench.agents)
                and all(c.poll() is not None for c in bench.children)
            ),
            30,
            "the measuring processes' end",
        )
    finally:
        bench.stop_children()
    outcomes: dict[str, int] = json.loads((work / "loader.json").read_text())
    return got, SlowLoad(outcomes, slow_stats(site))


def paired(a: Sequence[Figures], b: Sequence[Figures]) -> tuple[float, str]:
    """The median over the rounds of a's p50 minus b's, and each round's."""
    diffs = [x.p50 - y.p50 for x, y in zip(a, b, strict=True)]
    return statistics.median(diffs), "/".join(f"{d:.0f}" for d in diffs)


def report(
    got: dict[str, list[Figures]], slow: SlowLoad, site: str, records: int, opts: argparse.Namespace
) -> None:
    print(f"\na. GET {site}kib (a 1 KiB body), the server in a process of its own:")
    print(row("direct, httpcore pool (unconfined)", got["httpcore"]))
    print(row("direct, httpx.Client (unconfined)", got["httpx"]))
    print(row("brokered, Client.http (confined agent)", got["http"]))
    added, added_rounds = paired(got["http"], got["httpcore"])
    over_httpx, _ = paired(got["http"], got["httpx"])
    print(
        f"  added by brokering, p50: {added:.0f} us over httpcore [rounds {added_rounds}], "
        f"{over_httpx:.0f} us over httpx"
    )

    print(f"\nb. {STATEMENT} (k = {KEY}) on SQLite, 1,000 rows:")
    print(row("sqlite3 in this process", got["sqlite3"]))
    print(row("validate only (the protocol round trip)", got["validate"]))
    print(row("brokered, Client.query (confined agent)", got["query"]))
    running, running_rounds = paired(got["query"], got["validate"])
    print(f"  query over validate, p50: {running:.0f} us [rounds {running_rounds}]")

    print(
        f"\nc. validate of one agent while another keeps {SLOW_CALLS} brokered GETs in flight "
        f"(answered after {opts.slow_delay:g} s, each re-issued once answered):"
    )
    print(row("alone", got["alone"], "p99"))
    print(row(f"{SLOW_CALLS} slow calls in flight", got["slow"], "p99"))
    outcomes = ", ".join(f"{n} {code}" for code, n in sorted(slow.outcomes.items()))
    print(
        f"  slow calls: {outcomes}; the server answered {slow.stats['answered']} and held at "
        f"most {slow.stats['max_active']} at once"
    )
    print(f"  audit trail: {records:,} records")

    select_p50 = median_of(got["query"]).p50
    loaded_p99_ms = median_of(got["slow"]).p99 / 1e3
    print("\ntargets (issue 16, audit trail and metrics on):")
    print(
        f"  brokered GET of 1 KiB, added p50 < {TARGET_ADDED_P50_US / 1e3:g} ms: "
        f"{added / 1e3:.3f} ms  {verdict(added < TARGET_ADDED_P50_US)}"
    )
    print(
        f"  brokered one-row select, p50 < {TARGET_SELECT_P50_US:g} us: "
        f"{select_p50:.0f} us  {verdict(select_p50 < TARGET_SELECT_P50_US)}"
    )
    print(
        f"  validate p99 with {SLOW_CALLS} slow calls in flight < {TARGET_LOADED_P99_MS:g} ms: "
        f"{loaded_p99_ms:.3f} ms  {verdict(loaded_p99_ms < TARGET_LOADED_P99_MS)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per phase")
    parser.add_argument(
        "--slow-duration", type=float, default=4.0, help="seconds per phase under the slow load"
    )
    parser.add_argument(
        "--slow-delay", type=float, default=2.0, help="seconds the server holds a slow call"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds per kind")
    opts = parser.parse_args()

    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"before: {load()}")
    print(
        f"rounds: {opts.repeat}, {opts.duration:g} s per kind ({opts.slow_duration:g} s under the "
        "slow load), kinds interleaved; each figure is the median of the rounds'"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capsup-brokered-") as tmp:
        base = Path(tmp)
        for folder in ("code", "work"):
            (base / folder).mkdir()
        database = base / "main.db"
        make_database(database)
        server, site = start_server(base, opts.slow_delay)
        try:
            config = bench_config(site, database, base / "work")
            with runtime_in(base / "supervisor", config) as runtime:
                got, slow = measure(Bench(runtime, base), site, database, opts)
                runtime.audit.flush()
                trail = runtime.audit.path
                records = sum(
                    f.read_bytes().count(b"\n") for f in trail.parent.glob(trail.name + "*")
                )
        finally:
            server.kill()
            server.wait()
    print()
    report(got, slow, site, records, opts)
    print(f"\nafter: {load()}; total time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
