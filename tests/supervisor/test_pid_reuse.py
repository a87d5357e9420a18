"""Invariant 10 against identity theft by pid reuse (issue 15).

The attack, as a local stranger performs it: connect to the supervisor's
shared endpoint from a short-lived child (the kernel records that child's
pid for the connection), let the child die, make the pid come back as a
descendant of a working agent, then complete the ZeroMQ handshake, so that
the supervisor's lookup of the recorded pid lands on the agent's tree. The
test recycles the pid the way a root attacker can in an instant
(``/proc/sys/kernel/ns_last_pid``) instead of wrapping the pid counter by
forking, and speaks ZMTP by hand, so that it controls when the handshake
ends. It checks that the recycled pid really is the agent's descendant
when the handshake completes: the attack is really made.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")

VICTIM = """
import os, sys, time
from capsup.agents import SupervisorGone, connect
root = sys.argv[1]
client = connect()
me = client.whoami()
open(f"{root}/endpoint", "w").write(os.environ["CAPSUP_ENDPOINT"])
open(f"{root}/agent", "w").write(me.agent_id)
while not os.path.exists(f"{root}/done"):
    if os.path.exists(f"{root}/fork"):
        os.unlink(f"{root}/fork")
        pid = os.fork()
        if pid == 0:
            # The descendant that takes the recycled pid: it works as the
            # agent does (a connection of its own) until told to stop.
            open(f"{root}/child-{os.getpid()}", "w").close()
            # Its first connection may be refused while the stranger's, from
            # the same pid, is open: a client that gives up asks again.
            for attempt in range(4):
                try:
                    mine = connect(timeout=5).whoami()
                    break
                except SupervisorGone:
                    continue
            open(f"{root}/child-whoami-{os.getpid()}", "w").write(mine.agent_id)
            while not os.path.exists(f"{root}/done"):
                time.sleep(0.02)
            os._exit(0)
    time.sleep(0.005)
"""


def _greeting() -> bytes:
    signature = b"\xff" + b"\x00" * 8 + b"\x7f"
    return signature + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def _command(body: bytes) -> bytes:
    return bytes([0x04, len(body)]) + body


def _ready() -> bytes:
    name, value = b"Socket-Type", b"DEALER"
    return _command(
        b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    )


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the supervisor")
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    flags = _read_exact(sock, 1)[0]
    long_frame = flags & 0x02
    size = struct.unpack(">Q", _read_exact(sock, 8))[0] if long_frame else _read_exact(sock, 1)[0]
    return flags, _read_exact(sock, size)


def _finish_handshake_and_ask(sock: socket.socket) -> dict[str, object]:
    """Complete ZMTP 3.0 NULL as a DEALER, send whoami, return the reply
    (or raise ConnectionError if the supervisor refused the connection)."""
    sock.sendall(_greeting())
    _read_exact(sock, 64)
    sock.sendall(_ready())
    _, body = _read_frame(sock)
    if not body.startswith(b"\x05READY"):
        raise ConnectionError(f"handshake refused: {body[:40]!r}")
    payload = msgpack.packb({"id": 1, "op": "whoami", "args": {}})
    sock.sendall(bytes([0x00, len(payload)]) + payload)
    _, reply = _read_frame(sock)
    return msgpack.unpackb(reply)


def _shared_endpoint(agent_endpoint: str) -> str:
    path = Path(agent_endpoint.removeprefix("ipc://"))
    return str(path.parent.parent / "capsup.sock") if path.parent.name == "agents" else str(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="recycling a chosen pid needs root")
@pytest.mark.parametrize("confined", [True, False], ids=["confined", "unconfined"])
def test_a_stranger_with_a_recycled_pid_is_not_the_agent(tmp_path: Path, confined: bool) -> None:
    import sys

    code = tmp_path / "code"
    code.mkdir()
    (code / "victim.py").write_text(VICTIM)
    (tmp_path / "policy.toml").write_text(
        f'[agents.victim]\nsandbox = {{ write = ["{tmp_path}"] }}\nallow = []\n'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capsup.supervisor",
            "run",
            "--config",
            str(tmp_path / "policy.toml"),
            *([] if confined else ["--no-confine"]),
            str(code / "victim.py"),
            str(tmp_path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "agent").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        shared = _shared_endpoint((tmp_path / "endpoint").read_text())
        victim_id = (tmp_path / "agent").read_text()
        outcome = None
        for _ in range(10):  # another process may take the pid first: try again
            sock = socket.socket(socket.AF_UNIX)
            connector = os.fork()
            if connector == 0:
                try:
                    sock.connect(shared)
                finally:
                    os._exit(0)
            os.waitpid(connector, 0)  # the connector is dead; its pid is free
            NS_LAST_PID.write_text(str(connector - 1))
            (tmp_path / "fork").touch()
            deadline = time.monotonic() + 5
            while not (tmp_path / f"child-{connector}").exists():
                if time.monotonic() > deadline or list(tmp_path.glob("child-[0-9]*")):
                    break
                time.sleep(0.002)
            if not (tmp_path / f"child-{connector}").exists():
                sock.close()
                for stale in tmp_path.glob("child-[0-9]*"):
                    stale.unlink()
                continue
            # The agent's descendant now holds the pid the connection names.
            try:
                outcome = _finish_handshake_and_ask(sock)
            except ConnectionError as refused:
                outcome = {"refused": str(refused)}
            finally:
                sock.close()
            break
        assert outcome is not None, "could not make the pid come back in 10 tries"
        if "refused" not in outcome:
            assert outcome["ok"] is False, outcome
            assert outcome["error"]["code"] == "unauthenticated", outcome
        assert victim_id not in str(outcome)
        # The descendant holding the pid is still served as the agent.
        deadline = time.monotonic() + 15
        while not (tmp_path / f"child-whoami-{connector}").exists():
            assert time.monotonic() < deadline, "the agent's descendant was never served"
            time.sleep(0.05)
        assert (tmp_path / f"child-whoami-{connector}").read_text() == victim_id
    finally:
        (tmp_path / "done").touch()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
