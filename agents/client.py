"""The agent SDK: a blocking client for the supervisor's wire protocol.

An agent calls :func:`connect` once and asks its :class:`Client` for what it
needs. Every call is one request and one reply; a reply with ``ok: false``
is raised as the exception class of its error code (see
:mod:`capsup.agents.errors`), so an agent catches exactly what the kernel
decided: ``except Revoked``, ``except AccessDenied``, ``except CapsupError``.

The client holds no rights of its own: the supervisor knows who is speaking
from the operating system (the peer's pid on the ``ipc://`` socket), never
from anything this module sends. A capability object here is a copy for
display; only its id means anything to the kernel.

A :class:`Client` is not thread-safe: it owns one ZeroMQ socket, and ZeroMQ
sockets must not be shared between threads. Use one client per thread, and
a new one in a forked child.

Files are reached through the supervisor: :meth:`Client.read_bytes`,
:meth:`~Client.write_bytes`, :meth:`~Client.listdir`, :meth:`~Client.stat`
and :meth:`~Client.delete` are brokered requests (checked at every call, so
a revocation stops the next one), and :meth:`Client.open` returns an
ordinary file object over a descriptor the supervisor opened and handed
over (native speed; it stays usable until closed, whatever happens to the
capability later).

APIs and databases are reached the same way: :meth:`Client.http` and
:meth:`Client.query` ask the supervisor to make the request, under a
capability, with credentials the agent never sees; ``HttpxTransport``
(``capsup.agents.HttpxTransport``) puts :meth:`Client.http` under an
``httpx.Client``, so code written for httpx runs unchanged.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Final, TypeVar

import zmq
from capsup.agents.capability import Capability
from capsup.agents.descriptors import DescriptorChannel, shared_channel
from capsup.agents.errors import (
    BadRequest,
    CapsupError,
    ConnectionClosed,
    InternalError,
    SupervisorGone,
)
from capsup.agents.protocol import MAX_IO_BYTES, Op, SqlValue, encode, parse_reply
from capsup.agents.results import HttpResponse, QueryResult

__all__ = [
    "ENDPOINT_ENV",
    "Client",
    "CurveKeys",
    "DirEntry",
    "FileStat",
    "Identity",
    "SpawnedAgent",
    "connect",
]

#: The environment variable ``capsup run`` sets to the supervisor's endpoint.
ENDPOINT_ENV: Final = "CAPSUP_ENDPOINT"

_T = TypeVar("_T")

#: How long the supervisor may rightly take over a brokered request (its
#: bound on an HTTP exchange and on a statement), on top of the call's own
#: timeout.
_BROKERED_TIME: Final = 30.0


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the supervisor says this client is (``whoami``).

    ``principal`` is the policy name; ``agent_id`` and ``pid`` are ``None``
    for a service that is not an agent process.
    """

    principal: str
    agent_id: str | None
    pid: int | None


@dataclass(frozen=True, slots=True)
class SpawnedAgent:
    """A sub-agent the supervisor started for this agent, with what it was given."""

    agent_id: str
    pid: int
    capabilities: tuple[Capability, ...]


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CURVE keys for a service on a ``tcp://`` endpoint (Z85 text or 32 raw bytes).

    ``public_key`` must be the one the supervisor's config names for the
    service: that key, proven by the handshake, is the service's identity.
    """

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of a directory (:meth:`Client.listdir`), as ``lstat`` sees it:
    ``kind`` is ``file``, ``dir``, ``symlink`` or ``other``."""

    name: str
    kind: str
    size: int


@dataclass(frozen=True, slots=True)
class FileStat:
    """What :meth:`Client.stat` says of a file (symlinks followed): its
    ``kind`` (as :class:`DirEntry`'s), size in bytes, modification time
    (UTC epoch seconds) and permission bits (``0o644``)."""

    kind: str
    size: int
    mtime: float
    mode: int


CapabilityRef = Capability | str
"""A capability, or just its id: the kernel only ever looks at the id."""

PathRef = str | os.PathLike[str]
"""An absolute path, or a ``file://`` URI, that the capability covers."""

AgentRef = SpawnedAgent | str
"""A sub-agent, or just its agent id."""


def connect(
    endpoint: str | None = None, *, timeout: float = 10.0, curve: CurveKeys | None = None
) -> Client:
    """Connect to the supervisor at ``endpoint``, by default ``$CAPSUP_ENDPOINT``.

    Connecting does not contact the supervisor (ZeroMQ connects lazily), so a
    wrong endpoint shows up as :class:`SupervisorGone` on the first call.
    """
    if endpoint is None:
        endpoint = os.environ.get(ENDPOINT_ENV)
        if not endpoint:
            raise SupervisorGone(
                f"{ENDPOINT_ENV} is not set: this program must run under `capsup run` "
                f"(or pass connect(endpoint=...))"
            )
    return Client(endpoint, timeout=timeout, curve=curve)


class Client:
    """A connection to the supervisor; one request in flight at a time.

    ``timeout`` bounds each call in seconds. When it passes without a reply
    the call raises :class:`SupervisorGone` and the socket is replaced (the
    "lazy pirate" pattern), so a reply that arrives later can never be taken
    for the answer to a later call. Replies are also matched by request id,
    so one left over from an interrupted call is skipped.

    Not thread-safe: a ZeroMQ socket belongs to one thread, so use one client
    per thread (and a new one after ``fork``).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 10.0,
        curve: CurveKeys | None = None,
        descriptors: DescriptorChannel | None = None,
    ) -> None:
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._endpoint = endpoint
        self._timeout = timeout
        self._curve = curve
        #: The descriptor socket :meth:`open` uses (``$CAPSUP_FD_SOCKET`` by default).
        self._descriptors = descriptors
        self._ids = itertools.count(1)
        self._socket: zmq.Socket[bytes] | None = self._open()

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def closed(self) -> bool:
        return self._socket is None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<capsup Client {self._endpoint} {state}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; later calls raise :class:`ConnectionClosed`. Idempotent."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    # -- operations ---------------------------------------------------------

    def whoami(self, *, trace_id: str | None = None) -> Identity:
        """Ask who the supervisor has proven this process to be."""
        result = self._call(Op.WHOAMI, {}, trace_id)
        return Identity(
            principal=_take(result, "principal", str),
            agent_id=_take_optional(result, "agent_id", str),
            pid=_take_optional(result, "pid", int),
        )

    def request(
        self,
        resource: str,
        operations: Iterable[str],
        *,
        constraints: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> Capability:
        """Ask for a new capability; policy decides, and may add constraints."""
        args: dict[str, Any] = {"resource": resource, "operations": _operation_list(operations)}
        _put(args, "constraints", constraints)
        _put(args, "ttl", ttl)
        _put(args, "metadata", metadata)
        return _capability(self._call(Op.REQUEST, args, trace_id))

    def validate(
        self,
        capability: CapabilityRef,
        operation: str,
        resource: str,
        *,
        size: int | None = None,
        statement: str | None = None,
        trace_id: str | None = None,
    ) -> Capability:
        """Check one concrete use; returns the capability, or raises why not.

        A denial is an :class:`~capsup.agents.errors.AccessDenied` subclass;
        :class:`~capsup.agents.errors.ConstraintViolation` carries the
        validator's ``reason``.
        """
        args: dict[str, Any] = {
            "capability": _capability_id(capability),
            "operation": operation,
            "resource": resource,
        }
        _put(args, "size", size)
        _put(args, "statement", statement)
        result = self._call(Op.VALIDATE, args, trace_id)
        if _take(result, "allowed", bool) is not True:
            raise InternalError("the supervisor answered validate with allowed: false")
        return _capability(_take(result, "capability", dict))

    def delegate(
        self,
        capability: CapabilityRef,
        to: AgentRef,
        *,
        resource: str | None = None,
        operations: Iterable[str] | None = None,
        constraints: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        trace_id: str | None = None,
    ) -> Capability:
        """Give agent ``to`` a narrower copy; what is left out is inherited."""
        args: dict[str, Any] = {"capability": _capability_id(capability), "to": _agent_id(to)}
        _put(args, "resource", resource)
        _put(args, "operations", None if operations is None else _operation_list(operations))
        _put(args, "constraints", constraints)
        _put(args, "ttl", ttl)
        return _capability(self._call(Op.DELEGATE, args, trace_id))

    def revoke(self, capability: CapabilityRef, *, trace_id: str | None = None) -> list[str]:
        """Revoke a capability and all delegated from it; returns every revoked id."""
        result = self._call(Op.REVOKE, {"capability": _capability_id(capability)}, trace_id)
        return _id_list(result)

    def revoke_agent(self, agent: AgentRef, *, trace_id: str | None = None) -> list[str]:
        """Revoke everything a sub-agent holds; returns every revoked id."""
        result = self._call(Op.REVOKE_AGENT, {"agent": _agent_id(agent)}, trace_id)
        return _id_list(result)

    def list_my_capabilities(self, *, trace_id: str | None = None) -> list[Capability]:
        """The live capabilities this agent holds."""
        result = self._call(Op.LIST, {}, trace_id)
        return [_capability(c) for c in _take(result, "capabilities", list)]

    def request_for_plan(
        self, requests: Sequence[Mapping[str, Any]], *, trace_id: str | None = None
    ) -> list[Capability]:
        """Ask for several capabilities at once: all are granted, or none.

        Each entry has the keyword arguments of :meth:`request`
        (``resource``, ``operations``, ``constraints``, ``ttl``, ``metadata``).
        """
        items = []
        for entry in requests:
            item = dict(entry)
            if "operations" in item:
                item["operations"] = _operation_list(item["operations"])
            items.append(item)
        result = self._call(Op.REQUEST_PLAN, {"requests": items}, trace_id)
        return [_capability(c) for c in _take(result, "capabilities", list)]

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        capabilities: Iterable[CapabilityRef | Mapping[str, Any]] | None = None,
        trace_id: str | None = None,
    ) -> SpawnedAgent:
        """Start a sub-agent and delegate capabilities to it.

        Each entry of ``capabilities`` is a capability (or id) to pass on as
        it is, or a map with the arguments of :meth:`delegate` except ``to``.
        The sub-agent is stopped when this agent exits.
        """
        if isinstance(argv, str | bytes):
            raise BadRequest("argv must be a list of strings, not one string")
        args: dict[str, Any] = {"argv": list(argv)}
        _put(args, "name", name)
        if capabilities is not None:
            args["capabilities"] = [_spawn_grant(c) for c in capabilities]
        result = self._call(Op.SPAWN, args, trace_id)
        return SpawnedAgent(
            agent_id=_take(result, "agent_id", str),
            pid=_take(result, "pid", int),
            capabilities=tuple(_capability(c) for c in _take(result, "capabilities", list)),
        )

    def wait(
        self, agent: AgentRef, timeout: float | None = None, *, trace_id: str | None = None
    ) -> int:
        """Wait for a sub-agent to exit and return its exit code.

        The code is negative (minus the signal number) when a signal ended it,
        as :mod:`subprocess` reports it. ``timeout=None`` waits as long as it
        takes; otherwise :class:`~capsup.agents.errors.WaitTimeout` is raised.
        """
        args: dict[str, Any] = {"agent": _agent_id(agent)}
        _put(args, "timeout", timeout)
        # The supervisor holds the reply until the agent exits.
        result = self._call(Op.WAIT, args, trace_id, held_for=timeout)
        return _take(result, "exit_code", int)

    # -- files --------------------------------------------------------------

    def read_bytes(
        self,
        capability: CapabilityRef,
        path: PathRef,
        *,
        offset: int = 0,
        length: int | None = None,
        trace_id: str | None = None,
    ) -> bytes:
        """The bytes of a file from ``offset``: ``length`` of them, fewer at its
        end, or (``None``) all up to its end.

        Each request carries at most ``MAX_IO_BYTES``, so a large read is
        several requests, each checked: a file that changes meanwhile may be
        read partly before and partly after the change."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        target = {"capability": _capability_id(capability), "resource": _resource(path)}
        chunks: list[bytes] = []
        position, remaining = offset, length
        while remaining is None or remaining > 0:
            want = MAX_IO_BYTES if remaining is None else min(remaining, MAX_IO_BYTES)
            args = {**target, "offset": position, "length": want}
            result = self._call(Op.READ, args, trace_id)
            data = _take(result, "data", bytes)
            chunks.append(data)
            position += len(data)
            if remaining is not None:
                remaining -= len(data)
            if not data or _take(result, "eof", bool):
                break
        return b"".join(chunks)

    def read_text(
        self,
        capability: CapabilityRef,
        path: PathRef,
        encoding: str = "utf-8",
        errors: str = "strict",
        *,
        trace_id: str | None = None,
    ) -> str:
        """The whole file, decoded (as :meth:`pathlib.Path.read_text`, but
        UTF-8 unless told otherwise, whatever the locale)."""
        return self.read_bytes(capability, path, trace_id=trace_id).decode(encoding, errors)

    def write_bytes(
        self,
        capability: CapabilityRef,
        path: PathRef,
        data: bytes | bytearray | memoryview,
        *,
        offset: int | None = None,
        append: bool = False,
        trace_id: str | None = None,
    ) -> int:
        """Write ``data``: at ``offset``, or at the end (``append``), or, with
        neither, as the whole new content of the file. Returns the bytes written.

        Writing to an existing file needs ``write``; making one needs
        ``create`` (``write`` is not asked then). Data larger than ``MAX_IO_BYTES`` goes in
        several requests, each checked (one refused part way leaves the
        parts before it written)."""
        if append and offset is not None:
            raise ValueError("offset and append exclude each other")
        if offset is not None and offset < 0:
            raise ValueError("offset must not be negative")
        target = {"capability": _capability_id(capability), "resource": _resource(path)}
        view = memoryview(data).cast("B")
        written = 0
        while True:
            args: dict[str, Any] = {**target, "data": bytes(view[written : written + MAX_IO_BYTES])}
            if append:
                args["append"] = True
            elif offset is not None or written:
                # After the first part, a whole-file write continues where it left off.
                args["offset"] = (offset or 0) + written
            result = self._call(Op.WRITE, args, trace_id)
            written += _take(result, "written", int)
            if written >= len(view):
                return written

    def listdir(
        self, capability: CapabilityRef, path: PathRef, *, trace_id: str | None = None
    ) -> list[DirEntry]:
        """The entries of a directory, sorted by name (without ``.`` and ``..``,
        names a ``deny`` glob covers, and names that are not UTF-8)."""
        args = {"capability": _capability_id(capability), "resource": _resource(path)}
        result = self._call(Op.LISTDIR, args, trace_id)
        entries = []
        for entry in _take(result, "entries", list):
            entries.append(
                DirEntry(
                    name=_take(entry, "name", str),
                    kind=_take(entry, "kind", str),
                    size=_take(entry, "size", int),
                )
            )
        return entries

    def stat(
        self, capability: CapabilityRef, path: PathRef, *, trace_id: str | None = None
    ) -> FileStat:
        """The kind, size, modification time and mode of a file or directory."""
        args = {"capability": _capability_id(capability), "resource": _resource(path)}
        result = self._call(Op.STAT, args, trace_id)
        return FileStat(
            kind=_take(result, "kind", str),
            size=_take(result, "size", int),
            mtime=_take_number(result, "mtime"),
            mode=_take(result, "mode", int),
        )

    def delete(
        self, capability: CapabilityRef, path: PathRef, *, trace_id: str | None = None
    ) -> None:
        """Remove a file, a symlink (not what it points to) or an empty directory."""
        args = {"capability": _capability_id(capability), "resource": _resource(path)}
        self._call(Op.DELETE, args, trace_id)

    def open(
        self,
        capability: CapabilityRef,
        path: PathRef,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        *,
        trace_id: str | None = None,
    ) -> IO[Any]:
        """Open a regular file through the supervisor, as :func:`open` would.

        ``mode`` is ``r``, ``w``, ``a``, ``x`` or ``r+``, with ``b`` for
        binary or ``t`` (the default) for text; ``buffering``, ``encoding``,
        ``errors`` and ``newline`` mean what they mean to :func:`open`. The
        supervisor checks the capability (``r`` needs ``read``, ``w`` and
        ``a`` need ``write`` on a file that exists and ``create`` on a new
        one, ``x`` needs ``create``, ``r+`` needs ``read`` and ``write``), opens the
        file and hands its descriptor over the descriptor socket.

        The file stays usable until it is closed, even if the capability is
        revoked meanwhile (as a Capsicum descriptor does); brokered
        :meth:`read_bytes` and :meth:`write_bytes` are checked at every call.
        """
        wire_mode = _wire_mode(mode)
        binary = "b" in mode
        if binary and (encoding is not None or errors is not None or newline is not None):
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        if not binary and buffering == 0:
            raise ValueError("can't have unbuffered text I/O")
        if self._socket is None:
            raise ConnectionClosed(f"the client for {self._endpoint} is closed")
        if self._descriptors is None:
            self._descriptors = shared_channel()
        resource = _resource(path)
        fd = self._descriptors.open(
            _capability_id(capability),
            resource,
            wire_mode,
            trace_id=trace_id,
            timeout=self._timeout,
        )
        try:
            # The builtin (a method's name is not in scope); the caller owns the file.
            file = open(fd, mode, buffering, encoding, errors, newline, closefd=True)  # noqa: SIM115
        except BaseException:
            os.close(fd)
            raise
        _name_file(file, resource)
        return file

    # -- APIs and databases ---------------------------------------------------

    def http(
        self,
        capability: CapabilityRef,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout: float | None = None,
        trace_id: str | None = None,
    ) -> HttpResponse:
        """Have the supervisor make an HTTP request under ``capability``.

        The supervisor checks the method and the URL against the capability,
        connects to the address it checked, adds the credentials the
        capability carries (which the agent never sees), and returns the
        response as it came: a redirect is not followed (ask again for its
        ``Location``). ``timeout`` (seconds) shortens the supervisor's own
        bound on the whole exchange (30 s). The headers ``Host``,
        ``Connection``, ``Transfer-Encoding``, ``Content-Length`` and
        ``Proxy-*`` are the supervisor's to set.

        Raises ``ConstraintViolation`` (a private address, a body or
        response past ``max_bytes``), ``BadRequest`` (a forbidden header),
        ``UpstreamError`` (no answer, a TLS failure, a timeout) and the
        kernel's refusals."""
        args: dict[str, Any] = {
            "capability": _capability_id(capability),
            "method": method,
            "url": url,
        }
        if headers:
            args["headers"] = dict(headers)
        if body:
            args["body"] = bytes(body)
        _put(args, "timeout", timeout)
        bound = _BROKERED_TIME if timeout is None else min(timeout, _BROKERED_TIME)
        result = self._call(Op.HTTP, args, trace_id, held_for=bound)
        return HttpResponse.from_result(result)

    def query(
        self,
        capability: CapabilityRef,
        statement: str,
        params: Sequence[SqlValue] = (),
        *,
        resource: str | None = None,
        trace_id: str | None = None,
    ) -> QueryResult:
        """Have the supervisor run one SQL statement under ``capability``.

        ``params`` are bound to the statement's placeholders (``?`` for
        SQLite, ``$1, $2, ...`` for PostgreSQL), never written into it.
        ``resource`` (``db://NAME``) defaults to the capability's own, when
        ``capability`` is a :class:`Capability`. Raises
        ``ConstraintViolation`` (a table outside ``tables``, too many rows),
        ``UpstreamError`` (the database failed) and the kernel's refusals."""
        if resource is None:
            if not isinstance(capability, Capability):
                raise ValueError("query needs resource= when given a capability id")
            resource = capability.resource
        args = {
            "capability": _capability_id(capability),
            "resource": resource,
            "statement": statement,
            "params": list(params),
        }
        result = self._call(Op.QUERY, args, trace_id, held_for=_BROKERED_TIME)
        return QueryResult.from_result(result)

    # -- transport ----------------------------------------------------------

    def _call(
        self,
        op: Op,
        args: dict[str, Any],
        trace_id: str | None,
        *,
        held_for: float | None = 0.0,
    ) -> Any:
        """Send one request and return its result, or raise its error.

        ``held_for`` is how long the supervisor may rightly hold the request
        before answering (``wait``), added to the client's timeout; ``None``
        means without bound, so the call waits for as long as it takes.
        """
        if self._socket is None:
            raise ConnectionClosed(f"the client for {self._endpoint} is closed")
        request_id = next(self._ids)
        message: dict[str, Any] = {"id": request_id, "op": op.value, "args": args}
        if trace_id is not None:
            message["trace_id"] = trace_id
        payload = encode(message)
        patience = None if held_for is None else self._timeout + held_for
        deadline = None if patience is None else time.monotonic() + patience
        try:
            self._socket.send(payload, zmq.NOBLOCK)
            while True:
                frames = self._receive(self._socket, deadline, op, patience)
                reply = parse_reply(frames[-1])
                # A reply to an earlier, interrupted call: not ours, skip it.
                # An id-less reply can only be an error about our own request,
                # the one request this socket has in flight.
                if reply.id is None or reply.id == request_id:
                    break
        except zmq.ZMQError as exc:
            self._reset()
            raise SupervisorGone(
                f"cannot talk to the supervisor at {self._endpoint}: {exc}"
            ) from None
        except InternalError:
            self._reset()
            raise
        if reply.error is not None:
            raise reply.error
        return reply.result

    def _receive(
        self, socket: zmq.Socket[bytes], deadline: float | None, op: Op, patience: float | None
    ) -> list[bytes]:
        """The next reply's frames, or :class:`SupervisorGone` once ``deadline`` passes.

        The deadline is the call's, not the reply's: skipped stale replies do
        not extend it.
        """
        wait_ms = None
        if deadline is not None:
            wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        if not socket.poll(wait_ms):
            self._reset()
            raise SupervisorGone(
                f"no reply to {op.value!r} from the supervisor at {self._endpoint} "
                f"within {patience:g} s"
            )
        frames: list[bytes] = socket.recv_multipart(zmq.NOBLOCK)
        # A server may answer a DEALER as it answers REQ, after an empty frame.
        if len(frames) > 2 or (len(frames) == 2 and frames[0]):
            raise InternalError(f"malformed reply framing: {len(frames)} frames")
        return frames

    def _open(self) -> zmq.Socket[bytes]:
        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            socket.curve_serverkey = self._curve.server_public_key
            socket.curve_publickey = self._curve.public_key
            socket.curve_secretkey = self._curve.secret_key
        try:
            socket.connect(self._endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise SupervisorGone(f"cannot connect to {self._endpoint!r}: {exc}") from None
        return socket

    def _reset(self) -> None:
        """Replace the socket so nothing queued on the old one can reach a later call."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
            self._socket = self._open()


# -- arguments and results --------------------------------------------------


def _put(args: dict[str, Any], key: str, value: object) -> None:
    """Send optional fields only when given: absent and nil mean the same."""
    if value is not None:
        args[key] = value


def _operation_list(operations: Iterable[str]) -> list[str]:
    # A single string is iterable too, and "read" would become r, e, a, d.
    if isinstance(operations, str | bytes):
        raise BadRequest(f"operations must be a list of names, not the string {operations!r}")
    return list(operations)


def _resource(path: PathRef) -> str:
    resource = os.fspath(path)
    if not isinstance(resource, str):
        raise BadRequest("a path must be text (str or a str path-like), not bytes")
    return resource


#: ``open``'s modes as :func:`open` spells them without ``b`` or ``t``, and
#: the wire mode of each (``+`` only with ``r``: ``w+``, ``a+``, ``x+`` are
#: not brokered).
_WIRE_MODES: Final = {"r": "r", "w": "w", "a": "a", "x": "x", "r+": "r+", "+r": "r+"}


def _wire_mode(mode: str) -> str:
    """The wire mode of a :func:`open` mode, or :class:`ValueError`."""
    letters = mode.replace("b", "", 1).replace("t", "", 1)
    if ("b" in mode and "t" in mode) or len(mode) - len(letters) > 1 or letters not in _WIRE_MODES:
        raise ValueError(
            f"invalid mode {mode!r}: r, w, a, x or r+, with b for binary or t for text"
        )
    return _WIRE_MODES[letters]


def _name_file(file: IO[Any], name: str) -> None:
    """Give the file the name it was opened by, as :func:`open` does (not
    the descriptor's number)."""
    raw: Any = file
    while not isinstance(raw, io.FileIO):
        raw = raw.buffer if isinstance(raw, io.TextIOWrapper) else raw.raw
    raw.name = name


def _capability_id(capability: CapabilityRef) -> str:
    return capability.id if isinstance(capability, Capability) else capability


def _agent_id(agent: AgentRef) -> str:
    return agent.agent_id if isinstance(agent, SpawnedAgent) else agent


def _spawn_grant(grant: CapabilityRef | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(grant, Capability | str):
        return {"capability": _capability_id(grant)}
    item = dict(grant)
    if isinstance(item.get("capability"), Capability):
        item["capability"] = item["capability"].id
    if item.get("operations") is not None:
        item["operations"] = _operation_list(item["operations"])
    return item


def _take(result: object, key: str, kind: type[_T]) -> _T:
    """A required field of a result; the server is trusted, so a miss is a bug."""
    if not isinstance(result, dict):
        raise InternalError("malformed result from the supervisor: not a map")
    value = result.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InternalError(f"malformed result from the supervisor: bad {key!r}")
    return value


def _take_number(result: object, key: str) -> float:
    """A required number (msgpack int or float) of a result."""
    value = result.get(key) if isinstance(result, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InternalError(f"malformed result from the supervisor: bad {key!r}")
    return float(value)


def _take_optional(result: object, key: str, kind: type[_T]) -> _T | None:
    if isinstance(result, dict) and result.get(key) is None:
        return None
    return _take(result, key, kind)


def _id_list(result: object) -> list[str]:
    ids = _take(result, "revoked", list)
    if not all(isinstance(i, str) for i in ids):
        raise InternalError("malformed result from the supervisor: bad 'revoked'")
    return ids


def _capability(wire: object) -> Capability:
    try:
        return Capability.from_wire(wire)
    except CapsupError as exc:
        raise InternalError(f"malformed capability from the supervisor: {exc.message}") from None
