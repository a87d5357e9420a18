"""Connections are bounded per connecting process and in all (issue 15).

A local stranger floods an endpoint with connections that never finish
their handshake: each one costs the supervisor a descriptor for the
handshake interval, and libzmq aborts the whole supervisor when accept()
meets EMFILE. The strangers here are separate processes speaking raw Unix
sockets, against a real `capsup run`."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

from runner import read_audit, run_argv, wait_for, write_idle_agent

#: A stranger: opens N connections as fast as it can, keeps them for a
#: while (under the 2 s handshake interval), then prints how many connect()
#: calls succeeded and how many of those the supervisor has not shut down.
STRANGER = textwrap.dedent(
    """
    import errno, socket, sys, time
    path, count = sys.argv[1], int(sys.argv[2])
    held, connected = [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            continue
        connected += 1
        held.append(s)
    time.sleep(1.0)
    still_open = 0
    for s in held:
        s.setblocking(False)
        try:
            while s.recv(4096):  # libzmq's greeting; b"" is the end
                pass
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
    print(connected, still_open, flush=True)
    """
)


def _strangers(endpoint: str, processes: int, each: int) -> list[tuple[int, int, int]]:
    """Run ``processes`` strangers at once; (pid, connected, still open) of each."""
    path = endpoint.removeprefix("ipc://")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STRANGER, path, str(each)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        connected, still_open = map(int, out.split())
        results.append((proc.pid, connected, still_open))
    return results


def _start(root: Path, supervisor: str, nofile: int | None = None) -> subprocess.Popen[bytes]:
    agent = write_idle_agent(root)

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(
        run_argv(root, agent, supervisor=supervisor),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit,
    )
    wait_for(root / "endpoint")
    return proc


def _finish(root: Path, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    (root / "done").touch()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


def _shared(agent_endpoint: str) -> str:
    """The supervisor's shared endpoint, beside the agents' own
    (``RUNTIME/agents/N.sock`` and ``RUNTIME/capsup.sock``)."""
    return str(Path(agent_endpoint.removeprefix("ipc://")).parents[1] / "capsup.sock")


def test_connections_per_process_are_bounded(tmp_path: Path) -> None:
    proc = _start(tmp_path, "max_connections_per_peer = 8")
    try:
        endpoint = _shared((tmp_path / "endpoint").read_text())
        [(pid, connected, still_open)] = _strangers(endpoint, 1, 20)
    finally:
        code, err = _finish(tmp_path, proc)
    assert code == 0, err
    assert connected == 20  # it really tried: every connect() went through
    assert still_open == 8
    refused = [
        r
        for r in read_audit(tmp_path / "audit.jsonl")
        if r["event"] == "security_violation" and r["detail"]["kind"] == "too_many_connections"
    ]
    assert refused and all(r["pid"] == pid for r in refused)
    assert "holds 8 connections here already" in refused[0]["detail"]["message"]


def test_a_flood_past_the_descriptor_limit_leaves_the_supervisor_up(tmp_path: Path) -> None:
    """The supervisor may open 512 descriptors, so the shared endpoint takes
    at most 128 connections; fifteen strangers try 600 that stall their
    handshakes. Without the bounds, accept() would meet EMFILE and libzmq
    would abort it. The agent meanwhile can still connect to its own
    endpoint, whose connections are counted apart."""
    proc = _start(tmp_path, "", nofile=512)
    try:
        agent_endpoint = (tmp_path / "endpoint").read_text()
        results = _strangers(_shared(agent_endpoint), 15, 40)
        assert proc.poll() is None, "the supervisor died under the flood"
    finally:
        code, err = _finish(tmp_path, proc)
    assert code == 0, err
    assert sum(connected for _, connected, _ in results) > 512  # more than it may open
    assert sum(still_open for _, _, still_open in results) <= 128
    assert all(still_open <= 32 for _, _, still_open in results)  # the per-process bound
    trail = read_audit(tmp_path / "audit.jsonl")
    assert [r for r in trail if r["event"] == "agent_terminated"]
    kinds = {r["detail"].get("kind") for r in trail if r["event"] == "security_violation"}
    assert "too_many_connections" in kinds
    assert os.path.exists(tmp_path / "endpoint")


def test_strangers_are_shut_out_of_an_agents_own_endpoint(tmp_path: Path) -> None:
    """Only the supervisor connects to a confined agent's own endpoint (it
    makes the agent's connect() for it): anyone else's connection is shut
    down as soon as it is accepted, before any handshake, so strangers can
    neither hold its slots nor stall there."""
    proc = _start(tmp_path, "")
    try:
        endpoint = (tmp_path / "endpoint").read_text()
        [(pid, connected, still_open)] = _strangers(endpoint, 1, 20)
    finally:
        code, err = _finish(tmp_path, proc)
    assert code == 0, err
    assert (connected, still_open) == (20, 0)
    refused = [
        r
        for r in read_audit(tmp_path / "audit.jsonl")
        if r["event"] == "security_violation" and r["detail"]["kind"] == "unauthenticated"
    ]
    assert refused and all(r["pid"] == pid and r["principal"] is None for r in refused)


def test_the_shared_endpoint_takes_no_large_message_when_agents_are_confined(
    tmp_path: Path,
) -> None:
    """No agent speaks on the shared endpoint when agents are confined: a
    stranger's small request is answered unauthenticated, a large one is
    dropped by libzmq unread (no megabyte per message, or per stalled
    connection, for a stranger to make the supervisor hold)."""
    import msgpack
    import zmq

    proc = _start(tmp_path, "")
    try:
        shared = "ipc://" + _shared((tmp_path / "endpoint").read_text())
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(shared)
        sock.send(msgpack.packb({"id": 1, "op": "whoami", "args": {"x": "y" * 1000}}))
        assert sock.poll(10_000), "no reply to a small request"
        assert msgpack.unpackb(sock.recv())["error"]["code"] == "unauthenticated"
        sock.send(msgpack.packb({"id": 2, "op": "whoami", "args": {"x": "y" * (100 << 10)}}))
        assert not sock.poll(2_000), "a 100 KiB message from a stranger was read"
        sock.close()
    finally:
        code, err = _finish(tmp_path, proc)
    assert code == 0, err
