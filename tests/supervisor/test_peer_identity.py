"""Reading the peer's pid from libzmq's Peer-Address, strictly."""

from __future__ import annotations

import os

import pytest
from capsup.supervisor.server import Server, _peer_pid


def test_the_pid_of_a_local_peer_of_our_user() -> None:
    assert _peer_pid(f"localhost:{os.getuid()}:0:4242") == 4242


@pytest.mark.parametrize(
    "address",
    [
        "",
        "2001:db8::4242",  # an IPv6 peer on tcp:// is not a process
        "10.0.0.1:4242",
        f"localhost:{os.getuid() + 1}:0:4242",  # another user's process
        f"localhost:{os.getuid()}:0:0",
        f"localhost:{os.getuid()}:0:x",
        f"a:b:{os.getuid()}:0:4242",
    ],
)
def test_anything_else_is_nobody(address: str) -> None:
    assert _peer_pid(address) is None


def test_the_agent_endpoint_must_be_a_unix_socket() -> None:
    with pytest.raises(ValueError, match="ipc://"):
        Server(None, "tcp://127.0.0.1:5555")  # type: ignore[arg-type]
