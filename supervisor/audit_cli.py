"""``capsup audit verify|tail|query``: the audit trail for people.

``verify`` is for scripts and incident responders: exit 0 on an intact trail,
1 with one line naming the first broken record, 2 for a usage mistake.
``tail`` and ``query`` print one readable line per record (``--json`` prints
the records as written). Values a client chose (resources, targets) are
quoted with escapes, so a hostile agent cannot write terminal control
sequences into an operator's screen through the trail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from capsup.agents.errors import AuditUnavailable
from capsup.supervisor.audit import read_key_file
from capsup.supervisor.audit_record import HEAD_META_KEY, format_head, parse_head
from capsup.supervisor.audit_verify import (
    iter_lines,
    last_lines,
    parse_line,
    rotated_siblings,
    tail_of,
    trail_files,
    verify,
)
from capsup.supervisor.cli import UsageError
from capsup.supervisor.events import EventType

__all__ = ["format_record", "register"]

Handler = Callable[[argparse.Namespace], int]

#: Event fields shown by name (label, key), in reading order.
_SHOWN = (
    ("principal", "principal"),
    ("pid", "pid"),
    ("cap", "capability_id"),
    ("parent", "parent_id"),
    ("resource", "resource"),
    ("op", "operation"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``capsup audit`` and its actions."""
    audit = subparsers.add_parser(
        "audit", help="verify, tail or query an audit trail", description=__doc__
    )
    audit.set_defaults(handler=_no_action)
    actions = audit.add_subparsers(dest="audit_action", metavar="ACTION")

    check = actions.add_parser(
        "verify",
        help="check the hash chain; exit 1 naming the first broken record",
        description="Check hashes, links and sequence numbers across the trail's files "
        "(rotated files of a named trail are included, oldest first).",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="trail file, glob or directory")
    head = check.add_mutually_exclusive_group()
    head.add_argument(
        "--head",
        metavar="SEQ:HASH",
        help="the chain head the state store kept; detects a cut-off tail",
    )
    head.add_argument(
        "--state",
        "--store",
        dest="store",
        metavar="PATH",
        help="read that head from the supervisor's state file (opened read-only)",
    )
    check.add_argument(
        "--key-file",
        metavar="PATH",
        help="the trail's key ([supervisor] audit_key_file): check its HMACs",
    )
    check.add_argument(
        "--allow-missing-start",
        action="store_true",
        help="accept a trail whose oldest rotated files were deleted on purpose",
    )
    check.set_defaults(handler=_guarded(_verify))

    tail = actions.add_parser("tail", help="print the last records, optionally following")
    tail.add_argument("path", metavar="PATH", help="the live trail file")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="default 10")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument("--json", action="store_true", help="print records as written")
    tail.set_defaults(handler=_guarded(_tail))

    query = actions.add_parser(
        "query",
        help="print the records that match every filter given",
        description="Exit 0 if any record matched, 1 if none did (like grep).",
    )
    query.add_argument("paths", nargs="+", metavar="PATH", help="trail file, glob or directory")
    query.add_argument("--agent", metavar="ID", help="acting principal, holder or delegate")
    query.add_argument("--capability", metavar="ID", help="the capability or its parent")
    query.add_argument("--event", metavar="NAME", help="an event type, e.g. capability_denied")
    query.add_argument("--trace", metavar="ID", help="a trace id")
    query.add_argument("--json", action="store_true", help="print records as written")
    query.set_defaults(handler=_guarded(_query))


def format_record(record: dict[str, Any]) -> str:
    """One readable line: time, seq, event, the fields that apply, detail, trace."""
    try:
        stamp = datetime.fromtimestamp(float(record["time"]), UTC)
        when = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError):
        when = _show(record.get("time"))
    parts = [when, f"#{record.get('seq')}", _show(record.get("event"))]
    for label, key in _SHOWN:
        if record.get(key) is not None:
            parts.append(f"{label}={_show(record[key])}")
    if record.get("decision") is not None:
        parts.append(_show(record["decision"]))
    if record.get("reason") is not None:
        parts.append(f"reason={_show(record['reason'])}")
    detail = record.get("detail")
    if isinstance(detail, dict):
        parts.extend(f"{_show(key)}={_show(value)}" for key, value in detail.items())
    parts.append(f"trace={_show(record.get('trace_id'))}")
    return " ".join(parts)


def _show(value: Any) -> str:
    """A value as a token: bare when harmless, otherwise JSON-quoted with escapes."""
    if isinstance(value, str):
        bare = value and value.isprintable() and value.isascii()
        if bare and not any(c in value for c in ' "=\\'):
            return value
    elif isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=True, sort_keys=True, separators=(",", ":"))


# -- handlers ----------------------------------------------------------------------


def _no_action(args: argparse.Namespace) -> int:
    raise UsageError("audit: choose an action: verify, tail or query (see capsup audit -h)")


def _guarded(handler: Handler) -> Handler:
    """Turn unreadable files into one-line usage errors and a closed pipe
    (``capsup audit query ... | head``) into a quiet exit."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as error:
            raise UsageError(
                f"audit: cannot read {error.filename or ''}: {error.strerror}"
            ) from None

    return run


def _files(paths: list[str]) -> list[Path]:
    files = trail_files(paths, include_rotated=True)
    if not files:
        raise UsageError(f"audit: no audit files in {' '.join(paths)}")
    for path in files:
        if not path.is_file():
            raise UsageError(f"audit: {path}: no such audit file")
    return files


def _verify(args: argparse.Namespace) -> int:
    text = _head_from_store(Path(args.store)) if args.store else args.head
    try:
        head = parse_head(text) if text else None
    except ValueError as error:
        raise UsageError(f"audit verify: --head: {error}") from None
    try:
        key = read_key_file(args.key_file) if args.key_file else None
    except AuditUnavailable as error:
        raise UsageError(f"audit verify: {error}") from None
    result = verify(_files(args.paths), head, allow_partial_start=args.allow_missing_start, key=key)
    if result.ok:
        span = f"seq {result.first_seq}..{result.head.seq}, " if result.head else ""
        shown = format_head(result.head) if result.head else "empty"
        keyed = f" ({result.keyed} keyed)" if result.keyed else ""
        print(f"ok: {result.records} records intact{keyed}, {span}head {shown}")
        return 0
    where = f" ({result.path}:{result.line})" if result.path else ""
    print(f"broken at seq {result.broken_seq}: {result.reason}: {result.message}{where}")
    return 1


def _head_from_store(path: Path) -> str | None:
    """The ``audit_head`` the supervisor kept, read without changing the file:
    an incident responder must not migrate or checkpoint the evidence."""
    if not path.is_file():
        raise UsageError(f"audit verify: --store: {path}: no such state file")
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (HEAD_META_KEY,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as error:
        raise UsageError(f"audit verify: --store: {path}: {error}") from None
    if row is None:
        print(f"capsup: {path} keeps no audit head; a cut-off tail goes unnoticed", file=sys.stderr)
        return None
    return str(row[0])


def _tail(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_file():
        raise UsageError(f"audit tail: {path}: no such audit file")
    if args.lines < 0:
        raise UsageError("audit tail: -n must be 0 or more")
    wanted: list[bytes] = []
    for source in [path, *rotated_siblings(path)]:  # newest first
        if len(wanted) >= args.lines:
            break
        lines, _ = last_lines(source, args.lines - len(wanted))
        wanted = lines + wanted
    shown = None
    for data in wanted:
        _print_line(data, args.json, sys.stdout)
        record = parse_line(data)
        shown = record["seq"] if record is not None else shown
    if args.follow:
        for data in _Follower(path, shown).lines():
            _print_line(data, args.json, sys.stdout)
    return 0


def _query(args: argparse.Namespace) -> int:
    if args.event is not None and args.event not in {str(e) for e in EventType}:
        known = ", ".join(str(e) for e in EventType)
        raise UsageError(f"audit query: unknown event {args.event!r}; one of: {known}")
    matched = 0
    for raw in iter_lines(_files(args.paths)):
        record = parse_line(raw.data) if raw.complete else None
        if record is None:
            print(f"capsup: skipping {raw.path}:{raw.lineno}: not an audit record", file=sys.stderr)
            continue
        if _matches(record, args):
            matched += 1
            _print_line(raw.data, args.json, sys.stdout, record)
    return 0 if matched else 1


def _matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    detail = record.get("detail") if isinstance(record.get("detail"), dict) else {}
    assert isinstance(detail, dict)
    if args.agent is not None and args.agent not in (
        record.get("principal"),
        detail.get("holder"),
        detail.get("to"),
    ):
        return False
    if args.capability is not None and args.capability not in (
        record.get("capability_id"),
        record.get("parent_id"),
    ):
        return False
    if args.event is not None and record.get("event") != args.event:
        return False
    return args.trace is None or record.get("trace_id") == args.trace


def _print_line(
    data: bytes, as_json: bool, out: IO[str], record: dict[str, Any] | None = None
) -> None:
    if as_json:
        print(data.decode("ascii", "backslashreplace"), file=out, flush=True)
        return
    record = record if record is not None else parse_line(data)
    text = format_record(record) if record is not None else f"(not a record) {_show(data)}"
    print(text, file=out, flush=True)


class _Follower:
    """New lines of a trail as they are written, across rotations.

    Records are tracked by ``seq``, not by file position: whatever was
    written between the printed tail and the start of following, or went
    into rotated files while the writer rotated faster than we poll, is
    fetched from where it now is, so nothing is skipped or repeated.
    """

    def __init__(self, path: Path, shown: int | None) -> None:
        self.path = path
        self.stream = path.open("rb")
        end = self.stream.seek(0, os.SEEK_END)
        newest, start = tail_of(self.stream, end, 1)
        record = parse_line(newest[0]) if newest else None
        on_file = int(record["seq"]) if record is not None else None
        self.backlog: list[bytes] = []
        if shown is not None and on_file is not None and on_file > shown:
            self.backlog, start = tail_of(self.stream, end, on_file - shown)
        self.stream.seek(start)  # a partial last line is read again, whole
        self.last = shown if shown is not None else _last_seq(path)

    def lines(self, interval: float = 0.25) -> Iterator[bytes]:
        pending = b""
        try:
            yield from self._new(self.backlog)
            while True:
                chunk = self.stream.read()
                if chunk:
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    yield from self._new(complete)
                    continue
                try:
                    rotated = self.path.stat().st_ino != os.fstat(self.stream.fileno()).st_ino
                except FileNotFoundError:
                    rotated = False
                if rotated:
                    self.stream.close()
                    self.stream = self.path.open("rb")
                    pending = b""
                    continue
                time.sleep(interval)
        finally:
            self.stream.close()

    def _new(self, lines: list[bytes]) -> Iterator[bytes]:
        for line in lines:
            record = parse_line(line)
            seq = record["seq"] if record is not None else None
            if seq is not None and self.last is not None:
                if seq <= self.last:
                    continue  # already shown
                if seq > self.last + 1:
                    yield from _rotated_between(self.path, self.last, seq)
            if seq is not None:
                self.last = seq
            yield line


def _last_seq(path: Path) -> int | None:
    for source in [path, *rotated_siblings(path)]:
        lines, _ = last_lines(source, 1)
        record = parse_line(lines[0]) if lines else None
        if record is not None:
            return int(record["seq"])
    return None


def _rotated_between(path: Path, after: int, before: int) -> Iterator[bytes]:
    """Lines of the rotated files with ``after < seq < before``, in order.
    A file renamed under us by a further rotation is skipped, not fatal."""
    rotated = rotated_siblings(path)  # newest first
    start = len(rotated)
    for index, source in enumerate(rotated):
        start = index + 1
        record = parse_line(_first_line(source))
        if record is not None and record["seq"] <= after + 1:
            break
    with contextlib.suppress(FileNotFoundError):
        for raw in iter_lines(reversed(rotated[:start])):
            record = parse_line(raw.data) if raw.complete else None
            if record is not None and after < record["seq"] < before:
                yield raw.data


def _first_line(path: Path) -> bytes:
    try:
        with path.open("rb") as stream:
            return stream.readline().rstrip(b"\n")
    except FileNotFoundError:
        return b""
