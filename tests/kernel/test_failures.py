"""What the kernel does when the things around it fail, or are abused."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from capsup.agents import errors
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
from capsup.supervisor.store import Store
from capsup.validators import Decision, FilesystemValidator, Use, ValidatorRegistry
from kernel_world import T0, World


def tree(w: World, kernel: Kernel) -> list[str]:
    root = kernel.request(
        w.alice, CapabilityRequest(f"file://{w.root}/data", ["read"]), now=T0, trace_id="g"
    )
    ids = [root.id]
    for _ in range(3):
        ids.append(
            kernel.delegate(w.alice, ids[-1], Delegation(w.alice.id), now=T0, trace_id="d").id
        )
    return ids


def test_a_failing_trail_cannot_leave_part_of_a_subtree_valid(world: World) -> None:
    failing = {"on": False}

    def sink(event: Event) -> None:
        if failing["on"] and event.event == EventType.CAPABILITY_REVOKED:
            raise errors.AuditUnavailable("disk full")
        world.recorder(event)

    kernel = Kernel(
        store=Store(":memory:"),
        policy=world.config.policy,
        validators=world.config.validators,
        sink=sink,
    )
    kernel.start(now=T0, trace_id="s")
    kernel.register_principal(world.alice)
    ids = tree(world, kernel)
    failing["on"] = True
    with pytest.raises(errors.AuditUnavailable):
        kernel.revoke(world.alice, ids[0], now=T0, trace_id="r")
    for cap_id in ids:
        with pytest.raises(errors.Revoked):
            kernel.validate(
                world.alice, cap_id, Use("read", str(world.root / "data")), now=T0, trace_id="v"
            )


def test_a_failing_store_cannot_keep_a_revoked_capability_valid(world: World) -> None:
    ids = tree(world, world.kernel)
    world.kernel.store.close()  # every write now fails
    with pytest.raises(errors.InternalError):
        world.kernel.revoke(world.alice, ids[1], now=T0, trace_id="r")
    assert world.kernel.get(ids[0]) is not None
    assert all(world.kernel.get(cap_id) is None for cap_id in ids[1:])


def test_asking_again_never_buys_a_fresh_rate(world: World) -> None:
    url = "https://api.example.com/repos/a"
    allowed = 0
    for _ in range(4):
        cap = world.kernel.request(
            world.alice,
            CapabilityRequest("https://api.example.com/repos", ["GET"]),
            now=T0,
            trace_id="g",
        )
        for _ in range(5):
            try:
                world.kernel.validate(world.alice, cap.id, Use("GET", url), now=T0, trace_id="v")
                allowed += 1
            except errors.RateLimited:
                pass
    assert allowed == 5  # the ceiling's 5 per second, shared by every grant under it


def test_metadata_the_store_cannot_hold_is_refused_before_anything_is_recorded(
    world: World,
) -> None:
    before = len(world.recorder.of(EventType.CAPABILITY_GRANTED))
    with pytest.raises(errors.BadRequest, match="metadata"):
        world.kernel.request(
            world.alice,
            CapabilityRequest(f"file://{world.root}/data", ["read"], metadata={"b": b"\x00"}),
            now=T0,
            trace_id="g",
        )
    assert len(world.recorder.of(EventType.CAPABILITY_GRANTED)) == before
    assert world.kernel.live_count == 0


def test_one_holder_cannot_mint_without_bound(world: World) -> None:
    kernel = Kernel(
        store=Store(":memory:"),
        policy=world.config.policy,
        validators=world.config.validators,
        max_per_holder=3,
    )
    kernel.start(now=T0, trace_id="s")
    kernel.register_principal(world.alice)
    request = CapabilityRequest(f"file://{world.root}/data", ["read"])
    caps = kernel.request_for_plan(world.alice, [request] * 3, now=T0, trace_id="g")
    with pytest.raises(errors.DeniedByPolicy, match="more than 3"):
        kernel.request(world.alice, request, now=T0, trace_id="g")
    with pytest.raises(errors.DeniedByPolicy, match="more than 3"):
        kernel.delegate(world.alice, caps[0].id, Delegation(world.alice.id), now=T0, trace_id="d")
    kernel.revoke(world.alice, caps[0].id, now=T0, trace_id="r")
    kernel.request(world.alice, request, now=T0, trace_id="g")


class BrokenFiles(FilesystemValidator):
    """A validator with a bug: its check raises instead of deciding, and so
    does its operation spelling for anything it was not built for."""

    def check(self, resource: str, constraints: Mapping[str, Any], use: Use) -> Decision:
        raise RuntimeError("bug in a validator")

    def normalize_operations(self, operations: Iterable[object]) -> frozenset[str]:
        names = list(operations)
        if names != ["read"]:
            raise KeyError(names)
        return frozenset({"read"})


def test_a_validator_that_raises_denies_and_is_recorded(world: World) -> None:
    kernel = Kernel(
        store=Store(":memory:"),
        policy=world.config.policy,
        validators=ValidatorRegistry([BrokenFiles()]),
        sink=world.recorder,
    )
    kernel.start(now=T0, trace_id="s")
    kernel.register_principal(world.alice)
    cap = kernel.request(
        world.alice, CapabilityRequest(f"file://{world.root}/data", ["read"]), now=T0, trace_id="g"
    )
    target = f"file://{world.root}/data/notes.txt"
    with pytest.raises(errors.ConstraintViolation) as raised:
        kernel.validate(world.alice, cap.id, Use("read", target), now=T0, trace_id="v1")
    assert raised.value.reason == "validator_error"
    with pytest.raises(errors.OperationNotAllowed):
        kernel.validate(world.alice, cap.id, Use("READ", target), now=T0, trace_id="v2")
    failed = world.recorder.of(EventType.CAPABILITY_VALIDATION_FAILED)
    assert [e.trace_id for e in failed] == ["v1", "v2"]
    (violation,) = world.recorder.of(EventType.CONSTRAINT_VIOLATION)
    assert violation.reason == "validator_error"
    assert not world.recorder.of(EventType.CAPABILITY_VALIDATED)
