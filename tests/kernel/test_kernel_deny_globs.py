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

import pytest
from capsup.agents import errors
from capsup.agents.capability import Capability
from capsup.supervisor.config import parse_config
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


def test_a_capability_holds_at_most_1024_deny_globs(tmp_path: Path) -> None:
    """Each delegation may add up to 256 globs; a chain of them must not grow
    a list without end, since every glob is matched on every check."""
    root = tmp_path.resolve()
    config = parse_config(
        {
            "agents": {
                "carol": {
                    "allow": [
                        {
                            "resource": f"file://{root}",
                            "operations": ["read"],
                            "max_delegation_depth": 4,
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

    def globs(level: int) -> dict[str, list[str]]:
        return {"deny": [f"g{level}_{i}" for i in range(256)]}

    cap = k.request(
        CAROL, CapabilityRequest(f"file://{root}", ["read"], globs(0)), now=T0, trace_id="g"
    )
    for level in (1, 2, 3):
        cap = k.delegate(
            CAROL if cap.holder == CAROL.id else DAVE,
            cap.id,
            Delegation(DAVE.id if cap.holder == CAROL.id else CAROL.id, constraints=globs(level)),
            now=T0,
            trace_id="d",
        )
        assert len(cap.constraints["deny"]) == 256 * (level + 1)
    holder = CAROL if cap.holder == CAROL.id else DAVE
    with pytest.raises(errors.InvalidConstraints, match="more than the 1024 one capability"):
        k.delegate(holder, cap.id, Delegation(CAROL.id, constraints=globs(4)), now=T0, trace_id="d")


def test_a_check_never_compiles_globs(kernel: tuple[Kernel, Path]) -> None:
    """Each live capability keeps its deny list compiled. Behind the compile
    caches alone, an agent holding more distinct globs than they hold (1024)
    made every check compile its list again: tens of milliseconds each."""
    k, data = kernel
    (data / "public" / "stra\u00dfe").write_text("x")  # read in both readings
    caps = [grant(k, f"file://{data}", deny=[f"c{n}_{i}" for i in range(256)]) for n in range(5)]
    paths_checked = {"readme.txt": True, "x.key": False, "stra\u00dfe": True}
    for cap in caps:  # the first check in both readings compiles the second
        assert allowed(k, CAROL, cap.id, data / "public" / "stra\u00dfe")
    for cache in (paths._compile, paths._compile_both, paths._class_regex):
        cache.cache_clear()
    for cap in caps:
        for name, expected in paths_checked.items():
            assert allowed(k, CAROL, cap.id, data / "public" / name) == expected
    assert paths._compile.cache_info().misses == 0
    assert paths._compile_both.cache_info().misses == 0


def test_a_stored_capability_whose_globs_cannot_be_compiled_denies_every_use(
    tmp_path: Path,
) -> None:
    """A capability stored under looser limits than today's: it stays, so it
    can still be revoked with its subtree, and nothing validates under it."""
    root = tmp_path.resolve()
    (root / "a.txt").write_text("x")
    store = Store(root / "state.db")
    store.insert(
        [
            Capability(
                id="cap_stored",
                resource=f"file://{root}",
                operations=frozenset({"read"}),
                constraints={"deny": ["[z-a]"]},
                holder=CAROL.id,
                granted_at=T0,
                expires_at=T0 + 100,
            )
        ]
    )
    k = Kernel(store=store, policy=Policy(), validators=parse_config({}, source="t").validators)
    k.start(now=T0, trace_id="start")
    k.register_principal(CAROL)
    with pytest.raises(errors.ConstraintViolation) as denied:
        k.validate(CAROL, "cap_stored", Use("read", str(root / "a.txt")), now=T0, trace_id="v")
    assert denied.value.reason == "validator_error"
    assert k.revoke(CAROL, "cap_stored", now=T0, trace_id="r") == ["cap_stored"]
    store.close()
