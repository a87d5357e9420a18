"""The supervisor's loop stays responsive while brokered calls wait (issue 16).

A real supervisor (a Runtime in this process, trail on) and two confined
agents it spawned: a loader holds eight brokered GETs in flight against a
local server that answers each after two seconds, while a probe measures
its own ``validate`` latency, per call, before, during and after.

A timed test must not flake on a busy machine, so the latency bound is
relative as well as absolute: under the load, p99 stays below
max(5 ms, 3 x the p99 measured with nothing in flight, in the same run,
before and after), and no single validate may wait a sizeable part of a
slow call. What cannot be noise is asserted exactly: the server
held all eight requests at once before it answered any (they run on
workers, not one after another on the loop), all eight came back 200 after
about two seconds (not sixteen), and a ninth from the same agent was
refused ``busy`` at once (the per-agent bound), never reaching the server.
"""

from __future__ import annotations

import array
import json
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from capsup.supervisor.brokers.workers import DEFAULT_PER_AGENT
from capsup.supervisor.config import parse_config
from capsup.supervisor.processes import AgentProcess
from capsup.supervisor.runtime import Runtime, RuntimeOptions

pytestmark = pytest.mark.slow

#: How long the server holds a /slow request.
SLOW_SECONDS = 2.0
#: Slow calls the loader holds: the per-agent bound, all of it.
IN_FLIGHT = DEFAULT_PER_AGENT
#: The issue's bound on validate's p99 under the load, and the factor of the
#: unloaded p99 allowed when the machine is too busy for it.
P99_BOUND = 0.005
P99_FACTOR = 3.0
#: How long each unloaded window lasts.
ALONE_SECONDS = 1.0

# The probe: validates a GET under its capability in a loop, for each window
# from go-WINDOW until stop-WINDOW exists, and writes the latencies (ns,
# int64) to lat-WINDOW.
PROBE = """
import array, os, sys, time
from capsup.agents import connect

workdir, site = sys.argv[1], sys.argv[2]
client = connect()
cap = client.request(site, ["GET"])
url = site + "fast"
for _ in range(200):
    client.validate(cap, "GET", url)
open(os.path.join(workdir, "ready-probe"), "w").close()
clock = time.perf_counter_ns
for window in ("before", "loaded", "after"):
    while not os.path.exists(os.path.join(workdir, f"go-{window}")):
        time.sleep(0.001)
    stop = os.path.join(workdir, f"stop-{window}")
    lat = array.array("q")
    while not os.path.exists(stop):
        t0 = clock()
        client.validate(cap, "GET", url)
        lat.append(clock() - t0)
    with open(os.path.join(workdir, f"lat-{window}.tmp"), "wb") as f:
        lat.tofile(f)
    os.rename(os.path.join(workdir, f"lat-{window}.tmp"), os.path.join(workdir, f"lat-{window}"))
"""

# The loader: at go-load, one thread and one client per call sends a
# brokered GET of /slow; once the test says the server holds them all
# (held), a ninth call goes from this thread. What each got goes to
# loader.json.
LOADER = """
import json, os, sys, threading, time
from capsup.agents import CapsupError, connect

workdir, site, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cap = connect().request(site, ["GET"]).id
clients = [connect() for _ in range(n + 1)]
for client in clients:  # connections made before the windows
    assert client.http(cap, "GET", site + "fast").status == 200


def wait_for(name):
    while not os.path.exists(os.path.join(workdir, name)):
        time.sleep(0.001)


def call(client):
    started = time.monotonic()
    try:
        return {"status": client.http(cap, "GET", site + "slow", timeout=20).status,
                "seconds": time.monotonic() - started}
    except CapsupError as error:
        return {"error": error.code, "message": error.message,
                "seconds": time.monotonic() - started}


calls = [None] * n


def slow(i):
    calls[i] = call(clients[i])


open(os.path.join(workdir, "ready-loader"), "w").close()
wait_for("go-load")
started = time.monotonic()
threads = [threading.Thread(target=slow, args=(i,)) for i in range(n)]
for thread in threads:
    thread.start()
wait_for("held")
ninth = call(clients[n])
for thread in threads:
    thread.join()
total = time.monotonic() - started
with open(os.path.join(workdir, "loader.json.tmp"), "w") as f:
    json.dump({"calls": calls, "ninth": ninth, "total": total}, f)
os.rename(os.path.join(workdir, "loader.json.tmp"), os.path.join(workdir, "loader.json"))
"""


class _SlowServer(ThreadingHTTPServer):
    """/fast answers at once; /slow after SLOW_SECONDS. Counts the /slow
    requests that arrived, the most held at once, and how many had arrived
    when the first was answered."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.arrived = 0
        self.held = 0
        self.most_held = 0
        self.arrived_by_first_answer: int | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _SlowServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the counts."""

    def do_GET(self) -> None:
        record = self.server
        if self.path == "/slow":
            with record.lock:
                record.arrived += 1
                record.held += 1
                record.most_held = max(record.most_held, record.held)
            time.sleep(SLOW_SECONDS)
            with record.lock:
                record.held -= 1
                if record.arrived_by_first_answer is None:
                    record.arrived_by_first_answer = record.arrived
        elif self.path != "/fast":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def slow_server() -> Iterator[_SlowServer]:
    server = _SlowServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serve(
    runtime: Runtime,
    agents: list[AgentProcess],
    until: Callable[[], bool],
    timeout: float,
    what: str = "the agents",
) -> None:
    """Run the supervisor's loop until ``until()`` (asked every 10 ms, so the
    test's own checks stay off the measured loop), failing if an agent failed."""
    deadline = time.monotonic() + timeout
    while not until():
        failed = [a.returncode for a in agents if not a.running and a.returncode != 0]
        assert not failed, f"an agent failed: exit {failed}"
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        ask = time.monotonic() + 0.01
        while time.monotonic() < ask:
            runtime.server.turn(timeout=0.01)


def window(runtime: Runtime, agents: list[AgentProcess], workdir: Path, name: str) -> None:
    """An unloaded window of the probe, ALONE_SECONDS long."""
    (workdir / f"go-{name}").touch()
    end = time.monotonic() + ALONE_SECONDS
    serve(runtime, agents, lambda: time.monotonic() >= end, ALONE_SECONDS + 5)
    (workdir / f"stop-{name}").touch()


def latencies(workdir: Path, name: str) -> list[float]:
    """A window's validate latencies in seconds, sorted."""
    values = array.array("q")
    values.frombytes((workdir / f"lat-{name}").read_bytes())
    return sorted(v / 1e9 for v in values)


def p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def test_validate_stays_fast_while_eight_slow_calls_wait(
    tmp_path: Path, slow_server: _SlowServer
) -> None:
    site = f"http://127.0.0.1:{slow_server.server_address[1]}/"
    code = tmp_path / "code"
    code.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    for name, body in (("probe", PROBE), ("loader", LOADER)):
        (code / f"{name}.py").write_text(textwrap.dedent(body))
    config = parse_config(
        {
            "agents": {
                "agent": {
                    "allow": [{"resource": site, "operations": ["GET"]}],
                    "sandbox": {"write": [str(work)]},
                }
            }
        },
        source="<test>",
    )
    options = RuntimeOptions(
        endpoint=f"ipc://{tmp_path}/capsup.sock", audit_log=str(tmp_path / "audit.jsonl")
    )
    with Runtime(config, options) as runtime:
        start = runtime.server.start_agent
        agents = [
            start([sys.executable, str(code / "probe.py"), str(work), site], name="agent"),
            start(
                [sys.executable, str(code / "loader.py"), str(work), site, str(IN_FLIGHT)],
                name="agent",
            ),
        ]
        ready = [work / "ready-probe", work / "ready-loader"]
        serve(runtime, agents, lambda: all(r.exists() for r in ready), 60)

        window(runtime, agents, work, "before")
        # The loaded window: from before the eight are sent until all are answered.
        (work / "go-loaded").touch()
        (work / "go-load").touch()
        serve(
            runtime,
            agents,
            lambda: slow_server.arrived >= IN_FLIGHT,
            SLOW_SECONDS,
            f"the server to hold {IN_FLIGHT} slow requests at once",
        )
        (work / "held").touch()
        serve(runtime, agents, (work / "loader.json").exists, 3 * SLOW_SECONDS, "the slow answers")
        (work / "stop-loaded").touch()
        window(runtime, agents, work, "after")
        serve(runtime, agents, lambda: not any(a.running for a in agents), 30)

    assert [a.returncode for a in agents] == [0, 0]
    outcome = json.loads((work / "loader.json").read_text())

    # Eight at once, on workers: all held by the server before any answer,
    # all answered 200 after about SLOW_SECONDS, together, not one by one.
    assert slow_server.arrived_by_first_answer == IN_FLIGHT
    assert slow_server.most_held == IN_FLIGHT
    assert [c.get("status") for c in outcome["calls"]] == [200] * IN_FLIGHT, outcome
    assert all(c["seconds"] >= SLOW_SECONDS * 0.9 for c in outcome["calls"]), outcome
    assert outcome["total"] < 2 * SLOW_SECONDS, outcome

    # The ninth: refused busy at once by the per-agent bound, never sent.
    assert outcome["ninth"]["error"] == "busy", outcome["ninth"]
    assert outcome["ninth"]["seconds"] < SLOW_SECONDS / 2, outcome["ninth"]
    assert slow_server.arrived == IN_FLIGHT

    # validate meanwhile: p99 within the bound, or within a factor
    # of the same run's unloaded p99 when the machine itself is slow.
    alone = sorted(latencies(work, "before") + latencies(work, "after"))
    loaded = latencies(work, "loaded")
    assert len(loaded) >= 200, f"only {len(loaded)} validations in the loaded window"
    # Not one waited on a slow call (what serving them on the loop would do).
    assert loaded[-1] < SLOW_SECONDS / 4, f"a validate took {loaded[-1]:.3f} s"
    bound = max(P99_BOUND, P99_FACTOR * p99(alone))
    assert p99(loaded) < bound, (
        f"validate p99 {p99(loaded) * 1e3:.2f} ms with {IN_FLIGHT} slow calls in flight, "
        f"over {bound * 1e3:.2f} ms (unloaded p99 {p99(alone) * 1e3:.2f} ms, "
        f"{len(loaded)} and {len(alone)} calls)"
    )
