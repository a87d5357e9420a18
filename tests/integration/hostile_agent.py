"""A hostile agent: it tries every way around its capabilities by plain OS
means and prints one JSON line per attempt, ``{"attempt": ..., "worked": bool,
"how": ...}``. tests/integration/test_escapes.py runs it confined and with
``--no-confine``: every attempt must fail confined and work unconfined, which
proves that each one really tried.

Usage: hostile_agent.py TARGETS_JSON
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

T = json.loads(sys.argv[1])
# The supervisor is the agent's parent; its shared endpoint is where an
# unconfined agent connects, next to a confined agent's own ("agents/N.sock").
T["supervisor"] = os.getppid()
_ENDPOINT = os.environ["CAPSUP_ENDPOINT"].removeprefix("ipc://")
_BESIDE = os.path.dirname(_ENDPOINT)
T["shared_endpoint"] = (
    os.path.join(os.path.dirname(_BESIDE), "capsup.sock")
    if os.path.basename(_BESIDE) == "agents"
    else _ENDPOINT
)
LIBC = ctypes.CDLL(None, use_errno=True)
PTRACE_SEIZE, PTRACE_DETACH = 0x4206, 17
SYS_IO_URING_SETUP = 425
SYS_UNSHARE_NEWUSER = 0x10000000
TIOCSTI = 0x5412


def report(attempt: str, step: Callable[[], object]) -> None:
    try:
        how = step()
        worked = True
    except Exception as error:  # every failure is an answer here
        worked, how = False, f"{type(error).__name__}: {error}"
    print(json.dumps({"attempt": attempt, "worked": worked, "how": str(how)[:200]}), flush=True)


def check(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def read_secret() -> str:
    with open(T["secret"]) as f:
        return f.read()


def list_outside() -> list[str]:
    return os.listdir(T["outside"])


def list_home() -> list[str]:
    return os.listdir(T["home"])


def write_outside() -> str:
    path = os.path.join(T["outside"], "written-by-agent")
    with open(path, "w") as f:
        f.write("pwned")
    os.unlink(path)
    return path


def rewrite_config() -> str:
    with open(T["config"], "a") as f:
        f.write("")
    return T["config"]


def drop_pth() -> str:
    path = os.path.join(T["site_packages"], "capsup-escape-test.pth")
    with open(path, "w") as f:
        f.write("")
    os.unlink(path)
    return path


def cat_secret() -> str:
    out = subprocess.run(["/bin/cat", T["secret"]], capture_output=True, check=True, timeout=10)
    return out.stdout.decode()


def tcp_connect() -> str:
    with socket.create_connection(("127.0.0.1", T["tcp_port"]), timeout=5) as s:
        return str(s.getpeername())


def tcp_bind() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        return str(s.getsockname())


def udp_send() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return s.sendto(b"escaped", ("127.0.0.1", T["udp_port"]))


def unix_path_connect() -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(T["unix_path"])
        return s.recv(64).decode()


def unix_supervisor_endpoint() -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(T["shared_endpoint"])
        return "connected"


def unix_abstract_connect() -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect("\0" + T["abstract"])
        return s.recv(64).decode()


def unix_datagram_sendto() -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        return s.sendto(b"escaped", T["unix_dgram"])


def signal_supervisor() -> str:
    os.kill(T["supervisor"], 0)
    return "signal 0 delivered"


def ptrace_supervisor() -> str:
    check(LIBC.ptrace(PTRACE_SEIZE, T["supervisor"], None, None))
    LIBC.ptrace(PTRACE_DETACH, T["supervisor"], None, None)
    return "seized"


def signal_agent() -> str:
    """Another agent: the parent agent, for a sub-agent."""
    os.kill(T["agent_pid"], 0)
    return "signal 0 delivered"


def ptrace_agent() -> str:
    check(LIBC.ptrace(PTRACE_SEIZE, T["agent_pid"], None, None))
    LIBC.ptrace(PTRACE_DETACH, T["agent_pid"], None, None)
    return "seized"


def agent_memory() -> int:
    with open(f"/proc/{T['agent_pid']}/mem", "rb") as f:
        return len(f.read(0))


def supervisor_environ() -> int:
    with open(f"/proc/{T['supervisor']}/environ", "rb") as f:
        return len(f.read())


def io_uring() -> int:
    params = ctypes.create_string_buffer(120)
    fd = check(LIBC.syscall(SYS_IO_URING_SETUP, 4, params))
    os.close(fd)
    return fd


def netlink() -> str:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:
        return str(s.getsockname())


def user_namespace() -> str:
    pid = os.fork()
    if pid == 0:  # a child, so the agent itself is not changed by success
        os._exit(0 if LIBC.unshare(SYS_UNSHARE_NEWUSER) == 0 else ctypes.get_errno())
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise OSError(code, os.strerror(code))
    return "unshared"


def type_into_terminal() -> str:
    if not os.isatty(0):
        raise OSError(errno.ENOTTY, "stdin is not a terminal")
    check(LIBC.ioctl(0, TIOCSTI, ctypes.c_char_p(b"#")))
    return "typed"


def daemon() -> int:
    """Double-fork a daemon that outlives the agent; its pid goes out."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(write_end, str(os.getpid()).encode())
            for fd in (0, 1, 2):
                with contextlib.suppress(OSError):
                    os.close(fd)
            time.sleep(120)
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write_end)
    daemon_pid = int(os.read(read_end, 32))
    print(json.dumps({"daemon": daemon_pid}), flush=True)
    return daemon_pid


ATTEMPTS: dict[str, Callable[[], object]] = {
    "read_secret": read_secret,
    "list_outside": list_outside,
    "list_home": list_home,
    "write_outside": write_outside,
    "rewrite_config": rewrite_config,
    "drop_pth_in_venv": drop_pth,
    "cat_secret": cat_secret,
    "tcp_connect": tcp_connect,
    "tcp_bind": tcp_bind,
    "udp_send": udp_send,
    "unix_path_connect": unix_path_connect,
    "unix_shared_endpoint": unix_supervisor_endpoint,
    "unix_abstract_connect": unix_abstract_connect,
    "unix_datagram_sendto": unix_datagram_sendto,
    "signal_supervisor": signal_supervisor,
    "ptrace_supervisor": ptrace_supervisor,
    "supervisor_environ": supervisor_environ,
    "io_uring": io_uring,
    "netlink": netlink,
    "user_namespace": user_namespace,
    "type_into_terminal": type_into_terminal,
    "signal_agent": signal_agent,
    "ptrace_agent": ptrace_agent,
    "agent_memory": agent_memory,
}


def main() -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    default = [name for name in ATTEMPTS if not name.endswith("_agent") and name != "agent_memory"]
    for name in T.get("only") or default:
        report(name, ATTEMPTS[name])
    if T.get("daemon"):
        daemon()
    return 0


if __name__ == "__main__":
    sys.exit(main())
