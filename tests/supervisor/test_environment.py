"""What of the supervisor's environment an agent gets: the defaults and what
the operator names, never a credential by accident, never a forged id."""

from __future__ import annotations

import pytest
from capsup.supervisor.environment import DEFAULT_PASSED, agent_environment, check_name_pattern

SUPERVISOR_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/op",
    "LANG": "C.UTF-8",
    "LC_TIME": "en_GB.UTF-8",
    "PYTHONPATH": "/src",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t",
    "SSH_AUTH_SOCK": "/run/ssh.sock",
    "OPENAI_API_KEY": "sk-x",
    "HF_TOKEN": "hf_x",
    "HF_HOME": "/cache/hf",
    "CAPSUP_AGENT_ID": "agent-forged",
    "CAPSUP_ENDPOINT": "ipc:///tmp/elsewhere",
    "PATHOLOGICAL": "not PATH",
    "PYTHON_KEYRING_PASSWORD": "k",
    "LC_DEPLOY_TOKEN": "t",
}


def env(*passed: str) -> dict[str, str]:
    return agent_environment(SUPERVISOR_ENV, passed, endpoint="ipc:///run/e", agent_id="agent-a")


def test_by_default_only_session_locale_and_toolchain_pass() -> None:
    assert env() == {
        "PATH": "/usr/bin",
        "HOME": "/home/op",
        "LANG": "C.UTF-8",
        "LC_TIME": "en_GB.UTF-8",
        "PYTHONPATH": "/src",
        "CAPSUP_ENDPOINT": "ipc:///run/e",
        "CAPSUP_AGENT_ID": "agent-a",
    }


def test_the_operator_passes_names_and_prefixes() -> None:
    got = env("OPENAI_API_KEY", "HF_*")
    assert {k: got[k] for k in ("OPENAI_API_KEY", "HF_TOKEN", "HF_HOME")} == {
        "OPENAI_API_KEY": "sk-x",
        "HF_TOKEN": "hf_x",
        "HF_HOME": "/cache/hf",
    }
    assert "AWS_SECRET_ACCESS_KEY" not in got and "SSH_AUTH_SOCK" not in got


def test_everything_but_capsups_own_variables_with_a_star() -> None:
    got = env("*")
    assert set(got) == set(SUPERVISOR_ENV)
    assert got["CAPSUP_AGENT_ID"] == "agent-a"  # never the supervisor's own
    assert got["CAPSUP_ENDPOINT"] == "ipc:///run/e"


def test_capsups_own_variables_cannot_be_passed_by_name() -> None:
    assert env("CAPSUP_AGENT_ID", "CAPSUP_*")["CAPSUP_AGENT_ID"] == "agent-a"


def test_an_exact_name_is_not_a_prefix() -> None:
    """Any name can carry a token: the defaults are exact names, so a
    variable that merely starts like one of them stays behind."""
    got = env()
    for lookalike in ("PATHOLOGICAL", "PYTHON_KEYRING_PASSWORD", "LC_DEPLOY_TOKEN"):
        assert lookalike not in got


def test_the_defaults_name_no_credential_carrier() -> None:
    for carrier in ("SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "KUBECONFIG"):
        assert carrier not in DEFAULT_PASSED
    assert all(check_name_pattern(p) == p and not p.endswith("*") for p in DEFAULT_PASSED)


@pytest.mark.parametrize("pattern", ["", "A-B", "*X", "A**", "A*B", "1A", "A B", 5, None])
def test_a_malformed_pattern_is_refused(pattern: object) -> None:
    with pytest.raises(ValueError, match="not a variable name"):
        check_name_pattern(pattern)
