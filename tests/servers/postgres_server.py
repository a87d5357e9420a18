"""A throwaway PostgreSQL cluster for the SQL broker's tests: the ``postgres`` fixture.

Debian's ``postgresql`` package (``make system-deps`` installs it) provides
the server binaries under ``/usr/lib/postgresql/VERSION/bin``; its own
cluster, running or not, plays no part. The fixture makes a cluster in a
temporary directory (``initdb``, no fsync), starts ``postgres`` on a free
port of 127.0.0.1 with password (SCRAM) authentication and its unix socket in
that directory, and stops it at the end of the session.

initdb and postgres refuse to run as root: as root, they run as the
``postgres`` user. The server is killed if the test process dies (parent-death
signal), and its process group at the end if a fast shutdown does not end it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

__all__ = ["PostgresServer", "postgres"]

_START_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster; ``url`` connects as its superuser over TCP."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        return self.url_with(password=self.password)

    def url_with(self, *, password: str) -> str:
        return (
            f"postgresql://{self.user}:{quote(password, safe='')}@{self.host}:{self.port}"
            f"/{self.database}"
        )

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """A connection for setting up tables, in autocommit mode."""
        return psycopg.connect(self.url, autocommit=True)


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL's server binaries, if any."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, after it dropped to the server's user (which would clear
    the setting): be killed when the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL's server binaries are not installed "
            "(Debian package 'postgresql'; `make system-deps` installs it)"
        )
    # who the server runs as: as root, the postgres user; else ourselves
    uid: int | None = None
    gid: int | None = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, and there is no 'postgres' user to run PostgreSQL as")
        uid, gid = account.pw_uid, account.pw_gid
    as_server_user = {"user": uid, "group": gid, "extra_groups": None if uid is None else []}
    top = Path(tempfile.mkdtemp(prefix="capsup-pg-"))
    password = secrets.token_urlsafe(16)
    (top / "password").write_text(password)
    if uid is not None and gid is not None:
        for path in (top, top / "password"):
            os.chown(path, uid, gid)
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                f"--pgdata={top / 'data'}",
                "--username=capsup",
                f"--pwfile={top / 'password'}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            preexec_fn=_die_with_parent,
            **as_server_user,
        )
        port = _free_port()
        log = (top / "server.log").open("wb")
        process = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(top / "data"),
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(top),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=40",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=_die_with_parent,
            **as_server_user,
        )
        log.close()
        server = PostgresServer("127.0.0.1", port, "capsup", password, "postgres")
        _wait_until_ready(server, process, top / "server.log")
        yield server
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(top, ignore_errors=True)


def _wait_until_ready(server: PostgresServer, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"postgres exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with psycopg.connect(server.url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"postgres did not accept connections:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """A fast shutdown (SIGINT); the whole process group killed if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
