"""`capsup run` end to end: real supervisor, real agents, real ZeroMQ."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq
from runner import (
    CAPSUP,
    alive,
    capsup_run,
    read_audit,
    start_capsup,
    wait_for,
    write_agent,
    write_idle_agent,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_example_lives_its_whole_life(tmp_path: Path) -> None:
    """`make demo`: the workspace copied, the researcher run confined."""
    shutil.rmtree("/tmp/capsup-demo", ignore_errors=True)
    shutil.copytree(REPO / "examples" / "workspace", "/tmp/capsup-demo")
    with sqlite3.connect("/tmp/capsup-demo/papers.db") as db:
        db.executescript((REPO / "examples" / "papers.sql").read_text())
    audit = tmp_path / "audit.jsonl"
    proc = subprocess.run(
        [
            *CAPSUP,
            "run",
            "--config",
            str(REPO / "configs" / "demo.toml"),
            "--audit-log",
            str(audit),
            str(REPO / "examples" / "researcher.py"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "open() of the workspace directly: PermissionError (confined)" in out
    assert "read notes/readme.txt through the broker: 'capsup keeps agents honest.'" in out
    assert "listdir notes/ through the broker: ['readme.txt']" in out  # *.key is denied
    assert "read a denied glob: denied (constraint_violation, denied_by_glob)" in out
    assert "read a path traversal: denied (constraint_violation, outside_resource)" in out
    assert "request file:///etc: denied (denied_by_policy)" in out
    assert "query db://papers through the broker: ['Robust Composition', 'Capsicum" in out
    assert "query another table: denied (constraint_violation, table_not_allowed)" in out
    assert "[summarizer] opened readme.txt through the broker: 'capsup keeps" in out
    assert "[summarizer] wrote summary.txt (14 bytes)" in out
    assert "widening my copy: denied (delegation_widening)" in out
    assert "summarizer exited with 0" in out
    assert "the summarizer wrote: 'honest agents'" in out
    assert "revoked 1 capability; the summarizer's copy was already revoked" in out
    assert "read after revoke: denied (revoked)" in out
    events = {r["event"] for r in read_audit(audit)}
    assert {
        "agent_started",
        "capability_granted",
        "capability_delegated",
        "capability_revoked",
        "file_operation",
        "database_query",
        "security_violation",
        "agent_terminated",
    } <= events


def test_exit_codes_pass_through(tmp_path: Path) -> None:
    agent = write_agent(tmp_path, "agent", "import sys; sys.exit(7)")
    assert capsup_run(tmp_path, agent).code == 7
    agent = write_agent(
        tmp_path, "agent", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    )
    assert capsup_run(tmp_path, agent).code == 128 + signal.SIGTERM


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("pass", "exit"),
        ("import sys; sys.exit(3)", "error"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "crash"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGUSR1)", "signal"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "signal"),
    ],
)
def test_the_exit_record_says_how_the_agent_ended(tmp_path: Path, body: str, reason: str) -> None:
    outcome = capsup_run(tmp_path, write_agent(tmp_path, "agent", body))
    (ended,) = [r for r in outcome.audit if r["event"] == "agent_terminated"]
    assert ended["detail"]["reason"] == reason


def test_an_agent_capsup_signalled_to_death_was_killed(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import time
        open("{tmp_path}/ready", "w").close()
        time.sleep(60)
    """,
    )
    proc = start_capsup(tmp_path, agent)
    wait_for(tmp_path / "ready")
    proc.send_signal(signal.SIGTERM)  # forwarded: capsup sends it on
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    (ended,) = [r for r in read_audit(tmp_path / "audit.jsonl") if r["event"] == "agent_terminated"]
    assert ended["detail"]["reason"] == "killed"


def test_user_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CAPSUP, "run", str(tmp_path / "missing.py")], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not found" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[agents.x]\nallow = [{ resource = 'file:///a', operations = ['fly'] }]")
    agent = write_agent(tmp_path, "agent", "pass")
    proc = subprocess.run(
        [*CAPSUP, "run", "--config", str(bad), str(agent)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr and "operations" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_environment_names_the_endpoint_and_nothing_else(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "agent",
        """
        import os, stat
        endpoint = os.environ["CAPSUP_ENDPOINT"]
        assert endpoint.startswith("ipc://"), endpoint
        directory = os.path.dirname(endpoint[len("ipc://"):])
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert os.environ["CAPSUP_AGENT_ID"].startswith("agent-main-")
        assert sorted(k for k in os.environ if k.startswith("CAPSUP_")) == [
            "CAPSUP_AGENT_ID", "CAPSUP_ENDPOINT", "CAPSUP_FD_SOCKET"]
    """,
    )
    outcome = capsup_run(tmp_path, agent)
    assert outcome.code == 0, outcome.stderr


def test_agents_get_no_secrets_from_the_supervisors_environment(tmp_path: Path) -> None:
    """Ambient authority the kernel never sees (tokens, the operator's SSH
    agent) stays with the supervisor; the operator passes what an agent
    needs by name, and sub-agents get the same."""
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import json, os, sys
        from capsup.agents import connect
        with connect() as client:
            sub = client.spawn([sys.executable, "-c",
                "import json, os; json.dump(dict(os.environ), open('{tmp_path}/sub.json', 'w'))"],
                name="helper")
            client.wait(sub.agent_id, timeout=30)
        json.dump(dict(os.environ), open("{tmp_path}/main.json", "w"))
        """,
    )
    env = {
        **os.environ,
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock",
        "GITHUB_TOKEN": "ghp_x",
        "MODEL_API_KEY": "sk-x",
        "MODEL_REGION": "eu",
        "CAPSUP_AGENT_ID": "agent-forged",
        "LC_ALL": "C.UTF-8",
    }
    outcome = capsup_run(tmp_path, agent, supervisor='pass_environment = ["MODEL_*"]', env=env)
    assert outcome.code == 0, outcome.stderr
    for who in ("main", "sub"):
        seen = json.loads((tmp_path / f"{who}.json").read_text())
        for secret in ("AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK", "GITHUB_TOKEN"):
            assert secret not in seen, (who, secret)
        assert seen["MODEL_API_KEY"] == "sk-x" and seen["MODEL_REGION"] == "eu"
        assert seen["PATH"] == os.environ["PATH"] and seen["LC_ALL"] == "C.UTF-8"
        assert seen["CAPSUP_AGENT_ID"].startswith(f"agent-{'main' if who == 'main' else 'helper'}-")


def test_a_stolen_id_is_denied_and_audited(tmp_path: Path) -> None:
    write_agent(
        tmp_path,
        "thief",
        """
        import sys
        from capsup.agents import NotHolder, connect
        client = connect()
        try:
            client.validate(sys.argv[1], "read", sys.argv[2])
        except NotHolder:
            sys.exit(42)
    """,
    )
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import sys
        from capsup.agents import connect
        client = connect()
        cap = client.request("file://{tmp_path}", ["read"])
        thief = client.spawn([sys.executable, "{tmp_path}/thief.py", cap.id, "{tmp_path}/x"],
                             name="helper")
        sys.exit(client.wait(thief.agent_id, timeout=30))
    """,
    )
    outcome = capsup_run(tmp_path, agent)
    assert outcome.code == 42, outcome.stderr
    stolen = [r for r in outcome.events("security_violation") if r["detail"]["kind"] == "stolen_id"]
    assert len(stolen) == 1 and stolen[0]["principal"].startswith("agent-helper-")


def shared_endpoint(agent_endpoint: str) -> str:
    """The supervisor's shared endpoint, beside the agents' own
    (``RUNTIME/agents/N.sock`` and ``RUNTIME/capsup.sock``)."""
    return "ipc://" + str(Path(agent_endpoint.removeprefix("ipc://")).parents[1] / "capsup.sock")


def test_an_unknown_process_is_unauthenticated(tmp_path: Path) -> None:
    agent = write_idle_agent(tmp_path)
    audit = tmp_path / "audit.jsonl"
    proc = start_capsup(tmp_path, agent)
    try:
        wait_for(tmp_path / "endpoint")
        endpoint = (tmp_path / "endpoint").read_text()
        # this test process is not an agent: whatever it claims, it is nobody
        from capsup.agents import SupervisorGone, Unauthenticated, connect

        client = connect(shared_endpoint(endpoint), timeout=10)
        with pytest.raises(Unauthenticated):
            client.whoami()
        with pytest.raises(Unauthenticated):
            client.request(f"file://{tmp_path}", ["read"])
        client.close()
        # The agent's own endpoint does not even let it in.
        client = connect(endpoint, timeout=2)
        with pytest.raises(SupervisorGone):
            client.whoami()
        client.close()
    finally:
        (tmp_path / "done").write_text("")
        assert proc.wait(timeout=30) == 0
    kinds = [r["detail"]["kind"] for r in read_audit(audit) if r["event"] == "security_violation"]
    assert kinds.count("unauthenticated") >= 1


def test_a_strangers_reply_and_its_audit_record_share_the_trace_id(tmp_path: Path) -> None:
    agent = write_idle_agent(tmp_path)
    proc = start_capsup(tmp_path, agent)
    replies = []
    try:
        wait_for(tmp_path / "endpoint")
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(shared_endpoint((tmp_path / "endpoint").read_text()))
        for request in (
            {"id": 7, "op": "whoami", "trace_id": "stranger-1"},
            {"id": "no-trace", "op": "whoami"},
        ):
            sock.send(msgpack.packb(request))
            assert sock.poll(10_000), "no reply to a stranger"
            replies.append(msgpack.unpackb(sock.recv()))
        sock.close()
    finally:
        (tmp_path / "done").write_text("")
        assert proc.wait(timeout=30) == 0
    assert [(r["id"], r["error"]["code"]) for r in replies] == [
        (7, "unauthenticated"),
        ("no-trace", "unauthenticated"),
    ]
    assert replies[0]["trace_id"] == "stranger-1"
    recorded = {
        r["trace_id"]
        for r in read_audit(tmp_path / "audit.jsonl")
        if r["event"] == "security_violation" and r["detail"]["kind"] == "unauthenticated"
    }
    assert {r["trace_id"] for r in replies} <= recorded


def test_validations_are_timed_in_the_metrics(tmp_path: Path) -> None:
    """The agent validates twice (it cannot reach /metrics itself: TCP is
    closed to a confined agent), then the test scrapes while it waits."""
    port = _free_port()
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import os, time
        from capsup.agents import AccessDenied, connect
        c = connect()
        cap = c.request("file://{tmp_path}", ["read"])
        c.validate(cap, "read", "{tmp_path}/policy.toml")
        try:
            c.validate(cap, "read", "/etc/passwd")
        except AccessDenied:
            pass
        open("{tmp_path}/validated", "w").close()
        while not os.path.exists("{tmp_path}/done"):
            time.sleep(0.05)
    """,
    )
    proc = start_capsup(tmp_path, agent, "--metrics", f"127.0.0.1:{port}")
    try:
        wait_for(tmp_path / "validated")
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        (tmp_path / "done").touch()
        assert proc.wait(timeout=30) == 0
    counts = [
        line
        for line in page.decode().splitlines()
        if line.startswith("capsup_validation_duration_seconds_count")
    ]
    assert counts == ["capsup_validation_duration_seconds_count 2.0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sigkill_of_a_sub_agent_revokes_what_it_held(tmp_path: Path) -> None:
    # The sub-agent SIGKILLs itself when told: its parent may not signal
    # it (each confined agent is its own Landlock domain).
    write_agent(
        tmp_path,
        "holder",
        f"""
        import os, signal, time
        from capsup.agents import connect
        connect()  # connected; now wait to be killed
        while not os.path.exists("{tmp_path}/die"):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import os, signal, sys, time
        from capsup.agents import Revoked, connect
        client = connect()
        cap = client.request("file://{tmp_path}", ["read"])
        sub = client.spawn([sys.executable, "{tmp_path}/holder.py"], name="helper",
                           capabilities=[{{"capability": cap.id}}])
        child = sub.capabilities[0]
        time.sleep(0.3)
        killed_at = time.monotonic()
        open("{tmp_path}/die", "w").close()
        code = client.wait(sub.agent_id, timeout=10)
        assert code == -signal.SIGKILL, code
        try:
            client.validate(child.id, "read", "{tmp_path}/agent.py")
        except Revoked:
            print("child revoked", time.monotonic() - killed_at)
        client.validate(cap, "read", "{tmp_path}/agent.py")  # the parent's own copy stays
    """,
    )
    outcome = capsup_run(tmp_path, agent)
    assert outcome.code == 0, outcome.stderr
    assert "child revoked" in outcome.stdout
    revoked = outcome.events("capability_revoked")
    assert any(r["detail"].get("cause") == "holder_exited" for r in revoked)


def test_killing_the_agent_stops_its_sub_agents_and_revokes_everything(tmp_path: Path) -> None:
    write_agent(
        tmp_path,
        "sleeper",
        """
        import time
        from capsup.agents import connect
        connect().whoami()
        time.sleep(120)
    """,
    )
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import os, sys, time
        from capsup.agents import connect
        client = connect()
        cap = client.request("file://{tmp_path}", ["read"])
        sub = client.spawn([sys.executable, "{tmp_path}/sleeper.py"], name="helper",
                           capabilities=[{{"capability": cap.id}}])
        open("{tmp_path}/pids", "w").write(f"{{os.getpid()}} {{sub.pid}}")
        time.sleep(120)
    """,
    )
    audit = tmp_path / "audit.jsonl"
    proc = start_capsup(tmp_path, agent)
    wait_for(tmp_path / "pids")
    time.sleep(0.2)
    main_pid, sub_pid = map(int, (tmp_path / "pids").read_text().split())
    os.kill(main_pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    assert not psutil.pid_exists(sub_pid) or psutil.Process(sub_pid).status() == "zombie"
    records = read_audit(audit)
    revoked = {r["capability_id"] for r in records if r["event"] == "capability_revoked"}
    granted = {
        r["capability_id"]
        for r in records
        if r["event"] in ("capability_granted", "capability_delegated")
    }
    assert granted and granted <= revoked


def test_signals_are_forwarded_and_a_stubborn_agent_is_killed(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(99))
        open("{tmp_path}/ready", "w").close()
        time.sleep(60)
    """,
    )
    stubborn = write_agent(
        tmp_path,
        "stubborn",
        f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        open("{tmp_path}/ready", "w").close()
        time.sleep(60)
    """,
    )
    for script, sig, expected in [
        (agent, signal.SIGTERM, 99),
        (stubborn, signal.SIGINT, 128 + signal.SIGKILL),
    ]:
        (tmp_path / "ready").unlink(missing_ok=True)
        proc = start_capsup(tmp_path, script, "--grace", "0.5")
        wait_for(tmp_path / "ready")
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == expected


def test_bad_input_never_hurts_the_server(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "agent",
        """
        import os, msgpack, zmq
        from capsup.agents import connect
        sock = zmq.Context().socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(os.environ["CAPSUP_ENDPOINT"])
        def ask(payload):
            sock.send(payload)
            return msgpack.unpackb(sock.recv(), raw=False)
        cases = {
            b"\\xc1garbage": "bad_request",
            msgpack.packb([1, 2, 3]): "bad_request",
            msgpack.packb({"id": 1, "op": "fly", "args": {}}): "unknown_op",
            msgpack.packb({"id": 2, "op": "request", "args": {"resource": 5}}): "bad_request",
            msgpack.packb({"id": 3, "op": "validate", "args": {}}): "bad_request",
            msgpack.packb({"id": 4, "op": "whoami", "args": {}, "who": "operator"}): "bad_request",
        }
        for payload, code in cases.items():
            reply = ask(payload)
            assert reply["ok"] is False and reply["error"]["code"] == code, (payload[:20], reply)
            assert reply["trace_id"]
        # a little over the limit: refused with a reply, not by dropping the peer
        reply = ask(msgpack.packb({"id": 6, "op": "whoami", "args": {"x": "y" * (1 << 20)}}))
        assert reply["id"] == 6 and reply["error"]["code"] == "message_too_large", reply
        # more than 64 KiB over: libzmq drops the connection before buffering it whole
        try:
            ask(msgpack.packb({"id": 5, "op": "whoami", "args": {"x": "y" * (3 << 19)}}))
            raise AssertionError("a message far over the limit was read")
        except zmq.Again:
            pass
        # a client that vanishes mid-request
        gone = zmq.Context().socket(zmq.DEALER)
        gone.connect(os.environ["CAPSUP_ENDPOINT"])
        gone.send(msgpack.packb({"id": 7, "op": "list", "args": {}}))
        gone.close(linger=0)
        sock.send_multipart([b"", b"two", b"frames"])
        assert msgpack.unpackb(sock.recv_multipart()[-1])["error"]["code"] == "bad_request"
        sock.close(linger=0)
        client = connect()
        assert client.whoami().principal == "main"  # still serving
        print("survived")
    """,
    )
    outcome = capsup_run(tmp_path, agent)
    assert outcome.code == 0, outcome.stderr
    assert "survived" in outcome.stdout
    malformed = [
        r for r in outcome.events("security_violation") if r["detail"]["kind"] == "malformed_input"
    ]
    assert len(malformed) >= 5


def test_python_runs_with_the_supervisors_interpreter(tmp_path: Path) -> None:
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import sys
        assert sys.executable == {sys.executable!r}, sys.executable
    """,
    )
    assert capsup_run(tmp_path, agent).code == 0


def test_a_command_after_double_dash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *CAPSUP,
            "run",
            "--audit-log",
            str(tmp_path / "a.jsonl"),
            "--",
            "sh",
            "-c",
            'test -n "$CAPSUP_ENDPOINT" && exit 5',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 5, proc.stderr


def test_a_killed_supervisor_takes_its_agents_and_a_restart_revokes_their_rights(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import os, time
        from capsup.agents import connect
        cap = connect().request("file://{tmp_path}", ["read"])
        open("{tmp_path}/granted", "w").write(f"{{os.getpid()}} {{cap.id}}")
        time.sleep(120)
    """,
    )
    proc = start_capsup(tmp_path, agent, "--state", str(state))
    wait_for(tmp_path / "granted")
    time.sleep(0.1)
    agent_pid, cap_id = (tmp_path / "granted").read_text().split()
    proc.kill()  # SIGKILL: no cleanup runs in the supervisor
    proc.wait(timeout=10)
    # Dead, not reaped: the supervisor that would reap it is gone, and the
    # agent's zombie waits for init.
    deadline = time.monotonic() + 10
    while alive(int(agent_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(int(agent_pid)), "the agent outlived its supervisor"

    from capsup.supervisor.store import Store

    store = Store(state)
    assert cap_id in {c.id for c in store.load().live}  # acknowledged, so persisted
    store.close()
    quiet = write_agent(tmp_path, "quiet", "pass")
    outcome = capsup_run(tmp_path, quiet, extra=("--state", str(state)))
    assert outcome.code == 0, outcome.stderr
    store = Store(state)
    assert store.load().tombstones[cap_id].state == "revoked"
    store.close()
    orphans = [r for r in outcome.events("capability_revoked") if r["capability_id"] == cap_id]
    assert orphans and orphans[0]["detail"]["cause"] == "holder_gone"
    # the trail the store vouches for must not be swapped for another
    other = capsup_run(
        tmp_path, quiet, extra=("--state", str(state), "--audit-log", str(tmp_path / "other.jsonl"))
    )
    assert other.code == 2 and "cut off" in other.stderr


def test_a_sub_agent_cannot_take_a_privileged_policy_name(tmp_path: Path) -> None:
    write_agent(
        tmp_path,
        "impostor",
        f"""
        import sys
        from capsup.agents import DeniedByPolicy, connect
        client = connect()
        assert client.whoami().principal == ""
        try:
            client.request("file://{tmp_path}", ["read"])
        except DeniedByPolicy:
            sys.exit(42)
        """,
    )
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import sys
        from capsup.agents import connect
        client = connect()
        # "main" is this agent's own, privileged, policy entry
        child = client.spawn([sys.executable, "{tmp_path}/impostor.py"], name="main")
        sys.exit(client.wait(child.agent_id, timeout=30))
        """,
    )
    outcome = capsup_run(tmp_path, agent)
    assert outcome.code == 42, outcome.stderr


@pytest.mark.parametrize("confined", [True, False], ids=["confined", "unconfined"])
def test_a_plain_child_process_of_an_agent_speaks_as_that_agent(
    tmp_path: Path, confined: bool
) -> None:
    """Unconfined, the kernel names the speaking process (SO_PEERCRED);
    confined, the supervisor made the connection on the agent's own
    endpoint, so the pid it knows is the agent's."""
    agent = write_agent(
        tmp_path,
        "agent",
        f"""
        import os, subprocess, sys
        from capsup.agents import connect
        me = connect().whoami()
        child = subprocess.run(
            [sys.executable, "-c",
             "from capsup.agents import connect; w = connect().whoami(); print(w.agent_id, w.pid)"],
            capture_output=True, text=True, check=True,
        )
        agent_id, pid = child.stdout.split()
        assert agent_id == me.agent_id, (agent_id, me.agent_id)
        assert (int(pid) == me.pid) is {confined}, (pid, me.pid)
        """,
    )
    outcome = capsup_run(tmp_path, agent, extra=() if confined else ("--no-confine",))
    assert outcome.code == 0, outcome.stderr
