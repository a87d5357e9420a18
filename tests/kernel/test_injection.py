"""Credentials a capability carries: ``inject`` in the policy, kept by the kernel.

The secret must reach the broker (``Kernel.injection``) and nothing an agent
or the trail can read: not the capability's map, ``list``, the audit
events, the state file, a ``repr`` or an error message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from capsup.agents import errors
from capsup.agents.capability import Capability
from capsup.supervisor.config import Config, ConfigError, parse_config
from capsup.supervisor.injection import (
    MAX_INJECTED_HEADERS,
    Injection,
    InjectionError,
    parse_injection,
    redact,
)
from capsup.supervisor.kernel import CapabilityRequest, Delegation, Kernel
from capsup.supervisor.policy import PolicyError, parse_ceiling
from capsup.supervisor.principal import Principal
from capsup.supervisor.store import Store
from capsup.validators import Use, default_registry
from kernel_world import T0, Recorder

TOKEN = "tok-5ecret-0f-the-supervisor"
FILE_KEY = "k3y-from-a-file-9f1c"
API = "https://api.example.com/repos"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("INJ_TEST_TOKEN", TOKEN)
    return TOKEN


def secret_file(tmp_path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def inject(raw: Any) -> Injection:
    return parse_injection(raw, "agents.a.allow[0].inject")


def headers(**templates: str) -> dict[str, Any]:
    return {"headers": templates}


# -- templates ----------------------------------------------------------------


def test_env_file_and_literal_dollar(token: str, tmp_path: Path) -> None:
    path = secret_file(tmp_path, FILE_KEY + "\n")
    found = inject(
        {
            "headers": {
                "Authorization": "Bearer ${env:INJ_TEST_TOKEN}",
                "X-Api-Key": f"${{file:{path}}}",
                "X-Price": "$$5 ${env:INJ_TEST_TOKEN}$$",
            }
        }
    )
    assert found.headers == (
        ("Authorization", f"Bearer {TOKEN}"),
        ("X-Api-Key", FILE_KEY),
        ("X-Price", f"$5 {TOKEN}$"),
    )
    assert found.variables == ("INJ_TEST_TOKEN",)
    assert found.files == (str(path),)
    # Whole values and the placeholders' parts, longest first.
    assert found.secrets == (f"Bearer {TOKEN}", f"$5 {TOKEN}$", TOKEN, FILE_KEY)


def test_a_constant_header_needs_no_placeholder() -> None:
    assert inject(headers(Accept="application/json")).headers == (("Accept", "application/json"),)


def test_file_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    path = secret_file(tmp_path, FILE_KEY + "\n\n")
    with pytest.raises(InjectionError, match="CR, LF or NUL"):
        inject(headers(Key=f"${{file:{path}}}"))
    path.write_text(FILE_KEY + " \n")
    with pytest.raises(InjectionError, match="starts or ends with whitespace"):
        inject(headers(Key=f"${{file:{path}}}"))
    path.write_text(FILE_KEY)
    assert inject(headers(Key=f"${{file:{path}}}")).headers == (("Key", FILE_KEY),)


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("${vault:secret/x}", r"unknown placeholder \$\{vault:...\}"),
        ("${ENV:INJ_TEST_TOKEN}", r"unknown placeholder \$\{ENV:...\}"),
        ("$INJ_TEST_TOKEN", "a '\\$' at offset 0 must start"),
        ("abc ${env:INJ_TEST_TOKEN", "a '\\$' at offset 4 must start"),
        ("${env}", "a '\\$' at offset 0 must start"),
        ("cost: 5$", "a '\\$' at offset 7 must start"),
        ("${env:1BAD}", "does not name a variable"),
        ("${file:relative/path}", "must be an absolute path"),
    ],
)
def test_malformed_templates_are_refused(token: str, template: str, says: str) -> None:
    with pytest.raises(InjectionError, match=says):
        inject(headers(Authorization=template))


def test_a_missing_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INJ_TEST_ABSENT", raising=False)
    with pytest.raises(InjectionError) as caught:
        inject(headers(Authorization="Bearer ${env:INJ_TEST_ABSENT}"))
    assert str(caught.value) == (
        "agents.a.allow[0].inject.headers.Authorization: the variable INJ_TEST_ABSENT"
        " is not set in the supervisor's environment"
    )


def test_an_empty_variable_or_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INJ_TEST_EMPTY", "")
    with pytest.raises(InjectionError, match=r"\$\{env:INJ_TEST_EMPTY\} is empty"):
        inject(headers(Key="${env:INJ_TEST_EMPTY}"))
    path = secret_file(tmp_path, "\n")
    with pytest.raises(InjectionError, match="is empty"):
        inject(headers(Key=f"${{file:{path}}}"))


def test_a_symlink_is_refused_and_why(tmp_path: Path) -> None:
    real = secret_file(tmp_path, FILE_KEY)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InjectionError) as caught:
        inject(headers(Key=f"${{file:{link}}}"))
    message = str(caught.value)
    assert f"${{file:{link}}} is a symlink; name the file it points to" in message
    assert FILE_KEY not in message
    assert inject(headers(Key=f"${{file:{real}}}")).headers == (("Key", FILE_KEY),)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_a_file_others_may_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, FILE_KEY, mode)
    with pytest.raises(InjectionError, match=f"by others \\(mode {mode:o}\\): chmod 600"):
        inject(headers(Key=f"${{file:{path}}}"))


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(
        InjectionError, match=f"\\$\\{{file:{missing}\\}} cannot be opened: No such"
    ):
        inject(headers(Key=f"${{file:{missing}}}"))
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(InjectionError, match="is not a regular file"):
        inject(headers(Key=f"${{file:{directory}}}"))
    binary = secret_file(tmp_path, b"\xff\xfe" + FILE_KEY.encode())
    with pytest.raises(InjectionError, match="is not UTF-8 text"):
        inject(headers(Key=f"${{file:{binary}}}"))
    large = secret_file(tmp_path, "k" * 9000)
    with pytest.raises(InjectionError, match="holds more than 8192 bytes"):
        inject(headers(Key=f"${{file:{large}}}"))


# -- header names and values --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "connection",
        "Transfer-Encoding",
        "CONTENT-LENGTH",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "proxy-anything",
    ],
)
def test_framing_and_hop_by_hop_names_are_refused(token: str, name: str) -> None:
    with pytest.raises(InjectionError, match=f"header {name} may not be set") as caught:
        inject(headers(**{name: "${env:INJ_TEST_TOKEN}"}))
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("name", ["X Auth", "X:Auth", "", "Authoriz\u00e4tion", "X\r\nEvil"])
def test_a_name_must_be_a_token(name: str) -> None:
    with pytest.raises(InjectionError, match="is not an RFC 9110 token"):
        inject(headers(**{name: "v"}))


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"{TOKEN}\r\nX-Evil: 1", "CR, LF or NUL"),
        (f"{TOKEN}\nX-Evil: 1", "CR, LF or NUL"),
        (f"{TOKEN}\r", "CR, LF or NUL"),
        (f"{TOKEN}\x07", "control or non-ASCII"),
        (f"{TOKEN}\x7f", "control or non-ASCII"),
        (f"{TOKEN}\u00e9", "control or non-ASCII"),
        (f"{TOKEN} ", "whitespace"),
    ],
)
def test_a_resolved_value_must_be_clean_and_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("INJ_TEST_TOKEN", value)
    with pytest.raises(InjectionError, match=says) as caught:
        inject(headers(Authorization="Bearer ${env:INJ_TEST_TOKEN}"))
    assert TOKEN not in str(caught.value)


def test_nul_from_a_file_is_refused_unshown(tmp_path: Path) -> None:
    path = secret_file(tmp_path, f"{FILE_KEY}\0X")
    with pytest.raises(InjectionError, match="CR, LF or NUL") as caught:
        inject(headers(Key=f"${{file:{path}}}"))
    assert FILE_KEY not in str(caught.value)


def test_a_tab_inside_a_value_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INJ_TEST_TOKEN", "a\tb")
    assert inject(headers(Key="${env:INJ_TEST_TOKEN}")).headers == (("Key", "a\tb"),)


def test_count_size_and_duplicates_are_bounded(token: str) -> None:
    many = {f"X-H{i}": "v" for i in range(MAX_INJECTED_HEADERS)}
    assert len(inject({"headers": many}).headers) == MAX_INJECTED_HEADERS
    many["X-One-More"] = "v"
    with pytest.raises(InjectionError, match="more than 16 headers"):
        inject({"headers": many})
    big = {f"X-H{i}": "v" * 1000 for i in range(9)}
    with pytest.raises(InjectionError, match="more than 8192"):
        inject({"headers": big})
    with pytest.raises(InjectionError, match="Authorization: named twice"):
        inject(headers(authorization="a", Authorization="${env:INJ_TEST_TOKEN}"))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("Bearer x", "inject: must be a table, not str"),
        ({}, r"inject.headers: required"),
        ({"headers": {}}, r"inject.headers: required"),
        ({"headers": {"A": "b"}, "query": {}}, "inject: unknown key 'query'"),
        ({"headers": {"A": 5}}, "headers.A: must be a string template"),
    ],
)
def test_the_table_shape_is_strict(raw: Any, says: str) -> None:
    with pytest.raises(InjectionError, match=says):
        inject(raw)


# -- in the policy and the configuration --------------------------------------


def policy_entry(resource: str, **extra: Any) -> dict[str, Any]:
    return {"resource": resource, "operations": ["GET"], **extra}


def test_a_ceiling_carries_its_injection(token: str) -> None:
    entry = policy_entry(API, inject=headers(Authorization="Bearer ${env:INJ_TEST_TOKEN}"))
    ceiling = parse_ceiling(entry, default_registry(), "agents.a.allow[0]")
    assert ceiling.inject is not None
    assert ceiling.inject.headers == (("Authorization", f"Bearer {TOKEN}"),)
    assert "inject" not in ceiling.constraints
    assert "Injection(headers=['Authorization'])" in repr(ceiling)
    assert TOKEN not in repr(ceiling) and TOKEN not in str(ceiling)
    assert parse_ceiling(policy_entry(API), default_registry(), "x").inject is None


def test_only_http_resources_may_inject(tmp_path: Path) -> None:
    validators = default_registry({"main": "sqlite"})
    for resource, operations in (
        (f"file://{tmp_path}", ["read"]),
        ("db://main", ["select"]),
    ):
        entry = {"resource": resource, "operations": operations, "inject": headers(A="b")}
        with pytest.raises(PolicyError, match=r"agents.a.allow\[0\].inject: only an http or"):
            parse_ceiling(entry, validators, "agents.a.allow[0]")
    entry = policy_entry("http://127.0.0.1:8080/api", inject=headers(A="b"))
    assert parse_ceiling(entry, validators, "w").inject == Injection((("A", "b"),))


def config_with(entry: dict[str, Any], **supervisor: Any) -> Config:
    return parse_config(
        {"agents": {"a": {"allow": [entry]}}, "supervisor": supervisor}, source="test.toml"
    )


def test_a_config_error_names_file_entry_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INJ_TEST_ABSENT", raising=False)
    entry = policy_entry(API, inject=headers(Authorization="${env:INJ_TEST_ABSENT}"))
    with pytest.raises(ConfigError) as caught:
        config_with(entry)
    assert str(caught.value).startswith(
        "test.toml: agents.a.allow[0].inject.headers.Authorization: the variable INJ_TEST_ABSENT"
    )


@pytest.mark.parametrize("passed", [["INJ_TEST_TOKEN"], ["INJ_*"], ["*"]])
def test_a_variable_agents_also_get_is_refused(token: str, passed: list[str]) -> None:
    entry = policy_entry(API, inject=headers(Authorization="Bearer ${env:INJ_TEST_TOKEN}"))
    with pytest.raises(ConfigError, match="the variable INJ_TEST_TOKEN is passed to every agent"):
        config_with(entry, pass_environment=passed)
    config = config_with(entry, pass_environment=["OTHER_*"])
    assert config.policy.ceilings_for("a")[0].inject is not None


def test_a_default_passed_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "C.UTF-8")
    entry = policy_entry(API, inject=headers(X="${env:LANG}"))
    with pytest.raises(ConfigError, match="the variable LANG is passed to every agent"):
        config_with(entry)


# -- in the kernel ------------------------------------------------------------


@dataclass
class InjectWorld:
    root: Path
    config: Config
    kernel: Kernel
    recorder: Recorder
    alice: Principal
    bob: Principal
    carol: Principal
    secret_path: Path
    reopen: Callable[[], Kernel]


@pytest.fixture
def iworld(tmp_path: Path, token: str) -> Iterator[InjectWorld]:
    root = tmp_path.resolve()
    (root / "data").mkdir()
    secrets_dir = root / "secrets"
    secrets_dir.mkdir(mode=0o700)
    key_path = secret_file(secrets_dir, FILE_KEY + "\n")
    authorization = "Bearer ${env:INJ_TEST_TOKEN}"
    config = parse_config(
        {
            "agents": {
                "alice": {
                    "allow": [
                        {
                            # A: short-lived, carries the credentials.
                            "resource": API,
                            "operations": ["GET", "POST"],
                            "max_ttl": 100,
                            "max_delegation_depth": 3,
                            "inject": headers(
                                Authorization=authorization,
                                **{"X-Api-Key": f"${{file:{key_path}}}"},
                            ),
                        },
                        {
                            # B: the same resource, GET only, no credentials.
                            "resource": API,
                            "operations": ["GET"],
                            "max_delegation_depth": 3,
                        },
                        {"resource": f"file://{root}/data", "operations": ["read"]},
                    ]
                },
                "bob": {"allow": []},
            }
        },
        source="inject-test",
    )
    recorder = Recorder()
    stores: list[Store] = []

    def open_kernel() -> Kernel:
        store = Store(root / "state.db")
        stores.append(store)
        kernel = Kernel(
            store=store, policy=config.policy, validators=config.validators, sink=recorder
        )
        kernel.start(now=T0, trace_id="start")
        for principal in (alice, bob, carol):
            kernel.register_principal(principal)
        return kernel

    alice = Principal("agent-alice", "alice", pid=2001)
    bob = Principal("agent-bob", "bob", pid=2002)
    carol = Principal("agent-carol", "carol", pid=2003)
    yield InjectWorld(
        root, config, open_kernel(), recorder, alice, bob, carol, key_path, open_kernel
    )
    for store in stores:
        store.close()


def grant(
    w: InjectWorld, resource: str = API, ops: tuple[str, ...] = ("GET",), ttl: float = 50
) -> Capability:
    request = CapabilityRequest(resource, list(ops), ttl=ttl)
    return w.kernel.request(w.alice, request, now=T0, trace_id="grant")


def hand_on(
    w: InjectWorld, parent_id: str, holder: Principal, to: Principal, **kw: Any
) -> Capability:
    return w.kernel.delegate(
        holder, parent_id, Delegation(to=to.id, **kw), now=T0 + 1, trace_id="delegate"
    )


def test_a_root_grant_under_an_injecting_ceiling_has_it(iworld: InjectWorld) -> None:
    cap = grant(iworld)
    ceiling_a = iworld.config.policy.ceilings_for("alice")[0]
    found = iworld.kernel.injection(cap.id)
    assert found is ceiling_a.inject
    assert found is not None
    assert dict(found.headers) == {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": FILE_KEY}


def test_the_ceiling_that_grants_decides(iworld: InjectWorld) -> None:
    # ttl 1000 is past A's max_ttl: B grants, and B injects nothing.
    by_b = grant(iworld, ttl=1000)
    assert iworld.kernel.injection(by_b.id) is None
    # Within A's max_ttl, A (listed first) grants, with its credentials.
    by_a = grant(iworld, ttl=100)
    assert iworld.kernel.injection(by_a.id) is not None
    # POST only A allows: past its max_ttl nothing covers it, nothing is kept.
    with pytest.raises(errors.DeniedByPolicy):
        grant(iworld, ops=("POST",), ttl=1000)
    assert iworld.kernel.injection(grant(iworld, ops=("POST",)).id) is not None


def test_a_grant_without_inject_has_none(iworld: InjectWorld) -> None:
    cap = grant(iworld, f"file://{iworld.root}/data", ("read",))
    assert iworld.kernel.injection(cap.id) is None
    assert iworld.kernel.injection("no-such-capability") is None


def test_delegates_inherit_and_revocation_drops(iworld: InjectWorld) -> None:
    w = iworld
    root = grant(w)
    injection = w.kernel.injection(root.id)
    child = hand_on(w, root.id, w.alice, w.bob, resource=f"{API}/x", operations=["GET"])
    grandchild = hand_on(w, child.id, w.bob, w.carol)
    sibling = hand_on(w, root.id, w.alice, w.carol)
    assert w.kernel.injection(child.id) is injection
    assert w.kernel.injection(grandchild.id) is injection
    w.kernel.revoke(w.bob, child.id, now=T0 + 2, trace_id="revoke")
    assert w.kernel.injection(child.id) is None
    assert w.kernel.injection(grandchild.id) is None
    assert w.kernel.injection(root.id) is injection
    assert w.kernel.injection(sibling.id) is injection
    w.kernel.revoke(w.alice, root.id, now=T0 + 3, trace_id="revoke")
    assert w.kernel.injection(root.id) is None
    assert w.kernel.injection(sibling.id) is None
    assert w.kernel._injections == {}


def test_a_delegate_of_a_grant_without_inject_has_none(iworld: InjectWorld) -> None:
    by_b = grant(iworld, ttl=1000)
    child = hand_on(iworld, by_b.id, iworld.alice, iworld.bob)
    assert iworld.kernel.injection(child.id) is None


def test_expiry_drops_it(iworld: InjectWorld) -> None:
    cap = grant(iworld, ttl=10)
    iworld.kernel.sweep(now=T0 + 11, trace_id="sweep")
    assert iworld.kernel.injection(cap.id) is None
    assert iworld.kernel._injections == {}


def test_a_capability_loaded_at_start_has_none(iworld: InjectWorld) -> None:
    cap = grant(iworld)
    child = hand_on(iworld, cap.id, iworld.alice, iworld.bob)
    restarted = iworld.reopen()
    assert restarted.get(cap.id) is not None
    assert restarted.get(child.id) is not None
    assert restarted.injection(cap.id) is None
    assert restarted.injection(child.id) is None


def test_the_secret_reaches_nothing_an_agent_or_the_trail_can_read(iworld: InjectWorld) -> None:
    w = iworld
    cap = grant(w)
    child = hand_on(w, cap.id, w.alice, w.bob, resource=f"{API}/x")
    w.kernel.validate(w.bob, child.id, Use("GET", f"{API}/x/1"), now=T0 + 2, trace_id="v")
    with pytest.raises(errors.ConstraintViolation):
        w.kernel.validate(w.bob, child.id, Use("GET", f"{API}/y"), now=T0 + 2, trace_id="v")
    with pytest.raises(errors.OperationNotAllowed):
        w.kernel.validate(w.bob, child.id, Use("DELETE", f"{API}/x"), now=T0 + 2, trace_id="v")
    with pytest.raises(errors.DelegationWidening):
        hand_on(w, child.id, w.bob, w.carol, resource=API)
    listed = [
        *w.kernel.list_capabilities(w.alice, now=T0 + 2),
        *w.kernel.list_capabilities(w.bob, now=T0 + 2),
    ]
    w.kernel.revoke(w.alice, cap.id, now=T0 + 3, trace_id="revoke")
    ceiling = w.config.policy.ceilings_for("alice")[0]
    assert ceiling.inject is not None
    texts = [
        repr(cap.to_wire()),
        repr(child.to_wire()),
        *(repr(c.to_wire()) for c in listed),
        *(repr(event) for event in w.recorder.events),
        repr(ceiling),
        str(ceiling),
        repr(ceiling.inject),
        str(ceiling.inject),
        repr(w.config.policy),
    ]
    assert len(w.recorder.events) > 10
    for secret in (TOKEN, FILE_KEY):
        for text in texts:
            assert secret not in text
        for path in w.root.iterdir():  # the state file, its journal and WAL
            if path.is_file() and path != w.secret_path:
                assert secret.encode() not in path.read_bytes(), path


def test_injection_repr_names_headers_only(token: str) -> None:
    found = inject(headers(Authorization="Bearer ${env:INJ_TEST_TOKEN}", Accept="x"))
    assert repr(found) == "Injection(headers=['Authorization', 'Accept'])"
    assert str(found) == repr(found)
    assert f"{found}" == repr(found)


# -- redact -------------------------------------------------------------------


def test_redact_str_and_bytes() -> None:
    text = f"401 from server: bad token {TOKEN} (Bearer {TOKEN})"
    secrets = (f"Bearer {TOKEN}", TOKEN)
    expected = "401 from server: bad token [redacted] ([redacted])"
    assert redact(text, secrets) == expected
    assert redact(text.encode(), secrets) == expected.encode()
    assert redact("nothing here", secrets) == "nothing here"
    assert redact(b"", secrets) == b""
    assert redact("abc", ["", "b"]) == "a[redacted]c"


def test_redact_overlapping_touching_and_contained_secrets() -> None:
    # Overlapping: no piece of either secret is left.
    assert redact("xxABCDEFyy", ["ABCDE", "DEF"]) == "xx[redacted]yy"
    assert redact(b"xxABCDEFyy", ["DEF", "ABCDE"]) == b"xx[redacted]yy"
    # Touching and repeated.
    assert redact("ABCDEFABC", ["ABC", "DEF"]) == "[redacted]"
    assert redact("AAAA", ["AA"]) == "[redacted]"
    # One inside another, in any order.
    assert redact("-Bearer T0K-", ["T0K", "Bearer T0K"]) == "-[redacted]-"
    # Apart.
    assert redact("ABC-ABC", ["ABC"]) == "[redacted]-[redacted]"


def test_redact_finds_a_repr_quoted_secret() -> None:
    secret = "a\\b'c"
    text = f"bad value {secret!r} and {secret.encode()!r}"
    assert "\\\\" in text  # the backslash, as repr doubles it
    assert redact(text, [secret]) == 'bad value "[redacted]" and b"[redacted]"'


def test_redact_with_an_injections_secrets(token: str) -> None:
    found = inject(headers(Authorization="Bearer ${env:INJ_TEST_TOKEN}"))
    text = f"server said: token {TOKEN} refused; sent 'Bearer {TOKEN}'"
    assert redact(text, found.secrets) == "server said: token [redacted] refused; sent '[redacted]'"


def test_policy_and_config_errors_never_show_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INJ_TEST_TOKEN", f"{TOKEN}\r\nX-Evil: 1")
    entry = policy_entry(API, inject=headers(Authorization="Bearer ${env:INJ_TEST_TOKEN}"))
    with pytest.raises(PolicyError) as policy_error:
        parse_ceiling(entry, default_registry(), "agents.a.allow[0]")
    with pytest.raises(ConfigError) as config_error:
        config_with(entry)
    for error in (policy_error.value, config_error.value):
        assert "inject.headers.Authorization: header Authorization: the value holds a CR" in str(
            error
        )
        assert TOKEN not in str(error) and TOKEN not in repr(error)
        assert error.__cause__ is None and error.__suppress_context__
