"""The audit trail: every security event as one hash-chained JSON line.

:class:`AuditLog` is an :data:`~capsup.supervisor.events.EventSink`. The
kernel calls it synchronously, and for everything but a successful validation
the record is handed to the operating system (``os.write`` on an ``O_APPEND``
descriptor) before the call returns, so a grant, denial, delegation,
revocation or violation is on file before the reply that reports it exists,
and survives a crash of the supervisor. Successful validations, the hot path,
are buffered and written in batches (a denial written meanwhile takes the
buffer with it, so the file stays in chain order), and may be sampled; a
failure or violation never is.

If the file cannot be written the sink raises
:class:`~capsup.agents.errors.AuditUnavailable` and the caller fails closed:
an action that cannot be recorded is not taken. Nothing is lost quietly: a
record that failed to write is not part of the chain, and a partial write is
cut back off the file.

The chain's head (seq, hash) is reported through ``on_head`` after every
write, for the state store to keep: a trail shorter than that head was cut.
See docs/audit.md.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from capsup.agents.errors import AuditUnavailable
from capsup.supervisor.audit_record import (
    GENESIS,
    HEAD_META_KEY,
    AuditHead,
    AuditKeyRequired,
    format_head,
    parse_head,
    record_hash,
    seal_line,
)
from capsup.supervisor.audit_verify import (
    VerifyResult,
    iter_lines,
    last_lines,
    parse_line,
    rotated_siblings,
    trail_files,
    verify,
)
from capsup.supervisor.events import Event, EventType
from capsup.supervisor.secret_file import SecretFileError, read_secret_file

__all__ = [
    "GENESIS",
    "HEAD_META_KEY",
    "AuditHead",
    "AuditLog",
    "AuditTampered",
    "AuditUnavailable",
    "VerifyResult",
    "default_audit_path",
    "format_head",
    "parse_head",
    "read_key_file",
    "trail_files",
    "verify",
]

#: Rotate when the live file passes this size (bytes).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_BUFFERED = EventType.CAPABILITY_VALIDATED
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class AuditTampered(AuditUnavailable):
    """The existing trail does not end where it should: it was cut, edited or
    rewritten (or a crash left a partial line). The supervisor must not append
    to it; an operator moves it aside (and clears the store's head if that was
    intended). ``seq`` is the first broken record, ``reason`` says how."""

    def __init__(self, message: str, *, seq: int, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.seq = seq


def default_audit_path() -> Path:
    """Where the trail goes when no ``--audit-log`` is given: the user's state
    directory (``$XDG_STATE_HOME/capsup/audit.jsonl``), which outlives runs."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "capsup" / "audit.jsonl"


class AuditLog:
    """An append-only, hash-chained, rotating JSON Lines audit trail.

    ``flush_every`` and ``flush_interval`` bound how many successful
    validations, and for how long, may wait in memory; the server calls
    :meth:`flush_if_due` (or :meth:`flush`) from its loop so an idle
    supervisor writes them too. They are sealed as a batch when written, so
    the request that fills the batch waits for all of it: 64 keeps that
    under about 0.3 ms (256 added 0.5 ms to the benchmark's p99 latency and
    nothing to its throughput). ``sample_rate`` (0..1] applies to successful
    validations only. ``known_head`` is the head the state store kept; if the
    file does not reach it, opening raises :class:`AuditTampered`. ``keep``
    bounds the rotated files kept (None keeps them all, so the chain can be
    verified from its first record). ``fsync`` makes each write survive a
    power loss too, at the price of a disk flush per write. ``key`` seals
    each record with an HMAC under it instead of a bare hash (see
    :mod:`capsup.supervisor.audit_record`); a trail whose last record is
    keyed cannot be resumed without it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int | None = None,
        flush_every: int = 64,
        flush_interval: float = 1.0,
        sample_rate: float = 1.0,
        fsync: bool = False,
        key: bytes | None = None,
        known_head: AuditHead | None = None,
        on_head: Callable[[int, str], None] | None = None,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[OSError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] | None = None,
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], not {sample_rate!r}")
        if max_bytes <= 0 or flush_every <= 0 or (keep is not None and keep < 1):
            raise ValueError("max_bytes and flush_every must be positive, keep at least 1")
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._keep = keep
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._sample_rate = sample_rate
        self._fsync = fsync
        self._key = key
        self._on_head = on_head
        self._on_written = on_written
        self._on_error = on_error
        self._clock = clock
        self._rng = rng or random.Random().random  # noqa: S311 - sampling, not secrecy
        self._lock = threading.Lock()
        self._extra = {"sample_rate": sample_rate} if sample_rate < 1.0 else {}
        self._waiting: list[Event] = []  # validations not yet sealed
        self._buffer: list[bytes] = []  # sealed lines not yet on file
        self._buffer_since = 0.0
        self._sampled_out = 0
        self._written = 0
        self._fd: int | None = None
        self._broken: str | None = None
        self._lock_fd: int | None = self._take_lock()
        try:
            self._head = self._resume(known_head)
            self._tail = self._head  # the last record assigned, written or buffered
            self._fd = os.open(self._path, _OPEN_FLAGS, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError as error:
            self._release_lock()
            raise AuditUnavailable(f"cannot open the audit trail {self._path}: {error}") from error
        except BaseException:
            self._release_lock()
            raise

    # -- the sink ---------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Record ``event``; raise :class:`AuditUnavailable` if it cannot be."""
        with self._lock:
            fd = self._require_open()
            if event.event == _BUFFERED:
                if self._sample_rate < 1.0 and self._rng() >= self._sample_rate:
                    self._sampled_out += 1
                    return
                if not self._waiting and not self._buffer:
                    self._buffer_since = self._clock()
                self._waiting.append(event)
                if len(self._waiting) + len(self._buffer) >= self._flush_every or self._due():
                    before = self._seal_waiting()
                    line = self._buffer[-1]
                    try:
                        self._write(fd, [], self._tail)
                    except AuditUnavailable:
                        # The caller fails closed, so this use did not happen:
                        # its record goes; the earlier ones (already allowed) stay.
                        if self._buffer and self._buffer[-1] is line:
                            self._buffer.pop()
                            self._tail = before
                        raise
                return
            self._seal_waiting()
            before = self._tail
            line, head = self._seal(event)
            self._tail = head
            try:
                self._write(fd, [line], head)
            except AuditUnavailable:
                if self._head != head:  # not on file: this record is not in the chain
                    self._tail = before
                raise

    def record_all(self, events: Sequence[Event]) -> None:
        """Record ``events`` in order, in one write with one head report
        (see :func:`~capsup.supervisor.events.record_all`): all are on file
        when this returns, or none is and :class:`AuditUnavailable` is
        raised. Each is sealed at once, never sampled or held back."""
        if not events:
            return
        with self._lock:
            fd = self._require_open()
            self._seal_waiting()
            before = head = self._tail
            lines = []
            for event in events:
                line, digest = seal_line(event, head.seq + 1, head.hash, key=self._key)
                lines.append(line)
                head = AuditHead(head.seq + 1, digest)
            self._tail = head
            try:
                self._write(fd, lines, head)
            except AuditUnavailable:
                if self._head != head:  # not on file: these records are not in the chain
                    self._tail = before
                raise

    def fail(self, reason: str) -> None:
        """Stop recording: every later record raises :class:`AuditUnavailable`
        with ``reason`` (what was written stays written)."""
        with self._lock:
            self._broken = reason
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def flush(self) -> None:
        """Write the buffered validations now."""
        with self._lock:
            self._write_pending(self._require_open())

    def flush_if_due(self) -> None:
        """Write the buffered validations if the oldest waited ``flush_interval``."""
        with self._lock:
            if (self._waiting or self._buffer) and self._due():
                self._write_pending(self._require_open())

    def close(self) -> None:
        """Write what is buffered, close the file and let go of the trail
        (idempotent)."""
        with self._lock:
            try:
                if self._fd is not None:
                    self._write_pending(self._fd)
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                self._release_lock()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- state ------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def head(self) -> AuditHead:
        """The newest record on file (``(0, GENESIS)`` for an empty trail)."""
        return self._head

    @property
    def pending(self) -> int:
        """Successful validations buffered, not yet on file."""
        return len(self._waiting) + len(self._buffer)

    @property
    def sampled_out(self) -> int:
        """Successful validations not recorded because of ``sample_rate``."""
        return self._sampled_out

    @property
    def records_written(self) -> int:
        """Records written by this instance (since it was opened)."""
        return self._written

    # -- internals ----------------------------------------------------------------

    def _take_lock(self) -> int:
        """Hold ``PATH.lock`` exclusively while open: two writers on one trail
        would fork the chain, so a second supervisor is refused instead."""
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise AuditUnavailable(f"cannot open the audit trail {self._path}: {error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            raise AuditUnavailable(
                f"the audit trail {self._path} is in use by another process ({lock_path})"
            ) from error
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _require_open(self) -> int:
        if self._fd is None:
            raise AuditUnavailable(self._broken or f"the audit trail {self._path} is closed")
        return self._fd

    def _due(self) -> bool:
        return self._clock() - self._buffer_since >= self._flush_interval

    def _seal(self, event: Event) -> tuple[bytes, AuditHead]:
        seq = self._tail.seq + 1
        line, digest = seal_line(event, seq, self._tail.hash, key=self._key)
        return line, AuditHead(seq, digest)

    def _seal_waiting(self) -> AuditHead:
        """Seal the waiting validations onto the buffer, in order, and return
        the tail from before the last of them (where to go back to if that
        one is dropped).

        Sealing waits for the batch because it is the costliest step of an
        audited validation, and run back to back it costs about half what it
        does run between requests, where the rest of the loop has taken the
        caches (docs/performance.md). The chain is unchanged: a record's
        place is fixed when it is sealed, and anything else is sealed after
        everything waiting."""
        events = self._waiting
        if not events:
            return self._tail
        # Sealed into a list of its own and taken only when all are sealed:
        # a failure leaves the waiting events, the buffer and the tail as
        # they were, never half a batch with its numbers spent.
        lines: list[bytes] = []
        seq, digest = self._tail
        extra = self._extra
        for event in events:
            before = (seq, digest)
            seq += 1
            line, digest = seal_line(event, seq, digest, key=self._key, **extra)
            lines.append(line)
        self._buffer.extend(lines)
        self._waiting = []
        self._tail = AuditHead(seq, digest)
        return AuditHead(*before)

    def _write_pending(self, fd: int) -> None:
        """Seal what waits and write everything not yet on file, if anything."""
        self._seal_waiting()
        if self._buffer:
            self._write(fd, [], self._tail)

    def _write(self, fd: int, lines: list[bytes], head: AuditHead) -> None:
        """Append the buffer plus ``lines`` in one write, then report the head.

        On failure nothing of it stays on file (a partial write is truncated
        away) and the buffer is kept for the next attempt.
        """
        batch = [*self._buffer, *lines]
        data = b"".join(batch)
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
            if self._fsync:
                os.fsync(fd)
        except OSError as error:
            if written:
                self._cut_back(fd)
            self._report(error)
            raise AuditUnavailable(f"cannot write the audit trail {self._path}: {error}") from error
        self._size += len(data)
        self._buffer.clear()
        self._head = head
        self._written += len(batch)
        if self._on_written is not None:
            self._on_written(len(batch))
        if self._on_head is not None:
            try:
                self._on_head(head.seq, head.hash)
            except Exception as error:
                raise AuditUnavailable(f"cannot keep the audit head: {error}") from error
        if self._size >= self._max_bytes:
            self._rotate()

    def _cut_back(self, fd: int) -> None:
        """Remove a partial write, so the file still ends with a whole record."""
        try:
            os.ftruncate(fd, self._size)
        except OSError as error:  # the trail now ends in a partial line: fail closed
            self._report(error)
            os.close(fd)
            self._fd = None
            self._broken = f"the audit trail {self._path} ends in a partial write: {error}"

    def _rotate(self) -> None:
        """Move the live file to ``PATH.1`` (older ones up) and start a new one.

        A failure leaves the current file in use (it only grows) and is
        reported through ``on_error``; rotation is tried again next write.
        """
        assert self._fd is not None
        try:
            for older in reversed(rotated_siblings(self._path)):
                number = int(older.name.rsplit(".", 1)[1])
                if self._keep is not None and number >= self._keep:
                    older.unlink()
                else:
                    older.rename(older.with_name(f"{self._path.name}.{number + 1}"))
            self._path.rename(self._path.with_name(f"{self._path.name}.1"))
            fd = os.open(self._path, _OPEN_FLAGS, 0o600)
            if self._fsync:
                _fsync_dir(self._path.parent)
        except OSError as error:
            self._report(error)
            return
        os.close(self._fd)
        self._fd = fd
        self._size = 0

    def _report(self, error: OSError) -> None:
        if self._on_error is not None:
            self._on_error(error)

    def _resume(self, known: AuditHead | None) -> AuditHead:
        """The head of the trail on disk, checked against the stored head."""
        last = AuditHead(0, GENESIS)
        for path in self._files_newest_first():
            try:
                if not path.is_file():
                    continue
                lines, partial = last_lines(path, 1)
            except OSError as error:
                raise AuditUnavailable(f"cannot read the audit trail {path}: {error}") from error
            if partial:
                raise AuditTampered(
                    f"{path} ends in a partial record (a cut or a crash mid-write)",
                    seq=0,
                    reason="truncated",
                )
            if not lines:
                continue
            record = parse_line(lines[0])
            if record is None:
                raise AuditTampered(
                    f"the last line of {path} is not an audit record", seq=0, reason="edited"
                )
            _intact(record, path, self._key)
            last = AuditHead(record["seq"], record["hash"])
            break
        if known is not None and known.seq > 0:
            self._check_known(known, last)
        return last

    def _check_known(self, known: AuditHead, last: AuditHead) -> None:
        if last.seq < known.seq:
            raise AuditTampered(
                f"the audit trail {self._path} ends at seq {last.seq} but the state store's "
                f"head is seq {known.seq}: records were cut off",
                seq=last.seq + 1,
                reason="truncated",
            )
        if last.seq == known.seq:
            found: str | None = last.hash
        else:
            found = self._check_lost_head(known)
        if found is not None and found != known.hash:
            raise AuditTampered(
                f"record {known.seq} of {self._path} differs from the state store's head",
                seq=known.seq,
                reason="rewritten",
            )

    def _check_lost_head(self, known: AuditHead) -> str | None:
        """The hash of record ``known.seq`` on file; None if it is gone
        only the way rotation with ``keep`` removes records: with its whole
        file, every record left newer, and the oldest of them, if it is the
        very next, linked to it. Any other absence is tampering."""
        found, oldest = self._find_record(known.seq)
        if found is not None:
            return str(found["hash"])
        if self._keep is None or oldest is None or oldest["seq"] <= known.seq:
            raise AuditTampered(
                f"record {known.seq}, the state store's head, is missing from {self._path}",
                seq=known.seq,
                reason="deleted",
            )
        if oldest["seq"] == known.seq + 1 and oldest["prev"] != known.hash:
            raise AuditTampered(
                f"record {oldest['seq']} of {self._path} does not follow the state store's head",
                seq=oldest["seq"],
                reason="rewritten",
            )
        return None

    def _find_record(self, seq: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Record ``seq`` (searching the newest files first), and the record
        with the lowest sequence number seen on the way.

        Both are checked against their hashes, and a line that is not a
        record is tampering (:class:`AuditTampered`): the checks that use
        them must not rest on an edited record or skip over one.
        A file that cannot be read raises :class:`AuditUnavailable` rather
        than ending the search: the records seen before it are all newer, and
        with ``keep`` a head merely unread would pass for one rotated away.
        """
        oldest: dict[str, Any] | None = None
        oldest_path = self._path
        for path in self._files_newest_first():
            try:
                if not path.is_file():
                    continue
                for raw in iter_lines([path]):
                    record = parse_line(raw.data)
                    if record is None:
                        # Every line was written whole as a record (a cut last
                        # line was refused already): garbage is an edit, and
                        # skipping it could skip the very record looked for.
                        raise AuditTampered(
                            f"{path} holds a line that is not an audit record",
                            seq=0,
                            reason="edited",
                        )
                    if record["seq"] == seq:
                        return _intact(record, path, self._key), record
                    if oldest is None or record["seq"] < oldest["seq"]:
                        oldest, oldest_path = record, path
            except OSError as error:
                raise AuditUnavailable(f"cannot read the audit trail {path}: {error}") from error
        return None, None if oldest is None else _intact(oldest, oldest_path, self._key)

    def _files_newest_first(self) -> list[Path]:
        """The live file and its rotated files, newest first.

        Raises :class:`AuditUnavailable` if the directory cannot be listed:
        the start-up checks would otherwise see only the live file and could
        take a head kept in a rotated file for one rotated away.
        """
        try:
            return [self._path, *rotated_siblings(self._path)]
        except OSError as error:
            raise AuditUnavailable(
                f"cannot list the audit trail's rotated files in {self._path.parent}: {error}"
            ) from error


#: A key shorter than SHA-256's output would be the weakest link.
MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 4096


def read_key_file(path: str | Path) -> bytes:
    """The audit key in ``path``: its bytes, less one trailing newline (so
    ``openssl rand -hex 32 > FILE`` makes one). Refused, with what to do,
    unless it is a regular file (not a symlink) that only its owner may read,
    of 32 to 4096 bytes: a key others can read proves nothing."""
    try:
        key = read_secret_file(str(path), MAX_KEY_BYTES)
    except SecretFileError as error:
        raise AuditUnavailable(f"the audit key {path} {error}") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise AuditUnavailable(
            f"the audit key {path} holds {len(key)} bytes; it needs {MIN_KEY_BYTES} to "
            f"{MAX_KEY_BYTES} (openssl rand -hex 32 > {path})"
        )
    return key


def _intact(record: dict[str, Any], path: Path, key: bytes | None) -> dict[str, Any]:
    """``record``, if its hash is the hash of its content; a record the
    start-up checks rely on must not have been edited under its old hash."""
    try:
        expected = record_hash(record, key)
    except AuditKeyRequired:
        raise AuditUnavailable(
            f"the audit trail {path} is sealed with a key: name its key file in "
            "[supervisor] audit_key_file"
        ) from None
    if not hmac.compare_digest(expected, str(record["hash"])):
        raise AuditTampered(
            f"record {record['seq']} in {path} does not match its hash",
            seq=record["seq"],
            reason="edited",
        )
    return record


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
