"""Every string in an audit record is at most MAX_TEXT characters.

Records carry what clients chose (resources, ids, operation names, and
messages that quote them). The record builder clips every string, at any
depth, so the trail cannot be grown by sending long values: checked on
events built by hand (the fast encoder and the definition agree, and the
trail verifies), and end to end, with an agent that sends the longest
value the protocol allows in every field of requests that are refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from capsup.supervisor.audit import AuditLog, verify
from capsup.supervisor.audit_record import GENESIS, MAX_TEXT, _body, canonical, seal_line
from capsup.supervisor.config import parse_config
from capsup.supervisor.events import Event, EventType
from hypothesis import given, settings
from hypothesis import strategies as st
from in_process import read_trail, run_agent, start_runtime


def strings(value: Any) -> list[str]:
    """Every string in a parsed record: keys and values, at every depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def reference_line(event: Event, seq: int, prev: str) -> bytes:
    body = canonical(_body(event, seq, prev, {}))
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'


LONG = "é" + "x" * 9000


def test_every_string_of_a_record_is_clipped_at_any_depth() -> None:
    event = Event(
        EventType.CAPABILITY_DENIED,
        1.5,
        LONG,
        LONG,
        7,
        LONG,
        LONG,
        LONG,
        LONG,
        "deny",
        LONG,
        {LONG: LONG, "nested": {LONG: [LONG, b"y" * 9000]}, "message": LONG},
    )
    line, _ = seal_line(event, 1, GENESIS)
    record = json.loads(line)
    assert max(len(s) for s in strings(record)) == MAX_TEXT
    assert record["detail"]["message"] == LONG[: MAX_TEXT - 3] + "..."
    assert len(line) < 12 * MAX_TEXT * 6  # a dozen strings, each escaped at worst


def test_the_hot_path_keeps_its_encoder_for_short_values_and_clips_long_ones() -> None:
    short = Event(
        EventType.CAPABILITY_VALIDATED,
        1718000000.25,
        "t-1",
        "agent-a-1",
        4242,
        "cap_1",
        None,
        "file:///x",
        "read",
        "allow",
        None,
        {"holder": "agent-a-1", "target": "file:///x/y"},
    )
    for event in (short, short._replace(detail={"holder": "a", "target": "file:///" + LONG})):
        line, _ = seal_line(event, 3, GENESIS)
        assert line == reference_line(event, 3, GENESIS)
        assert max(len(s) for s in strings(json.loads(line))) <= MAX_TEXT


texts = st.text(st.characters(), min_size=0, max_size=1200)


@settings(max_examples=200, deadline=None)
@given(
    principal=texts,
    resource=texts,
    detail=st.dictionaries(texts, st.one_of(texts, st.integers(), st.none()), max_size=3),
)
def test_fast_and_reference_encoders_agree_on_long_text(
    principal: str, resource: str, detail: dict[str, Any]
) -> None:
    event = Event(
        EventType.CAPABILITY_VALIDATED,
        2.5,
        "t",
        principal,
        1,
        "c",
        resource=resource,
        detail=detail,
    )
    line, _ = seal_line(event, 1, GENESIS)
    assert line == reference_line(event, 1, GENESIS)
    assert all(len(s) <= MAX_TEXT for s in strings(json.loads(line)))


def test_a_trail_of_clipped_records_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for i in range(3):
            log(Event(EventType.CAPABILITY_DENIED, 1.0, f"t{i}", LONG, detail={"message": LONG}))
            log(Event(EventType.CAPABILITY_VALIDATED, 1.0, f"v{i}", resource=LONG))
    assert verify([path]).ok


# -- end to end: a real supervisor, a real agent ---------------------------------

ROOT = "/tmp/capsup-clipping-test"

#: The agent sends raw requests, so that every field can carry the longest
#: value the protocol takes (an SDK might refuse some before sending).
AGENT = f"""
import os, msgpack, zmq
ROOT = {ROOT!r}
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.connect(os.environ["CAPSUP_ENDPOINT"])
ID, OP, TRACE = "i" * 128, "o" * 64, "t" * 128
PATH = "file://" + ROOT + "/" + "d/" * 2030  # 4096 characters
FAR = "file:///" + "e/" * 2040
def call(op, args):
    sock.send(msgpack.packb({{"id": ID, "op": op, "args": args, "trace_id": TRACE}}))
    return msgpack.unpackb(sock.recv())
def refused(op, args):
    reply = call(op, args)
    assert not reply["ok"], (op, reply)
granted = call("request", {{"resource": "file://" + ROOT, "operations": ["read"]}})
assert granted["ok"], granted
cap = granted["result"]["id"]
refused("validate", {{"capability": cap, "operation": "read", "resource": FAR}})
refused("validate", {{"capability": cap, "operation": OP, "resource": PATH}})
refused("validate", {{"capability": "c" * 128, "operation": OP, "resource": PATH,
                     "statement": "s" * 100000}})
refused("request", {{"resource": PATH, "operations": [OP] * 64, "ttl": 5,
                    "metadata": {{"m" * 1000: "v" * 3000}}, "constraints": {{"k" * 4000: 1}}}})
refused("request", {{"resource": FAR, "operations": ["r" + str(i) + OP[:60] for i in range(64)]}})
refused("request_plan", {{"requests": [{{"resource": PATH, "operations": [OP]}}] * 2}})
refused("delegate", {{"capability": cap, "to": "a" * 128, "resource": PATH, "operations": [OP]}})
refused("delegate", {{"capability": "c" * 128, "to": "a" * 128}})
refused("revoke", {{"capability": "c" * 128}})
refused("revoke_agent", {{"agent": "a" * 128}})
refused("wait", {{"agent": "a" * 128}})
# Started (its exec fails in the child): recorded with its argv.
call("spawn", {{"argv": ["/nonexistent/" + "p" * 100000] + ["x" * 10000] * 40, "name": "n" * 128}})
refused("read", {{"capability": cap, "resource": PATH}})  # allowed, then no such file
for op in ("read", "stat", "listdir", "delete"):
    refused(op, {{"capability": cap, "resource": FAR}})
    refused(op, {{"capability": "c" * 128, "resource": PATH}})
refused("write", {{"capability": cap, "resource": PATH, "data": b"x"}})
refused("whoami", {{"u" * 100000: 1}})
refused("z" * 100000, {{}})
sock.send(msgpack.packb({{"id": ID, "op": "whoami", "trace_id": "bad " * 1000}}))
assert not msgpack.unpackb(sock.recv())["ok"]
"""


def test_long_values_in_every_field_of_refused_requests_are_clipped_on_file(
    tmp_path: Path,
) -> None:
    Path(ROOT).mkdir(exist_ok=True)
    config = parse_config(
        {
            "agents": {
                "clipper": {"allow": [{"resource": f"file://{ROOT}", "operations": ["read"]}]}
            }
        },
        source="<test>",
    )
    with start_runtime(tmp_path, config, confine="off") as runtime:
        run_agent(runtime, tmp_path, AGENT, name="clipper")
    records = read_trail(tmp_path)
    events = {r["event"] for r in records}
    assert {"capability_denied", "capability_validation_failed", "security_violation"} <= events
    assert {"constraint_violation", "file_operation"} & events
    longest = max((s for r in records for s in strings(r)), key=len)
    assert len(longest) == MAX_TEXT and longest.endswith("...")  # something was clipped
    for record in records:
        too_long = [s[:40] for s in strings(record) if len(s) > MAX_TEXT]
        assert not too_long, (record["event"], too_long)
    # The largest: agent_started, whose argv the server keeps to 32 entries of 256.
    trail = (tmp_path / "audit.jsonl").read_bytes()
    assert max(len(line) for line in trail.splitlines()) < 10 * 1024
