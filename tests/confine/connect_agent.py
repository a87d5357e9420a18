"""A confined agent for tests/confine/test_unix_connect.py.

Run as ``python connect_agent.py FD [--netns]``, FD a unix socket to the
test. The agent (with ``--netns``: in a network namespace of its own, as
root) loads the seccomp filter with ``connect()`` notification, sends the
listener to the test (SCM_RIGHTS) and closes its own copy, as the bootstrap
does; then it runs the test's commands, one JSON line ``[name, *args]`` in,
one JSON line out, until ``["exit"]``.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq
from capsup.agents.confine import seccomp
from capsup.agents.confine.errors import ConfinementError

LIBC = ctypes.CDLL(None, use_errno=True)


def code(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, str(error.errno))


def exchange(sock: socket.socket) -> str:
    sock.settimeout(5)
    sock.sendall(b"ping")
    return sock.recv(64).decode()


def connect(path: str) -> list[Any]:
    """``["ok", what the server echoed]`` or ``[errno name]``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as error:
            return [code(error)]
        return ["ok", exchange(sock)]


def connect_nonblocking(path: str) -> list[Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as sock:
        try:
            sock.connect(path)
        except OSError as error:
            return [code(error)]
        return ["ok", exchange(sock)]


def connect_raw(address: bytes | None, length: int) -> list[Any]:
    """connect() through libc: an address Python would not build (or an
    unmapped pointer when ``address`` is None)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        buffer = ctypes.create_string_buffer(address or b"", max(length, 1))
        pointer = ctypes.addressof(buffer) if address is not None else 1
        if LIBC.connect(sock.fileno(), ctypes.c_void_p(pointer), length) == 0:
            return ["ok"]
        return [errno.errorcode[ctypes.get_errno()]]


def connect_inet_address() -> list[Any]:
    return connect_raw(struct.pack("=HH4s8x", socket.AF_INET, 9, bytes([127, 0, 0, 1])), 16)


def connect_unreadable() -> list[Any]:
    return connect_raw(None, 110)


def connect_during_signal(path: str, delay: float) -> list[Any]:
    """SIGALRM (with a handler) arrives while the broker connects for us."""
    alarms: list[int] = []
    signal.signal(signal.SIGALRM, lambda number, frame: alarms.append(number))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, delay)
        try:
            sock.connect(path)
            result = "ok"
        except OSError as error:
            result = code(error)
        elapsed = time.monotonic() - started
        try:
            peer: str = sock.getpeername()
        except OSError as error:
            peer = code(error)
    return [result, peer, len(alarms), elapsed]


def options_kept(path: str) -> list[Any]:
    """Options set before connect() are those of the connected socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("=qq", 5, 0))
        sock.connect(path)
        timeout = struct.unpack("=qq", sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))
        return [sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED), list(timeout)]


def dealer(path: str) -> str:
    """pyzmq: libzmq connects from its I/O thread."""
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(f"ipc://{path}")
        sock.send(b"hello")
        reply: bytes = sock.recv()
        sock.close()
        return reply.decode()
    finally:
        context.term()


def in_grandchild(path: str) -> list[Any]:
    """connect() from a process forked after the filter was loaded."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, json.dumps(connect(path)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        result: list[Any] = json.loads(answer.read())
    os.waitpid(pid, 0)
    return result


def in_thread(path: str) -> list[Any]:
    """connect() from a thread that is not the thread group's leader."""
    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.extend([connect(path), threading.get_native_id() != os.getpid()])
    )
    worker.start()
    worker.join()
    return results


def second_listener() -> str:
    try:
        seccomp.install(notify_connect=True)
    except ConfinementError as error:
        return str(error)
    return "installed"


def median_connect_us(path: str, count: int) -> float:
    times = []
    for _ in range(count):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            started = time.perf_counter()
            sock.connect(path)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def replaced(path: str, kind: str, nonblocking: bool, inheritable: bool) -> list[Any]:
    """What the agent's descriptor is after a brokered connect(): the same
    number, connected, its type and its flags as they were."""
    sock_type = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET}[kind]
    with socket.socket(socket.AF_UNIX, sock_type) as sock:
        sock.setblocking(not nonblocking)
        sock.set_inheritable(inheritable)
        number = sock.fileno()
        if LIBC.connect(number, _address(path), len(_address(path))) != 0:
            return [errno.errorcode[ctypes.get_errno()]]
        flags = fcntl.fcntl(number, fcntl.F_GETFL)
        return [
            number == sock.fileno(),
            sock.getpeername(),
            bool(flags & os.O_NONBLOCK),
            os.get_inheritable(number),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == sock_type,
        ]


def _address(path: str) -> bytes:
    return struct.pack("=H", socket.AF_UNIX) + path.encode() + b"\0"


def file_left_behind(path: str) -> list[Any]:
    """A duplicate of the socket, taken before connect(), shares its file: is
    that file what got connected? (It must not be: its flags and options
    are the agent's to change while the broker connects.)"""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock, socket.socket(fileno=os.dup(sock.fileno())) as before:
        sock.connect(path)
        try:
            left: str = before.getpeername()
        except OSError as error:
            left = code(error)
        return [sock.getpeername(), left]


def connect_again(path: str) -> list[Any]:
    """A second connect() of a connected socket: EISCONN, as unconfined."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        try:
            sock.connect(path)
        except OSError as error:
            return [code(error)]
        return ["ok"]


def connect_a_listener(path: str) -> list[Any]:
    """connect() of a listening socket: EINVAL, as unconfined."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(f"listening-{os.getpid()}.sock")
        sock.listen()
        try:
            sock.connect(path)
        except OSError as error:
            return [code(error)]
        finally:
            os.unlink(f"listening-{os.getpid()}.sock")
        return ["ok"]


def interfaces(path: str) -> list[str]:
    """The network interfaces SIOCGIFCONF lists through the socket the
    broker connected: those of the namespace the socket was made in."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        return interface_names(sock)


def interface_names(sock: socket.socket) -> list[str]:
    buffer = array.array("B", bytes(4096))
    request = struct.pack("iP", len(buffer), buffer.buffer_info()[0])  # struct ifconf
    used = struct.unpack("iP", fcntl.ioctl(sock.fileno(), 0x8912, request))[0]  # SIOCGIFCONF
    names = buffer.tobytes()[:used]
    return [names[at : at + 16].split(b"\0", 1)[0].decode() for at in range(0, used, 40)]


def toggled_connects(count: int) -> list[Any]:
    """The review's hang: a listener of the agent's own with a full backlog,
    and a child that flips the connecting socket between blocking and not
    (with no send timeout) all the while. Returns the answers seen and the
    longest a connect() took."""
    name = f"full-{os.getpid()}.sock"
    path = os.path.join(os.getcwd(), name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(0)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    filler.connect(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    number = sock.fileno()
    toggler = os.fork()
    if toggler == 0:
        forever = struct.pack("=qq", 0, 0)
        while True:
            fcntl.fcntl(number, fcntl.F_SETFL, os.O_RDWR | os.O_NONBLOCK)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, forever)
            fcntl.fcntl(number, fcntl.F_SETFL, os.O_RDWR)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, forever)
    answers, longest = set(), 0.0
    try:
        for _ in range(count):
            started = time.monotonic()
            result = LIBC.connect(number, _address(path), len(_address(path)))
            longest = max(longest, time.monotonic() - started)
            answers.add("ok" if result == 0 else errno.errorcode[ctypes.get_errno()])
    finally:
        os.kill(toggler, signal.SIGKILL)
        os.waitpid(toggler, 0)
        for closing in (sock, filler, listener):
            closing.close()
        os.unlink(name)
    return [sorted(answers), longest]


COMMANDS: dict[str, Callable[..., Any]] = {
    "connect": connect,
    "connect_nonblocking": connect_nonblocking,
    "connect_inet_address": connect_inet_address,
    "connect_unreadable": connect_unreadable,
    "connect_during_signal": connect_during_signal,
    "options_kept": options_kept,
    "dealer": dealer,
    "in_grandchild": in_grandchild,
    "in_thread": in_thread,
    "second_listener": second_listener,
    "median_connect_us": median_connect_us,
    "replaced": replaced,
    "file_left_behind": file_left_behind,
    "connect_again": connect_again,
    "connect_a_listener": connect_a_listener,
    "interfaces": interfaces,
    "toggled_connects": toggled_connects,
}


def main() -> None:
    channel = socket.socket(fileno=int(sys.argv[1]))
    if "--netns" in sys.argv[2:] and LIBC.unshare(0x4000_0000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    listener = seccomp.install(notify_connect=True)
    assert listener is not None
    socket.send_fds(channel, [b"L"], [listener])
    os.close(listener)
    with channel.makefile("rwb") as lines:
        for line in lines:
            name, *args = json.loads(line)
            if name == "exit":
                return
            lines.write(json.dumps(COMMANDS[name](*args)).encode() + b"\n")
            lines.flush()


if __name__ == "__main__":
    main()
