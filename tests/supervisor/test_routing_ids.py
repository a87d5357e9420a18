"""Invariant 10 against the routing-id crash (issue 15).

libzmq's ROUTER assigns routing ids from a counter that starts at its C
library's rand(), which nobody seeds: every process that runs the same code
starts it at the same value. A stranger that learns that value once (by
running the same supervisor itself), connects with the next assigned ids
chosen as its own, then connects plainly, makes the ROUTER assert
(``src/socket_base.cpp``) and abort the supervisor with every agent. The
test makes exactly that attack, learning the value from a twin supervisor
that runs the same code, as an attacker would.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import msgpack
import zmq

#: A supervisor (a real Runtime and its loop), run as a script: "probe"
#: prints the first routing id its shared ROUTER assigns and exits; "serve"
#: serves until the file "done" exists.
SUPERVISOR = """
import os, sys, zmq
from capsup.supervisor.config import Config
from capsup.supervisor.runtime import Runtime, RuntimeOptions
mode, directory = sys.argv[1], sys.argv[2]
endpoint = f"ipc://{directory}/capsup.sock"
runtime = Runtime(Config(), RuntimeOptions(endpoint=endpoint,
                  audit_log=f"{directory}/audit.jsonl", confine="off"))
server = runtime.server
if mode == "probe":
    seen = []
    handle = server._handle
    server._handle = lambda raw, user: (seen.append(raw[0]), handle(raw, user))
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.connect(endpoint)
    client.send(b"probe")
    while not seen:
        server.turn(0.1)
    print(seen[0].hex())
else:
    open(f"{directory}/ready", "w").close()
    while not os.path.exists(f"{directory}/done"):
        server.turn(0.05)
runtime.close()
"""


def test_chosen_routing_ids_cannot_crash_the_supervisor(tmp_path: Path) -> None:
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR)
    twin = tmp_path / "twin"
    twin.mkdir()
    probe = subprocess.run(
        [sys.executable, str(script), "probe", str(twin)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    predicted = int(probe.stdout.strip(), 16)
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = subprocess.Popen(
        [sys.executable, str(script), "serve", str(victim_dir)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    context = zmq.Context()
    shared = f"ipc://{victim_dir}/capsup.sock"
    try:
        deadline = time.monotonic() + 30
        while not (victim_dir / "ready").exists():
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.05)
        for k in range(16):  # the ids the twin's counter assigns next, squatted
            squatter = context.socket(zmq.DEALER)
            squatter.setsockopt(zmq.LINGER, 0)
            squatter.setsockopt(zmq.ROUTING_ID, ((predicted + k) % 2**32).to_bytes(5, "big"))
            squatter.connect(shared)
            squatter.send(msgpack.packb({"id": k, "op": "whoami", "args": {}}))
            assert squatter.poll(10_000), "the squatter got no reply"
            squatter.recv()
        for k in range(16):  # ordinary connections, given assigned ids
            plain = context.socket(zmq.DEALER)
            plain.setsockopt(zmq.LINGER, 0)
            plain.connect(shared)
            plain.send(msgpack.packb({"id": k, "op": "whoami", "args": {}}))
            assert plain.poll(10_000), f"no reply to connection {k}"
            reply = msgpack.unpackb(plain.recv())
            assert reply["error"]["code"] == "unauthenticated"
            plain.close()
        assert victim.poll() is None, "the supervisor died"
    finally:
        (victim_dir / "done").touch()
        context.destroy(linger=0)
        try:
            victim.wait(timeout=30)
        except subprocess.TimeoutExpired:
            victim.kill()
            victim.wait()
    assert victim.returncode == 0, victim.stderr.read() if victim.stderr else ""
