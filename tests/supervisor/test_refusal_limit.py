"""The refusal budget in front of the audit trail (supervisor/refusal_limit.py).

First the limiter on its own, with a clock the test moves; then a real
supervisor (a Runtime in this process) flooded by a stranger process with
100,000 garbage messages, and an agent that sends garbage until it exits:
the trail stays small, every refusal is either on file or counted in a
``refusals_suppressed`` record, and the metrics count every one.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capsup.agents.errors import AuditUnavailable
from capsup.supervisor.config import ConfigError, parse_config
from capsup.supervisor.events import Event, EventType, ViolationKind
from capsup.supervisor.refusal_limit import ALL_PEERS, ALL_PEERS_FACTOR, RefusalLimiter
from capsup.supervisor.runtime import Runtime
from in_process import read_trail, run_agent, start_runtime

# -- the limiter on its own ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Trail:
    """A sink that keeps what it is given, and fails while ``broken``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.broken = False

    def __call__(self, event: Event) -> None:
        if self.broken:
            raise AuditUnavailable("the disk is full")
        self.events.append(event)

    def of(self, kind: EventType) -> list[Event]:
        return [e for e in self.events if e.event == kind]


def stranger(pid: int | None, t: float = 1.0) -> Event:
    return Event(
        EventType.SECURITY_VIOLATION,
        t,
        "trace",
        pid=pid,
        decision="deny",
        reason="unauthenticated",
        detail={"kind": ViolationKind.UNAUTHENTICATED.value, "message": "not an agent"},
    )


def agent_refusal(agent: str, event: EventType = EventType.CAPABILITY_DENIED) -> Event:
    if event == EventType.CAPABILITY_DENIED:
        return Event(event, 1.0, "t", agent, 42, reason="unknown_agent", detail={"message": "m"})
    return Event(
        event, 1.0, "t", agent, 42, reason="bad_request", detail={"kind": "malformed_input"}
    )


Limited = tuple[RefusalLimiter, Trail, Trail, Clock]


@pytest.fixture
def limited() -> Limited:
    trail, metrics, clock = Trail(), Trail(), Clock()
    limiter = RefusalLimiter(
        trail, metrics, trace_ids=lambda: "summary", rate=10, burst=5, clock=clock
    )
    return limiter, trail, metrics, clock


def test_a_burst_is_written_the_rest_counted_and_summarised_when_the_bucket_refills(
    limited: Limited,
) -> None:
    limiter, trail, metrics, clock = limited
    for i in range(50):
        limiter(stranger(4242, t=100.0 + i))
    assert len(trail.of(EventType.SECURITY_VIOLATION)) == 5
    assert not trail.of(EventType.REFUSALS_SUPPRESSED)
    assert len(metrics.events) == 45  # the held back reach the metrics only
    assert limiter.held_back == 45
    clock.now += 0.6  # full again (5 tokens at 10 a second), before the interval
    limiter.summarize_due()
    (summary,) = trail.of(EventType.REFUSALS_SUPPRESSED)
    assert summary.pid == 4242 and summary.principal is None
    assert summary.detail == {
        "peer": "pid:4242",
        "count": 45,
        "first": 105.0,
        "last": 149.0,
        "kinds": {"security_violation:unauthenticated": 45},
        "cause": "refilled",
    }
    assert summary.trace_id == "summary"
    assert limiter.held_back == 0


def test_a_sustained_flood_is_summarised_every_interval(limited: Limited) -> None:
    limiter, trail, _, clock = limited
    sent = 0
    for _ in range(30):  # three seconds, 100 a second
        for _ in range(10):
            limiter(stranger(7))
            sent += 1
        clock.now += 0.1
        limiter.summarize_due()
    limiter.close()
    summaries = trail.of(EventType.REFUSALS_SUPPRESSED)
    written = trail.of(EventType.SECURITY_VIOLATION)
    causes = [s.detail["cause"] for s in summaries]
    assert causes.count("interval") >= 2 and set(causes) <= {"interval", "shutdown"}
    assert len(written) + sum(s.detail["count"] for s in summaries) == sent
    assert len(written) <= 5 + 3 * 10 + 1  # the burst and the rate


def test_peers_have_buckets_of_their_own(limited: Limited) -> None:
    limiter, trail, _, _ = limited
    for pid in (1, 2, None):
        for _ in range(8):
            limiter(stranger(pid))
    for _ in range(8):
        limiter(agent_refusal("agent-a-1"))
    written = [e for e in trail.events if e.event != EventType.REFUSALS_SUPPRESSED]
    assert len(written) == 4 * 5
    limiter.close()
    peers = {s.detail["peer"]: s for s in trail.of(EventType.REFUSALS_SUPPRESSED)}
    assert set(peers) == {"pid:1", "pid:2", "unknown", "agent-a-1"}
    assert peers["agent-a-1"].principal == "agent-a-1"
    assert peers["agent-a-1"].detail["kinds"] == {"capability_denied:unknown_agent": 3}


def test_an_agent_exit_writes_its_summary_before_its_end(limited: Limited) -> None:
    limiter, trail, _, _ = limited
    for _ in range(9):
        limiter(agent_refusal("agent-a-1", EventType.SECURITY_VIOLATION))
    limiter(Event(EventType.AGENT_TERMINATED, 2.0, "t", "agent-a-1", 42, detail={"name": "a"}))
    *_, summary, ended = trail.events
    assert summary.event == EventType.REFUSALS_SUPPRESSED
    assert summary.detail["cause"] == "exited" and summary.detail["count"] == 4
    assert summary.detail["kinds"] == {"security_violation:malformed_input": 4}
    assert ended.event == EventType.AGENT_TERMINATED
    assert limiter.held_back == 0


def test_other_records_pass_untouched(limited: Limited) -> None:
    limiter, trail, metrics, _ = limited
    forged = Event(
        EventType.SECURITY_VIOLATION, 1.0, "t", "agent-a-1", 1, detail={"kind": "forged_id"}
    )
    started = Event(EventType.AGENT_STARTED, 1.0, "t", "agent-a-1", 1)
    for _ in range(20):
        limiter(forged)
        limiter(started)
    assert len(trail.events) == 40 and not metrics.events


def test_the_table_is_bounded_and_an_evicted_peer_is_summarised_first() -> None:
    trail, clock = Trail(), Clock()
    limiter = RefusalLimiter(
        trail, Trail(), trace_ids=lambda: "s", rate=1, burst=1, max_peers=3, clock=clock
    )
    for pid in (1, 1, 1, 2, 3, 4):  # 4 evicts 1, the least recently refused
        limiter(stranger(pid))
    (summary,) = trail.of(EventType.REFUSALS_SUPPRESSED)
    assert summary.detail["peer"] == "pid:1" and summary.detail["cause"] == "evicted"
    assert summary.detail["count"] == 2


def test_many_peers_together_spend_a_shared_bucket(limited: Limited) -> None:
    """A stranger forking a new process per message is one new peer each
    time: the shared bucket still bounds the records."""
    limiter, trail, _, clock = limited
    shared = 5 * ALL_PEERS_FACTOR
    for pid in range(1, 1001):
        limiter(stranger(pid))
    assert len(trail.of(EventType.SECURITY_VIOLATION)) == shared
    clock.now += 1.0
    limiter.summarize_due()
    (summary,) = trail.of(EventType.REFUSALS_SUPPRESSED)
    assert summary.detail["peer"] == ALL_PEERS and summary.pid is None
    assert summary.detail["count"] == 1000 - shared


def test_a_summary_that_cannot_be_written_is_kept_and_written_later(limited: Limited) -> None:
    limiter, trail, _, clock = limited
    for _ in range(8):
        limiter(stranger(9))
    trail.broken = True
    clock.now += 2
    with pytest.raises(AuditUnavailable):
        limiter.summarize_due()
    with pytest.raises(AuditUnavailable):  # and the refusal that finds it due fails closed
        limiter(stranger(9))
    trail.broken = False
    clock.now += 1
    limiter.summarize_due()
    (summary,) = trail.of(EventType.REFUSALS_SUPPRESSED)
    assert summary.detail["count"] == 3


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"refusal_records_per_second": 0}, "positive number"),
        ({"refusal_records_per_second": "fast"}, "positive number"),
        ({"refusal_records_burst": 1.5}, "positive number"),
        ({"refusal_records_burst": True}, "positive number"),
        ({"refusal_records_burst": -1}, "positive number"),
    ],
)
def test_the_settings_are_checked(settings: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config({"supervisor": settings})


def test_the_settings_are_read() -> None:
    settings = parse_config(
        {"supervisor": {"refusal_records_per_second": 2.5, "refusal_records_burst": 7}}
    ).settings
    assert (settings.refusal_records_per_second, settings.refusal_records_burst) == (2.5, 7)
    assert parse_config({}).settings.refusal_records_burst == 100


# -- a real supervisor ------------------------------------------------------------

FLOOD = 100_000

# Sends as fast as it can, then stays connected until told to go (stdin
# closed): a ROUTER drops what it has not read from a peer that hangs up.
STRANGER = """
import os, sys, zmq
endpoint, count = sys.argv[1], int(sys.argv[2])
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.setsockopt(zmq.SNDHWM, 0)
sock.connect(endpoint)
garbage = [os.urandom(24), b"\\x81\\xa2id\\x01", b"\\xc1" * 100, b"{not msgpack}"]
for i in range(count):
    sock.send(garbage[i % len(garbage)])
sys.stdin.read()
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    with start_runtime(tmp_path, confine="off") as rt:
        yield rt


def counted(runtime: Runtime, kind: str) -> float:
    match = re.search(
        rf'^capsup_security_violations_total{{kind="{kind}"}} (\S+)$',
        runtime.metrics.render().decode(),
        re.M,
    )
    return float(match.group(1)) if match else 0.0


def test_a_stranger_flooding_garbage_grows_the_trail_little_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    runtime = start_runtime(tmp_path, confine="off")
    trail = tmp_path / "audit.jsonl"
    runtime.audit.flush()
    size_before = trail.stat().st_size
    script = tmp_path / "stranger.py"
    script.write_text(STRANGER)
    flood = subprocess.Popen(
        [sys.executable, str(script), runtime.server.endpoint, str(FLOOD)], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while counted(runtime, "unauthenticated") < FLOOD and time.monotonic() < deadline:
            for _ in range(50):
                runtime.server.turn(timeout=0.01)
        assert counted(runtime, "unauthenticated") == FLOOD  # the metrics count every one
        flood.communicate(timeout=30)
        assert flood.returncode == 0
    finally:
        flood.kill()
        flood.wait()
        runtime.close()  # writes the summary still open
    growth = trail.stat().st_size - size_before
    assert growth < 2 << 20, f"{growth} bytes of trail for {FLOOD} refusals"
    trail_records = read_trail(tmp_path)
    written = [r for r in trail_records if r["event"] == "security_violation"]
    summaries = [r for r in trail_records if r["event"] == "refusals_suppressed"]
    assert summaries
    assert {r["pid"] for r in written} == {flood.pid}
    assert {r["detail"]["peer"] for r in summaries} == {f"pid:{flood.pid}"}
    assert len(written) + sum(r["detail"]["count"] for r in summaries) == FLOOD
    assert all(
        r["detail"]["kinds"] == {"security_violation:unauthenticated": r["detail"]["count"]}
        for r in summaries
    )


AGENT = """
import zmq, os
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.connect(os.environ["CAPSUP_ENDPOINT"])
for i in range(300):
    sock.send(b"\\x93garbage")
    sock.recv()  # each is answered, bad_request
"""


def test_an_agent_sending_garbage_is_summarised_under_its_id_when_it_exits(
    tmp_path: Path, runtime: Runtime
) -> None:
    agent = run_agent(runtime, tmp_path, AGENT, name="noisy")
    trail = read_trail(tmp_path)
    written = [r for r in trail if r["event"] == "security_violation"]
    summaries = [r for r in trail if r["event"] == "refusals_suppressed"]
    assert {r["principal"] for r in written + summaries} == {agent.agent_id}
    assert {r["detail"]["kind"] for r in written} == {"malformed_input"}
    assert len(written) + sum(r["detail"]["count"] for r in summaries) == 300
    assert counted(runtime, "malformed_input") == 300
    assert summaries[-1]["detail"]["cause"] in {"exited", "interval", "refilled"}
    ended = next(i for i, r in enumerate(trail) if r["event"] == "agent_terminated")
    assert all(trail.index(s) < ended for s in summaries)  # on file before its end
