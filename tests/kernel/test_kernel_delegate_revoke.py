"""delegate, revoke, revoke_all_for_agent, expiry, tombstones and restarts."""

from __future__ import annotations

import pytest
from capsup.agents import errors
from capsup.supervisor.events import EventType
from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
from capsup.supervisor.principal import OPERATOR
from capsup.supervisor.store import Store
from capsup.validators import Use
from kernel_world import T0, World


def root_cap(w: World, ttl: float = 1000, depth: int | None = None):
    constraints = None if depth is None else {"max_delegation_depth": depth}
    return w.kernel.request(
        w.alice,
        CapabilityRequest(f"file://{w.root}/data", ["read", "list"], constraints, ttl=ttl),
        now=T0,
        trace_id="g",
    )


def delegate(w: World, cap_id: str, principal=None, **kw):
    kw.setdefault("to", w.bob.id)
    return w.kernel.delegate(
        principal or w.alice, cap_id, Delegation(**kw), now=T0 + 1, trace_id="d"
    )


def test_delegation_narrows_and_inherits(world: World) -> None:
    parent = root_cap(world)
    child = delegate(
        world, parent.id, resource=f"file://{world.root}/data/public", operations=["read"], ttl=10
    )
    assert child.holder == world.bob.id
    assert child.parent_id == parent.id
    assert child.operations == frozenset({"read"})
    assert child.delegation_depth == parent.delegation_depth - 1
    assert child.expires_at == T0 + 1 + 10
    inherited = delegate(world, parent.id)
    assert inherited.resource == parent.resource
    assert inherited.operations == parent.operations
    assert inherited.expires_at == parent.expires_at
    world.kernel.validate(
        world.bob,
        child.id,
        Use("read", f"{world.root}/data/public/readme.txt"),
        now=T0 + 2,
        trace_id="v",
    )
    assert world.recorder.of(EventType.CAPABILITY_DELEGATED)[-1].detail["to"] == world.bob.id


@pytest.mark.parametrize(
    "widening",
    [
        {"resource": "file:///etc"},
        {"resource": "file://{root}/data-evil"},
        {"resource": "file://{root}"},
        {"resource": "https://api.example.com/repos"},
        {"operations": ["read", "write"]},
        {"operations": ["delete"]},
        {"ttl": 5000},
        {"constraints": {"max_delegation_depth": 3}},
    ],
)
def test_widening_is_refused_not_clipped(world: World, widening: dict) -> None:
    parent = root_cap(world)
    if "resource" in widening:
        widening["resource"] = widening["resource"].format(root=world.root)
    with pytest.raises(errors.DelegationWidening):
        delegate(world, parent.id, **widening)
    assert world.kernel.live_count == 1
    assert world.recorder.of(EventType.SECURITY_VIOLATION)[-1].detail["kind"] == (
        "delegation_widening"
    )


def test_a_looser_constraint_is_widening(world: World) -> None:
    parent = world.kernel.request(
        world.alice,
        CapabilityRequest(f"file://{world.root}/data", ["read"], {"max_bytes": 100}),
        now=T0,
        trace_id="g",
    )
    with pytest.raises(errors.DelegationWidening, match="max_bytes"):
        delegate(world, parent.id, constraints={"max_bytes": 1000})
    child = delegate(world, parent.id, constraints={"max_bytes": 10})
    assert child.constraints["max_bytes"] == 10


def test_depth_runs_out(world: World) -> None:
    cap = root_cap(world, depth=1)
    child = delegate(world, cap.id, to=world.alice.id)
    assert child.delegation_depth == 0
    with pytest.raises(errors.DelegationDepthExhausted):
        delegate(world, child.id)


def test_only_the_holder_delegates_and_only_to_known_agents(world: World) -> None:
    cap = root_cap(world)
    with pytest.raises(errors.NotHolder):
        delegate(world, cap.id, principal=world.mallory, to=world.mallory.id)
    with pytest.raises(errors.UnknownAgent):
        delegate(world, cap.id, to="agent-nobody")


def test_revoke_cascades_through_the_whole_subtree(world: World) -> None:
    root = root_cap(world)
    a = delegate(world, root.id, to=world.alice.id)
    b = delegate(world, a.id, to=world.bob.id)
    c = delegate(world, root.id, to=world.bob.id)
    other = root_cap(world)
    revoked = world.kernel.revoke(world.alice, a.id, now=T0 + 2, trace_id="rv")
    assert set(revoked) == {a.id, b.id}
    assert world.kernel.get(c.id) is not None and world.kernel.get(other.id) is not None
    events = world.recorder.of(EventType.CAPABILITY_REVOKED)
    assert {e.capability_id for e in events} == {a.id, b.id}
    assert {e.trace_id for e in events} == {"rv"}
    with pytest.raises(errors.Revoked):
        world.kernel.validate(
            world.bob, b.id, Use("read", str(world.root / "data")), now=T0 + 3, trace_id="v"
        )


def test_who_may_revoke(world: World) -> None:
    root = root_cap(world)
    child = delegate(world, root.id, to=world.bob.id)
    grandchild = delegate(world, child.id, principal=world.bob, to=world.bob.id)
    with pytest.raises(errors.NotAuthorized):
        world.kernel.revoke(world.bob, root.id, now=T0, trace_id="r")
    with pytest.raises(errors.NotAuthorized):
        world.kernel.revoke(world.mallory, grandchild.id, now=T0, trace_id="r")
    # the holder of an ancestor may revoke a descendant it does not hold
    assert world.kernel.revoke(world.alice, grandchild.id, now=T0, trace_id="r") == [grandchild.id]
    assert world.kernel.revoke(OPERATOR, root.id, now=T0, trace_id="r") == [root.id, child.id]
    with pytest.raises(errors.Revoked):
        world.kernel.revoke(world.alice, root.id, now=T0, trace_id="r")
    with pytest.raises(errors.UnknownCapability):
        world.kernel.revoke(world.alice, "cap_nope", now=T0, trace_id="r")


def test_revoke_all_for_agent(world: World) -> None:
    root = root_cap(world)
    to_bob = delegate(world, root.id)
    from_bob = delegate(world, to_bob.id, principal=world.bob, to=world.alice.id)
    keep = root_cap(world)
    world.kernel.register_principal(world.bob, parent=world.alice.id)
    with pytest.raises(errors.NotAuthorized):
        world.kernel.revoke_all_for_agent(world.mallory, world.bob.id, now=T0, trace_id="x")
    revoked = world.kernel.revoke_all_for_agent(
        world.alice, world.bob.id, now=T0, trace_id="x", cause="holder_exited"
    )
    assert set(revoked) == {to_bob.id, from_bob.id}
    assert world.kernel.get(keep.id) is not None
    assert world.recorder.of(EventType.CAPABILITY_REVOKED)[-1].detail["cause"] == "holder_exited"
    with pytest.raises(errors.UnknownAgent):
        world.kernel.revoke_all_for_agent(OPERATOR, "agent-ghost", now=T0, trace_id="x")


def test_list_shows_only_own_live_capabilities(world: World) -> None:
    mine = root_cap(world, ttl=10)
    delegate(world, mine.id)
    assert [c.id for c in world.kernel.list_capabilities(world.alice, now=T0)] == [mine.id]
    assert len(world.kernel.list_capabilities(world.bob, now=T0 + 1)) == 1
    assert world.kernel.list_capabilities(world.alice, now=T0 + 10) == []


def test_sweep_expires_and_tombstones_answer_expired(world: World) -> None:
    short = root_cap(world, ttl=5)
    child = delegate(world, short.id, ttl=2)
    long = root_cap(world, ttl=500)
    assert world.kernel.next_expiry() == T0 + 1 + 2
    expired = world.kernel.sweep(now=T0 + 6, trace_id="s")
    assert set(expired) == {short.id, child.id}
    assert world.kernel.get(long.id) is not None
    with pytest.raises(errors.Expired):
        world.kernel.validate(world.alice, short.id, Use("read", "/x"), now=T0 + 7, trace_id="v")
    assert len(world.recorder.of(EventType.CAPABILITY_EXPIRED)) == 2


def test_tombstones_are_pruned_after_the_retention(world: World) -> None:
    cap = root_cap(world, ttl=5)
    world.kernel.sweep(now=T0 + 10, trace_id="s")
    world.kernel.sweep(now=T0 + 10 + 86400 + 100, trace_id="s")
    with pytest.raises(errors.UnknownCapability):
        world.kernel.validate(world.alice, cap.id, Use("read", "/x"), now=T0 + 90000, trace_id="v")


def test_state_survives_a_restart(world: World) -> None:
    root = root_cap(world)
    child = delegate(world, root.id)
    grandchild = delegate(world, child.id, principal=world.bob, to=world.alice.id)
    doomed = root_cap(world)
    world.kernel.revoke(world.alice, doomed.id, now=T0 + 2, trace_id="r")
    expiring = root_cap(world, ttl=3)

    again = world.reopen()
    assert again.get(root.id) == root
    assert again.get(grandchild.id) == grandchild
    with pytest.raises(errors.Revoked):
        again.validate(world.alice, doomed.id, Use("read", "/x"), now=T0 + 3, trace_id="v")
    assert again.get(expiring.id) is not None
    # the tree was rebuilt: revoking the root still cascades
    assert set(again.revoke(world.alice, root.id, now=T0 + 4, trace_id="r")) == {
        root.id,
        child.id,
        grandchild.id,
    }
    restored = world.recorder.of(EventType.KERNEL_STATE_RESTORED)[-1]
    assert restored.detail["live"] == 4


def test_rate_limit_ancestry_survives_a_restart(world: World) -> None:
    cap = world.kernel.request(
        world.alice,
        CapabilityRequest("https://api.example.com/repos", ["GET"]),
        now=T0,
        trace_id="g",
    )
    child = delegate(world, cap.id, to=world.alice.id)
    again = world.reopen()
    url = "https://api.example.com/repos/x"
    for _ in range(5):
        again.validate(world.alice, child.id, Use("GET", url), now=T0 + 1, trace_id="v")
    with pytest.raises(errors.RateLimited):
        again.validate(world.alice, cap.id, Use("GET", url), now=T0 + 1, trace_id="v")


def test_tombstones_are_bounded_oldest_first(world: World) -> None:
    """Grant/revoke churn cannot grow memory without bound: past
    ``max_tombstones`` the oldest ended ids are forgotten (and still refused,
    as unknown), in memory at once and in the state file at the next prune."""
    kernel = Kernel(
        store=Store(":memory:"),
        policy=world.config.policy,
        validators=world.config.validators,
        max_tombstones=3,
    )
    kernel.start(now=T0, trace_id="start")
    kernel.register_principal(world.alice)
    ended = []
    for i in range(5):
        cap = kernel.request(
            world.alice,
            CapabilityRequest(f"file://{world.root}/data", ["read"], None, ttl=100),
            now=T0 + i,
            trace_id="g",
        )
        kernel.revoke(world.alice, cap.id, now=T0 + i, trace_id="r")
        ended.append(cap.id)
    for forgotten in ended[:2]:
        with pytest.raises(errors.UnknownCapability):
            kernel.validate(world.alice, forgotten, Use("read", "/x"), now=T0 + 9, trace_id="v")
    for remembered in ended[2:]:
        with pytest.raises(errors.Revoked):
            kernel.validate(world.alice, remembered, Use("read", "/x"), now=T0 + 9, trace_id="v")
    kernel.sweep(now=T0 + 100, trace_id="s")  # a minute on: the store is pruned too
    assert set(kernel._store.load().tombstones) == set(ended[2:])
