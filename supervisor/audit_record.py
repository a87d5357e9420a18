"""The audit record: its fields, its canonical bytes and its place in the chain.

Writing (:mod:`capsup.supervisor.audit`) and checking
(:mod:`capsup.supervisor.audit_verify`) must agree byte for byte on what is
hashed, so both take it from here and nowhere else. A record is a flat JSON
object; its ``hash`` is the SHA-256 of the canonical JSON of every other field
(``prev`` included), and ``prev`` is the ``hash`` of the record before it, so
changing, removing or moving any record breaks every link after it.

A hash chain alone is caught rewritten only against a head kept elsewhere
(the state store's): whoever can write the trail can recompute every hash.
With a key (``[supervisor] audit_key_file``), each ``hash`` is instead an
HMAC-SHA256 under it, written ``hmac-sha256:HEX``, so rewriting any record
needs the key, which agents never get. A trail may begin unkeyed (the key
was configured later): unkeyed records are allowed only before the first
keyed one, whose ``prev`` pins them, and a check with the key needs the
last record keyed (see :mod:`capsup.supervisor.audit_verify`).
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

import orjson
from capsup.supervisor.events import Event, EventType

__all__ = [
    "EVENT_FIELDS",
    "GENESIS",
    "HEAD_META_KEY",
    "MAX_TEXT",
    "KEYED",
    "AuditHead",
    "AuditKeyRequired",
    "canonical",
    "clip",
    "format_head",
    "parse_head",
    "record_hash",
    "seal_line",
]

#: The ``prev`` of the first record of a trail: no record came before it.
GENESIS = "0" * 64

#: The key under which the state store keeps the chain head (``"SEQ:HASH"``).
HEAD_META_KEY = "audit_head"

#: Fields every record has (null where they do not apply): the event's.
#: ``seq``, ``prev`` and ``hash`` are added by the chain.
EVENT_FIELDS = Event._fields

#: The longest string a record holds, in characters: a longer one, at any
#: depth (a ``detail`` key or value, a message quoting what a client sent),
#: is cut to this many, ending in ``...``. Records carry values clients
#: chose, and what a client sends must not decide how large the trail grows.
MAX_TEXT = 512

#: The prefix of a keyed record's ``hash``.
KEYED = "hmac-sha256:"

_HASH = re.compile(r"(?:hmac-sha256:)?[0-9a-f]{64}")


class AuditKeyRequired(ValueError):
    """A record is sealed with a key, and none was given to check it."""


class AuditHead(NamedTuple):
    """The newest record of a chain: its sequence number and hash."""

    seq: int
    hash: str


def canonical(record: Mapping[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, ASCII only.

    ASCII-only output means a reader's encoding cannot change what was hashed,
    and ``allow_nan=False`` keeps every line valid JSON for any consumer.
    """
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def record_hash(record: Mapping[str, Any], key: bytes | None = None) -> str:
    """What ``record``'s ``hash`` must be: over the canonical bytes of the
    record without its ``hash``, SHA-256 (hex) for an unkeyed record, and
    ``hmac-sha256:HEX`` under ``key`` for a keyed one (raises
    :class:`AuditKeyRequired` if ``key`` is None)."""
    body = canonical({name: value for name, value in record.items() if name != "hash"})
    if not str(record.get("hash", "")).startswith(KEYED):
        return hashlib.sha256(body).hexdigest()
    if key is None:
        raise AuditKeyRequired("the record is sealed with a key: give the key to check it")
    return _digest(body, key)


def _digest(body: bytes, key: bytes | None) -> str:
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return KEYED + hmac.new(key, body, hashlib.sha256).hexdigest()


def seal_line(
    event: Event, seq: int, prev: str, *, key: bytes | None = None, **extra: Any
) -> tuple[bytes, str]:
    """The chained record for ``event`` as its line, and its hash (keyed
    under ``key`` when there is one).

    The record holds every event field, ``seq``, ``prev`` and any ``extra``
    fields (such as ``sample_rate``). The line is the canonical body with
    ``hash`` appended as the last key; the verifier re-canonicalizes without
    ``hash``, so the order does not matter to it.
    """
    body = None if extra else _fast_canonical_body(event, seq, prev)
    if body is None:
        body = canonical(_body(event, seq, prev, extra))
    digest = _digest(body, key)
    return body[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n', digest


def _body(event: Event, seq: int, prev: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The record without its hash, as plain JSON values with every string
    clipped to :data:`MAX_TEXT`: the definition that canonical() turns into
    the hashed bytes."""
    record = {field: _jsonable(value) for field, value in zip(EVENT_FIELDS, event, strict=True)}
    record["event"] = str(event.event)
    record["seq"] = seq
    record["prev"] = prev
    record.update({key: _jsonable(value) for key, value in extra.items()})
    return record


# -- the hot path's encoder ----------------------------------------------------
#
# ``canonical(_body(...))`` is the definition; it costs a dict, a pass of
# ``_jsonable`` over every value and a sorted ``json.dumps``: about 6 us, once
# per validation. orjson writes the same bytes in about a fifth of that time
# for the values where the two agree, which are the values of every event
# the kernel emits on the hot path: exact str, int, bool and None, floats
# that both print alike, and a ``detail`` dict of those under str keys.
# Anything else (an enum, a list, a NaN, a tiny float, a string to clip) is
# declined here and takes the definition. Two differences remain, and are
# undone below:
# orjson writes UTF-8 and a raw DEL where ``ensure_ascii`` writes escapes.
# tests/supervisor/test_audit_encoding.py checks byte equality on arbitrary
# events.

_SCALARS = frozenset({str, int, bool, type(None), EventType})
_ESCAPE_LIKE_JSON = "capsup.json_ascii"


def _escape_like_json(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: the escapes ``json.dumps(ensure_ascii=True)``
    writes for the characters ASCII cannot hold (surrogate pairs above
    U+FFFF), taken from json's own escaper so the two cannot differ."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return encode_basestring_ascii(error.object[error.start : error.end])[1:-1], error.end


codecs.register_error(_ESCAPE_LIKE_JSON, _escape_like_json)


def _prints_alike(value: object) -> bool:
    """Whether orjson writes ``value`` as canonical() does: an exact scalar
    type (a subclass may print otherwise), or a float other than those
    orjson writes differently (non-finite ones as null, magnitudes below
    1e-4 in another notation)."""
    if type(value) in _SCALARS:
        return True
    # 1e15, not 1e16 where repr turns to exponents: orjson before 3.12 writes
    # 1e16 where repr writes 1e+16.
    return type(value) is float and (value == 0.0 or 1e-4 <= abs(value) < 1e15)


def _fast_canonical_body(event: Event, seq: int, prev: str) -> bytes | None:
    """``canonical(_body(event, seq, prev, {}))``, or None if a value is one
    that orjson might write differently, or a string to clip."""
    scalars = _SCALAR_FIELDS(event)
    if not (
        _SCALARS.issuperset(map(type, scalars))
        and _prints_alike(event.time)
        and type(event.detail) is dict
    ):
        return None
    for key, item in event.detail.items():
        if type(key) is not str or not _prints_alike(item):
            return None
    record = dict(zip(EVENT_FIELDS, event, strict=False))  # same length
    record["seq"] = seq
    record["prev"] = prev
    try:
        body = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an int beyond 64 bits, a lone surrogate
        return None
    if not body.isascii():
        body = body.decode("utf-8").encode("ascii", _ESCAPE_LIKE_JSON)
    if len(body) > _CANNOT_HOLD_LONG_TEXT and _holds_long_text(scalars, event.detail):
        return None
    if b"\x7f" in body:  # DEL is ASCII, so only json escapes it
        body = body.replace(b"\x7f", b"\\u007f")
    return body


#: Every event field but ``time`` and ``detail``: those that hold scalars.
_SCALAR_FIELDS = operator.itemgetter(
    *(i for i, name in enumerate(EVENT_FIELDS) if name not in ("time", "detail"))
)

#: The longest body that cannot hold a string to clip, so the hot path's
#: records (about 480 bytes) need no look at their strings: a string takes
#: its length and two quotes, and every body also has every field's key
#: (``"key":``) and the 64 hex digits of ``prev`` in quotes.
_CANNOT_HOLD_LONG_TEXT = (
    MAX_TEXT + 2 + sum(len(key) + 3 for key in (*EVENT_FIELDS, "seq", "prev")) + 66
)


def _holds_long_text(scalars: tuple[Any, ...], detail: Mapping[str, Any]) -> bool:
    """Whether a string of an event the fast path takes is longer than
    :data:`MAX_TEXT` (its detail's keys are strings and its values scalars)."""
    return any(type(value) is str and len(value) > MAX_TEXT for value in scalars) or any(
        len(key) > MAX_TEXT or (type(value) is str and len(value) > MAX_TEXT)
        for key, value in detail.items()
    )


def format_head(head: AuditHead) -> str:
    """``SEQ:HASH``, the form the store keeps and ``--head`` accepts."""
    return f"{head.seq}:{head.hash}"


def parse_head(text: str) -> AuditHead:
    """Read ``SEQ:HASH``; raise :class:`ValueError` saying what is wrong."""
    seq_text, sep, digest = text.strip().partition(":")
    if not sep or not seq_text.isdigit() or not _HASH.fullmatch(digest):
        raise ValueError(
            f"not a chain head {text!r}: expected SEQ:HASH "
            "(HASH = 64 hex digits, after hmac-sha256: when keyed)"
        )
    return AuditHead(int(seq_text), digest)


#: Exact types that need no conversion: checked first, as most values are these.
_PLAIN = frozenset({str, int, bool})


def _jsonable(value: Any) -> Any:
    """Make an event value JSON-safe without losing what it said.

    Events carry client-influenced values; whatever they hold (tuples, sets,
    bytes, NaN, objects) the record must still serialise, or the kernel would
    fail closed on a harmless oddity. Unknown types become their ``repr``.
    """
    if isinstance(value, str):
        return clip(value)
    if type(value) in _PLAIN or value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {clip(_text(key)): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(item) for item in value), key=repr)
    if isinstance(value, bytes):
        return clip(value.decode("utf-8", "backslashreplace"))
    return clip(_text(value, repr))


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, cut to ``limit`` characters (ending in ``...``) if it is
    longer: what every record and every message quoting a client's choice
    holds of it. A ``str`` subclass comes out a plain ``str``."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _text(value: object, how: Callable[[object], str] = str) -> str:
    """``how(value)``, or a stand-in naming its type if that raises: sealing
    a record must not fail on a value that cannot say what it is, or the
    batch it waits in could not be written."""
    try:
        return how(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"
