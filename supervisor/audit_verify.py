"""Reading an audit trail back, and proving nobody changed it.

A trail is the live file plus its rotated predecessors (``PATH.1`` is the
newest predecessor, ``PATH.2`` older, and so on). :func:`verify` walks them
oldest first and reports the first record that is not what the writer wrote:
one whose hash does not match (edited), a gap in the sequence (deleted), a
sequence out of order (reordered), a cut-off end (truncated: a partial last
line, or fewer records than the head the state store kept), or a chain that
is internally consistent but ends somewhere else than that head (rewritten).

With the trail's key, a keyed chain is proof on its own: rewriting it needs
the key. Unkeyed records may only come before the first keyed one (a key
configured later), and the last record must be keyed (unkeyed: a chain
rewritten without the key); without the key a keyed record cannot be checked
(key_required).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from capsup.supervisor.audit_record import (
    GENESIS,
    KEYED,
    AuditHead,
    AuditKeyRequired,
    record_hash,
)

__all__ = [
    "RawLine",
    "VerifyResult",
    "iter_lines",
    "last_lines",
    "parse_line",
    "rotated_siblings",
    "tail_of",
    "trail_files",
    "verify",
]

_ROTATED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)$")
_GLOB_CHARS = frozenset("*?[")
_REQUIRED = ("seq", "prev", "hash", "event", "time")


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line of a trail file, as read: where it is, and whether it ended."""

    path: Path
    lineno: int
    data: bytes
    complete: bool


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :func:`verify` found.

    When ``ok`` is false, ``broken_seq`` is the sequence number of the first
    record that is wrong or missing and ``reason`` one of ``edited``,
    ``deleted``, ``reordered``, ``truncated``, ``rewritten``, ``unkeyed``,
    ``key_required``; ``message`` says it in a sentence and ``path``/``line``
    point at the place. ``keyed`` counts the records sealed with a key.
    """

    ok: bool
    records: int
    first_seq: int | None
    head: AuditHead | None
    broken_seq: int | None = None
    reason: str | None = None
    message: str = ""
    path: Path | None = None
    line: int | None = None
    keyed: int = 0


def rotated_siblings(path: Path) -> list[Path]:
    """``PATH.N`` files next to ``path``, newest (lowest N) first.

    A directory that does not exist has none; one that cannot be listed
    raises ``OSError``, since its rotated files are then unknown, not absent:
    taking them as absent would let a check pass on the newer records alone.
    """
    found = []
    prefix = path.name + "."
    try:
        children = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for child in children:
        name = child.name
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            found.append((int(name[len(prefix) :]), child))
    return [p for _, p in sorted(found)]


def trail_files(args: Iterable[str | Path], *, include_rotated: bool = False) -> list[Path]:
    """The files named by ``args``, oldest first, as rotation names them.

    An argument may be a file, a glob, or a directory (meaning every
    ``*.jsonl`` trail in it, with its rotations). Files of one trail are put
    in rotation order (``PATH.3``, ``PATH.2``, ``PATH.1``, ``PATH``) whatever
    order they came in, since a shell's ``PATH*`` sorts them the wrong way.
    With ``include_rotated``, naming the live file brings its rotated files.
    Names that match nothing are returned as they are, so the caller can
    report them missing.
    """
    collected: list[Path] = []
    for arg in args:
        text = str(arg)
        path = Path(text)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and _is_trail_name(child.name):
                    collected.append(child)
        elif not path.exists() and _GLOB_CHARS & set(text):
            collected.extend(sorted(path.parent.glob(path.name)))  # shells glob the rest
        else:
            collected.append(path)
            if include_rotated and not _ROTATED.match(path.name):
                collected.extend(rotated_siblings(path))
    order: dict[str, int] = {}
    unique: dict[str, tuple[int, int, Path]] = {}
    for path in collected:
        match = _ROTATED.match(path.name)
        base, number = (match["base"], int(match["n"])) if match else (path.name, 0)
        base_key = str(path.parent / base)
        group = order.setdefault(base_key, len(order))
        unique.setdefault(str(path.absolute()), (group, -number, path))
    return [path for _, _, path in sorted(unique.values(), key=lambda item: item[:2])]


def _is_trail_name(name: str) -> bool:
    match = _ROTATED.match(name)
    return (match["base"] if match else name).endswith(".jsonl") and not name.startswith(".")


def iter_lines(paths: Iterable[Path]) -> Iterator[RawLine]:
    """Every line of every file in order; the last one may be incomplete."""
    for path in paths:
        with path.open("rb") as stream:
            for lineno, data in enumerate(stream, start=1):
                complete = data.endswith(b"\n")
                yield RawLine(path, lineno, data.rstrip(b"\n"), complete)


def last_lines(path: Path, count: int, *, block: int = 65536) -> tuple[list[bytes], bool]:
    """The last ``count`` complete lines of ``path`` (oldest first) without
    reading the whole file, and whether the file ends with a partial line."""
    with path.open("rb") as stream:
        end = stream.seek(0, os.SEEK_END)
        lines, complete_end = tail_of(stream, end, count, block=block)
        return lines, complete_end != end


def tail_of(
    stream: BinaryIO, end: int, count: int, *, block: int = 65536
) -> tuple[list[bytes], int]:
    """The last ``count`` complete lines before offset ``end`` of an open file,
    and the offset just past the last newline (where a partial line starts,
    or ``end`` when there is none), reading backwards in growing blocks."""
    if end == 0:
        return [], 0
    size = min(end, block)
    while True:
        stream.seek(end - size)
        data = stream.read(size)
        *lines, partial = data.split(b"\n")
        if size < end:
            lines = lines[1:]  # the first piece may be the tail of a longer line
        if size >= end or (b"\n" in data and len(lines) >= count):
            return (lines[-count:] if count else []), end - len(partial)
        size = min(end, size * 2)


def parse_line(data: bytes) -> dict[str, Any] | None:
    """A record, or None when the line is not one (not JSON, fields missing)."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not all(key in record for key in _REQUIRED):
        return None
    if not isinstance(record["seq"], int) or isinstance(record["seq"], bool):
        return None
    return record


def verify(
    paths: Iterable[str | Path],
    expected_head: AuditHead | None = None,
    *,
    allow_partial_start: bool = False,
    key: bytes | None = None,
) -> VerifyResult:
    """Check a trail's hashes, links and sequence across its files.

    ``paths`` are given oldest first (or as anything :func:`trail_files`
    accepts). ``expected_head`` is the head the state store kept: without it
    a cleanly cut-off tail cannot be told from a trail that simply ended.
    ``allow_partial_start`` accepts a trail whose oldest files were deleted
    by retention (the first record need not be seq 1); otherwise a missing
    start is reported as deleted records. ``key`` is the trail's key, if
    it has one.
    """
    files = trail_files(paths)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such audit file")
    checker = _Checker(expected_head, allow_partial_start, key)
    lines = iter_lines(files)
    for raw in lines:
        broken = checker.feed(raw, lines)
        if broken is not None:
            return broken
    return checker.finish()


class _Checker:
    """The state of one walk along the chain."""

    def __init__(
        self, expected_head: AuditHead | None, allow_partial_start: bool, key: bytes | None
    ) -> None:
        self.expected_head = expected_head
        self.allow_partial_start = allow_partial_start
        self.key = key
        self.records = 0
        self.keyed = 0
        self.first_seq: int | None = None
        self.last: AuditHead | None = None
        self.last_place: tuple[Path, int] | None = None

    def broken(self, seq: int, reason: str, message: str, raw: RawLine | None) -> VerifyResult:
        return VerifyResult(
            ok=False,
            records=self.records,
            first_seq=self.first_seq,
            head=self.last,
            broken_seq=seq,
            reason=reason,
            message=message,
            path=raw.path if raw else None,
            line=raw.lineno if raw else None,
            keyed=self.keyed,
        )

    def feed(self, raw: RawLine, rest: Iterator[RawLine]) -> VerifyResult | None:
        expected = self.last.seq + 1 if self.last else 1
        record = parse_line(raw.data) if raw.complete else None
        if not raw.complete:
            return self.broken(expected, "truncated", "the line is cut off (partial write)", raw)
        if record is None:
            return self.broken(expected, "edited", "the line is not an audit record", raw)
        seq: int = record["seq"]
        try:
            digest = record_hash(record, self.key)
        except AuditKeyRequired:
            message = "the record is sealed with a key: give the trail's key (--key-file)"
            return self.broken(seq, "key_required", message, raw)
        if not hmac.compare_digest(digest, str(record["hash"])):
            return self.broken(seq, "edited", "the record does not match its hash", raw)
        if str(record["hash"]).startswith(KEYED):
            self.keyed += 1
        elif self.keyed:
            message = "an unkeyed record after keyed ones: the chain was rewritten without the key"
            return self.broken(seq, "unkeyed", message, raw)
        if self.last is None:
            start_ok = (seq == 1 and record["prev"] == GENESIS) or self.allow_partial_start
            if not start_ok:
                if seq == 1:
                    return self.broken(
                        1, "edited", "the first record does not link to genesis", raw
                    )
                if _appears_later(1, rest):
                    return self.broken(1, "reordered", f"seq {seq} comes before seq 1", raw)
                return self.broken(
                    1, "deleted", f"the trail starts at seq {seq}, records before it are gone", raw
                )
            self.first_seq = seq
        elif seq != expected:
            if seq > expected and not _appears_later(expected, rest):
                return self.broken(expected, "deleted", f"seq {expected} is missing", raw)
            missing = min(seq, expected)
            return self.broken(
                missing, "reordered", f"seq {seq} found where seq {expected} belongs", raw
            )
        elif record["prev"] != self.last.hash:
            return self.broken(
                self.last.seq,
                "edited",
                f"seq {seq} does not link to seq {self.last.seq}: one of them was rewritten",
                raw,
            )
        head = self.expected_head
        if head is not None and seq == head.seq and record["hash"] != head.hash:
            return self.broken(
                seq, "rewritten", "the record differs from the head the state store kept", raw
            )
        self.records += 1
        self.last = AuditHead(seq, record["hash"])
        return None

    def finish(self) -> VerifyResult:
        head = self.expected_head
        last_seq = self.last.seq if self.last else 0
        if head is not None and last_seq < head.seq:
            return self.broken(
                last_seq + 1,
                "truncated",
                f"the trail ends at seq {last_seq}, the state store's head is seq {head.seq}",
                None,
            )
        if self.key is not None and self.last is not None and not self.keyed:
            return self.broken(
                self.last.seq,
                "unkeyed",
                "no record is sealed with the key: the chain was written (or rewritten) without it",
                None,
            )
        keyed = f" ({self.keyed} keyed)" if self.keyed else ""
        return VerifyResult(
            ok=True,
            records=self.records,
            first_seq=self.first_seq,
            head=self.last,
            message=f"{self.records} records intact{keyed}",
            keyed=self.keyed,
        )


def _appears_later(seq: int, rest: Iterator[RawLine]) -> bool:
    """Whether a record numbered ``seq`` comes later (a move, not a deletion)."""
    for raw in rest:
        record = parse_line(raw.data)
        if record is not None and record["seq"] == seq:
            return True
    return False
