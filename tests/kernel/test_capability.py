"""The capability's wire form and the error tree."""

from __future__ import annotations

import pickle

import msgpack
import pytest
from capsup.agents import errors
from capsup.agents.capability import Capability, new_capability_id
from hypothesis import given
from hypothesis import strategies as st

CAP = Capability(
    id=new_capability_id(),
    resource="https://api.example.com/repos",
    operations=frozenset({"GET", "POST"}),
    constraints={"rate_limit": {"requests": 10, "per_seconds": 1}},
    holder="agent-1",
    granted_at=1.5,
    expires_at=3601.5,
    parent_id=None,
    delegation_depth=2,
    metadata={"purpose": "triage"},
)


def test_wire_round_trip_through_msgpack() -> None:
    wire = CAP.to_wire()
    again = Capability.from_wire(msgpack.unpackb(msgpack.packb(wire), raw=False))
    assert again == CAP


@given(
    ops=st.sets(st.sampled_from(["read", "write", "list"]), min_size=1),
    depth=st.integers(0, 64),
    times=st.tuples(st.floats(0, 1e10), st.floats(0, 1e10)),
    meta=st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5), max_size=3
    ),
)
def test_any_capability_round_trips(ops, depth, times, meta) -> None:
    cap = Capability(
        "cap_x", "file:///a", frozenset(ops), {}, "h", times[0], times[1], "cap_p", depth, meta
    )
    assert Capability.from_wire(msgpack.unpackb(msgpack.packb(cap.to_wire()))) == cap


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: w.pop("holder"),
        lambda w: w.update(extra=1),
        lambda w: w.update(operations="read"),
        lambda w: w.update(operations=[1]),
        lambda w: w.update(delegation_depth=-1),
        lambda w: w.update(delegation_depth=True),
        lambda w: w.update(expires_at="soon"),
        lambda w: w.update(expires_at=float("inf")),
        lambda w: w.update(id=""),
        lambda w: w.update(constraints=[]),
        lambda w: w.update(metadata={1: 2}),
        lambda w: w.update(parent_id=5),
    ],
)
def test_malformed_maps_are_rejected_whole(mutate) -> None:
    wire = CAP.to_wire()
    mutate(wire)
    with pytest.raises(errors.BadRequest):
        Capability.from_wire(wire)


def test_not_a_map() -> None:
    with pytest.raises(errors.BadRequest):
        Capability.from_wire([1, 2])


def test_ids_have_enough_entropy() -> None:
    ids = {new_capability_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= len("cap_") + 32 for i in ids)  # 24 bytes urlsafe = 32 chars


def test_errors_pickle_with_their_fields() -> None:
    error = errors.ConstraintViolation("outside", reason="path_outside_root", capability_id="c1")
    error.trace_id = "t1"
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is errors.ConstraintViolation
    assert (again.reason, again.capability_id, again.trace_id) == ("path_outside_root", "c1", "t1")
    assert str(again) == "constraint_violation: outside"


def test_every_code_maps_back_to_its_class() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and "code" in cls.__dict__:
            assert errors.error_class_for_code(cls.code) is cls
    assert errors.error_class_for_code("no_such_code") is errors.CapsupError
