"""The file ops' arguments on the wire: strict parsing, and sizes that fit a message."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from capsup.agents import protocol as p
from capsup.agents.errors import BadRequest

CAP = "cap_abc"
PATH = "/data/in/a.txt"


def over_the_wire(op: str, args: dict[str, Any]) -> p.OpArgs:
    data = msgpack.packb({"id": 1, "op": op, "args": args}, use_bin_type=True)
    return p.parse_args(p.parse_request(data))


def bad(op: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        over_the_wire(op, args)


def test_each_op_parses_to_its_args() -> None:
    base = {"capability": CAP, "resource": PATH}
    assert over_the_wire("read", base) == p.ReadArgs(CAP, PATH, 0, None)
    assert over_the_wire("read", {**base, "offset": 7, "length": 3}) == p.ReadArgs(CAP, PATH, 7, 3)
    assert over_the_wire("write", {**base, "data": b"\x00\xff"}) == p.WriteArgs(
        CAP, PATH, b"\x00\xff"
    )
    assert over_the_wire("write", {**base, "data": b"", "append": True}) == p.WriteArgs(
        CAP, PATH, b"", None, True
    )
    assert over_the_wire("write", {**base, "data": b"x", "offset": 0, "append": False}) == (
        p.WriteArgs(CAP, PATH, b"x", 0, False)
    )
    assert over_the_wire("listdir", base) == p.ListdirArgs(CAP, PATH)
    assert over_the_wire("stat", base) == p.StatArgs(CAP, PATH)
    assert over_the_wire("delete", base) == p.DeleteArgs(CAP, PATH)
    for mode in p.OPEN_MODES:
        assert over_the_wire("open", {**base, "mode": mode}) == p.OpenArgs(CAP, PATH, mode)


def test_nil_means_absent() -> None:
    args = {"capability": CAP, "resource": PATH, "offset": None, "length": None}
    assert over_the_wire("read", args) == p.ReadArgs(CAP, PATH)
    write = {"capability": CAP, "resource": PATH, "data": b"", "offset": None, "append": None}
    assert over_the_wire("write", write) == p.WriteArgs(CAP, PATH, b"")


@pytest.mark.parametrize("op", ["read", "write", "listdir", "stat", "delete", "open"])
def test_required_and_unknown_fields(op: str) -> None:
    extra = {"write": {"data": b""}, "open": {"mode": "r"}}.get(op, {})
    bad(op, {"resource": PATH, **extra}, r"args\.capability is required")
    bad(op, {"capability": CAP, **extra}, r"args\.resource is required")
    bad(op, {"capability": CAP, "resource": PATH, **extra, "holder": "x"}, "unknown field 'holder'")
    bad(op, {"capability": 1, "resource": PATH, **extra}, r"args\.capability must be a str")
    bad(op, {"capability": CAP, "resource": "", **extra}, r"args\.resource must not be empty")
    bad(op, {"capability": CAP, "resource": "x" * 4097, **extra}, "longer than 4096")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"offset": -1}, r"args\.offset must be an int from 0 to"),
        ({"offset": True}, r"args\.offset must be an int"),
        ({"offset": 1.0}, r"args\.offset must be an int"),
        ({"offset": 1 << 63}, r"args\.offset must be an int from 0 to 9223372036854775807"),
        ({"length": -1}, r"args\.length must be an int from 0 to"),
        (
            {"length": p.MAX_IO_BYTES + 1},
            rf"args\.length must be an int from 0 to {p.MAX_IO_BYTES}",
        ),
        ({"length": "10"}, r"args\.length must be an int"),
    ],
)
def test_read_bounds(args: dict[str, Any], message: str) -> None:
    bad("read", {"capability": CAP, "resource": PATH, **args}, message)


def test_read_length_at_the_bound() -> None:
    args = {
        "capability": CAP,
        "resource": PATH,
        "length": p.MAX_IO_BYTES,
        "offset": p.MAX_FILE_OFFSET,
    }
    parsed = over_the_wire("read", args)
    assert isinstance(parsed, p.ReadArgs)
    assert (parsed.length, parsed.offset) == (p.MAX_IO_BYTES, p.MAX_FILE_OFFSET)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, r"args\.data is required"),
        ({"data": "text"}, r"args\.data must be a bin \(raw bytes\), not str"),
        ({"data": [1, 2]}, r"args\.data must be a bin \(raw bytes\), not array"),
        # The decoder refuses a bin this long before the args are read.
        ({"data": b"x" * (p.MAX_IO_BYTES + 1)}, r"exceeds max_bin_len\(983040\)"),
        ({"data": b"", "append": 1}, r"args\.append must be a bool, not int"),
        ({"data": b"", "offset": -5}, r"args\.offset must be an int from 0"),
        ({"data": b"", "offset": 0, "append": True}, "offset and args.append exclude each other"),
    ],
)
def test_write_bounds(args: dict[str, Any], message: str) -> None:
    bad("write", {"capability": CAP, "resource": PATH, **args}, message)


@pytest.mark.parametrize("mode", ["", "rb", "w+", "a+", "x+", "R", "rw", 1, None])
def test_open_modes_are_the_five(mode: object) -> None:
    args = {"capability": CAP, "resource": PATH, "mode": mode}
    message = r"args\.mode (must be one of r, w, a, x, r\+|is required)"
    bad("open", args, message)


def test_io_bytes_fit_a_message_with_the_largest_envelope() -> None:
    """A write of MAX_IO_BYTES with every other field as long as it may be,
    and a read reply of MAX_IO_BYTES, fit the default message size."""
    longest_id = "i" * p.MAX_ID_LENGTH
    request = {
        "id": longest_id,
        "op": "write",
        "trace_id": "t" * 128,
        "args": {
            "capability": "c" * p.MAX_ID_LENGTH,
            "resource": "\U0001f600" * p.MAX_RESOURCE_LENGTH,  # four bytes each in UTF-8
            "data": b"\xff" * p.MAX_IO_BYTES,
            "offset": p.MAX_FILE_OFFSET,
        },
    }
    encoded = p.encode(request)
    assert len(encoded) <= p.MAX_MESSAGE_BYTES
    parsed = p.parse_args(p.parse_request(encoded))
    assert isinstance(parsed, p.WriteArgs) and len(parsed.data) == p.MAX_IO_BYTES
    result = {"data": b"\xff" * p.MAX_IO_BYTES, "eof": False, "size": p.MAX_FILE_OFFSET}
    reply = p.ok_reply(longest_id, result, "t" * 128)
    assert len(reply) <= p.MAX_MESSAGE_BYTES
    assert p.parse_reply(reply).result["data"] == result["data"]


def test_data_survives_as_bin() -> None:
    data = bytes(range(256))
    reply = p.parse_reply(p.ok_reply(1, {"data": data, "eof": True, "size": 256}, "t"))
    assert reply.result["data"] == data and type(reply.result["data"]) is bytes
