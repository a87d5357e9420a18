"""Sub-agents: a stubborn one is killed after the grace period, and a
``wait`` answered later is answered only to the connection that asked.

A ROUTER routes a reply by routing id, and cannot say when the connection
behind an id is gone and another has taken the id. So a late answer goes
out only while the agent that asked still runs, and is never deferred on a
connection that chose its own id (which any process may claim once free).

A real supervisor (Runtime) in this process, real agent processes, and
DEALER sockets of the test's own standing in for a stranger. The agents run
confined, as by default: the parent and its sleeper have the test's
directory as a sandbox write grant, for the files they signal with.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from capsup.supervisor.config import parse_config
from capsup.supervisor.processes import AgentProcess
from capsup.supervisor.runtime import Runtime, RuntimeOptions

#: A sub-agent that ignores SIGTERM, says so with the file ``sleeping``, and
#: ends when the file ``release`` appears.
SLEEPER = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
home = pathlib.Path(sys.argv[1])
(home / "sleeping").touch()
while not (home / "release").exists():
    time.sleep(0.01)
"""


@pytest.fixture
def runtime(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """A supervisor whose grace period is the test's ``grace`` mark, or 30 s
    (so that the sleeper ends when the test says so), confined unless the
    test parametrizes this fixture (indirectly) with another ``confine``."""
    mark = request.node.get_closest_marker("grace")
    grant = {"write": [str(tmp_path)]}
    policy = {
        "agents": {
            "parent": {"may_spawn": ["sleeper"], "sandbox": grant},
            "sleeper": {"sandbox": grant},
        }
    }
    rt = Runtime(
        parse_config(policy, source="<test>"),
        RuntimeOptions(
            endpoint=f"ipc://{tmp_path}/capsup.sock",
            audit_log=str(tmp_path / "audit.jsonl"),
            grace_period=mark.args[0] if mark else 30.0,
            confine=getattr(request, "param", "required"),
        ),
    )
    yield rt
    (tmp_path / "release").touch()
    rt.close()


def drive(runtime: Runtime, until: Callable[[], bool], what: str) -> None:
    for _ in range(600):
        if until():
            return
        runtime.server.turn(timeout=0.02)
    raise AssertionError(f"timed out waiting for {what}")


#: How every parent here begins: it spawns the sleeper as ``sub``.
PARENT = """
import os, pathlib, sys, time
from capsup.agents import WaitTimeout, connect
home = pathlib.Path(sys.argv[1])
client = connect()
sub = client.spawn([sys.executable, str(home / "sleeper.py"), str(home)], name="sleeper")
"""


def start(tmp_path: Path, runtime: Runtime, then: str) -> AgentProcess:
    """Start a parent that spawns the sleeper, then runs ``then``."""
    script = tmp_path / "agent.py"
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    script.write_text(PARENT + textwrap.dedent(then))
    return runtime.server.start_agent([sys.executable, str(script), str(tmp_path)], name="parent")


# Unconfined, the asker shares the one ROUTER with strangers, so a stranger
# can take the asker's very routing id on the socket the late answer goes
# out on: only the check that the asker still runs keeps it from the
# stranger (this case is about unconfined agents, hence confine = "off").
# Confined, the asker asked on its own endpoint, closed when it exits: a
# stranger can take the id only on the shared endpoint, and gets nothing.
@pytest.mark.parametrize("runtime", ["off", "required"], indirect=True)
def test_a_late_answer_never_reaches_a_stranger_holding_the_askers_routing_id(
    tmp_path: Path, runtime: Runtime
) -> None:
    agent = start(
        tmp_path,
        runtime,
        """
        client.wait(sub.agent_id)  # answered later; the test kills us first
        """,
    )
    server = runtime.server
    drive(runtime, lambda: bool(server._waiters), "the parent's wait")
    drive(runtime, (tmp_path / "sleeping").exists, "the sub-agent to ignore SIGTERM")
    ((child_id, (waiter,)),) = server._waiters.items()
    routing_id = waiter.envelope[0]
    assert (waiter.sock is server._socket) is (runtime.confiner is None)
    os.kill(agent.pid, signal.SIGKILL)
    drive(runtime, lambda: not agent.running, "the parent's exit")

    # A stranger takes the parent's routing id, and proves that replies to it
    # now reach the stranger: it is answered (unauthenticated) on that id.
    context = zmq.Context()
    stranger = context.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.setsockopt(zmq.ROUTING_ID, routing_id)
    try:
        stranger.connect(server.endpoint)
        stranger.send(msgpack.packb({"id": 7, "op": "whoami", "args": {}}))
        drive(runtime, lambda: bool(stranger.poll(0)), "the stranger's answer")
        reply = msgpack.unpackb(stranger.recv())
        assert (reply["id"], reply["error"]["code"]) == (7, "unauthenticated")

        (tmp_path / "release").touch()
        child = server.processes.get(child_id)
        assert child is not None and child.running
        drive(runtime, lambda: not child.running, "the sub-agent's exit")
        for _ in range(20):
            server.turn(timeout=0.01)
        assert not stranger.poll(100), msgpack.unpackb(stranger.recv())
        assert not server._waiters
    finally:
        stranger.close()
        context.term()


def test_a_wait_is_not_deferred_on_a_connection_that_chose_its_routing_id(
    tmp_path: Path, runtime: Runtime
) -> None:
    agent = start(
        tmp_path,
        runtime,
        """
        import msgpack, zmq
        # Its own ids, one starting with a zero byte (which libzmq's Identity
        # metadata reads as no id), one not UTF-8: none has the ROUTER's form.
        for own_id in (b"my-own-id", b"\\x00mine!", b"\\xff\\xfe"):
            chosen = zmq.Context.instance().socket(zmq.DEALER)
            chosen.setsockopt(zmq.ROUTING_ID, own_id)
            chosen.connect(os.environ["CAPSUP_ENDPOINT"])
            request = {"id": 1, "op": "wait", "args": {"agent": sub.agent_id, "timeout": 0.2}}
            chosen.send(msgpack.packb(request))
            reply = msgpack.unpackb(chosen.recv())
            assert reply["error"]["code"] == "bad_request", (own_id, reply)
            assert "ZMQ_ROUTING_ID" in reply["error"]["message"], reply
            chosen.close(linger=0)

        try:  # the SDK's connection has an id the supervisor assigned
            client.wait(sub.agent_id, timeout=0.2)
        except WaitTimeout:
            pass
        else:
            raise SystemExit("the sub-agent ended early")
        (home / "release").touch()
        assert client.wait(sub.agent_id, timeout=30) == 0
        """,
    )
    drive(runtime, lambda: not agent.running, "the agent's exit")
    assert agent.returncode == 0
    runtime.audit.flush()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    denied = [r for r in records if r["event"] == "capability_denied"]
    assert [(r["operation"], r["reason"]) for r in denied] == [("wait", "bad_request")] * 3


@pytest.mark.grace(0.3)
def test_a_stubborn_sub_agent_is_killed_once_its_grace_period_is_over(
    tmp_path: Path, runtime: Runtime
) -> None:
    agent = start(
        tmp_path,
        runtime,
        """
        while not (home / "sleeping").exists():  # exit once it ignores SIGTERM
            time.sleep(0.01)
        """,
    )
    server = runtime.server
    drive(runtime, lambda: bool(server.processes.descendants(agent.agent_id)), "the spawn")
    (child,) = server.processes.descendants(agent.agent_id)
    drive(runtime, lambda: not agent.running, "the parent's exit")
    # SIGTERM sent (and ignored); SIGKILL is due within the grace period.
    deadline = server.processes.next_kill()
    assert deadline is not None and deadline - time.time() <= 0.3
    drive(runtime, lambda: not child.running, "the sub-agent's death")
    assert child.returncode == -signal.SIGKILL
    assert child.signals_sent == {signal.SIGTERM, signal.SIGKILL}
    assert time.time() >= deadline
    assert server.processes.next_kill() is None


@pytest.mark.parametrize("runtime", ["off"], indirect=True)
def test_only_the_most_recently_ended_sub_agents_are_kept(
    tmp_path: Path, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent that keeps spawning short-lived helpers does not grow the
    supervisor's memory: past the bound, the oldest ended sub-agents are
    forgotten (a wait on one is unknown_agent), the recent ones kept."""
    import capsup.supervisor.server as server_module

    monkeypatch.setattr(server_module, "_KEPT_ENDED_CHILDREN", 2)
    (tmp_path / "quick.py").write_text("import sys; sys.exit(int(sys.argv[1]))\n")
    script = tmp_path / "spawner.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys, time
            from capsup.agents import UnknownAgent, connect
            client = connect()
            ids = []
            for code in (11, 12, 13, 14):
                sub = client.spawn([sys.executable, {str(tmp_path / "quick.py")!r}, str(code)])
                assert client.wait(sub.agent_id, timeout=20) == code
                ids.append(sub.agent_id)
            outcomes = []
            for agent_id in ids:
                try:
                    outcomes.append(client.wait(agent_id, timeout=0))
                except UnknownAgent:
                    outcomes.append("unknown")
            open({str(tmp_path / "outcomes.json")!r}, "w").write(json.dumps(outcomes))
            """
        )
    )
    parent = runtime.server.start_agent([sys.executable, str(script)], name="parent")
    drive(runtime, lambda: not parent.running, "the spawner to end")
    assert parent.returncode == 0
    outcomes = json.loads((tmp_path / "outcomes.json").read_text())
    assert outcomes == ["unknown", "unknown", 13, 14]
    assert len(parent.children) <= 2
