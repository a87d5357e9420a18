"""The audit record: its fields, its canonical bytes and its place in the chain.

Writing (:mod:`capsup.supervisor.audit`) and checking
(:mod:`capsup.supervisor.audit_verify`) must agree byte for byte on what is
hashed, so both take it from here and nowhere else. A record is a flat JSON
object; its ``hash`` is the SHA-256 of the canonical JSON of every other field
(``prev`` included), and ``prev`` is the ``hash`` of the record before it, so
changing, removing or moving any record breaks every link after it.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from types import MappingProxyType
from typing import Any, NamedTuple

from capsup.supervisor.events import Event, EventType

__all__ = [
    "EVENT_FIELDS",
    "GENESIS",
    "HEAD_META_KEY",
    "AuditHead",
    "canonical",
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

_HEX64 = re.compile(r"[0-9a-f]{64}")


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


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the canonical bytes of ``record`` without its ``hash``."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def seal_line(event: Event, seq: int, prev: str, **extra: Any) -> tuple[bytes, str]:
    """The chained record for ``event`` as its line, and its hash.

    The record holds every event field, ``seq``, ``prev`` and any ``extra``
    fields (such as ``sample_rate``). The line is the canonical body with
    ``hash`` appended as the last key; the verifier re-canonicalizes without
    ``hash``, so the order does not matter to it.
    """
    body = None if extra else _fast_canonical_body(event, seq, prev)
    if body is None:
        body = canonical(_body(event, seq, prev, extra))
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n', digest


def _body(event: Event, seq: int, prev: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The record without its hash, as plain JSON values: the definition that
    canonical() turns into the hashed bytes."""
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
# per validation. The encoder below writes the same bytes directly for events
# whose values are plain (str, int, float, bool, None, and maps of those with
# str keys), which is every event the kernel emits on the hot path,
# and declines (returns None) for anything else, which then takes the
# definition. tests/supervisor/test_audit_encoding.py checks byte equality on
# arbitrary events.


def _json_float(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else encode_basestring_ascii(repr(value))


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


def _json_null(value: None) -> str:
    return "null"


#: JSON text of a plain value, by exact type: a subclass (an enum, say) could
#: print differently, so it is not plain and takes the definition. EventType
#: is the exception: our own StrEnum, written as its value either way.
_PLAIN_JSON: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    EventType: encode_basestring_ascii,
    int: int.__repr__,
    float: _json_float,
    bool: _json_bool,
    type(None): _json_null,
}


def _json_map(value: Mapping[str, Any]) -> str:
    """A map as canonical() writes it: keys sorted, values encoded in turn
    (so a map nested in ``detail`` is fine; a list is not plain)."""
    enc = _PLAIN_JSON
    parts = []
    for key in sorted(value, key=_exact_str):
        item = value[key]
        parts.append(f"{encode_basestring_ascii(key)}:{enc[type(item)](item)}")
    return "{" + ",".join(parts) + "}"


def _exact_str(key: object) -> str:
    """The sort key of a map key, refusing anything but an exact str (canonical()
    writes ``str(key)``, which for anything else may sort or print differently)."""
    if type(key) is not str:
        raise KeyError(type(key))
    return key


_PLAIN_JSON.update({dict: _json_map, MappingProxyType: _json_map})


#: The record's fields: the event's, then the chain's. canonical() writes
#: them in sorted key order; the fast encoder picks them from
#: ``(*event, seq, prev)`` in that order.
_RECORD_FIELDS = (*EVENT_FIELDS, "seq", "prev")
_IN_SORTED_ORDER = operator.itemgetter(*(_RECORD_FIELDS.index(k) for k in sorted(_RECORD_FIELDS)))
#: The canonical body with a ``%s`` for each value, in sorted key order.
_BODY_FORMAT = (
    "{" + ",".join(f"{encode_basestring_ascii(key)}:%s" for key in sorted(_RECORD_FIELDS)) + "}"
)


def _fast_canonical_body(event: Event, seq: int, prev: str) -> bytes | None:
    """``canonical(_body(event, seq, prev, {}))``, or None if a value is not plain."""
    enc = _PLAIN_JSON
    try:
        texts = tuple([enc[type(value)](value) for value in _IN_SORTED_ORDER((*event, seq, prev))])
    except KeyError:  # a value whose exact type _PLAIN_JSON does not know
        return None
    return (_BODY_FORMAT % texts).encode("ascii")


def format_head(head: AuditHead) -> str:
    """``SEQ:HASH``, the form the store keeps and ``--head`` accepts."""
    return f"{head.seq}:{head.hash}"


def parse_head(text: str) -> AuditHead:
    """Read ``SEQ:HASH``; raise :class:`ValueError` saying what is wrong."""
    seq_text, sep, digest = text.strip().partition(":")
    if not sep or not seq_text.isdigit() or not _HEX64.fullmatch(digest):
        raise ValueError(f"not a chain head {text!r}: expected SEQ:HASH (HASH = 64 hex digits)")
    return AuditHead(int(seq_text), digest)


#: Exact types that need no conversion: checked first, as most values are these.
_PLAIN = frozenset({str, int, bool})


def _jsonable(value: Any) -> Any:
    """Make an event value JSON-safe without losing what it said.

    Events carry client-influenced values; whatever they hold (tuples, sets,
    bytes, NaN, objects) the record must still serialise, or the kernel would
    fail closed on a harmless oddity. Unknown types become their ``repr``.
    """
    if type(value) in _PLAIN or value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(item) for item in value), key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)
