"""request, request_for_plan and validate: every outcome and its error code."""

from __future__ import annotations

import dataclasses

import pytest
from capsup.agents import errors
from capsup.supervisor.events import EventType
from capsup.supervisor.kernel import CapabilityRequest, Delegation
from capsup.validators import Use, paths
from kernel_world import T0, World


def grant(w: World, resource: str, ops: list[str], **kw: object):
    return w.kernel.request(
        w.alice, CapabilityRequest(resource, ops, **kw), now=T0, trace_id="t-grant"
    )


def test_grant_inside_a_ceiling(world: World) -> None:
    cap = grant(world, f"file://{world.root}/data/public", ["read"])
    assert cap.holder == world.alice.id
    assert cap.operations == frozenset({"read"})
    assert cap.expires_at == T0 + 3600  # default ttl
    assert cap.delegation_depth == 3  # the ceiling's depth by default
    assert cap.id.startswith("cap_") and len(cap.id) >= 32
    assert [e.event for e in world.recorder.events[-2:]] == [
        EventType.CAPABILITY_REQUESTED,
        EventType.CAPABILITY_GRANTED,
    ]
    assert all(e.trace_id == "t-grant" for e in world.recorder.events[-2:])


def test_ids_are_unique_and_not_derived_from_content(world: World) -> None:
    ids = {grant(world, f"file://{world.root}/data", ["read"]).id for _ in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize(
    ("resource", "ops", "extra"),
    [
        ("file:///etc", ["read"], {}),  # outside every ceiling
        ("{root}/data-evil", ["read"], {}),  # prefix, not a segment
        ("{root}/data", ["delete"], {}),  # operation not in the ceiling
        ("{root}/data", ["read"], {"ttl": 7201}),  # longer than max_ttl
        ("{root}/data", ["read"], {"constraints": {"max_delegation_depth": 4}}),
        ("https://api.example.com/repository", ["GET"], {}),
        ("https://api.example.com/repos", ["DELETE"], {}),
        ("db://main", ["delete"], {}),
    ],
)
def test_requests_outside_policy_are_denied(
    world: World, resource: str, ops: list[str], extra: dict
) -> None:
    if resource.startswith("{root}"):
        resource = "file://" + resource.format(root=world.root)
    with pytest.raises(errors.DeniedByPolicy):
        grant(world, resource, ops, **extra)
    assert world.recorder.events[-1].event == EventType.CAPABILITY_DENIED
    assert world.recorder.events[-1].reason == "denied_by_policy"
    assert world.kernel.live_count == 0


def test_a_principal_without_policy_gets_nothing(world: World) -> None:
    with pytest.raises(errors.DeniedByPolicy, match="no policy entry"):
        world.kernel.request(
            world.mallory,
            CapabilityRequest(f"file://{world.root}/data", ["read"]),
            now=T0,
            trace_id="t",
        )


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (CapabilityRequest("gopher://x/y", ["read"]), errors.InvalidResource),
        (CapabilityRequest("not a uri", ["read"]), errors.InvalidResource),
        (CapabilityRequest("file:///tmp", ["fly"]), errors.InvalidOperation),
        (CapabilityRequest("file:///tmp", []), errors.InvalidOperation),
        (CapabilityRequest("file:///tmp", "read"), errors.InvalidOperation),
        # Constraints are parsed once a ceiling covers the resource ({root}/data).
        (CapabilityRequest("{root}/data", ["read"], {"bogus": 1}), errors.InvalidConstraints),
        (CapabilityRequest("{root}/data", ["read"], {"max_bytes": "x"}), errors.InvalidConstraints),
        (
            CapabilityRequest("{root}/data", ["read"], {"max_delegation_depth": -1}),
            errors.InvalidConstraints,
        ),
        (CapabilityRequest("file:///tmp", ["read"], ttl=-5), errors.BadRequest),
        (CapabilityRequest("file:///tmp", ["read"], ttl=float("nan")), errors.BadRequest),
        (CapabilityRequest("db://unknown", ["select"]), errors.InvalidResource),
    ],
)
def test_malformed_requests_get_a_precise_error(
    world: World, request_: CapabilityRequest, error: type[Exception]
) -> None:
    if request_.resource.startswith("{root}"):
        resource = "file://" + request_.resource.format(root=world.root)
        request_ = dataclasses.replace(request_, resource=resource)
    with pytest.raises(error):
        world.kernel.request(world.alice, request_, now=T0, trace_id="t")
    assert world.kernel.live_count == 0
    assert world.recorder.events[-1].event == EventType.CAPABILITY_DENIED


def test_constraints_outside_every_ceiling_are_never_parsed(world: World) -> None:
    """Parsing constraints compiles deny globs, tens of milliseconds for a
    long hostile list: a principal whom no ceiling covers there is denied
    by policy before the supervisor spends anything on them."""
    compiled = paths._compile.cache_info().misses
    hostile = {"deny": [f"[{chr(0x100 + i)}-{chr(0x1FF + i)}]x{i}" for i in range(200)]}
    for principal, resource in (
        (world.mallory, f"file://{world.root}/data"),  # no policy entry at all
        (world.alice, "file:///etc"),  # outside alice's ceilings
    ):
        with pytest.raises(errors.DeniedByPolicy):
            world.kernel.request(
                principal, CapabilityRequest(resource, ["read"], hostile), now=T0, trace_id="t"
            )
    assert paths._compile.cache_info().misses == compiled
    with pytest.raises(errors.InvalidConstraints, match="deny"):
        grant(world, f"file://{world.root}/data", ["read"], constraints={"deny": ["[z-a]"]})


def test_grant_meets_the_ceiling_constraints(world: World) -> None:
    cap = grant(world, "https://api.example.com/repos/capsup", ["GET"])
    assert cap.constraints["rate_limit"] == {"requests": 5, "per_seconds": 1}
    tighter = grant(
        world,
        "https://api.example.com/repos",
        ["GET"],
        constraints={"rate_limit": {"requests": 2, "per_seconds": 10}},
    )
    assert tighter.constraints["rate_limit"] == {"requests": 2, "per_seconds": 10}


def test_plan_is_all_or_nothing(world: World) -> None:
    good = CapabilityRequest(f"file://{world.root}/data", ["read"])
    bad = CapabilityRequest("file:///etc", ["read"])
    with pytest.raises(errors.DeniedByPolicy):
        world.kernel.request_for_plan(world.alice, [good, good, bad], now=T0, trace_id="p")
    assert world.kernel.live_count == 0
    assert world.kernel.list_capabilities(world.alice, now=T0) == []
    caps = world.kernel.request_for_plan(world.alice, [good, good], now=T0, trace_id="p")
    assert len(caps) == 2 and world.kernel.live_count == 2


def validate(w: World, cap_id: str, op: str, target: str, principal=None, now: float = T0):
    return w.kernel.validate(principal or w.alice, cap_id, Use(op, target), now=now, trace_id="v")


def test_validate_allows_inside_and_checks_in_order(world: World) -> None:
    cap = grant(world, f"file://{world.root}/data", ["read"], ttl=100)
    assert validate(world, cap.id, "read", f"{world.root}/data/notes.txt") == cap
    assert world.recorder.events[-1].event == EventType.CAPABILITY_VALIDATED

    with pytest.raises(errors.UnknownCapability):
        validate(world, "cap_forged", "read", f"{world.root}/data/notes.txt")
    with pytest.raises(errors.OperationNotAllowed):
        validate(world, cap.id, "write", f"{world.root}/data/notes.txt")
    with pytest.raises(errors.ConstraintViolation) as info:
        validate(world, cap.id, "read", "/etc/passwd")
    assert info.value.reason
    # the holder check comes before the operation check: a thief learns nothing
    with pytest.raises(errors.NotHolder):
        validate(world, cap.id, "write", "/etc/passwd", principal=world.mallory)
    with pytest.raises(errors.Expired):
        validate(world, cap.id, "read", f"{world.root}/data/notes.txt", now=T0 + 100)
    # expired comes before not_holder, revoked before expired
    with pytest.raises(errors.Expired):
        validate(world, cap.id, "read", "/x", principal=world.mallory, now=T0 + 200)


def test_revoked_beats_expired_and_not_holder(world: World) -> None:
    cap = grant(world, f"file://{world.root}/data", ["read"], ttl=100)
    world.kernel.revoke(world.alice, cap.id, now=T0, trace_id="r")
    with pytest.raises(errors.Revoked):
        validate(world, cap.id, "read", "/x", principal=world.mallory, now=T0 + 500)


def test_stolen_id_is_a_security_violation(world: World) -> None:
    cap = grant(world, f"file://{world.root}/data", ["read"])
    with pytest.raises(errors.NotHolder):
        validate(world, cap.id, "read", f"{world.root}/data/notes.txt", principal=world.mallory)
    violations = world.recorder.of(EventType.SECURITY_VIOLATION)
    assert violations[-1].detail["kind"] == "stolen_id"
    assert violations[-1].principal == world.mallory.id


def test_operation_spelling_is_canonicalized(world: World) -> None:
    cap = grant(world, "https://api.example.com/repos", ["GET"])
    validate(world, cap.id, "get", "https://api.example.com/repos/x")


def test_rate_limit_is_a_token_bucket(world: World) -> None:
    cap = grant(world, "https://api.example.com/repos", ["GET"])
    url = "https://api.example.com/repos/a"
    for _ in range(5):
        validate(world, cap.id, "GET", url)
    with pytest.raises(errors.RateLimited):
        validate(world, cap.id, "GET", url)
    validate(world, cap.id, "GET", url, now=T0 + 0.2)  # one token back after 1/5 s


def test_delegation_never_multiplies_a_rate(world: World) -> None:
    cap = grant(world, "https://api.example.com/repos", ["GET"])
    url = "https://api.example.com/repos/a"
    children = [
        world.kernel.delegate(
            world.alice, cap.id, Delegation(to=world.alice.id), now=T0, trace_id="d"
        )
        for _ in range(3)
    ]
    allowed = 0
    for child in children * 3:
        try:
            validate(world, child.id, "GET", url)
            allowed += 1
        except errors.RateLimited:
            pass
    assert allowed == 5


def test_database_validation_goes_through_the_sql_validator(world: World) -> None:
    cap = grant(world, "db://main", ["select"])
    world.kernel.validate(
        world.alice,
        cap.id,
        Use("select", "db://main", statement="SELECT * FROM users"),
        now=T0,
        trace_id="v",
    )
    with pytest.raises(errors.ConstraintViolation):
        world.kernel.validate(
            world.alice,
            cap.id,
            Use("select", "db://main", statement="SELECT * FROM secrets"),
            now=T0,
            trace_id="v",
        )


def test_an_unwritable_trail_grants_nothing(world: World) -> None:
    from capsup.agents.errors import AuditUnavailable
    from capsup.supervisor.events import Event

    def broken(event: Event) -> None:
        if event.event in (EventType.CAPABILITY_GRANTED, EventType.CAPABILITY_DELEGATED):
            raise AuditUnavailable("disk full")
        world.recorder(event)

    world.kernel._sink = broken
    with pytest.raises(AuditUnavailable):
        grant(world, f"file://{world.root}/data", ["read"])
    assert world.kernel.live_count == 0
    assert world.reopen().live_count == 0
