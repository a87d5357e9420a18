"""Deny globs keep denying the same files when a capability is narrowed.

A ``deny`` glob is relative to its capability's resource. Granting or
delegating a deeper resource must restate the glob for the new root; copied
unchanged it would be read relative to the new root and deny other files,
which let a narrower grant or delegation reach what the wider one denied.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capsup.agents import errors
from capsup.agents.capability import Capability
from capsup.supervisor.config import parse_config
from capsup.supervisor.events import EventType
from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
from capsup.supervisor.policy import Policy
from capsup.supervisor.principal import Principal
from capsup.supervisor.store import Store
from capsup.validators import Use, paths
from kernel_world import T0, Recorder

CAROL = Principal("agent-carol", "carol", pid=2001)
DAVE = Principal("agent-dave", "dave", pid=2002)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[tuple[Kernel, Path]]:
    root = tmp_path.resolve()
    for name in ("secrets", "public", "public/keys"):
        (root / "data" / name).mkdir(parents=True)
    for name in ("secrets/a.txt", "public/readme.txt", "public/x.key", "public/keys/k.txt"):
        (root / "data" / name).write_text("x")
    config = parse_config(
        {
            "agents": {
                "carol": {
                    "allow": [
                        {
                            "resource": f"file://{root}/data",
                            "operations": ["read", "list"],
                            "constraints": {"deny": ["secrets", "**/*.key"]},
                            "max_delegation_depth": 2,
                        }
                    ]
                },
                "dave": {"allow": []},
            }
        },
        source="test",
    )
    store = Store(root / "state.db")
    k = Kernel(store=store, policy=config.policy, validators=config.validators, sink=Recorder())
    k.start(now=T0, trace_id="start")
    k.register_principal(CAROL)
    k.register_principal(DAVE)
    yield k, root / "data"
    store.close()


def grant(k: Kernel, resource: str, **constraints: object):
    request = CapabilityRequest(resource, ["read"], constraints or None, ttl=100)
    return k.request(CAROL, request, now=T0, trace_id="g")


def allowed(k: Kernel, who: Principal, cap_id: str, path: Path) -> bool:
    try:
        k.validate(who, cap_id, Use("read", str(path)), now=T0 + 1, trace_id="v")
    except errors.ConstraintViolation:
        return False
    return True


def test_a_grant_inside_a_denied_directory_is_refused(kernel: tuple[Kernel, Path]) -> None:
    k, data = kernel
    with pytest.raises(errors.DeniedByPolicy, match="deny glob 'secrets'"):
        grant(k, f"file://{data}/secrets")
    with pytest.raises(errors.DeniedByPolicy):
        grant(k, f"file://{data}/secrets/a.txt")


def test_a_narrower_grant_keeps_the_ceilings_globs(kernel: tuple[Kernel, Path]) -> None:
    k, data = kernel
    cap = grant(k, f"file://{data}/public")
    assert cap.constraints == {"deny": ["**/*.key"]}
    assert allowed(k, CAROL, cap.id, data / "public" / "readme.txt")
    assert not allowed(k, CAROL, cap.id, data / "public" / "x.key")


def test_a_delegation_into_a_denied_directory_is_widening(kernel: tuple[Kernel, Path]) -> None:
    k, data = kernel
    parent = grant(k, f"file://{data}")
    for resource in (f"file://{data}/secrets", f"file://{data}/public/x.key"):
        with pytest.raises(errors.DelegationWidening, match="deny glob"):
            k.delegate(CAROL, parent.id, Delegation(DAVE.id, resource), now=T0 + 1, trace_id="d")


def test_a_delegation_restates_the_globs_for_its_root(kernel: tuple[Kernel, Path]) -> None:
    k, data = kernel
    parent = grant(k, f"file://{data}", deny=["public/keys"])
    child = k.delegate(
        CAROL,
        parent.id,
        Delegation(DAVE.id, f"file://{data}/public"),
        now=T0 + 1,
        trace_id="d",
    )
    assert child.constraints == {"deny": ["**/*.key", "keys"]}
    assert allowed(k, DAVE, child.id, data / "public" / "readme.txt")
    assert not allowed(k, DAVE, child.id, data / "public" / "x.key")
    assert not allowed(k, DAVE, child.id, data / "public" / "keys" / "k.txt")


# On a case-insensitive filesystem DATA is data and X.KEY is x.key; these
# trees are case sensitive, so each spelling is made as a directory or file
# of its own, which is what the kernel sees either way: the caller's spelling.


def test_a_grant_or_use_spelled_in_another_case_is_still_denied(
    kernel: tuple[Kernel, Path],
) -> None:
    k, data = kernel
    (data / "SECRETS").mkdir()
    (data / "SECRETS" / "a.txt").write_text("x")
    (data / "public" / "X.KEY").write_text("x")
    with pytest.raises(errors.DeniedByPolicy, match="deny glob 'secrets'"):
        grant(k, f"file://{data}/SECRETS")
    cap = grant(k, f"file://{data}")
    assert not allowed(k, CAROL, cap.id, data / "SECRETS" / "a.txt")
    assert not allowed(k, CAROL, cap.id, data / "public" / "X.KEY")
    assert allowed(k, CAROL, cap.id, data / "public" / "readme.txt")


def test_a_delegation_into_another_case_of_a_denied_directory_is_widening(
    kernel: tuple[Kernel, Path],
) -> None:
    k, data = kernel
    (data / "DATA").mkdir()
    (data / "DATA" / "a.txt").write_text("x")
    parent = grant(k, f"file://{data}", deny=["data/**"])
    assert not allowed(k, CAROL, parent.id, data / "DATA" / "a.txt")
    for resource in (f"file://{data}/DATA", f"file://{data}/Data/sub", f"file://{data}/Secrets"):
        with pytest.raises(errors.DelegationWidening, match="deny glob"):
            k.delegate(CAROL, parent.id, Delegation(DAVE.id, resource), now=T0 + 1, trace_id="d")


def test_a_delegation_into_another_case_restates_the_globs(kernel: tuple[Kernel, Path]) -> None:
    k, data = kernel
    (data / "PUBLIC" / "KEYS").mkdir(parents=True)
    (data / "PUBLIC" / "KEYS" / "k.txt").write_text("x")
    (data / "PUBLIC" / "readme.txt").write_text("x")
    parent = grant(k, f"file://{data}", deny=["public/keys"])
    child = k.delegate(
        CAROL, parent.id, Delegation(DAVE.id, f"file://{data}/PUBLIC"), now=T0 + 1, trace_id="d"
    )
    assert child.constraints == {"deny": ["**/*.key", "keys"]}
    assert not allowed(k, CAROL, parent.id, data / "PUBLIC" / "KEYS" / "k.txt")
    assert not allowed(k, DAVE, child.id, data / "PUBLIC" / "KEYS" / "k.txt")
    assert allowed(k, DAVE, child.id, data / "PUBLIC" / "readme.txt")


# Deny globs come from agents (requests, delegations, spawn grants), and the
# supervisor decides on one event loop: a glob must never take long to match.


def test_a_hostile_glob_from_an_agent_is_decided_at_once(kernel: tuple[Kernel, Path]) -> None:
    k, data = kernel
    (data / "public" / ("a" * 200)).write_text("x")
    (data / "public" / ("a" * 200 + "b")).write_text("x")
    cap = grant(k, f"file://{data}/public", deny=["*a*a*a*a*a*a*a*a*b", "**/a/**/a/**/a/**/b"])
    started = time.perf_counter()
    assert allowed(k, CAROL, cap.id, data / "public" / ("a" * 200))
    assert not allowed(k, CAROL, cap.id, data / "public" / ("a" * 200 + "b"))
    assert time.perf_counter() - started < 1  # minutes before matching was linear


def test_an_oversized_glob_from_an_agent_is_refused(kernel: tuple[Kernel, Path]) -> None:
    k, data = kernel
    with pytest.raises(errors.InvalidConstraints, match="longer than 1024 characters"):
        grant(k, f"file://{data}/public", deny=["a/" * 600])
    with pytest.raises(errors.InvalidConstraints, match="wildcards"):
        grant(k, f"file://{data}/public", deny=["*a" * 100])


def test_a_delegation_names_only_the_globs_it_adds(kernel: tuple[Kernel, Path]) -> None:
    """A deny list only ever adds: the child keeps what it inherits (restated
    for its root) and adds what it names, without repeating the parent's
    list, which may be longer than any one request could name."""
    k, data = kernel
    parent = grant(k, f"file://{data}")
    child = k.delegate(
        CAROL,
        parent.id,
        Delegation(DAVE.id, f"file://{data}/public", constraints={"deny": ["*.txt"]}),
        now=T0 + 1,
        trace_id="d",
    )
    assert child.constraints["deny"] == ["**/*.key", "*.txt"]
    assert not allowed(k, DAVE, child.id, data / "public" / "readme.txt")  # added
    assert not allowed(k, DAVE, child.id, data / "public" / "x.key")  # inherited
    assert allowed(k, DAVE, child.id, data / "public" / "keys" / "k.txt")


def deep_kernel(root: Path, depth: int = 4) -> Kernel:
    """A kernel whose carol may read all of ``root`` and delegate ``depth`` times."""
    config = parse_config(
        {
            "agents": {
                "carol": {
                    "allow": [
                        {
                            "resource": f"file://{root}",
                            "operations": ["read"],
                            "max_delegation_depth": depth,
                        }
                    ]
                },
                "dave": {"allow": []},
            }
        },
        source="test",
    )
    k = Kernel(store=Store(":memory:"), policy=config.policy, validators=config.validators)
    k.start(now=T0, trace_id="start")
    k.register_principal(CAROL)
    k.register_principal(DAVE)
    return k


def test_a_chain_of_delegations_holds_at_most_512_deny_globs(tmp_path: Path) -> None:
    """Each delegation may add up to 256 globs; a chain of them must not grow
    a list without end, since every glob is matched on every check."""
    root = tmp_path.resolve()
    k = deep_kernel(root)

    def globs(level: int) -> dict[str, list[str]]:
        return {"deny": [f"g{level}_{i}" for i in range(256)]}

    cap = k.request(
        CAROL, CapabilityRequest(f"file://{root}", ["read"], globs(0)), now=T0, trace_id="g"
    )
    cap = k.delegate(CAROL, cap.id, Delegation(DAVE.id, constraints=globs(1)), now=T0, trace_id="d")
    assert len(cap.constraints["deny"]) == 512
    with pytest.raises(
        errors.InvalidConstraints,
        match="768 globs, more than 512, the most one capability may hold",
    ):
        k.delegate(DAVE, cap.id, Delegation(CAROL.id, constraints=globs(2)), now=T0, trace_id="d")


def test_restating_globs_for_a_deeper_root_cannot_pass_the_held_limits(tmp_path: Path) -> None:
    """A glob with a ``**`` restated for a deeper root may become several
    (``**/a/x`` seen from ``a`` is ``**/a/x`` and ``x``): a list within the
    limits can pass them once restated, and is then refused."""
    root = tmp_path.resolve()
    (root / "a").mkdir()
    k = deep_kernel(root)
    cap = k.request(
        CAROL,
        CapabilityRequest(f"file://{root}", ["read"], {"deny": [f"**/a/x{i}" for i in range(256)]}),
        now=T0,
        trace_id="g",
    )
    more = Delegation(DAVE.id, constraints={"deny": [f"**/a/y{i}" for i in range(100)]})
    cap = k.delegate(CAROL, cap.id, more, now=T0, trace_id="d")
    assert len(cap.constraints["deny"]) == 356
    with pytest.raises(errors.InvalidConstraints, match="712 globs, more than 512"):
        k.delegate(DAVE, cap.id, Delegation(CAROL.id, f"file://{root}/a"), now=T0, trace_id="d")


def test_restating_drops_the_globs_another_covers(tmp_path: Path) -> None:
    """26 globs of thirty ``**/a`` each, restated 30 levels down, were 1612
    globs, and the first check took a second; ``**/x`` covers ``a/**/x``
    and the like, and 52 deny the same."""
    root = tmp_path.resolve()
    deep = root.joinpath(*["a"] * 30)
    deep.mkdir(parents=True)
    k = deep_kernel(root)
    named = [("**/a/" * 30) + f"x{i}" for i in range(26)]
    cap = k.request(
        CAROL, CapabilityRequest(f"file://{root}", ["read"], {"deny": named}), now=T0, trace_id="g"
    )
    child = k.delegate(CAROL, cap.id, Delegation(DAVE.id, f"file://{deep}"), now=T0, trace_id="d")
    assert len(child.constraints["deny"]) == 52
    (deep / "x3").write_text("x")
    (deep / "ok").write_text("x")
    assert not allowed(k, DAVE, child.id, deep / "x3")
    assert allowed(k, DAVE, child.id, deep / "ok")


def test_delegations_compile_nothing_until_a_check(tmp_path: Path) -> None:
    """A delegation to a deeper root restates the parent's globs as new
    strings; a spawn makes 64 such delegations in one message. Compiling
    them there cost a second; a list is compiled at its first check."""
    root = tmp_path.resolve()
    deep = root.joinpath(*["a"] * 8)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")
    k = deep_kernel(root, depth=9)
    named = [("a/" * 400) + f"x{i}" for i in range(4)]
    cap = k.request(
        CAROL, CapabilityRequest(f"file://{root}", ["read"], {"deny": named}), now=T0, trace_id="g"
    )
    misses = paths._compile.cache_info().misses
    where = root
    for _ in range(8):
        where = where / "a"
        holder = CAROL if cap.holder == CAROL.id else DAVE
        to = DAVE if holder is CAROL else CAROL
        cap = k.delegate(holder, cap.id, Delegation(to.id, f"file://{where}"), now=T0, trace_id="d")
    assert cap.constraints["deny"] == sorted(("a/" * 392) + f"x{i}" for i in range(4))
    assert paths._compile.cache_info().misses == misses
    assert allowed(k, CAROL if cap.holder == CAROL.id else DAVE, cap.id, deep / "f.txt")
    assert paths._compile.cache_info().misses == misses + 4


def test_a_check_never_compiles_globs(kernel: tuple[Kernel, Path]) -> None:
    """Each live capability keeps its deny list compiled. Behind the compile
    caches alone, an agent holding more distinct globs than they hold (1024)
    made every check compile its list again: tens of milliseconds each."""
    k, data = kernel
    (data / "public" / "stra\u00dfe").write_text("x")  # read in both readings
    caps = [grant(k, f"file://{data}", deny=[f"c{n}_{i}" for i in range(256)]) for n in range(5)]
    paths_checked = {"readme.txt": True, "x.key": False, "stra\u00dfe": True}
    for cap in caps:  # the first check in each reading compiles the list for it
        for name in paths_checked:
            allowed(k, CAROL, cap.id, data / "public" / name)
    for cache in (paths._compile, paths._compile_both, paths._class_regex):
        cache.cache_clear()
    for cap in caps:
        for name, expected in paths_checked.items():
            assert allowed(k, CAROL, cap.id, data / "public" / name) == expected
    assert paths._compile.cache_info().misses == 0
    assert paths._compile_both.cache_info().misses == 0


def stored(root: Path, cap_id: str, **fields: Any) -> Capability:
    return Capability(
        id=cap_id,
        resource=f"file://{root}",
        operations=frozenset({"read"}),
        constraints=fields.pop("constraints", {}),
        holder=CAROL.id,
        granted_at=T0,
        expires_at=T0 + 100,
        **fields,
    )


def start_with(root: Path, caps: list[Capability]) -> tuple[Kernel, Recorder]:
    store = Store(":memory:")
    store.insert(caps)
    recorder = Recorder()
    k = Kernel(
        store=store,
        policy=Policy(),
        validators=parse_config({}, source="t").validators,
        sink=recorder,
    )
    k.start(now=T0, trace_id="start")
    k.register_principal(CAROL)
    return k, recorder


@pytest.mark.parametrize(
    "deny",
    [
        ["[z-a]"],  # does not compile
        ["[a-\U0001ffff]"],  # a class range wider than today's limit
        ["a" * 3000],  # longer than a glob may be
        ["/etc/../a.txt"],  # not normalized
        [f"g{i}" for i in range(600)],  # more than a capability may hold
        "secret",  # not a list: not six one-letter globs
    ],
)
def test_a_stored_capability_whose_globs_are_not_todays_denies_every_use(
    tmp_path: Path, deny: object
) -> None:
    """A capability stored by a version with looser limits, or edited in
    the state file: it stays, so that it can still be revoked with its
    subtree, and nothing validates under it."""
    root = tmp_path.resolve()
    (root / "a.txt").write_text("x")
    k, _ = start_with(root, [stored(root, "cap_stored", constraints={"deny": deny})])
    with pytest.raises(errors.ConstraintViolation) as denied:
        k.validate(CAROL, "cap_stored", Use("read", str(root / "a.txt")), now=T0, trace_id="v")
    assert denied.value.reason == "validator_error"
    assert k.revoke(CAROL, "cap_stored", now=T0, trace_id="r") == ["cap_stored"]


def test_a_stored_delegation_chain_that_loops_is_revoked_at_start(tmp_path: Path) -> None:
    """Only an edited state file can hold a chain that loops (a is b's
    parent, b is a's): it reaches no root, so it was never taken in, and a
    revoke of it failed half-way. Now the loop and what hangs from it are
    revoked as the kernel starts, and recorded."""
    root = tmp_path.resolve()
    (root / "a.txt").write_text("x")
    caps = [
        stored(root, "cap_a", parent_id="cap_b"),
        stored(root, "cap_b", parent_id="cap_a"),
        stored(root, "cap_c", parent_id="cap_b"),
        stored(root, "cap_ok"),
    ]
    k, recorder = start_with(root, caps)
    assert k.live_count == 1 and k.get("cap_ok") is not None
    revoked = [e for e in recorder.events if e.event == EventType.CAPABILITY_REVOKED]
    assert sorted(e.capability_id for e in revoked) == ["cap_a", "cap_b", "cap_c"]
    assert {e.detail["cause"] for e in revoked} == {"corrupt_state"}
    with pytest.raises(errors.Revoked):
        k.validate(CAROL, "cap_c", Use("read", str(root / "a.txt")), now=T0, trace_id="v")
