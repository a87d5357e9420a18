"""The request decoder's limits: what a hostile message can make the loop build.

Decoding costs per value, not per byte, so the limits are on values: the
entries of one array or map (refused at its header) and the values of a
whole request (counted from the headers, before anything is built). Replies
come from the trusted supervisor and keep wider limits.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from capsup.agents.errors import BadRequest
from capsup.agents.protocol import (
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_IO_BYTES,
    MAX_SPAWN_ARGV,
    MAX_VALUES,
    REPLY_LIMITS,
    REQUEST_LIMITS,
    _value_end,
    best_effort_ids,
    decode,
    encode,
    ok_reply,
    parse_reply,
    parse_request,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from in_process import read_trail, run_agent, start_runtime


def pack(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def request(args: Any) -> bytes:
    return pack({"id": 1, "op": "whoami", "args": args})


def deep_stuffing(levels: int, width: int) -> bytes:
    """Arrays nested ``levels`` deep, each holding ``width - 1`` nils before
    the next: built level by level before the depth is noticed, unless the
    headers are read first."""
    level = b"\xdc" + width.to_bytes(2, "big") + b"\xc0" * (width - 1)
    return level * levels + b"\xc0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (request({f"k{i}": 0 for i in range(65536)}), "65536 entries, more than 1024"),
        (pack({f"k{i}": 0 for i in range(1100)}), "1100 exceeds max_map_len"),  # short: not walked
        (request({"x": list(range(MAX_ENTRIES + 1))}), f"{MAX_ENTRIES + 1}.*{MAX_ENTRIES}"),
        (request({"x": [[[]] * 1000 for _ in range(1000)]}), f"more than {MAX_VALUES} values"),
        (request({"x": [[{}] * 1000 for _ in range(1000)]}), f"more than {MAX_VALUES} values"),
        (request({"x": [[0] * 1000 for _ in range(1000)]}), f"more than {MAX_VALUES} values"),
        (deep_stuffing(1000, 1000), f"more than {MAX_VALUES} values"),
        (deep_stuffing(2000, 4), "nested deeper"),
    ],
)
def test_hostile_shapes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request(data)


def test_every_value_counts() -> None:
    # The top map, its three keys and values (args among them), args' key
    # and value (the outer array); then each row and its nils.
    fixed = 1 + 6 + 2

    def message(values: int) -> bytes:
        inner = values - fixed
        rows = [[None] * (MAX_ENTRIES - 1)] * (inner // MAX_ENTRIES)
        rows.append([None] * (inner - len(rows) * MAX_ENTRIES - 1))
        return request({"x": rows})

    assert len(message(MAX_VALUES)) > MAX_VALUES  # long enough to be counted
    parse_request(message(MAX_VALUES))
    with pytest.raises(BadRequest, match="values"):
        parse_request(message(MAX_VALUES + 1))


@pytest.mark.parametrize(
    "args",
    [
        {"argv": [f"arg{i}" for i in range(MAX_SPAWN_ARGV)]},
        {"capability": "c", "resource": "file:///x", "data": b"x" * MAX_IO_BYTES},
        {"statement": "s" * 500_000},
        {"x": [[i] * 60 for i in range(64)]},
        {"deep": [[[[[[[[[[[1]]]]]]]]]]], "long": "x" * 100_000},
    ],
)
def test_the_largest_legitimate_shapes_pass(args: dict[str, Any]) -> None:
    assert parse_request(request(args)).args == args


def test_nesting_up_to_the_limit_passes_in_a_long_message() -> None:
    value: Any = None
    for _ in range(MAX_DEPTH - 2):
        value = [value]
    decode(request({"x": value, "pad": "p" * 20_000}))


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.floats(width=32, allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=70_000),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=40), inner),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(value=values, trailing=st.binary(max_size=3))
def test_the_header_walk_ends_where_msgpack_ends(value: Any, trailing: bytes) -> None:
    """The walk reads every format msgpack writes, and lands on the byte
    after the value (it never refuses what the decoder would take)."""
    data = pack(value)
    limits = REQUEST_LIMITS._replace(values=10**9, entries=10**9)
    if depth(value) > MAX_DEPTH:
        with pytest.raises(BadRequest, match="nested deeper"):
            _value_end(data, 0, limits)
        return
    assert _value_end(data + trailing, 0, limits) == len(data)
    with contextlib.suppress(OverflowError):  # a float too large for 32 bits
        float32 = msgpack.packb(value, use_bin_type=True, use_single_float=True)
        assert _value_end(float32, 0, limits) == len(float32)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def test_truncated_and_unknown_bytes_are_left_to_the_decoder() -> None:
    data = pack({"x": [1, 2, 3], "y": "z" * 300})
    assert _value_end(data[:-5], 0, REQUEST_LIMITS) is None
    assert _value_end(b"\x91\xc1", 0, REQUEST_LIMITS) is None
    assert _value_end(b"\xd4\x01\x00", 0, REQUEST_LIMITS) is None  # fixext


def test_replies_keep_wide_limits() -> None:
    """A list of 10,000 capabilities, more than any request may hold."""
    capabilities = [{"id": f"cap_{i}", "operations": ["read"]} for i in range(10_000)]
    reply = parse_reply(ok_reply(1, {"capabilities": capabilities}, "t"))
    assert len(reply.result["capabilities"]) == 10_000
    assert REPLY_LIMITS.values is None
    with pytest.raises(BadRequest):
        decode(encode({"capabilities": capabilities}))


def test_looking_for_a_strangers_ids_builds_nothing_big() -> None:
    huge = [[[]] * 1000 for _ in range(1000)]
    assert best_effort_ids(pack({"id": huge, "trace_id": "t"})) == (None, None)
    assert best_effort_ids(pack({"pad": huge, "id": 3})) == (None, None)
    assert best_effort_ids(pack({"pad": [[0] * 10] * 10, "id": 3})) == (3, None)
    assert best_effort_ids(pack({"pad": b"x" * (2 << 20), "id": 3, "trace_id": "t"})) == (3, "t")


AGENT = """
import os, msgpack, zmq
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.connect(os.environ["CAPSUP_ENDPOINT"])
for args in ({f"k{i}": 0 for i in range(65536)}, {"x": [[[]] * 1000 for _ in range(1000)]}):
    sock.send(msgpack.packb({"id": 7, "op": "whoami", "args": args}))
    reply = msgpack.unpackb(sock.recv())
    assert reply["id"] == 7 and reply["error"]["code"] == "bad_request", reply
"""


def test_an_agent_sending_them_gets_bad_request_and_a_record(tmp_path: Path) -> None:
    with start_runtime(tmp_path, confine="off") as runtime:
        agent = run_agent(runtime, tmp_path, AGENT, name="hostile")
    refused = [r for r in read_trail(tmp_path) if r["event"] == "security_violation"]
    assert [r["detail"]["kind"] for r in refused] == ["malformed_input"] * 2
    assert "65536 entries" in refused[0]["detail"]["message"]
    assert f"{MAX_VALUES} values" in refused[1]["detail"]["message"]
    assert {r["principal"] for r in refused} == {agent.agent_id}
