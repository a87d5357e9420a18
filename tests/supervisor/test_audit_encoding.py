"""The audit trail's fast record encoder writes exactly the canonical bytes.

``seal_line`` writes events whose values are plain with orjson, because the
definition (``canonical(_body(...))``) costs a fifth of a validation. A single differing byte would make ``capsup audit verify`` report
tampering on an honest trail, so the two are compared on arbitrary events,
hostile values included, and a record from each path is verified.
"""

from __future__ import annotations

import enum
import hashlib
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

from capsup.supervisor.audit import AuditLog, verify
from capsup.supervisor.audit_record import (
    GENESIS,
    _body,
    _fast_canonical_body,
    canonical,
    record_hash,
    seal_line,
)
from capsup.supervisor.events import Event, EventType
from hypothesis import given, settings
from hypothesis import strategies as st


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def reference_line(event: Event, seq: int, prev: str, **extra: Any) -> tuple[bytes, str]:
    """What seal_line must produce, from the definition alone."""
    body = canonical(_body(event, seq, prev, extra))
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"' + digest.encode() + b'"}\n', digest


# Text as clients may send it: any code point, lone surrogates, quotes,
# backslashes, control characters and non-ASCII.
texts = st.text(st.characters(), max_size=40)
plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
odd = st.one_of(
    st.binary(max_size=10),
    st.tuples(plain, plain),
    st.frozensets(st.integers(), max_size=3),
    st.just(Colour.RED),
    st.just(Level.HIGH),
    st.lists(plain, max_size=3),
    st.dictionaries(texts, plain, max_size=3),
)
values = st.one_of(plain, odd)
details = st.one_of(
    st.dictionaries(texts, plain, max_size=5),
    st.builds(MappingProxyType, st.dictionaries(texts, plain, max_size=3)),
    st.dictionaries(st.one_of(texts, st.integers()), values, max_size=4),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        draw(st.sampled_from(list(EventType))),
        draw(st.one_of(st.floats(allow_nan=True), st.integers(), st.none())),
        draw(st.one_of(texts, values)),
        principal=draw(values),
        pid=draw(values),
        capability_id=draw(values),
        parent_id=draw(values),
        resource=draw(values),
        operation=draw(values),
        decision=draw(values),
        reason=draw(values),
        detail=draw(details),
    )


@settings(max_examples=600)
@given(events(), st.integers(min_value=1, max_value=2**63), st.sampled_from([GENESIS, "ab" * 32]))
def test_seal_line_writes_the_canonical_bytes_for_any_event(
    event: Event, seq: int, prev: str
) -> None:
    assert seal_line(event, seq, prev) == reference_line(event, seq, prev)


@given(events(), st.floats(min_value=0.0, max_value=1.0))
def test_extra_fields_take_the_definition(event: Event, rate: float) -> None:
    assert seal_line(event, 7, GENESIS, sample_rate=rate) == reference_line(
        event, 7, GENESIS, sample_rate=rate
    )


def validated_event(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "principal": "researcher-5f0c2a",
        "pid": 31337,
        "capability_id": "cap_Zx9",
        "parent_id": None,
        "resource": "file:///srv/ws",
        "operation": "read",
        "decision": "allow",
        "detail": {"holder": "researcher-5f0c2a", "target": "file:///srv/ws/\u00e9t\u00e9.txt"},
    }
    fields.update(changes)
    return Event(EventType.CAPABILITY_VALIDATED, 1_800_000_000.25, "4f2a-1c", **fields)


def test_the_kernels_validation_records_take_the_fast_path() -> None:
    # The point of the encoder: a validation's record never needs the definition.
    event = validated_event()
    fast = _fast_canonical_body(event, 12, GENESIS)
    assert fast is not None
    assert fast == canonical(_body(event, 12, GENESIS, {}))


def test_a_value_that_is_not_plain_takes_the_definition() -> None:
    assert _fast_canonical_body(validated_event(pid=Level.HIGH), 1, GENESIS) is None
    assert _fast_canonical_body(validated_event(detail={"ids": ["a"]}), 1, GENESIS) is None
    assert _fast_canonical_body(validated_event(detail={1: "x"}), 1, GENESIS) is None


def test_values_orjson_writes_otherwise_take_the_definition() -> None:
    # orjson writes NaN as null and 1e-05 as 0.00001; canonical() writes
    # "nan" and 1e-05. Both would read back as a different record.
    # orjson before 3.12 also wrote 1e16 for repr's 1e+16.
    for odd in (float("nan"), float("inf"), 1e-05, -3.5e-07, 1e16, 2.5e15):
        assert _fast_canonical_body(validated_event(detail={"x": odd}), 1, GENESIS) is None
    assert _fast_canonical_body(validated_event(pid=2**70), 1, GENESIS) is None


def test_text_is_escaped_as_json_escapes_it() -> None:
    # orjson writes UTF-8 and a raw DEL; the canonical form escapes both.
    target = "file:///srv/ws/\x7f\u00e9\U0001f600\u2028\x00.txt"
    event = validated_event(detail={"holder": "researcher-5f0c2a", "target": target})
    fast = _fast_canonical_body(event, 3, GENESIS)
    assert fast is not None
    assert fast == canonical(_body(event, 3, GENESIS, {}))
    assert b"\\u007f\\u00e9\\ud83d\\ude00\\u2028\\u0000" in fast


def test_records_from_both_paths_verify_in_one_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log(validated_event())  # fast path
        log(validated_event(detail={"revoked": ["a", "b"], "n": float("nan")}))  # definition
        log(validated_event(operation=Colour.RED))  # definition
    report = verify([path])
    assert report.ok, report
    assert report.records == 3
    for line in path.read_bytes().splitlines():
        record = json.loads(line)
        assert record_hash(record) == record["hash"]
