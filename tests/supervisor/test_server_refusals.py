"""Refusals the server makes itself are answered and recorded.

A real supervisor (Runtime) in this process, a real agent process talking
to it over its socket, and the audit trail read back from disk.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from capsup.supervisor.processes import new_agent_id
from capsup.supervisor.runtime import Runtime
from capsup.supervisor.server import _identity, _tell_operator
from in_process import read_trail, run_agent, start_runtime


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    with start_runtime(tmp_path) as rt:
        yield rt


def test_a_wait_on_no_such_agent_is_refused_and_recorded(tmp_path: Path, runtime: Runtime) -> None:
    run_agent(
        runtime,
        tmp_path,
        """
        from capsup.agents import UnknownAgent, connect
        try:
            connect().wait("agent-nobody-0123", timeout=1)
        except UnknownAgent:
            pass
        else:
            raise SystemExit("the wait was not refused")
        """,
    )
    (denied,) = [r for r in read_trail(tmp_path) if r["event"] == "capability_denied"]
    assert denied["operation"] == "wait"
    assert denied["reason"] == "unknown_agent"
    assert denied["principal"].startswith("agent-agent-")


def test_a_bug_is_an_internal_error_reply_a_record_and_a_line_on_stderr(
    tmp_path: Path,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runtime.kernel, "list_capabilities", broken)
    run_agent(
        runtime,
        tmp_path,
        """
        from capsup.agents import InternalError, connect
        client = connect()
        try:
            client.list_my_capabilities()
        except InternalError as error:
            assert "ZeroDivisionError" in str(error) and "a bug" not in str(error), error
        else:
            raise SystemExit("no internal error")
        assert client.whoami().principal == "agent"  # still serving
        """,
    )
    (denied,) = [r for r in read_trail(tmp_path) if r["event"] == "capability_denied"]
    assert denied["operation"] == "list"
    assert denied["reason"] == "internal_error"
    assert "ZeroDivisionError: a bug" in capsys.readouterr().err


def test_the_user_id_splits_at_the_last_bar() -> None:
    assert _identity("agent-a|b-0f|4242") == ("agent-a|b-0f", 4242)
    assert _identity("|4242") == ("", 4242)
    assert _identity("") == ("", None)


@pytest.mark.parametrize("name", ["a|b", "new\nline", "../../x", "", "é"])
def test_agent_ids_are_one_plain_token_whatever_the_name(name: str) -> None:
    agent_id = new_agent_id(name)
    assert agent_id.startswith("agent-")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in agent_id), agent_id


class Unsayable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_telling_the_operator_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _tell_operator("odd", Unsayable())  # an exception that cannot say what it is

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError

    monkeypatch.setattr(sys, "stderr", ClosedPipe())
    _tell_operator("anything", ValueError("x"))
