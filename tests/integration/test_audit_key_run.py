"""`capsup run` with an audit key (issue 15): the trail is keyed, no
confined agent can read the key, and an agent whose sandbox would reach it
is not started."""

from __future__ import annotations

from pathlib import Path

from capsup.supervisor.audit import read_key_file, verify
from runner import capsup_run, write_agent

READ_KEY = """
try:
    open({key!r}, "rb").read()
    print("read the key")
except PermissionError:
    print("refused")
"""


def _key(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    key_file = directory / "audit.key"
    key_file.write_text("0123456789abcdef" * 4 + "\n")
    key_file.chmod(0o600)
    return key_file


def test_a_keyed_run_whose_agent_cannot_read_the_key(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    key_file = _key(tmp_path / "keys")
    agent = write_agent(root, "agent", READ_KEY.format(key=str(key_file)))
    outcome = capsup_run(root, agent, supervisor=f'audit_key_file = "{key_file}"')
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.strip() == "refused"
    assert all(r["hash"].startswith("hmac-sha256:") for r in outcome.audit)
    result = verify([root / "audit.jsonl"], key=read_key_file(key_file))
    assert result.ok and result.keyed == len(outcome.audit)


def test_an_agent_whose_sandbox_reaches_the_key_is_not_started(tmp_path: Path) -> None:
    """The test policy grants the agent its whole directory (sandbox.write):
    with the key in it, the agent would read it; it does not start."""
    key_file = _key(tmp_path)
    agent = write_agent(tmp_path, "agent", READ_KEY.format(key=str(key_file)))
    outcome = capsup_run(tmp_path, agent, supervisor=f'audit_key_file = "{key_file}"')
    assert outcome.code != 0
    assert "read the key" not in outcome.stdout
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and "no agent may read" in lines[0], outcome.stderr
    # The control: without the key configured the same agent reads the file.
    control = capsup_run(tmp_path, agent, extra=("--audit-log", str(tmp_path / "other.jsonl")))
    assert control.stdout.strip() == "read the key", control.stderr
