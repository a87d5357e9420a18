"""Local HTTP and HTTPS servers for the HTTP broker's tests: real sockets on loopback.

Each route is a small function of the request; the server records every
request (with its headers in order) and counts the TCP connections it
accepted, so tests can see what reached it and how connections were reused.
"""

from __future__ import annotations

import functools
import gzip
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Bytes the large-response routes send in one write.
CHUNK = 64 << 10


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Record:
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    sni: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.record = Record()
        self.tls = tls

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.record.lock:
            self.record.connections += 1
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs on the connection's own thread, so a client
        # that refuses the certificate never stalls the accepting loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10
    # Headers and body go out in separate writes: without TCP_NODELAY,
    # Nagle and the client's delayed ACK hold each response for 40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the record instead."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(self.command, self.path, list(self.headers.items()), self.rfile.read(length))
        with self.server.record.lock:
            self.server.record.requests.append(seen)
        route = ROUTES.get(self.path.split("?", 1)[0].strip("/").split("/", 1)[0], _not_found)
        route(self, seen)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def send(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_chunked(self, parts: Iterable[bytes]) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for part in parts:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


def _query(seen: Seen) -> dict[str, str]:
    query = seen.path.partition("?")[2]
    return dict(item.partition("=")[::2] for item in query.split("&") if item)


def _echo(handler: _Handler, seen: Seen) -> None:
    reply = {
        "method": seen.method,
        "path": seen.path,
        "headers": seen.headers,
        "body": seen.body.decode("latin-1"),
    }
    handler.send(200, json.dumps(reply).encode(), [("Content-Type", "application/json")])


def _dup(handler: _Handler, seen: Seen) -> None:
    headers = [("X-Dup", "one"), ("Set-Cookie", "a=1"), ("X-Dup", "two"), ("Set-Cookie", "b=2")]
    handler.send(200, b"dup", headers)


def _redirect(handler: _Handler, seen: Seen) -> None:
    handler.send(302, b"moved", [("Location", "http://elsewhere.test/next")])


def _bytes(handler: _Handler, seen: Seen) -> None:
    """``n`` bytes of ``x``, with a Content-Length (or ``chunked=1``)."""
    query = _query(seen)
    size = int(query["n"])
    if query.get("chunked"):
        block = b"x" * CHUNK
        full, rest = divmod(size, CHUNK)
        handler.send_chunked([block] * full + ([b"x" * rest] if rest else []))
        return
    handler.send_response(200)
    handler.send_header("Content-Length", str(size))
    handler.end_headers()
    block = b"x" * CHUNK
    try:
        for offset in range(0, size, CHUNK):
            handler.wfile.write(block[: min(CHUNK, size - offset)])
    except OSError:
        handler.close_connection = True


def _gzip_bomb(handler: _Handler, seen: Seen) -> None:
    """``mib`` MiB of zeros, gzip-encoded (about 1000:1)."""
    body = gzip_bomb(int(_query(seen)["mib"]))
    handler.send(200, body, [("Content-Encoding", "gzip")])


def _drip(handler: _Handler, seen: Seen) -> None:
    """A declared 1000-byte body sent one byte every 50 ms."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for _ in range(1000):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        handler.close_connection = True


def _broken_status(handler: _Handler, seen: Seen) -> None:
    """A status line h11 refuses, quoting the request's Authorization back."""
    secret = "".join(seen.header("Authorization"))
    handler.wfile.write(f"HTTP/1.1 2x0 {secret}\r\n\r\n".encode())
    handler.close_connection = True


def _cut(handler: _Handler, seen: Seen) -> None:
    """A body cut short: the connection closes after half the declared length."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    handler.wfile.write(b"x" * 50)
    handler.close_connection = True


def _reset(handler: _Handler, seen: Seen) -> None:
    """Half a body, then a TCP reset (SO_LINGER 0) instead of an orderly close."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    handler.wfile.write(b"x" * 50)
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()
    handler.close_connection = True


def _tiny_chunks(handler: _Handler, seen: Seen) -> None:
    """``n`` bytes, chunked a byte a chunk."""
    handler.send_chunked([b"x"] * int(_query(seen)["n"]))


def _not_found(handler: _Handler, seen: Seen) -> None:
    handler.send(404, b"no such route")


ROUTES: dict[str, Callable[[_Handler, Seen], None]] = {
    "echo": _echo,
    "dup": _dup,
    "redirect": _redirect,
    "bytes": _bytes,
    "gzip-bomb": _gzip_bomb,
    "drip": _drip,
    "broken-status": _broken_status,
    "cut": _cut,
    "reset": _reset,
    "tiny-chunks": _tiny_chunks,
}


@functools.lru_cache(maxsize=4)
def gzip_bomb(mib: int) -> bytes:
    return gzip.compress(b"\0" * (mib << 20), compresslevel=9, mtime=0)


class LocalServer:
    """A threaded HTTP/1.1 server on ``host`` (HTTPS with ``tls``), stopped by :meth:`close`."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self._server = _Server((host, port), tls)
        if tls is not None:
            tls.sni_callback = self._record_sni
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def record(self) -> Record:
        return self._server.record

    def _record_sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.record.sni.append(name)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
