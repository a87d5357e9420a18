"""Config loading: strict, and every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from capsup.supervisor.config import ConfigError, load_config, parse_config

GOOD = """
[agents.researcher]
allow = [
  { resource = "file:///srv/data", operations = ["read", "list"], max_ttl = 3600, max_delegation_depth = 2 },
  { resource = "https://api.github.com/repos", operations = ["GET"], constraints = { rate_limit = { requests = 10, per_seconds = 1 } } },
]
[databases.main]
url = "sqlite:///srv/data/main.db"
"""


def test_the_documented_form_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD)
    config = load_config(path)
    ceilings = config.policy.ceilings_for("researcher")
    assert len(ceilings) == 2
    assert ceilings[0].operations == frozenset({"read", "list"})
    assert ceilings[0].max_delegation_depth == 2
    assert ceilings[1].constraints["rate_limit"]["requests"] == 10
    assert config.databases["main"].dialect == "sqlite"
    assert config.policy.ceilings_for("nobody") == ()


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[agent.x]\n", "agent"),
        (
            "[agents.x]\nallow = [{ resource = 'file:///a', operations = ['read'], bogus = 1 }]",
            "bogus",
        ),
        ("[agents.x]\nallow = [{ resource = 'gopher://a', operations = ['read'] }]", "resource"),
        ("[agents.x]\nallow = [{ resource = 'file:///a', operations = ['fly'] }]", "operations"),
        ("[agents.x]\nallow = [{ resource = 'file:///a', operations = [] }]", "operations"),
        (
            "[agents.x]\nallow = [{ resource = 'file:///a', operations = ['read'], max_ttl = -1 }]",
            "max_ttl",
        ),
        (
            "[agents.x]\nallow = [{ resource = 'file:///a', operations = ['read'], constraints = { nope = 1 } }]",
            "nope",
        ),
        (
            "[agents.x]\nallow = [{ resource = 'db://missing', operations = ['select'] }]",
            "resource",
        ),
        ("[agents.x]\ndeny = []", "deny"),
        ("[databases.main]\nurl = 5", "url"),
        ("[supervisor]\ngrace_period = 'soon'", "grace_period"),
        ("[supervisor]\nfoo = 1", "foo"),
        ("[supervisor]\nagent_scheduling = 'fifo'", "agent_scheduling"),
        ("[supervisor]\nagent_scheduling = ['batch']", "agent_scheduling"),
        ("[supervisor]\nagent_scheduling = 1", "agent_scheduling"),
        ("[supervisor]\npass_environment = 'HOME'", "pass_environment"),
        ("[supervisor]\npass_environment = ['A-B']", "pass_environment"),
        ("[supervisor]\npass_environment = [1]", "pass_environment"),
        ("this is [not toml", "TOML"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert names in str(info.value)


def test_pass_environment_is_empty_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load_config(path).settings.pass_environment == ()
    path.write_text("[supervisor]\npass_environment = ['OPENAI_API_KEY', 'HF_*']\n")
    assert load_config(path).settings.pass_environment == ("OPENAI_API_KEY", "HF_*")


def test_agent_scheduling_is_batch_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load_config(path).settings.agent_scheduling == "batch"
    path.write_text("[supervisor]\nagent_scheduling = 'inherit'\n")
    assert load_config(path).settings.agent_scheduling == "inherit"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_may_spawn(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[agents.a]\nmay_spawn = ["b"]\n[agents.b]\nallow = []\n')
    policy = load_config(path).policy
    assert policy.may_spawn("a", "b")
    assert not policy.may_spawn("a", "a") and not policy.may_spawn("b", "a")
    path.write_text("[agents.a]\nmay_spawn = 'b'\n")
    with pytest.raises(ConfigError, match="may_spawn"):
        load_config(path)


def test_a_file_ceiling_may_not_cover_a_secret_file(tmp_path: Path) -> None:
    """The audit key and a credential's file are the supervisor's alone: a
    file:// entry above one would let an agent read it through the broker."""
    project = tmp_path / "project"
    (project / ".secrets").mkdir(parents=True)
    token = project / ".secrets" / "token"
    token.write_text("s3cr3t")
    token.chmod(0o600)
    key = project / "audit.key"
    key.write_text("k" * 40)
    key.chmod(0o600)
    http = {
        "resource": "https://api.example.com",
        "operations": ["GET"],
        "inject": {"headers": {"Authorization": f"Bearer ${{file:{token}}}"}},
    }
    files = {"resource": f"file://{project}", "operations": ["read"]}
    with pytest.raises(ConfigError, match=r"covers .*token, which no agent may read"):
        parse_config({"agents": {"a": {"allow": [http, files]}}})
    settings = {"audit_key_file": str(key)}
    with pytest.raises(ConfigError, match=r"covers .*audit.key, which no agent may read"):
        parse_config({"agents": {"a": {"allow": [files]}}, "supervisor": settings})
    # A narrower resource, beside them, is fine.
    (project / "src").mkdir()
    narrow = {"resource": f"file://{project}/src", "operations": ["read"]}
    parse_config({"agents": {"a": {"allow": [http, narrow]}}, "supervisor": settings})
