"""The wire protocol's codec and the SDK client, without the supervisor.

The client tests run it against a tiny ZeroMQ ROUTER in a thread that
answers with canned replies: enough to prove framing, id correlation,
timeouts and error mapping, and nothing of the kernel's decisions.
"""

from __future__ import annotations

import datetime
import itertools
import pickle
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgpack
import pytest
import zmq
from capsup.agents import (
    AccessDenied,
    Capability,
    Client,
    ConnectionClosed,
    ConstraintViolation,
    CurveKeys,
    Identity,
    InternalError,
    NotHolder,
    SpawnedAgent,
    SupervisorGone,
    Unauthenticated,
    WaitTimeout,
    connect,
)
from capsup.agents import errors as errors_module
from capsup.agents.errors import (
    BadRequest,
    CapsupError,
    MessageTooLarge,
    UnknownOperation,
    error_class_for_code,
)
from capsup.agents.protocol import (
    MAX_CONSTRAINTS_BYTES,
    MAX_DEPTH,
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    MAX_OPERATION_LENGTH,
    MAX_PLAN_REQUESTS,
    MAX_RESOURCE_LENGTH,
    DelegateArgs,
    ListArgs,
    Op,
    Packed,
    Request,
    RequestArgs,
    RequestPlanArgs,
    RevokeAgentArgs,
    RevokeArgs,
    SpawnArgs,
    SpawnGrant,
    ValidateArgs,
    WaitArgs,
    WhoamiArgs,
    best_effort_ids,
    decode,
    encode,
    error_reply,
    ok_reply,
    parse_args,
    parse_delegate_args,
    parse_http_args,
    parse_list_args,
    parse_query_args,
    parse_reply,
    parse_request,
    parse_request_args,
    parse_request_plan_args,
    parse_revoke_agent_args,
    parse_revoke_args,
    parse_spawn_args,
    parse_validate_args,
    parse_wait_args,
    parse_whoami_args,
    request_payload,
    routing_envelope,
)
from hypothesis import given
from hypothesis import strategies as st

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

CAP_WIRE: dict[str, Any] = {
    "id": "cap_abc",
    "resource": "file:///data",
    "operations": ["read"],
    "constraints": {},
    "holder": "agent-1",
    "granted_at": 1700000000.0,
    "expires_at": 1700003600.0,
    "parent_id": None,
    "delegation_depth": 2,
    "metadata": {},
}


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


# -- encode / decode --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -1,
        2**64 - 1,
        -(2**63),
        1.5,
        "",
        "héllo",
        b"\x00\xff",
        [],
        {},
        {"a": [1, {"b": b"x", "c": None}], "d": 0.25},
    ],
)
def test_round_trip(value: Any) -> None:
    assert decode(encode(value)) == value


def test_str_and_bin_stay_distinct() -> None:
    assert decode(encode({"s": "x", "b": b"x"})) == {"s": "x", "b": b"x"}
    assert type(decode(encode(b"x"))) is bytes


def test_tuples_encode_as_arrays() -> None:
    assert decode(encode((1, 2))) == [1, 2]


@pytest.mark.parametrize("value", [{1, 2}, datetime.datetime.now(tz=datetime.UTC), object(), 2**64])
def test_encode_refuses_values_without_an_agreed_encoding(value: Any) -> None:
    with pytest.raises(BadRequest, match="cannot encode"):
        encode(value)


def test_encode_refuses_oversized() -> None:
    with pytest.raises(MessageTooLarge):
        encode("x" * MAX_MESSAGE_BYTES)
    with pytest.raises(MessageTooLarge):
        encode("x" * 100, max_bytes=50)


def nested(depth: int) -> bytes:
    """``depth`` nested one-element arrays around nil."""
    return b"\x91" * (depth - 1) + b"\x90" if depth else b"\xc0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty message"),
        (b"\xc1", "not valid msgpack"),
        (b"\x92\x01", "not valid msgpack"),
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),
        (pack({"a": 1}) + b"\x00", "trailing bytes"),
        (pack(1) + pack(2), "trailing bytes"),
        (b"\xa1\xff", "UTF-8"),
        (pack(msgpack.ExtType(5, b"xy")), "not valid msgpack"),
        (pack(msgpack.Timestamp(1, 0)), "not valid msgpack"),
        (pack({b"k": 1}), "map keys must be msgpack str"),
        (pack({"a": [{"b": {b"k": 1}}]}), "map keys must be msgpack str"),
        (pack({1: 1}), "not valid msgpack"),
        (nested(MAX_DEPTH + 1), "nested deeper"),
        (b"\x91" * 5000 + b"\xc0", "nested deeper"),
    ],
)
def test_decode_rejects(data: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        decode(data)
    assert type(info.value) is BadRequest


def test_decode_accepts_maximum_depth() -> None:
    decode(nested(MAX_DEPTH))


def test_decode_rejects_oversized_before_parsing() -> None:
    with pytest.raises(MessageTooLarge):
        decode(b"\xc1" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(MessageTooLarge):
        decode(pack("x" * 20), max_bytes=10)


# -- framing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "envelope", "payload"),
    [
        ([b"peer", b"msg"], [b"peer"], b"msg"),
        ([b"peer", b"", b"msg"], [b"peer", b""], b"msg"),
        ([b"peer", b"", b""], [b"peer", b""], b""),
        ([b"peer", b""], [b"peer"], b""),
    ],
)
def test_framing_accepts(frames: list[bytes], envelope: list[bytes], payload: bytes) -> None:
    assert routing_envelope(frames) == envelope
    assert request_payload(frames, envelope) == payload


@pytest.mark.parametrize(
    ("frames", "envelope"),
    [
        ([b"peer", b"a", b"b"], [b"peer"]),
        ([b"peer", b"", b"a", b"b"], [b"peer", b""]),
        ([b"peer"], [b"peer"]),
    ],
)
def test_framing_rejects_but_keeps_the_envelope(frames: list[bytes], envelope: list[bytes]) -> None:
    assert routing_envelope(frames) == envelope
    with pytest.raises(BadRequest, match="exactly one message frame"):
        request_payload(frames, envelope)


# -- the envelope -----------------------------------------------------------


def test_parse_request_minimal() -> None:
    request = parse_request(pack({"id": 7, "op": "list"}))
    assert request == Request(id=7, op=Op.LIST, args={}, trace_id=None)
    assert request.op == "list"


def test_parse_request_full() -> None:
    data = pack({"trace_id": "t-1:a.b_c", "args": {"x": 1}, "op": "whoami", "id": "r1"})
    assert parse_request(data) == Request(
        id="r1", op=Op.WHOAMI, args={"x": 1}, trace_id="t-1:a.b_c"
    )


def test_nil_args_and_trace_id_mean_absent() -> None:
    request = parse_request(pack({"id": 1, "op": "list", "args": None, "trace_id": None}))
    assert request.args == {}
    assert request.trace_id is None


@pytest.mark.parametrize("op", list(Op))
def test_every_op_is_accepted(op: Op) -> None:
    assert parse_request(pack({"id": 1, "op": op.value})).op is op


def test_op_names_are_exactly_the_documented_ones() -> None:
    assert {o.value for o in Op} == {
        "whoami",
        "request",
        "validate",
        "delegate",
        "revoke",
        "revoke_agent",
        "list",
        "request_plan",
        "spawn",
        "wait",
        "read",
        "write",
        "listdir",
        "stat",
        "delete",
        "open",
        "http",
        "query",
    }


def test_http_args_are_parsed_strictly() -> None:
    parsed = parse_http_args(
        {"capability": "c", "method": "get", "url": "https://a.example/x", "headers": {"A": "1"}}
    )
    assert (parsed.method, parsed.headers, parsed.body, parsed.timeout) == (
        "GET",
        (("A", "1"),),
        b"",
        None,
    )
    base = {"capability": "c", "method": "GET", "url": "https://a.example/"}
    for bad, message in [
        ({"method": "GE T"}, "HTTP method token"),
        ({"method": ""}, "must not be empty"),
        ({"headers": {"A": 1}}, "must be a str"),
        ({"headers": {f"h{i}": "v" for i in range(101)}}, "more than 100 headers"),
        ({"body": "text"}, "must be a bin"),
        ({"timeout": 0}, "greater than 0"),
        ({"url": "x" * 8193}, "longer than 8192"),
        ({"follow": True}, "unknown field"),
    ]:
        with pytest.raises(BadRequest, match=message):
            parse_http_args({**base, **bad})


def test_query_args_are_parsed_strictly() -> None:
    base = {"capability": "c", "resource": "db://main", "statement": "SELECT 1"}
    parsed = parse_query_args({**base, "params": [None, True, 1, 1.5, "s", b"b"]})
    assert parsed.params == (None, True, 1, 1.5, "s", b"b")
    for bad, message in [
        ({"params": [[1]]}, "must be nil, a bool"),
        ({"params": [{}]}, "must be nil, a bool"),
        ({"params": "x"}, "must be an array"),
        ({"params": [0] * 1025}, "more than 1024"),
        ({"statement": ""}, "must not be empty"),
        ({"database": "x"}, "unknown field"),
    ]:
        with pytest.raises(BadRequest, match=message):
            parse_query_args({**base, **bad})


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ([1, "list", {}], "must be a msgpack map, not array"),
        ("list", "must be a msgpack map, not str"),
        (None, "must be a msgpack map, not nil"),
        ({"op": "list"}, "'id' is missing"),
        ({"id": 1}, "'op' is missing"),
        ({"id": 1, "op": "list", "who": "root"}, "unknown request field 'who'"),
        ({"id": 1, "op": "list", "principal": "x"}, "unknown request field 'principal'"),
        ({"id": True, "op": "list"}, "'id' must be a str or an int, not bool"),
        ({"id": 1.0, "op": "list"}, "'id' must be a str or an int, not float"),
        ({"id": None, "op": "list"}, "'id' must be a str or an int, not nil"),
        ({"id": [1], "op": "list"}, "not array"),
        ({"id": b"1", "op": "list"}, "not bin"),
        ({"id": "x" * 129, "op": "list"}, "longer than 128"),
        ({"id": 1, "op": 3}, "'op' must be a str, not int"),
        ({"id": 1, "op": b"list"}, "'op' must be a str, not bin"),
        ({"id": 1, "op": "list", "args": [1]}, "'args' must be a map, not array"),
        ({"id": 1, "op": "list", "args": "x"}, "'args' must be a map, not str"),
        ({"id": 1, "op": "list", "trace_id": ""}, "trace_id"),
        ({"id": 1, "op": "list", "trace_id": "a b"}, "trace_id"),
        ({"id": 1, "op": "list", "trace_id": "t\n"}, "trace_id"),
        ({"id": 1, "op": "list", "trace_id": "x" * 129}, "trace_id"),
        ({"id": 1, "op": "list", "trace_id": 5}, "trace_id"),
    ],
)
def test_parse_request_rejects(message: Any, error: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(error)):
        parse_request(pack(message))


def test_parse_request_quotes_long_unknown_keys_briefly() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(pack({"id": 1, "op": "list", "k" * 10000: 1}))
    assert len(info.value.message) < 200


@pytest.mark.parametrize("op", ["", "LIST", "grant", "list ", "x" * 5000])
def test_unknown_op(op: str) -> None:
    with pytest.raises(UnknownOperation, match="unknown op") as info:
        parse_request(pack({"id": 1, "op": op}))
    assert len(info.value.message) < 300
    assert best_effort_ids(pack({"id": 1, "op": op}))[0] == 1


def test_parse_request_rejects_oversized() -> None:
    big = pack({"id": 1, "op": "request", "args": {"metadata": {"x": "y" * MAX_MESSAGE_BYTES}}})
    with pytest.raises(MessageTooLarge):
        parse_request(big)


# -- salvaging the id of a rejected request ---------------------------------


@pytest.mark.parametrize(
    ("data", "request_id", "trace_id"),
    [
        (pack({"id": 9, "op": "nope", "trace_id": "t1"}), 9, "t1"),
        (pack({"op": "x", "args": [1, 2], "id": "r-1"}), "r-1", None),
        (pack({"id": 3, "pad": "x" * (2 * MAX_MESSAGE_BYTES), "trace_id": "big"}), 3, "big"),
        (pack({"id": 4, "op": "list"}) + b"trailing", 4, None),
        (pack({"id": 5, "trace_id": "bad trace"}), 5, None),
        (pack({"id": 6, "op": "list"})[:-3], 6, None),
        (pack({"id": True, "op": "list"}), None, None),
        (pack({"id": "x" * 500}), None, None),
        (pack([1, 2]), None, None),
        (b"", None, None),
        (b"\xc1\xc1", None, None),
        (pack({f"k{i}": i for i in range(20)} | {"id": 1}), None, None),
    ],
)
def test_best_effort_id(data: bytes, request_id: Any, trace_id: str | None) -> None:
    assert best_effort_ids(data) == (request_id, trace_id)


# -- replies ----------------------------------------------------------------


def test_ok_reply_shape() -> None:
    assert decode(ok_reply(5, {"x": 1}, "t")) == {
        "id": 5,
        "ok": True,
        "result": {"x": 1},
        "trace_id": "t",
    }


def test_error_reply_shape() -> None:
    error = ConstraintViolation("too big", reason="max_size", capability_id="cap_1")
    assert decode(error_reply("r", error, "t")) == {
        "id": "r",
        "ok": False,
        "error": {
            "code": "constraint_violation",
            "message": "too big",
            "reason": "max_size",
            "capability": "cap_1",
        },
        "trace_id": "t",
    }
    assert decode(error_reply(None, BadRequest("bad"), None))["error"] == {
        "code": "bad_request",
        "message": "bad",
    }


_RESULTS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    request_id=st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=200),
    result=_RESULTS,
    trace_id=st.none() | st.text(max_size=200),
)
def test_a_packed_result_gives_the_very_bytes_of_the_unpacked_one(
    request_id: Any, result: Any, trace_id: str | None
) -> None:
    packed = Packed(encode(result))
    assert ok_reply(request_id, packed, trace_id) == ok_reply(request_id, result, trace_id)


def _values_around(limit: int) -> list[Any]:
    """A field's value at and across its length bounds, and of other types."""
    return ["", "x", "x" * limit, "x" * (limit + 1), None, 1, True, ["x"], {"x": 1}]


def test_validate_args_on_sight_agree_with_field_by_field() -> None:
    """The shortcut for a plain three-field validate accepts exactly what
    taking the fields one by one accepts, and refuses the same way: every
    combination of values at and across the bounds, with and without extra
    fields (a mapping that is not a dict always goes field by field)."""

    def outcome(value: Any) -> Any:
        try:
            return parse_validate_args(value)
        except BadRequest as error:
            return str(error)

    extras: list[dict[str, Any]] = [{}, {"size": 1}, {"statement": "S"}, {"sql": "S"}]
    for capability, operation, resource, extra in itertools.product(
        _values_around(MAX_ID_LENGTH),
        _values_around(MAX_OPERATION_LENGTH),
        _values_around(MAX_RESOURCE_LENGTH),
        extras,
    ):
        args = {"capability": capability, "operation": operation, "resource": resource, **extra}
        for missing in (None, "capability", "operation", "resource"):
            shaped = {k: v for k, v in args.items() if k != missing}
            assert outcome(shaped) == outcome(MappingProxyType(shaped)), shaped


def test_a_packed_result_is_bounded_like_any_other() -> None:
    with pytest.raises(MessageTooLarge):
        ok_reply(1, Packed(encode("x" * (MAX_MESSAGE_BYTES - 10))), "t" * 100)


def test_ok_reply_too_large() -> None:
    with pytest.raises(MessageTooLarge):
        ok_reply(1, "x" * MAX_MESSAGE_BYTES, "t")


def test_parse_reply_round_trip() -> None:
    reply = parse_reply(ok_reply(1, [1], "t"))
    assert (reply.id, reply.ok, reply.result, reply.error, reply.trace_id) == (
        1,
        True,
        [1],
        None,
        "t",
    )
    reply = parse_reply(error_reply(2, NotHolder("no", capability_id="cap_x"), "t2"))
    assert not reply.ok
    assert isinstance(reply.error, NotHolder)
    assert reply.error.capability_id == "cap_x"
    assert reply.error.trace_id == "t2"


def test_parse_reply_unknown_code_is_the_base_class() -> None:
    data = pack({"id": 1, "ok": False, "error": {"code": "new_thing", "message": "m"}})
    reply = parse_reply(data)
    assert type(reply.error) is CapsupError


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        pack([1]),
        pack({"id": 1}),
        pack({"id": 1, "ok": 1}),
        pack({"id": 1.5, "ok": True}),
        pack({"id": 1, "ok": True, "trace_id": 3}),
        pack({"id": 1, "ok": False}),
        pack({"id": 1, "ok": False, "error": {"code": "x"}}),
        pack({"id": 1, "ok": False, "error": {"code": "x", "message": "m", "reason": 1}}),
    ],
)
def test_parse_reply_rejects(data: bytes) -> None:
    with pytest.raises(InternalError):
        parse_reply(data)


# -- per-op arguments -------------------------------------------------------

ParseFn = Callable[..., Any]

ACCEPT: list[tuple[ParseFn, dict[str, Any], Any]] = [
    (parse_whoami_args, {}, WhoamiArgs()),
    (parse_list_args, {}, ListArgs()),
    (
        parse_request_args,
        {"resource": "file:///d", "operations": ["read", "write", "read"]},
        RequestArgs(resource="file:///d", operations=frozenset({"read", "write"})),
    ),
    (
        parse_request_args,
        {
            "resource": "https://api.example.com/v1",
            "operations": ["GET"],
            "constraints": {"max_requests": 10},
            "ttl": 60,
            "metadata": {"purpose": "test"},
        },
        RequestArgs(
            resource="https://api.example.com/v1",
            operations=frozenset({"GET"}),
            constraints={"max_requests": 10},
            ttl=60.0,
            metadata={"purpose": "test"},
        ),
    ),
    (
        parse_request_args,
        {"resource": "db://main", "operations": ["select"], "ttl": None, "constraints": None},
        RequestArgs(resource="db://main", operations=frozenset({"select"})),
    ),
    (
        parse_validate_args,
        {"capability": "cap_1", "operation": "read", "resource": "file:///d/x"},
        ValidateArgs(capability="cap_1", operation="read", resource="file:///d/x"),
    ),
    (
        parse_validate_args,
        {
            "capability": "cap_1",
            "operation": "select",
            "resource": "db://main",
            "size": 0,
            "statement": "SELECT 1",
        },
        ValidateArgs("cap_1", "select", "db://main", size=0, statement="SELECT 1"),
    ),
    (
        parse_delegate_args,
        {"capability": "cap_1", "to": "agent-2"},
        DelegateArgs(capability="cap_1", to="agent-2"),
    ),
    (
        parse_delegate_args,
        {
            "capability": "cap_1",
            "to": "agent-2",
            "resource": "file:///d/sub",
            "operations": ["read"],
            "constraints": {},
            "ttl": 0.5,
        },
        DelegateArgs("cap_1", "agent-2", "file:///d/sub", frozenset({"read"}), {}, 0.5),
    ),
    (parse_revoke_args, {"capability": "cap_1"}, RevokeArgs("cap_1")),
    (parse_revoke_agent_args, {"agent": "agent-2"}, RevokeAgentArgs("agent-2")),
    (
        parse_request_plan_args,
        {"requests": [{"resource": "file:///a", "operations": ["read"]}]},
        RequestPlanArgs((RequestArgs("file:///a", frozenset({"read"})),)),
    ),
    (parse_spawn_args, {"argv": ["python3", "sub.py", ""]}, SpawnArgs(("python3", "sub.py", ""))),
    (
        parse_spawn_args,
        {
            "argv": ["node", "a.js"],
            "name": "helper.v2",
            "capabilities": [
                {"capability": "cap_1"},
                {"capability": "cap_2", "operations": ["read"], "ttl": 5, "resource": "file:///x"},
            ],
        },
        SpawnArgs(
            ("node", "a.js"),
            "helper.v2",
            (
                SpawnGrant("cap_1"),
                SpawnGrant("cap_2", "file:///x", frozenset({"read"}), None, 5.0),
            ),
        ),
    ),
    (parse_wait_args, {"agent": "agent-2"}, WaitArgs("agent-2")),
    (parse_wait_args, {"agent": "agent-2", "timeout": 0}, WaitArgs("agent-2", 0.0)),
]


@pytest.mark.parametrize(("parse", "args", "expected"), ACCEPT)
def test_args_accept(parse: ParseFn, args: dict[str, Any], expected: Any) -> None:
    assert parse(args) == expected


REQ = {"resource": "file:///d", "operations": ["read"]}
VAL = {"capability": "cap_1", "operation": "read", "resource": "file:///d"}
DEL = {"capability": "cap_1", "to": "agent-2"}
SPAWN = {"argv": ["python3", "a.py"]}

REJECT: list[tuple[ParseFn, Any, str]] = [
    (parse_whoami_args, {"x": 1}, "args: unknown field 'x'"),
    (parse_list_args, {"holder": "someone"}, "args: unknown field 'holder'"),
    (parse_list_args, [], "args must be a map, not array"),
    (parse_request_args, {}, "args.resource is required"),
    (parse_request_args, {"resource": "file:///d"}, "args.operations is required"),
    (parse_request_args, {**REQ, "extra": 1}, "unknown field 'extra'"),
    (parse_request_args, {**REQ, "holder": "agent-9"}, "unknown field 'holder'"),
    (parse_request_args, {**REQ, "resource": ""}, "args.resource must not be empty"),
    (parse_request_args, {**REQ, "resource": b"file:///d"}, "args.resource must be a str, not bin"),
    (parse_request_args, {**REQ, "resource": "f" * 5000}, "longer than 4096"),
    (parse_request_args, {**REQ, "operations": "read"}, "args.operations must be an array"),
    (parse_request_args, {**REQ, "operations": []}, "at least one operation"),
    (parse_request_args, {**REQ, "operations": ["read", 1]}, "args.operations[1] must be a str"),
    (parse_request_args, {**REQ, "operations": [""]}, "args.operations[0] must not be empty"),
    (parse_request_args, {**REQ, "operations": ["r"] * 65}, "more than 64"),
    (parse_request_args, {**REQ, "constraints": []}, "args.constraints must be a map"),
    (parse_request_args, {**REQ, "constraints": {1: 2}}, "args.constraints keys must be str"),
    (parse_request_args, {**REQ, "ttl": 0}, "args.ttl must be greater than 0"),
    (parse_request_args, {**REQ, "ttl": -5}, "args.ttl must be greater than 0"),
    (parse_request_args, {**REQ, "ttl": "60"}, "args.ttl must be a finite number"),
    (parse_request_args, {**REQ, "ttl": True}, "args.ttl must be a finite number"),
    (parse_request_args, {**REQ, "ttl": float("inf")}, "args.ttl must be a finite number"),
    (parse_request_args, {**REQ, "ttl": float("nan")}, "args.ttl must be a finite number"),
    (parse_request_args, {**REQ, "metadata": "x"}, "args.metadata must be a map"),
    (
        parse_request_args,
        {**REQ, "metadata": {"x": "y" * MAX_METADATA_BYTES}},
        f"more than {MAX_METADATA_BYTES}",
    ),
    # Constraints: at most MAX_CONSTRAINTS_BYTES in one message, all maps together.
    (
        parse_request_args,
        {**REQ, "constraints": {"deny": ["g" * 1000] * 9}},
        "args.constraints: constraints of 9",
    ),
    (
        parse_request_plan_args,
        {"requests": [{**REQ, "constraints": {"deny": ["g" * 1000] * 3}}] * 3},
        f"more than the {MAX_CONSTRAINTS_BYTES} one message may carry",
    ),
    (
        parse_spawn_args,
        {**SPAWN, "capabilities": [{"capability": "c", "constraints": {"deny": ["g" * 3000]}}] * 3},
        "args.capabilities: constraints of 9",
    ),
    (
        parse_delegate_args,
        {**DEL, "constraints": {"deny": ["g" * 9000]}},
        "args.constraints: constraints of 90",
    ),
    (parse_validate_args, {**VAL, "capability": 5}, "args.capability must be a str, not int"),
    (parse_validate_args, {**VAL, "capability": "c" * 129}, "longer than 128"),
    (
        parse_validate_args,
        {k: v for k, v in VAL.items() if k != "operation"},
        "operation is required",
    ),
    (parse_validate_args, {**VAL, "operation": ["read"]}, "args.operation must be a str"),
    (parse_validate_args, {**VAL, "size": -1}, "args.size must be an int >= 0"),
    (parse_validate_args, {**VAL, "size": 1.0}, "args.size must be an int >= 0"),
    (parse_validate_args, {**VAL, "size": False}, "args.size must be an int >= 0"),
    (parse_validate_args, {**VAL, "statement": 1}, "args.statement must be a str"),
    (parse_validate_args, {**VAL, "sql": "x"}, "unknown field 'sql'"),
    (parse_delegate_args, {"capability": "cap_1"}, "args.to is required"),
    (parse_delegate_args, {**DEL, "to": ""}, "args.to must not be empty"),
    (parse_delegate_args, {**DEL, "operations": []}, "at least one operation"),
    (parse_delegate_args, {**DEL, "ttl": 0}, "greater than 0"),
    (parse_delegate_args, {**DEL, "delegation_depth": 5}, "unknown field 'delegation_depth'"),
    (parse_delegate_args, {**DEL, "holder": "me"}, "unknown field 'holder'"),
    (parse_revoke_args, {}, "args.capability is required"),
    (parse_revoke_args, {"capability": "c", "cascade": False}, "unknown field 'cascade'"),
    (parse_revoke_agent_args, {"agent": 1}, "args.agent must be a str"),
    (parse_request_plan_args, {}, "args.requests is required"),
    (parse_request_plan_args, {"requests": []}, "at least one request"),
    (parse_request_plan_args, {"requests": {}}, "args.requests must be an array"),
    (parse_request_plan_args, {"requests": [REQ] * (MAX_PLAN_REQUESTS + 1)}, "more than 64"),
    (parse_request_plan_args, {"requests": [REQ, 5]}, "args.requests[1] must be a map"),
    (
        parse_request_plan_args,
        {"requests": [REQ, {**REQ, "ttl": -1}]},
        "args.requests[1].ttl must be greater than 0",
    ),
    (parse_request_plan_args, {"requests": [{**REQ, "x": 1}]}, "args.requests[0]: unknown field"),
    (parse_spawn_args, {}, "args.argv is required"),
    (parse_spawn_args, {"argv": []}, "args.argv must not be empty"),
    (parse_spawn_args, {"argv": "python3 a.py"}, "args.argv must be an array"),
    (parse_spawn_args, {"argv": [""]}, "args.argv[0] must name a program"),
    (parse_spawn_args, {"argv": ["a", 1]}, "args.argv[1] must be a str"),
    (parse_spawn_args, {"argv": ["a", "b\0c"]}, "args.argv[1] contains a NUL"),
    (parse_spawn_args, {"argv": ["a"] * 1025}, "more than 1024"),
    (parse_spawn_args, {**SPAWN, "name": ""}, "args.name must be 1 to 128"),
    (parse_spawn_args, {**SPAWN, "name": "a/b"}, "args.name must be 1 to 128"),
    (parse_spawn_args, {**SPAWN, "name": 3}, "args.name must be 1 to 128"),
    (parse_spawn_args, {**SPAWN, "env": {}}, "unknown field 'env'"),
    (parse_spawn_args, {**SPAWN, "capabilities": "cap_1"}, "args.capabilities must be an array"),
    (parse_spawn_args, {**SPAWN, "capabilities": ["cap_1"]}, "args.capabilities[0] must be a map"),
    (
        parse_spawn_args,
        {**SPAWN, "capabilities": [{"capability": "c", "to": "x"}]},
        "args.capabilities[0]: unknown field 'to'",
    ),
    (parse_spawn_args, {**SPAWN, "capabilities": [{}]}, "args.capabilities[0].capability is"),
    (parse_wait_args, {}, "args.agent is required"),
    (parse_wait_args, {"agent": "a", "timeout": -0.1}, "args.timeout must not be negative"),
    (parse_wait_args, {"agent": "a", "timeout": "1"}, "args.timeout must be a finite number"),
]


@pytest.mark.parametrize(("parse", "args", "error"), REJECT)
def test_args_reject(parse: ParseFn, args: Any, error: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(error)) as info:
        parse(args)
    assert type(info.value) is BadRequest


def test_constraints_up_to_the_message_budget_are_accepted() -> None:
    """The budget is on the encoded total, so a plan may spend it as it likes."""
    fill = {"deny": ["g" * (MAX_CONSTRAINTS_BYTES // 4 - 16)]}
    plan = parse_request_plan_args({"requests": [{**REQ, "constraints": fill}] * 4})
    assert [r.constraints for r in plan.requests] == [fill] * 4
    assert sum(len(encode(r.constraints)) for r in plan.requests) <= MAX_CONSTRAINTS_BYTES


def test_parse_args_dispatches_on_op() -> None:
    examples: dict[Op, dict[str, Any]] = {
        Op.WHOAMI: {},
        Op.REQUEST: REQ,
        Op.VALIDATE: VAL,
        Op.DELEGATE: DEL,
        Op.REVOKE: {"capability": "cap_1"},
        Op.REVOKE_AGENT: {"agent": "a"},
        Op.LIST: {},
        Op.REQUEST_PLAN: {"requests": [REQ]},
        Op.SPAWN: SPAWN,
        Op.WAIT: {"agent": "a"},
        Op.READ: {"capability": "cap_1", "resource": "/a"},
        Op.WRITE: {"capability": "cap_1", "resource": "/a", "data": b""},
        Op.LISTDIR: {"capability": "cap_1", "resource": "/a"},
        Op.STAT: {"capability": "cap_1", "resource": "/a"},
        Op.DELETE: {"capability": "cap_1", "resource": "/a"},
        Op.OPEN: {"capability": "cap_1", "resource": "/a", "mode": "r"},
        Op.HTTP: {"capability": "cap_1", "method": "GET", "url": "https://a.example/"},
        Op.QUERY: {"capability": "cap_1", "resource": "db://m", "statement": "SELECT 1"},
    }
    kinds = set()
    for op, args in examples.items():
        parsed = parse_args(parse_request(pack({"id": 1, "op": op.value, "args": args})))
        kinds.add(type(parsed))
    assert len(kinds) == len(Op)


def test_parse_args_over_the_wire_refuses_unknown_fields() -> None:
    request = parse_request(pack({"id": 1, "op": "validate", "args": {**VAL, "agent": "x"}}))
    with pytest.raises(BadRequest, match="unknown field 'agent'"):
        parse_args(request)


# -- errors -----------------------------------------------------------------

ERROR_CLASSES = [
    getattr(errors_module, name)
    for name in errors_module.__all__
    if isinstance(getattr(errors_module, name), type)
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_with_details(cls: type[CapsupError]) -> None:
    error = cls("message", reason="why", capability_id="cap_1", trace_id="t")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.message, copy.reason, copy.capability_id, copy.trace_id) == (
        "message",
        "why",
        "cap_1",
        "t",
    )
    assert str(copy) == str(error)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_code_is_documented(cls: type[CapsupError]) -> None:
    # The base class's placeholder code never travels; every concrete code does.
    if "code" in cls.__dict__ and cls is not CapsupError:
        assert error_class_for_code(cls.code) is cls
        assert f"`{cls.code}`" in DOCS.read_text()


def test_every_op_is_documented() -> None:
    text = DOCS.read_text()
    for op in Op:
        assert f"### `{op.value}`" in text


# -- the client against a fake supervisor -----------------------------------

Handler = Callable[[dict[str, Any]], list[bytes]]


class FakeSupervisor:
    """A ROUTER in a thread: records each request and sends what ``handler`` returns."""

    def __init__(
        self,
        handler: Handler,
        endpoint: str,
        *,
        add_delimiter: bool = False,
        curve_secret_key: bytes | None = None,
    ) -> None:
        self.handler = handler
        self.endpoint = endpoint
        self.add_delimiter = add_delimiter
        self.curve_secret_key = curve_secret_key
        self.requests: list[dict[str, Any]] = []
        self.frames: list[list[bytes]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        if self.curve_secret_key is not None:
            socket.curve_server = True
            socket.curve_secretkey = self.curve_secret_key
        socket.bind(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not socket.poll(20):
                    continue
                frames = socket.recv_multipart()
                self.frames.append(frames)
                envelope = routing_envelope(frames)
                request = decode(request_payload(frames, envelope))
                if self.add_delimiter:
                    envelope = [*envelope, b""]
                self.requests.append(request)
                for reply in self.handler(request):
                    socket.send_multipart([*envelope, reply])
        finally:
            socket.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def endpoint() -> Iterator[str]:
    # ipc paths are limited to about 100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="capsup-") as directory:
        yield f"ipc://{directory}/s"


@pytest.fixture
def serve(endpoint: str) -> Iterator[Callable[..., FakeSupervisor]]:
    servers: list[FakeSupervisor] = []

    def start(handler: Handler, **options: Any) -> FakeSupervisor:
        server = FakeSupervisor(handler, endpoint, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def answer(result: Any) -> Handler:
    return lambda req: [ok_reply(req["id"], result, req.get("trace_id", "srv"))]


def test_whoami(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    server = serve(answer({"principal": "researcher", "agent_id": "agent-1", "pid": 42}))
    with connect(endpoint, timeout=2) as client:
        assert client.whoami() == Identity("researcher", "agent-1", 42)
    (frames,) = server.frames
    assert len(frames) == 2  # routing id + one payload frame: a DEALER sends no delimiter
    assert server.requests == [{"id": 1, "op": "whoami", "args": {}}]


def test_whoami_for_a_service(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    serve(answer({"principal": "billing", "agent_id": None, "pid": None}))
    with connect(endpoint, timeout=2) as client:
        assert client.whoami() == Identity("billing", None, None)


def test_reply_after_a_delimiter_is_accepted(
    serve: Callable[..., FakeSupervisor], endpoint: str
) -> None:
    serve(answer({"principal": "p", "agent_id": "a", "pid": 1}), add_delimiter=True)
    with connect(endpoint, timeout=2) as client:
        assert client.whoami().principal == "p"


def test_a_req_client_gets_its_reply(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    server = serve(answer("pong"))
    socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    try:
        socket.send(encode({"id": "r", "op": "list"}))
        assert socket.poll(2000)
        assert parse_reply(socket.recv()).result == "pong"
    finally:
        socket.close()
    assert server.frames[0][1] == b""


CALLS: list[tuple[Callable[[Client], Any], str, dict[str, Any], Any, Any]] = [
    (
        lambda c: c.request("file:///d", ["read"]),
        "request",
        {"resource": "file:///d", "operations": ["read"]},
        CAP_WIRE,
        Capability.from_wire(CAP_WIRE),
    ),
    (
        lambda c: c.request(
            "file:///d", ("read",), constraints={"max_size": 1}, ttl=5, metadata={"m": 1}
        ),
        "request",
        {
            "resource": "file:///d",
            "operations": ["read"],
            "constraints": {"max_size": 1},
            "ttl": 5,
            "metadata": {"m": 1},
        },
        CAP_WIRE,
        Capability.from_wire(CAP_WIRE),
    ),
    (
        lambda c: c.validate(Capability.from_wire(CAP_WIRE), "read", "file:///d/x", size=3),
        "validate",
        {"capability": "cap_abc", "operation": "read", "resource": "file:///d/x", "size": 3},
        {"allowed": True, "capability": CAP_WIRE},
        Capability.from_wire(CAP_WIRE),
    ),
    (
        lambda c: c.validate("cap_abc", "select", "db://main", statement="SELECT 1"),
        "validate",
        {
            "capability": "cap_abc",
            "operation": "select",
            "resource": "db://main",
            "statement": "SELECT 1",
        },
        {"allowed": True, "capability": CAP_WIRE},
        Capability.from_wire(CAP_WIRE),
    ),
    (
        lambda c: c.delegate("cap_abc", "agent-2", operations=["read"], ttl=1.5),
        "delegate",
        {"capability": "cap_abc", "to": "agent-2", "operations": ["read"], "ttl": 1.5},
        CAP_WIRE,
        Capability.from_wire(CAP_WIRE),
    ),
    (
        lambda c: c.delegate("cap_abc", SpawnedAgent("agent-3", 9, ()), resource="file:///d/s"),
        "delegate",
        {"capability": "cap_abc", "to": "agent-3", "resource": "file:///d/s"},
        CAP_WIRE,
        Capability.from_wire(CAP_WIRE),
    ),
    (
        lambda c: c.revoke("cap_abc"),
        "revoke",
        {"capability": "cap_abc"},
        {"revoked": ["cap_abc", "cap_child"]},
        ["cap_abc", "cap_child"],
    ),
    (
        lambda c: c.revoke_agent("agent-2"),
        "revoke_agent",
        {"agent": "agent-2"},
        {"revoked": []},
        [],
    ),
    (
        lambda c: c.list_my_capabilities(),
        "list",
        {},
        {"capabilities": [CAP_WIRE]},
        [Capability.from_wire(CAP_WIRE)],
    ),
    (
        lambda c: c.request_for_plan(
            [{"resource": "file:///a", "operations": ("read",)}, {**REQ, "ttl": 3}]
        ),
        "request_plan",
        {"requests": [{"resource": "file:///a", "operations": ["read"]}, {**REQ, "ttl": 3}]},
        {"capabilities": [CAP_WIRE, CAP_WIRE]},
        [Capability.from_wire(CAP_WIRE)] * 2,
    ),
    (
        lambda c: c.spawn(
            ["python3", "sub.py"],
            name="sub",
            capabilities=[
                Capability.from_wire(CAP_WIRE),
                "cap_2",
                {"capability": Capability.from_wire(CAP_WIRE), "operations": ("read",)},
            ],
        ),
        "spawn",
        {
            "argv": ["python3", "sub.py"],
            "name": "sub",
            "capabilities": [
                {"capability": "cap_abc"},
                {"capability": "cap_2"},
                {"capability": "cap_abc", "operations": ["read"]},
            ],
        },
        {"agent_id": "agent-2", "pid": 77, "capabilities": [CAP_WIRE]},
        SpawnedAgent("agent-2", 77, (Capability.from_wire(CAP_WIRE),)),
    ),
    (
        lambda c: c.wait(SpawnedAgent("agent-2", 77, ())),
        "wait",
        {"agent": "agent-2"},
        {"exit_code": -9},
        -9,
    ),
    (
        lambda c: c.wait("agent-2", timeout=0.5),
        "wait",
        {"agent": "agent-2", "timeout": 0.5},
        {"exit_code": 0},
        0,
    ),
]


@pytest.mark.parametrize(("call", "op", "args", "result", "expected"), CALLS)
def test_client_calls(
    serve: Callable[..., FakeSupervisor],
    endpoint: str,
    call: Callable[[Client], Any],
    op: str,
    args: dict[str, Any],
    result: Any,
    expected: Any,
) -> None:
    server = serve(answer(result))
    with connect(endpoint, timeout=2) as client:
        assert call(client) == expected
    (request,) = server.requests
    assert request == {"id": 1, "op": op, "args": args}
    # What the client sends, the server's own parser accepts.
    parse_args(parse_request(encode(request)))


def test_trace_id_is_sent(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    server = serve(answer({"revoked": []}))
    with connect(endpoint, timeout=2) as client:
        client.revoke("cap_1", trace_id="trace-42")
    assert server.requests[0]["trace_id"] == "trace-42"


def test_error_reply_raises_its_class(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    error = ConstraintViolation("path escapes", reason="path_outside", capability_id="cap_abc")
    serve(lambda req: [error_reply(req["id"], error, "trace-7")])
    with connect(endpoint, timeout=2) as client, pytest.raises(ConstraintViolation) as info:
        client.validate("cap_abc", "read", "file:///etc/passwd")
    assert isinstance(info.value, AccessDenied)
    assert (info.value.reason, info.value.capability_id, info.value.trace_id) == (
        "path_outside",
        "cap_abc",
        "trace-7",
    )
    assert info.value.message == "path escapes"


def test_id_less_error_reply_answers_the_request_in_flight(
    serve: Callable[..., FakeSupervisor], endpoint: str
) -> None:
    serve(lambda req: [error_reply(None, Unauthenticated("who are you"), "t")])
    with connect(endpoint, timeout=2) as client, pytest.raises(Unauthenticated):
        client.list_my_capabilities()


def test_wait_timeout_error(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    serve(lambda req: [error_reply(req["id"], WaitTimeout("still running"), "t")])
    with connect(endpoint, timeout=2) as client, pytest.raises(WaitTimeout):
        client.wait("agent-2", timeout=0)


def test_stale_reply_is_ignored(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    def handler(req: dict[str, Any]) -> list[bytes]:
        return [
            ok_reply(req["id"] + 100, {"revoked": ["stale"]}, "t"),
            ok_reply(req["id"], {"revoked": ["fresh"]}, "t"),
        ]

    serve(handler)
    with connect(endpoint, timeout=2) as client:
        assert client.revoke("cap_1") == ["fresh"]
        assert client.revoke("cap_1") == ["fresh"]


def test_only_stale_replies_still_time_out(
    serve: Callable[..., FakeSupervisor], endpoint: str
) -> None:
    serve(lambda req: [ok_reply(req["id"] + 1, {"revoked": []}, "t")])
    with connect(endpoint, timeout=0.2) as client, pytest.raises(SupervisorGone):
        client.revoke("cap_1")


def test_wait_without_timeout_outlasts_the_client_timeout(
    serve: Callable[..., FakeSupervisor], endpoint: str
) -> None:
    def handler(req: dict[str, Any]) -> list[bytes]:
        time.sleep(0.4)
        return [ok_reply(req["id"], {"exit_code": 3}, "t")]

    serve(handler)
    with connect(endpoint, timeout=0.1) as client:
        assert client.wait("agent-2") == 3


def test_timeout_then_late_reply_never_answers_a_later_call(
    serve: Callable[..., FakeSupervisor], endpoint: str
) -> None:
    release = threading.Event()

    def handler(req: dict[str, Any]) -> list[bytes]:
        if req["args"]["capability"] == "slow":
            assert release.wait(5)
            # Same id as the next call will use if ids were reused: must not match.
            return [ok_reply(req["id"], {"revoked": ["late"]}, "t")]
        return [ok_reply(req["id"], {"revoked": ["fresh"]}, "t")]

    server = serve(handler)
    with connect(endpoint, timeout=0.2) as client:
        with pytest.raises(SupervisorGone, match="no reply to 'revoke'"):
            client.revoke("slow")
        release.set()
        assert client.revoke("fast") == ["fresh"]
    # The second request came from a new socket: the old one was replaced.
    assert server.frames[0][0] != server.frames[1][0]


def test_no_supervisor_is_supervisor_gone(endpoint: str) -> None:
    with connect(endpoint, timeout=0.1) as client:
        with pytest.raises(SupervisorGone):
            client.whoami()
        with pytest.raises(SupervisorGone):
            client.whoami()


def test_malformed_reply_is_internal_error(
    serve: Callable[..., FakeSupervisor], endpoint: str
) -> None:
    serve(lambda req: [b"\xc1"])
    with connect(endpoint, timeout=2) as client, pytest.raises(InternalError, match="unreadable"):
        client.whoami()


@pytest.mark.parametrize(
    ("result", "call"),
    [
        ({"principal": 1, "agent_id": None, "pid": None}, lambda c: c.whoami()),
        ({"principal": "p", "agent_id": None, "pid": True}, lambda c: c.whoami()),
        ({"capabilities": [{"id": "x"}]}, lambda c: c.list_my_capabilities()),
        ({"revoked": [1]}, lambda c: c.revoke("c")),
        ("nope", lambda c: c.revoke("c")),
        ({"allowed": False, "capability": CAP_WIRE}, lambda c: c.validate("c", "r", "f")),
    ],
)
def test_malformed_result_is_internal_error(
    serve: Callable[..., FakeSupervisor],
    endpoint: str,
    result: Any,
    call: Callable[[Client], Any],
) -> None:
    serve(answer(result))
    with connect(endpoint, timeout=2) as client, pytest.raises(InternalError):
        call(client)


def test_close_then_connection_closed(serve: Callable[..., FakeSupervisor], endpoint: str) -> None:
    serve(answer({"capabilities": []}))
    client = connect(endpoint, timeout=2)
    assert client.list_my_capabilities() == []
    client.close()
    client.close()
    assert client.closed
    with pytest.raises(ConnectionClosed):
        client.list_my_capabilities()


def test_context_manager_closes(endpoint: str) -> None:
    with connect(endpoint) as client:
        assert not client.closed
    assert client.closed
    assert "closed" in repr(client)


def test_local_mistakes_are_caught_before_sending(endpoint: str) -> None:
    with connect(endpoint, timeout=0.1) as client:
        with pytest.raises(BadRequest, match="not the string 'read'"):
            client.request("file:///d", "read")
        with pytest.raises(BadRequest, match="argv must be a list"):
            client.spawn("python3 a.py")
        with pytest.raises(BadRequest, match="cannot encode"):
            client.request("file:///d", ["read"], metadata={"s": {1, 2}})
        with pytest.raises(MessageTooLarge):
            client.validate("c", "write", "file:///d", statement="x" * MAX_MESSAGE_BYTES)


def test_connect_reads_the_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("CAPSUP_ENDPOINT", endpoint)
    with connect() as client:
        assert client.endpoint == endpoint


def test_connect_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPSUP_ENDPOINT", raising=False)
    with pytest.raises(SupervisorGone, match="must run under `capsup run`"):
        connect()


@pytest.mark.parametrize("endpoint", ["nonsense", "ipc://", "tcp://no-port"])
def test_connect_to_a_bad_endpoint(endpoint: str) -> None:
    with pytest.raises(SupervisorGone, match="cannot connect"):
        connect(endpoint)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_bad_timeout(endpoint: str, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        Client(endpoint, timeout=timeout)


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_curve_service() -> None:
    server_public, server_secret = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    with tempfile.TemporaryDirectory(prefix="capsup-") as directory:
        endpoint = f"ipc://{directory}/curve"
        server = FakeSupervisor(
            answer({"principal": "svc", "agent_id": None, "pid": None}),
            endpoint,
            curve_secret_key=server_secret,
        )
        try:
            keys = CurveKeys(server_public, public, secret)
            with connect(endpoint, timeout=2, curve=keys) as client:
                assert client.whoami().principal == "svc"
            with connect(endpoint, timeout=0.3) as plain, pytest.raises(SupervisorGone):
                plain.whoami()
        finally:
            server.stop()
