"""Property tests of the algebra: delegation only narrows; revoke removes
exactly the subtree."""

from __future__ import annotations

from typing import Any

from capsup.agents import errors
from capsup.supervisor.config import parse_config
from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
from capsup.supervisor.principal import Principal
from capsup.supervisor.store import Store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = 1_800_000_000.0
ROOT = "/srv/capsup-prop"
ME = Principal("agent-p", "p")
CONFIG = parse_config(
    {
        "agents": {
            "p": {
                "allow": [
                    {
                        "resource": f"file://{ROOT}",
                        "operations": ["read", "write", "list", "stat"],
                        "max_delegation_depth": 6,
                    }
                ]
            }
        }
    }
)
FILE = CONFIG.validators.for_uri("file:///")

segments = st.sampled_from(["a", "b", "ab", "a-b", "..", ".", "c"])
paths = st.lists(segments, max_size=4).map(lambda parts: "/".join(parts))
ops = st.sets(st.sampled_from(["read", "write", "list", "stat", "delete"]), min_size=1)
constraints = st.fixed_dictionaries(
    {},
    optional={
        "max_bytes": st.integers(1, 1000),
        "deny": st.lists(st.sampled_from(["*.key", "secret/**", "x"]), max_size=2),
        "max_delegation_depth": st.integers(0, 7),
    },
)


def fresh_kernel() -> Kernel:
    kernel = Kernel(store=Store(":memory:"), policy=CONFIG.policy, validators=CONFIG.validators)
    kernel.start(now=T0, trace_id="s")
    kernel.register_principal(ME)
    return kernel


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=paths,
    steps=st.lists(
        st.tuples(
            st.one_of(st.none(), paths, st.sampled_from(["/etc", ROOT + "-evil", "/"])),
            st.one_of(st.none(), ops),
            st.one_of(st.none(), constraints),
            st.one_of(st.none(), st.floats(0.5, 5000)),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_every_accepted_delegation_lies_within_its_parent(
    base: str, steps: list[tuple[Any, ...]]
) -> None:
    kernel = fresh_kernel()
    try:
        parent = kernel.request(
            ME,
            CapabilityRequest(f"file://{ROOT}/{base}", ["read", "write", "list"], ttl=1000),
            now=T0,
            trace_id="g",
        )
    except errors.CapsupError:
        return
    for resource, operations, cons, ttl in steps:
        if resource is not None and not resource.startswith("/"):
            resource = f"{parent.resource}/{resource}"
        if resource is not None and resource.startswith("/"):
            resource = "file://" + resource
        try:
            child = kernel.delegate(
                ME,
                parent.id,
                Delegation(
                    ME.id, resource, None if operations is None else sorted(operations), cons, ttl
                ),
                now=T0 + 1,
                trace_id="d",
            )
        except (errors.AccessDenied, errors.RequestError):
            continue
        assert FILE.resource_within(child.resource, parent.resource)
        assert child.operations <= parent.operations
        assert child.expires_at <= parent.expires_at
        assert child.delegation_depth < parent.delegation_depth
        # As strict as the parent's constraints, restated for the child's root
        # (a deny glob is relative to its resource).
        inherited = FILE.rebase_constraints(parent.constraints, parent.resource, child.resource)
        assert FILE.constraints_within(child.constraints, inherited) is None
        parent = child


@settings(max_examples=100, deadline=None)
@given(
    shape=st.lists(st.integers(0, 30), min_size=1, max_size=30),
    victim=st.integers(0, 30),
)
def test_revoke_removes_exactly_the_subtree(shape: list[int], victim: int) -> None:
    kernel = fresh_kernel()
    root = kernel.request(ME, CapabilityRequest(f"file://{ROOT}", ["read"]), now=T0, trace_id="g")
    nodes = [root]
    parent_of: dict[str, str | None] = {root.id: None}
    for pick in shape:
        parent = nodes[pick % len(nodes)]
        if parent.delegation_depth == 0:
            continue
        child = kernel.delegate(ME, parent.id, Delegation(ME.id), now=T0, trace_id="d")
        nodes.append(child)
        parent_of[child.id] = parent.id
    target = nodes[victim % len(nodes)].id

    def descends(node: str | None) -> bool:
        while node is not None:
            if node == target:
                return True
            node = parent_of[node]
        return False

    expected = {n.id for n in nodes if descends(n.id)}
    revoked = kernel.revoke(ME, target, now=T0, trace_id="r")
    assert set(revoked) == expected and len(revoked) == len(expected)
    for node in nodes:
        assert (kernel.get(node.id) is None) == (node.id in expected)
