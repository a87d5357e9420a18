"""The wire protocol: framing, encoding, the request envelope and each op's arguments.

Both sides import this module, the SDK to build requests and read replies,
the server to read requests and build replies, so that the two can never
disagree about what a valid message is. It imports nothing from
``capsup.supervisor``: the protocol is data, not policy.

Everything arriving here from a socket is untrusted. Every function that
reads wire data either returns a fully checked value or raises a
:class:`~capsup.agents.errors.RequestError` whose message names the offending
field, so the server can answer with a precise error and change nothing.
docs/protocol.md is the human-readable form of this module.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, NamedTuple, TypeVar

import msgpack
import msgpack.fallback as msgpack_fallback
from capsup.agents.errors import (
    BadRequest,
    CapsupError,
    InternalError,
    MessageTooLarge,
    UnknownOperation,
    error_class_for_code,
)

__all__ = [
    "MAX_CONSTRAINTS_BYTES",
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_FILE_OFFSET",
    "MAX_HTTP_HEADERS",
    "MAX_ID_LENGTH",
    "MAX_IO_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METHOD_LENGTH",
    "MAX_OPERATIONS",
    "MAX_PLAN_REQUESTS",
    "MAX_QUERY_PARAMS",
    "MAX_RESOURCE_LENGTH",
    "MAX_SPAWN_ARGV",
    "MAX_SPAWN_CAPABILITIES",
    "MAX_URL_LENGTH",
    "MAX_VALUES",
    "OPEN_MODES",
    "PROTOCOL_VERSION",
    "REPLY_LIMITS",
    "REQUEST_LIMITS",
    "BrokeredArgs",
    "DecodeLimits",
    "DelegateArgs",
    "DeleteArgs",
    "FileOpArgs",
    "FrameData",
    "HttpArgs",
    "ListArgs",
    "ListdirArgs",
    "Op",
    "OpArgs",
    "OpenArgs",
    "Packed",
    "QueryArgs",
    "ReadArgs",
    "Reply",
    "Request",
    "RequestArgs",
    "RequestId",
    "RequestPlanArgs",
    "RevokeAgentArgs",
    "RevokeArgs",
    "SpawnArgs",
    "SpawnGrant",
    "SqlValue",
    "StatArgs",
    "ValidateArgs",
    "WaitArgs",
    "WhoamiArgs",
    "WriteArgs",
    "best_effort_ids",
    "decode",
    "encode",
    "error_reply",
    "ok_reply",
    "parse_args",
    "parse_delegate_args",
    "parse_delete_args",
    "parse_http_args",
    "parse_list_args",
    "parse_listdir_args",
    "parse_open_args",
    "parse_query_args",
    "parse_read_args",
    "parse_reply",
    "parse_request",
    "parse_request_args",
    "parse_request_plan_args",
    "parse_revoke_agent_args",
    "parse_revoke_args",
    "parse_spawn_args",
    "parse_spawn_grant",
    "parse_stat_args",
    "parse_validate_args",
    "parse_wait_args",
    "parse_whoami_args",
    "parse_write_args",
    "request_payload",
    "routing_envelope",
]

#: Bumped only for incompatible changes; documented in docs/protocol.md.
PROTOCOL_VERSION: Final = 1

#: The largest encoded message either side accepts or sends (1 MiB).
MAX_MESSAGE_BYTES: Final = 1 << 20
#: Deepest nesting of maps and lists; the envelope and args use three levels.
MAX_DEPTH: Final = 32
#: Longest request id, capability id, agent id, trace id or spawn name.
MAX_ID_LENGTH: Final = 128
#: Longest resource URI.
MAX_RESOURCE_LENGTH: Final = 4096
#: Longest operation name, and most operations in one capability.
MAX_OPERATION_LENGTH: Final = 64
MAX_OPERATIONS: Final = 64
#: Largest ``metadata`` map, measured encoded: it is stored with every capability.
MAX_METADATA_BYTES: Final = 4096
#: Most bytes of ``constraints`` in one message, every map measured encoded
#: and all added up (a plan's requests, a spawn's capabilities): the
#: supervisor compiles the deny globs they carry, and what one message can
#: make its one loop spend on that must stay bounded.
MAX_CONSTRAINTS_BYTES: Final = 8192
#: Most requests in one ``request_plan``.
MAX_PLAN_REQUESTS: Final = 64
#: Most argv entries, and most capabilities handed to one spawned agent.
MAX_SPAWN_ARGV: Final = 1024
MAX_SPAWN_CAPABILITIES: Final = 64
#: Most bytes one ``read`` returns or one ``write`` carries (960 KiB): the
#: default :data:`MAX_MESSAGE_BYTES` less 64 KiB for the rest of the message,
#: whose largest envelope (ids and a trace id of 128 characters, a resource
#: of 4096 characters, 16 KiB as UTF-8) takes under 17 KiB. A supervisor
#: configured with a smaller ``max_message_bytes`` refuses a message that
#: passes it (``message_too_large``); ask for less with ``read``'s ``length``.
MAX_IO_BYTES: Final = MAX_MESSAGE_BYTES - (64 << 10)
#: Most headers an ``http`` request names, and most ``query`` parameters.
MAX_HTTP_HEADERS: Final = 100
MAX_QUERY_PARAMS: Final = 1024
#: The longest URL an ``http`` request names (as the URL parser allows).
MAX_URL_LENGTH: Final = 8192
#: The longest HTTP method name.
MAX_METHOD_LENGTH: Final = 32
#: The largest file offset (``off_t`` is a signed 64-bit number on Linux).
MAX_FILE_OFFSET: Final = (1 << 63) - 1
#: ``open``'s modes, as ``builtins.open`` spells them without ``b`` or ``t``.
OPEN_MODES: Final = ("r", "w", "a", "x", "r+")

#: Most entries (items, or key and value pairs) in one array or map of a
#: request: spawn's argv is the longest array the protocol has, and no map
#: comes near it (the free-form ones, metadata and constraints, are bounded
#: by their encoded size as well). Refused at the header, before anything
#: is built for the entries.
MAX_ENTRIES: Final = MAX_SPAWN_ARGV
#: Most values in one request, at every depth together: each map key and
#: value, each array item, each map and array. Decoding costs the loop per
#: value, not per byte (a MiB of empty arrays took 420 ms, a MiB of bin
#: 0.1 ms), so this, not the message size, bounds the time one message can
#: take: a request of more than this many bytes has its values counted from
#: the headers before it is decoded, and is refused at the header that
#: takes it past the limit (at worst about 1.7 ms on the benchmark machine,
#: benchmarks/flood.py). A spawn with a full argv and 64 capabilities of a
#: few operations each holds about 2,000.
MAX_VALUES: Final = 8192
# An error message quotes at most this much of what the client sent.
_QUOTE_LENGTH: Final = 64

_TRACE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SPAWN_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


class Op(StrEnum):
    """The operations, spelled exactly as on the wire."""

    WHOAMI = "whoami"
    REQUEST = "request"
    VALIDATE = "validate"
    DELEGATE = "delegate"
    REVOKE = "revoke"
    REVOKE_AGENT = "revoke_agent"
    LIST = "list"
    REQUEST_PLAN = "request_plan"
    SPAWN = "spawn"
    WAIT = "wait"
    READ = "read"
    WRITE = "write"
    LISTDIR = "listdir"
    STAT = "stat"
    DELETE = "delete"
    OPEN = "open"
    HTTP = "http"
    QUERY = "query"


RequestId = str | int
"""A request id: chosen by the client, echoed by the server, never interpreted."""
#: A frame as the supervisor holds it: bytes, or a view of the receive
#: buffer for a message it will only look into (a stranger's, which is
#: never copied: copying a 1 MiB frame costs more than refusing it).
FrameData = bytes | memoryview
#: A value a ``query`` binds to a placeholder, or returns in a row.
SqlValue = bool | int | float | str | bytes | None


# -- encoding ---------------------------------------------------------------


def encode(obj: Any, *, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Encode one message; refuse what the other side would refuse to decode.

    Strings become msgpack str and bytes become bin, so the distinction
    survives for clients in languages where it matters. Sets, dates and
    other objects have no agreed encoding and are refused rather than
    guessed at.
    """
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"cannot encode message as msgpack: {exc}") from None
    if len(data) > max_bytes:
        raise MessageTooLarge(f"message is {len(data)} bytes, more than the {max_bytes} allowed")
    return data


class DecodeLimits(NamedTuple):
    """What one decoded message may hold, besides its size in bytes."""

    #: Entries in any one array or map.
    entries: int
    #: Values in all (see :data:`MAX_VALUES`); None: not counted.
    values: int | None
    #: The longest bin; None: as long as the message allows.
    bin_bytes: int | None


#: Requests come from processes the supervisor does not trust.
REQUEST_LIMITS: Final = DecodeLimits(MAX_ENTRIES, MAX_VALUES, MAX_IO_BYTES)
#: Replies come from the supervisor, which its client trusts, and can be
#: longer than any request: a ``list`` of 10,000 capabilities, a ``listdir``.
REPLY_LIMITS: Final = DecodeLimits(65536, None, None)


def decode(
    data: FrameData, *, max_bytes: int = MAX_MESSAGE_BYTES, limits: DecodeLimits = REQUEST_LIMITS
) -> Any:
    """Decode exactly one msgpack value from untrusted bytes.

    Size is checked before parsing, the number of values (for a message
    long enough to hold too many) before decoding, and the length of each
    array, map and bin at its header, so a hostile message cannot make the
    reader build much: see :data:`MAX_VALUES`. Extension types (the
    timestamp included) are refused: a client in another language must
    never need them. Every map key must be a string, at every depth, and
    nesting is bounded.
    """
    if len(data) > max_bytes:
        raise MessageTooLarge(f"message is {len(data)} bytes, more than the {max_bytes} allowed")
    if not data:
        raise BadRequest("empty message: expected one msgpack value")
    if limits.values is not None and len(data) > limits.values:
        # Every value takes a byte at least: a shorter message cannot hold too many.
        _value_end(data, 0, limits)
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            # A str costs what copying its bytes costs, and statements and
            # argv entries are bounded by nothing smaller than the message.
            max_str_len=max_bytes,
            max_bin_len=max_bytes if limits.bin_bytes is None else limits.bin_bytes,
            max_array_len=limits.entries,
            max_map_len=limits.entries,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise BadRequest("trailing bytes after the msgpack message") from None
    except msgpack.StackError:
        raise BadRequest(f"message nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise BadRequest("a msgpack str is not valid UTF-8 (send binary data as bin)") from None
    # The decoder is a trust boundary: whatever it raises on hostile bytes
    # (truncation, reserved bytes, limits, ext types) is the client's error.
    except Exception as exc:
        raise BadRequest(f"not valid msgpack: {exc}") from None
    _check_tree(value, 1)
    return value


# What each msgpack format's first byte starts (msgpack spec, "Formats"):
# a scalar of a fixed total size, a str or bin whose length follows in N
# bytes, or an array or map whose length follows in N bytes (0: in the
# first byte). ext and the reserved 0xc1 are missing: decoding refuses them.
_SCALAR, _BLOB, _ARRAY, _MAP = range(4)


def _formats() -> tuple[tuple[int, int] | None, ...]:
    table: list[tuple[int, int] | None] = [None] * 256
    for first in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3):
        table[first] = (_SCALAR, 1)  # fixints, nil, false, true
    for first in range(0xA0, 0xC0):
        table[first] = (_SCALAR, 1 + (first & 0x1F))  # fixstr
    for first in range(0x80, 0x90):
        table[first] = (_MAP, 0)
    for first in range(0x90, 0xA0):
        table[first] = (_ARRAY, 0)
    for first, size in ((0xCA, 5), (0xCB, 9), (0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9)):
        table[first] = (_SCALAR, size)  # floats, uints
    for first, size in ((0xD0, 2), (0xD1, 3), (0xD2, 5), (0xD3, 9)):
        table[first] = (_SCALAR, size)  # ints
    for first, length_bytes in ((0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4)):
        table[first] = (_BLOB, length_bytes)  # bin, str
    for first, kind, length_bytes in (
        (0xDC, _ARRAY, 2),
        (0xDD, _ARRAY, 4),
        (0xDE, _MAP, 2),
        (0xDF, _MAP, 4),
    ):
        table[first] = (kind, length_bytes)
    return tuple(table)


_FORMATS: Final = _formats()


def _value_end(data: FrameData, pos: int, limits: DecodeLimits) -> int | None:
    """Where the value that starts at ``pos`` ends, found from its headers
    without building anything; refuses it past ``limits`` (values, entries,
    depth) at the first header that takes it there.

    None for anything it cannot read (ext, reserved bytes, truncation):
    the decoder refuses that with a precise message."""
    assert limits.values is not None
    formats = _FORMATS
    end = len(data)
    values = 0
    todo = 1  # values left in the innermost open array or map
    enclosing: list[int] = []  # values left in each array or map around it
    while True:
        while not todo:
            if not enclosing:
                return pos if pos <= end else None
            todo = enclosing.pop()
        todo -= 1
        values += 1
        if pos >= end:
            return None
        first = data[pos]
        form = formats[first]
        if form is None:
            return None
        kind, size = form
        if kind == _SCALAR:
            pos += size
            continue
        if size:
            length = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
            pos += 1 + size
        else:
            length = first & 0x0F
            pos += 1
        if kind == _BLOB:
            pos += length
            continue
        if length > limits.entries:
            raise BadRequest(f"an array or map of {length} entries, more than {limits.entries}")
        if len(enclosing) >= MAX_DEPTH:
            raise BadRequest(f"message nested deeper than {MAX_DEPTH} levels")
        count = length if kind == _ARRAY else 2 * length
        if values + count > limits.values:
            raise BadRequest(f"message holds more than {limits.values} values")
        if count:
            enclosing.append(todo)
            todo = count


def _check_tree(value: Any, depth: int) -> None:
    # The decoder builds exact dicts and lists, so exact type tests suffice.
    if depth > MAX_DEPTH:
        raise BadRequest(f"message nested deeper than {MAX_DEPTH} levels")
    items: Iterable[Any]
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                raise BadRequest("map keys must be msgpack str, not bin")
        items = value.values()
    elif type(value) is list:
        items = value
    else:
        return
    for item in items:
        if type(item) is dict or type(item) is list:
            _check_tree(item, depth + 1)


# -- framing ----------------------------------------------------------------


def routing_envelope(frames: Sequence[FrameData]) -> list[bytes]:
    """The frames a ROUTER must put before its reply to this message.

    That is the peer's routing id, plus the empty delimiter when the peer
    sent one (a REQ socket always does, and drops replies without it). Call
    this before anything that can fail, so even a badly framed message gets
    an error reply the peer can receive.
    """
    head = frames[0]
    routing_id = head if type(head) is bytes else bytes(head)
    if len(frames) >= 3 and frames[1] == b"":
        return [routing_id, b""]
    return [routing_id]


def request_payload(frames: Sequence[FrameData], envelope: Sequence[bytes]) -> FrameData:
    """The single request frame of a message received on a ROUTER socket,
    after its ``envelope`` (what :func:`routing_envelope` returned for it)."""
    body = frames[len(envelope) :]
    if len(body) != 1:
        raise BadRequest(
            f"a request is exactly one message frame after the optional empty delimiter, "
            f"got {len(body)}"
        )
    return body[0]


# -- the envelope -----------------------------------------------------------
#
# Parsed messages are slotted records, not frozen ones: a frozen dataclass
# sets each field through object.__setattr__, which makes it four times as
# dear to build, and a request is built and read once, by the loop that
# parsed it. Nothing keeps or shares one.


@dataclass(slots=True)
class Request:
    """A checked request envelope; ``args`` still needs its op's parser."""

    id: RequestId
    op: Op
    args: dict[str, Any]
    trace_id: str | None = None


_ENVELOPE_KEYS: Final = frozenset({"id", "op", "args", "trace_id"})


def parse_request(data: FrameData, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Request:
    """Decode and check one request envelope.

    Raises :class:`MessageTooLarge`, :class:`BadRequest` or
    :class:`UnknownOperation`; the caller can still recover the id for its
    error reply with :func:`best_effort_ids`.
    """
    message = decode(data, max_bytes=max_bytes)
    if not isinstance(message, dict):
        raise BadRequest(f"a request must be a msgpack map, not {_wire_type(message)}")
    if not _ENVELOPE_KEYS.issuperset(message):
        unknown = message.keys() - _ENVELOPE_KEYS
        raise BadRequest(f"unknown request field {_quote(min(unknown))}")
    for key in ("id", "op"):
        if key not in message:
            raise BadRequest(f"request field {key!r} is missing")
    request_id = message["id"]
    if type(request_id) is not int:  # an int needs no check; anything else does
        request_id = _check_request_id(request_id)
    op = message["op"]
    if not isinstance(op, str):
        raise BadRequest(f"request field 'op' must be a str, not {_wire_type(op)}")
    known = _OPS.get(op)
    if known is None:
        raise UnknownOperation(
            f"unknown op {_quote(op)}; the ops are {', '.join(o.value for o in Op)}"
        )
    args = message.get("args")
    if args is None:
        args = {}
    elif not isinstance(args, dict):
        raise BadRequest(f"request field 'args' must be a map, not {_wire_type(args)}")
    trace_id = message.get("trace_id")
    if trace_id is not None:
        trace_id = _check_trace_id(trace_id)
    return Request(request_id, known, args, trace_id)


#: Ops by wire name (a dict lookup; calling ``Op(name)`` costs ten times more).
_OPS: Final = {o.value: o for o in Op}


def _check_request_id(value: object) -> RequestId:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"request field 'id' must be a str or an int, not {_wire_type(value)}")
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"request field 'id' is longer than {MAX_ID_LENGTH} characters")
    return value


def _check_trace_id(value: object) -> str:
    if not isinstance(value, str) or not _TRACE_ID.fullmatch(value):
        raise BadRequest(
            "request field 'trace_id' must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )
    return value


def best_effort_ids(data: FrameData) -> tuple[RequestId | None, str | None]:
    """The request's id and trace id, each if it can be read from a message
    that failed to parse (or came from a stranger).

    Error replies echo them wherever possible so the client can match them
    to its request and the audit record; ``None`` (sent as nil) when the
    bytes hold no usable value.
    """
    return _salvage(data)


# The envelope has at most four keys; looking further only helps an attacker.
_SALVAGE_KEYS: Final = 8
# What looking for the ids may skip of each of those values: a str or bin
# of any length costs nothing to skip, each value inside an array or map
# does, and a stranger's message is read nowhere else.
_SALVAGE_LIMITS: Final = DecodeLimits(MAX_ENTRIES, 1024, None)
# Keys and ids are scalars: an array or map where one is expected ends the
# search at its header.
_SCALAR_LIMITS: Final = DecodeLimits(0, 1, None)
# The longest key or id worth decoding: a trace id of 128 characters, as
# UTF-8, with its header. Anything longer is neither.
_SALVAGE_SCALAR_BYTES: Final = 4 * MAX_ID_LENGTH + 3


def _salvage(data: FrameData) -> tuple[RequestId | None, str | None]:
    # Walk the top-level map key by key, finding where each key and value
    # ends from the headers alone, so an id survives an oversized,
    # truncated or ill-typed message, and nothing is copied or built but
    # the few short scalars that may be a key or an id.
    request_id: RequestId | None = None
    trace_id: str | None = None
    # Best effort by definition: any failure just ends the search.
    with contextlib.suppress(Exception):
        first = data[0]
        if 0x80 <= first <= 0x8F:
            entries, pos = first & 0x0F, 1
        elif first in (0xDE, 0xDF):
            size = 2 if first == 0xDE else 4
            entries, pos = int.from_bytes(data[1 : 1 + size], "big"), 1 + size
        else:
            return None, None
        for _ in range(min(entries, _SALVAGE_KEYS)):
            key_end = _value_end(data, pos, _SCALAR_LIMITS)
            if key_end is None:
                break
            key = _short_scalar(data, pos, key_end)
            wanted = key in ("id", "trace_id")
            end = _value_end(data, key_end, _SCALAR_LIMITS if wanted else _SALVAGE_LIMITS)
            if end is None:
                break
            if key == "id":
                request_id = _check_request_id(_short_scalar(data, key_end, end))
            elif key == "trace_id":
                trace_id = _check_trace_id(_short_scalar(data, key_end, end))
            pos = end
    return request_id, trace_id


def _short_scalar(data: FrameData, start: int, end: int) -> Any:
    """The scalar in ``data[start:end]`` if it is short enough to be a key
    or an id, else None."""
    if end - start > _SALVAGE_SCALAR_BYTES:
        return None
    return msgpack.unpackb(data[start:end], raw=False, max_ext_len=0)


# -- replies ----------------------------------------------------------------


# One Packer, kept: packb builds a new one per call, four times the cost of
# packing an id. Only the compiled Packer may be shared by threads: it packs
# a scalar (an id, a trace id) in C, holding the GIL from start to end of its
# buffer. msgpack's pure-Python fallback (no wheel, or MSGPACK_PUREPYTHON)
# does not, so there each call gets its own Packer, through packb.
_pack_scalar: Callable[[Any], bytes] = (
    msgpack.packb
    if msgpack.Packer is msgpack_fallback.Packer
    else msgpack.Packer(use_bin_type=True, datetime=False).pack
)


class Packed(bytes):
    """A result already encoded (by :func:`encode`), which :func:`ok_reply`
    puts into the reply as it is: a result sent again and again, such as a
    validated capability, is encoded once instead of on every reply."""


def ok_reply(request_id: RequestId | None, result: Any, trace_id: str | None) -> bytes:
    """Encode a success reply; raises :class:`MessageTooLarge` if the result is too big."""
    if type(result) is not Packed:
        return encode({"id": request_id, "ok": True, "result": result, "trace_id": trace_id})
    # The bytes encode() writes for that map (four entries, in that order),
    # with the result spliced in; tests/supervisor/test_protocol_codec.py
    # checks they are the same.
    reply = b"".join(
        (
            b"\x84\xa2id",
            _pack_scalar(request_id),
            b"\xa2ok\xc3\xa6result",
            result,
            b"\xa8trace_id",
            _pack_scalar(trace_id),
        )
    )
    if len(reply) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"message is {len(reply)} bytes, more than the {MAX_MESSAGE_BYTES} allowed"
        )
    return reply


def error_reply(request_id: RequestId | None, error: CapsupError, trace_id: str | None) -> bytes:
    """Encode an error reply carrying the error's code, message and details."""
    return encode({"id": request_id, "ok": False, "error": error.to_wire(), "trace_id": trace_id})


@dataclass(slots=True)
class Reply:
    """A checked reply: ``error`` is the exception to raise when ``ok`` is false."""

    id: RequestId | None
    ok: bool
    result: Any = None
    error: CapsupError | None = None
    trace_id: str | None = None


def parse_reply(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Reply:
    """Decode a reply for the client.

    The server is trusted, so a malformed reply means the two sides disagree
    about the protocol: that is raised as :class:`InternalError`, never
    mistaken for an answer.
    """
    try:
        message = decode(data, max_bytes=max_bytes, limits=REPLY_LIMITS)
    except CapsupError as exc:
        raise InternalError(f"unreadable reply from the supervisor: {exc.message}") from None
    if not isinstance(message, dict) or not isinstance(message.get("ok"), bool):
        raise InternalError("malformed reply from the supervisor: no boolean 'ok'")
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | None):
        raise InternalError("malformed reply from the supervisor: bad 'id'")
    trace_id = message.get("trace_id")
    if not isinstance(trace_id, str | None):
        raise InternalError("malformed reply from the supervisor: bad 'trace_id'")
    if message["ok"]:
        return Reply(id=request_id, ok=True, result=message.get("result"), trace_id=trace_id)
    return Reply(
        id=request_id,
        ok=False,
        error=_error_from_wire(message.get("error"), trace_id),
        trace_id=trace_id,
    )


def _error_from_wire(wire: object, trace_id: str | None) -> CapsupError:
    if not isinstance(wire, dict):
        raise InternalError("malformed reply from the supervisor: 'error' is not a map")
    code, message = wire.get("code"), wire.get("message")
    reason, capability = wire.get("reason"), wire.get("capability")
    if not isinstance(code, str) or not isinstance(message, str):
        raise InternalError("malformed reply from the supervisor: error without code or message")
    if not isinstance(reason, str | None) or not isinstance(capability, str | None):
        raise InternalError("malformed reply from the supervisor: bad error details")
    return error_class_for_code(code)(
        message, reason=reason, capability_id=capability, trace_id=trace_id
    )


# -- per-op arguments -------------------------------------------------------

_T = TypeVar("_T")


class _Fields:
    """Takes fields out of an args map one by one, then refuses any left over.

    ``where`` prefixes every message (``args``, ``args.requests[3]``) so the
    client learns exactly which field is wrong.
    """

    def __init__(self, args: object, where: str) -> None:
        # Keys need no check: decode() let only str keys through, at any depth.
        if not isinstance(args, Mapping):
            raise BadRequest(f"{where} must be a map, not {_wire_type(args)}")
        self._args: Mapping[str, Any] = args
        self._where = where
        self._taken: list[str] = []
        # Fields taken that were present: when it reaches len(args), none is
        # left over, and done() needs no set difference.
        self._present = 0

    def required(self, key: str, check: Callable[[object, str], _T]) -> _T:
        self._taken.append(key)
        if key not in self._args:
            raise BadRequest(f"{self._where}.{key} is required")
        self._present += 1
        return check(self._args[key], f"{self._where}.{key}")

    def optional(self, key: str, check: Callable[[object, str], _T]) -> _T | None:
        """The checked value, or ``None`` when the field is absent or nil."""
        self._taken.append(key)
        if key not in self._args:
            return None
        self._present += 1
        value = self._args[key]
        return None if value is None else check(value, f"{self._where}.{key}")

    def done(self) -> None:
        if self._present != len(self._args):
            unknown = self._args.keys() - set(self._taken)
            raise BadRequest(f"{self._where}: unknown field {_quote(min(unknown))}")


def _text(max_length: int) -> Callable[[object, str], str]:
    def check(value: object, name: str) -> str:
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a str, not {_wire_type(value)}")
        if not value:
            raise BadRequest(f"{name} must not be empty")
        if len(value) > max_length:
            raise BadRequest(f"{name} is longer than {max_length} characters")
        return value

    return check


_id_text = _text(MAX_ID_LENGTH)
_resource_text = _text(MAX_RESOURCE_LENGTH)
_operation_text = _text(MAX_OPERATION_LENGTH)


def _any_text(value: object, name: str) -> str:
    """A string whose length only the message size bounds (an SQL statement)."""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a str, not {_wire_type(value)}")
    return value


def _operations(value: object, name: str) -> frozenset[str]:
    if not isinstance(value, list | tuple):
        raise BadRequest(f"{name} must be an array of str, not {_wire_type(value)}")
    if not value:
        raise BadRequest(f"{name} must name at least one operation")
    if len(value) > MAX_OPERATIONS:
        raise BadRequest(f"{name} has more than {MAX_OPERATIONS} operations")
    return frozenset(_operation_text(op, f"{name}[{i}]") for i, op in enumerate(value))


def _str_map(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRequest(f"{name} must be a map, not {_wire_type(value)}")
    if not all(isinstance(k, str) for k in value):
        raise BadRequest(f"{name} keys must be str")
    return dict(value)


def _metadata(value: object, name: str) -> dict[str, Any]:
    metadata = _str_map(value, name)
    size = _encoded_size(metadata, name)
    if size > MAX_METADATA_BYTES:
        raise BadRequest(f"{name} is {size} bytes encoded, more than {MAX_METADATA_BYTES}")
    return metadata


def _constraints(value: object, name: str) -> dict[str, Any]:
    constraints = _str_map(value, name)
    _check_constraints_size([constraints], name)
    return constraints


def _check_constraints_size(maps: Iterable[Mapping[str, Any] | None], name: str) -> None:
    """Refuse ``maps`` (one message's constraints) past :data:`MAX_CONSTRAINTS_BYTES`."""
    size = sum(_encoded_size(m, name) for m in maps if m)
    if size > MAX_CONSTRAINTS_BYTES:
        raise BadRequest(
            f"{name}: constraints of {size} bytes encoded, more than the "
            f"{MAX_CONSTRAINTS_BYTES} one message may carry"
        )


def _encoded_size(value: Mapping[str, Any], name: str) -> int:
    try:
        return len(encode(value))
    except CapsupError:
        raise BadRequest(f"{name} must hold only msgpack values") from None


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, not {_wire_type(value)}")
    return float(value)


def _positive_seconds(value: object, name: str) -> float:
    seconds = _number(value, name)
    if seconds <= 0:
        raise BadRequest(f"{name} must be greater than 0 seconds")
    return seconds


def _non_negative_seconds(value: object, name: str) -> float:
    seconds = _number(value, name)
    if seconds < 0:
        raise BadRequest(f"{name} must not be negative")
    return seconds


def _size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{name} must be an int >= 0")
    return value


def _bounded_int(low: int, high: int) -> Callable[[object, str], int]:
    def check(value: object, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadRequest(f"{name} must be an int from {low} to {high}")
        return value

    return check


_offset = _bounded_int(0, MAX_FILE_OFFSET)
_io_length = _bounded_int(0, MAX_IO_BYTES)


def _io_data(value: object, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise BadRequest(f"{name} must be a bin (raw bytes), not {_wire_type(value)}")
    if len(value) > MAX_IO_BYTES:
        raise BadRequest(f"{name} is {len(value)} bytes, more than the {MAX_IO_BYTES} of one write")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be a bool, not {_wire_type(value)}")
    return value


def _open_mode(value: object, name: str) -> str:
    if not isinstance(value, str) or value not in OPEN_MODES:
        shown = _quote(value) if isinstance(value, str) else _wire_type(value)
        raise BadRequest(f"{name} must be one of {', '.join(OPEN_MODES)}, not {shown}")
    return value


def _argv(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise BadRequest(f"{name} must be an array of str, not {_wire_type(value)}")
    if not value:
        raise BadRequest(f"{name} must not be empty")
    if len(value) > MAX_SPAWN_ARGV:
        raise BadRequest(f"{name} has more than {MAX_SPAWN_ARGV} entries")
    argv = tuple(_any_text(arg, f"{name}[{i}]") for i, arg in enumerate(value))
    if not argv[0]:
        raise BadRequest(f"{name}[0] must name a program")
    for i, arg in enumerate(argv):
        # The OS cannot pass a NUL inside an argument; refuse it here, clearly.
        if "\0" in arg:
            raise BadRequest(f"{name}[{i}] contains a NUL character")
    return argv


def _spawn_name(value: object, name: str) -> str:
    if not isinstance(value, str) or not _SPAWN_NAME.fullmatch(value):
        raise BadRequest(f"{name} must be 1 to 128 characters of A-Z a-z 0-9 . _ -")
    return value


def _array(value: object, name: str, max_items: int) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise BadRequest(f"{name} must be an array, not {_wire_type(value)}")
    if len(value) > max_items:
        raise BadRequest(f"{name} has more than {max_items} entries")
    return value


@dataclass(slots=True)
class WhoamiArgs:
    """``whoami`` takes no arguments."""


@dataclass(slots=True)
class ListArgs:
    """``list`` takes no arguments."""


@dataclass(slots=True)
class RequestArgs:
    """``request``: ask the kernel for a new capability.

    ``constraints`` and ``ttl`` are ``None`` when the client sent none, so
    that policy, not this parser, decides what an absent value means.
    """

    resource: str
    operations: frozenset[str]
    constraints: dict[str, Any] | None = None
    ttl: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ValidateArgs:
    """``validate``: may this capability perform ``operation`` on ``resource``?

    ``size`` (bytes to be written or read) and ``statement`` (SQL for a
    ``db://`` resource) feed the validators' constraint checks.
    """

    capability: str
    operation: str
    resource: str
    size: int | None = None
    statement: str | None = None


@dataclass(slots=True)
class DelegateArgs:
    """``delegate``: derive a narrower capability for agent ``to``.

    Every ``None`` field means "as the parent has it"; the kernel refuses a
    value that would widen the parent.
    """

    capability: str
    to: str
    resource: str | None = None
    operations: frozenset[str] | None = None
    constraints: dict[str, Any] | None = None
    ttl: float | None = None


@dataclass(slots=True)
class RevokeArgs:
    """``revoke``: revoke one capability and everything delegated from it."""

    capability: str


@dataclass(slots=True)
class RevokeAgentArgs:
    """``revoke_agent``: revoke everything one agent holds."""

    agent: str


@dataclass(slots=True)
class RequestPlanArgs:
    """``request_plan``: several requests granted all together or not at all."""

    requests: tuple[RequestArgs, ...]


@dataclass(slots=True)
class SpawnGrant:
    """One capability to delegate to a spawned agent; ``None`` fields inherit."""

    capability: str
    resource: str | None = None
    operations: frozenset[str] | None = None
    constraints: dict[str, Any] | None = None
    ttl: float | None = None


@dataclass(slots=True)
class SpawnArgs:
    """``spawn``: start a sub-agent and delegate capabilities to it."""

    argv: tuple[str, ...]
    name: str | None = None
    capabilities: tuple[SpawnGrant, ...] = ()


@dataclass(slots=True)
class WaitArgs:
    """``wait``: block until a sub-agent exits; ``timeout`` ``None`` waits forever."""

    agent: str
    timeout: float | None = None


@dataclass(slots=True)
class ReadArgs:
    """``read``: up to ``length`` bytes (at most :data:`MAX_IO_BYTES`, which is
    also what ``None`` means) of a file, from ``offset``."""

    capability: str
    resource: str
    offset: int = 0
    length: int | None = None


@dataclass(slots=True)
class WriteArgs:
    """``write``: ``data`` into a file. At ``offset`` when given, at the end
    when ``append``; with neither, ``data`` becomes the whole file."""

    capability: str
    resource: str
    data: bytes
    offset: int | None = None
    append: bool = False


@dataclass(slots=True)
class ListdirArgs:
    """``listdir``: the entries of a directory."""

    capability: str
    resource: str


@dataclass(slots=True)
class StatArgs:
    """``stat``: the kind, size, time and mode of a file or directory."""

    capability: str
    resource: str


@dataclass(slots=True)
class DeleteArgs:
    """``delete``: remove a file, a symlink or an empty directory."""

    capability: str
    resource: str


@dataclass(slots=True)
class OpenArgs:
    """``open``: a descriptor of a regular file, in one of :data:`OPEN_MODES`
    (served on the descriptor socket only)."""

    capability: str
    resource: str
    mode: str


FileOpArgs = ReadArgs | WriteArgs | ListdirArgs | StatArgs | DeleteArgs
"""The file ops answered with a reply alone (``open`` hands over a descriptor)."""


@dataclass(slots=True)
class HttpArgs:
    """``http``: one HTTP request, made by the supervisor under ``capability``.

    ``headers`` keep the order the client sent them in; ``timeout`` (seconds)
    is capped by the supervisor."""

    capability: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout: float | None = None


@dataclass(slots=True)
class QueryArgs:
    """``query``: one SQL statement on ``resource`` (``db://NAME``), with
    ``params`` bound to its placeholders."""

    capability: str
    resource: str
    statement: str
    params: tuple[SqlValue, ...] = ()


BrokeredArgs = HttpArgs | QueryArgs
"""The ops the supervisor performs on a worker thread and answers later."""

OpArgs = (
    WhoamiArgs
    | RequestArgs
    | ValidateArgs
    | DelegateArgs
    | RevokeArgs
    | RevokeAgentArgs
    | ListArgs
    | RequestPlanArgs
    | SpawnArgs
    | WaitArgs
    | ReadArgs
    | WriteArgs
    | ListdirArgs
    | StatArgs
    | HttpArgs
    | QueryArgs
    | DeleteArgs
    | OpenArgs
)
"""The checked arguments of any op; ``match`` on the class to dispatch."""


def parse_whoami_args(args: Mapping[str, Any], *, where: str = "args") -> WhoamiArgs:
    """Check ``whoami``'s (empty) arguments."""
    _Fields(args, where).done()
    return WhoamiArgs()


def parse_list_args(args: Mapping[str, Any], *, where: str = "args") -> ListArgs:
    """Check ``list``'s (empty) arguments."""
    _Fields(args, where).done()
    return ListArgs()


def parse_request_args(args: Mapping[str, Any], *, where: str = "args") -> RequestArgs:
    """Check ``request``'s arguments (also each entry of a ``request_plan``)."""
    f = _Fields(args, where)
    parsed = RequestArgs(
        resource=f.required("resource", _resource_text),
        operations=f.required("operations", _operations),
        constraints=f.optional("constraints", _constraints),
        ttl=f.optional("ttl", _positive_seconds),
        metadata=f.optional("metadata", _metadata) or {},
    )
    f.done()
    return parsed


def parse_validate_args(args: Mapping[str, Any], *, where: str = "args") -> ValidateArgs:
    """Check ``validate``'s arguments.

    Nearly every validate names just the three required fields, as short
    strings; those are accepted on sight, at a third of what taking them
    field by field costs (this runs once per use of a capability). Anything
    else goes field by field, which also says what is wrong."""
    if type(args) is dict and len(args) == 3:
        get = args.get  # a missing field is None, which is not a str
        capability, operation, resource = get("capability"), get("operation"), get("resource")
        if (
            type(capability) is str
            and type(operation) is str
            and type(resource) is str
            and 0 < len(capability) <= MAX_ID_LENGTH
            and 0 < len(operation) <= MAX_OPERATION_LENGTH
            and 0 < len(resource) <= MAX_RESOURCE_LENGTH
        ):
            return ValidateArgs(capability, operation, resource)
    f = _Fields(args, where)
    parsed = ValidateArgs(
        capability=f.required("capability", _id_text),
        operation=f.required("operation", _operation_text),
        resource=f.required("resource", _resource_text),
        size=f.optional("size", _size),
        statement=f.optional("statement", _any_text),
    )
    f.done()
    return parsed


def parse_delegate_args(args: Mapping[str, Any], *, where: str = "args") -> DelegateArgs:
    """Check ``delegate``'s arguments."""
    f = _Fields(args, where)
    parsed = DelegateArgs(
        capability=f.required("capability", _id_text),
        to=f.required("to", _id_text),
        **_narrowing(f),
    )
    f.done()
    return parsed


def _narrowing(f: _Fields) -> dict[str, Any]:
    """The optional fields that narrow a delegated copy (``delegate``, and
    each of ``spawn``'s ``capabilities``)."""
    return {
        "resource": f.optional("resource", _resource_text),
        "operations": f.optional("operations", _operations),
        "constraints": f.optional("constraints", _constraints),
        "ttl": f.optional("ttl", _positive_seconds),
    }


def parse_revoke_args(args: Mapping[str, Any], *, where: str = "args") -> RevokeArgs:
    """Check ``revoke``'s arguments."""
    f = _Fields(args, where)
    parsed = RevokeArgs(capability=f.required("capability", _id_text))
    f.done()
    return parsed


def parse_revoke_agent_args(args: Mapping[str, Any], *, where: str = "args") -> RevokeAgentArgs:
    """Check ``revoke_agent``'s arguments."""
    f = _Fields(args, where)
    parsed = RevokeAgentArgs(agent=f.required("agent", _id_text))
    f.done()
    return parsed


def parse_request_plan_args(args: Mapping[str, Any], *, where: str = "args") -> RequestPlanArgs:
    """Check ``request_plan``'s arguments: 1 to 64 ``request`` argument maps."""
    f = _Fields(args, where)

    def requests(value: object, name: str) -> tuple[RequestArgs, ...]:
        items = _array(value, name, MAX_PLAN_REQUESTS)
        if not items:
            raise BadRequest(f"{name} must hold at least one request")
        parsed = tuple(parse_request_args(r, where=f"{name}[{i}]") for i, r in enumerate(items))
        _check_constraints_size((r.constraints for r in parsed), name)
        return parsed

    parsed = RequestPlanArgs(requests=f.required("requests", requests))
    f.done()
    return parsed


def parse_spawn_grant(grant: Mapping[str, Any], *, where: str = "args") -> SpawnGrant:
    """Check one entry of ``spawn``'s ``capabilities``."""
    f = _Fields(grant, where)
    parsed = SpawnGrant(capability=f.required("capability", _id_text), **_narrowing(f))
    f.done()
    return parsed


def parse_spawn_args(args: Mapping[str, Any], *, where: str = "args") -> SpawnArgs:
    """Check ``spawn``'s arguments."""
    f = _Fields(args, where)

    def grants(value: object, name: str) -> tuple[SpawnGrant, ...]:
        items = _array(value, name, MAX_SPAWN_CAPABILITIES)
        parsed = tuple(parse_spawn_grant(g, where=f"{name}[{i}]") for i, g in enumerate(items))
        _check_constraints_size((g.constraints for g in parsed), name)
        return parsed

    parsed = SpawnArgs(
        argv=f.required("argv", _argv),
        name=f.optional("name", _spawn_name),
        capabilities=f.optional("capabilities", grants) or (),
    )
    f.done()
    return parsed


def parse_wait_args(args: Mapping[str, Any], *, where: str = "args") -> WaitArgs:
    """Check ``wait``'s arguments."""
    f = _Fields(args, where)
    parsed = WaitArgs(
        agent=f.required("agent", _id_text),
        timeout=f.optional("timeout", _non_negative_seconds),
    )
    f.done()
    return parsed


def _file_target(f: _Fields) -> tuple[str, str]:
    """The capability and the resource every file op names, in that order."""
    return f.required("capability", _id_text), f.required("resource", _resource_text)


def parse_read_args(args: Mapping[str, Any], *, where: str = "args") -> ReadArgs:
    """Check ``read``'s arguments."""
    f = _Fields(args, where)
    parsed = ReadArgs(
        *_file_target(f),
        offset=f.optional("offset", _offset) or 0,
        length=f.optional("length", _io_length),
    )
    f.done()
    return parsed


def parse_write_args(args: Mapping[str, Any], *, where: str = "args") -> WriteArgs:
    """Check ``write``'s arguments; ``offset`` and a true ``append`` exclude each other."""
    f = _Fields(args, where)
    parsed = WriteArgs(
        *_file_target(f),
        data=f.required("data", _io_data),
        offset=f.optional("offset", _offset),
        append=f.optional("append", _flag) or False,
    )
    f.done()
    if parsed.append and parsed.offset is not None:
        raise BadRequest(f"{where}.offset and {where}.append exclude each other")
    return parsed


def _file_fields(args: Mapping[str, Any], where: str) -> tuple[str, str]:
    """The two fields of ``listdir``, ``stat`` and ``delete``, and no others."""
    f = _Fields(args, where)
    fields = _file_target(f)
    f.done()
    return fields


def parse_listdir_args(args: Mapping[str, Any], *, where: str = "args") -> ListdirArgs:
    """Check ``listdir``'s arguments."""
    return ListdirArgs(*_file_fields(args, where))


def parse_stat_args(args: Mapping[str, Any], *, where: str = "args") -> StatArgs:
    """Check ``stat``'s arguments."""
    return StatArgs(*_file_fields(args, where))


def parse_delete_args(args: Mapping[str, Any], *, where: str = "args") -> DeleteArgs:
    """Check ``delete``'s arguments."""
    return DeleteArgs(*_file_fields(args, where))


def parse_open_args(args: Mapping[str, Any], *, where: str = "args") -> OpenArgs:
    """Check ``open``'s arguments."""
    f = _Fields(args, where)
    parsed = OpenArgs(*_file_target(f), mode=f.required("mode", _open_mode))
    f.done()
    return parsed


def _method(value: object, name: str) -> str:
    """An HTTP method: a token (RFC 9110), upper-cased as the validator folds it."""
    text = _text(MAX_METHOD_LENGTH)(value, name)
    if not text.isascii() or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in text):
        raise BadRequest(f"{name} must be an HTTP method token such as GET")
    return text.upper()


def _headers(value: object, name: str) -> tuple[tuple[str, str], ...]:
    """A map of header names to values, both str; the broker checks them."""
    headers = _str_map(value, name)
    if len(headers) > MAX_HTTP_HEADERS:
        raise BadRequest(f"{name} has more than {MAX_HTTP_HEADERS} headers")
    for key, header_value in headers.items():
        if not isinstance(header_value, str):
            raise BadRequest(f"{name}.{_quote(key)} must be a str, not {_wire_type(header_value)}")
    return tuple(headers.items())


def _params(value: object, name: str) -> tuple[SqlValue, ...]:
    items = _array(value, name, MAX_QUERY_PARAMS)
    for i, item in enumerate(items):
        if item is not None and not isinstance(item, bool | int | float | str | bytes):
            raise BadRequest(
                f"{name}[{i}] must be nil, a bool, an int, a float, a str or a bin, "
                f"not {_wire_type(item)}"
            )
    return tuple(items)


def parse_http_args(args: Mapping[str, Any], *, where: str = "args") -> HttpArgs:
    """Check ``http``'s arguments (their shape; the broker checks their sense)."""
    f = _Fields(args, where)
    parsed = HttpArgs(
        capability=f.required("capability", _id_text),
        method=f.required("method", _method),
        url=f.required("url", _text(MAX_URL_LENGTH)),
        headers=f.optional("headers", _headers) or (),
        body=f.optional("body", _io_data) or b"",
        timeout=f.optional("timeout", _positive_seconds),
    )
    f.done()
    return parsed


def parse_query_args(args: Mapping[str, Any], *, where: str = "args") -> QueryArgs:
    """Check ``query``'s arguments."""
    f = _Fields(args, where)
    parsed = QueryArgs(
        capability=f.required("capability", _id_text),
        resource=f.required("resource", _resource_text),
        statement=f.required("statement", _text(MAX_IO_BYTES)),
        params=f.optional("params", _params) or (),
    )
    f.done()
    return parsed


_PARSERS: Final[Mapping[Op, Callable[[Mapping[str, Any]], OpArgs]]] = {
    Op.WHOAMI: parse_whoami_args,
    Op.REQUEST: parse_request_args,
    Op.VALIDATE: parse_validate_args,
    Op.DELEGATE: parse_delegate_args,
    Op.REVOKE: parse_revoke_args,
    Op.REVOKE_AGENT: parse_revoke_agent_args,
    Op.LIST: parse_list_args,
    Op.REQUEST_PLAN: parse_request_plan_args,
    Op.SPAWN: parse_spawn_args,
    Op.WAIT: parse_wait_args,
    Op.READ: parse_read_args,
    Op.WRITE: parse_write_args,
    Op.LISTDIR: parse_listdir_args,
    Op.STAT: parse_stat_args,
    Op.DELETE: parse_delete_args,
    Op.OPEN: parse_open_args,
    Op.HTTP: parse_http_args,
    Op.QUERY: parse_query_args,
}


def parse_args(request: Request) -> OpArgs:
    """Check a request's ``args`` with its op's parser."""
    return _PARSERS[request.op](request.args)


# -- messages ---------------------------------------------------------------


def _wire_type(value: object) -> str:
    """The msgpack name of a decoded value's type, for error messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes):
        return "bin"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "map"
    return type(value).__name__


def _quote(text: str) -> str:
    """Quote client-sent text in a message without echoing a megabyte of it."""
    if len(text) > _QUOTE_LENGTH:
        return repr(text[:_QUOTE_LENGTH]) + "..."
    return repr(text)
