"""AuditLog: the chain it writes, durability, buffering, sampling, rotation, resume."""

from __future__ import annotations

import errno
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from capsup.agents.errors import AuditUnavailable
from capsup.supervisor.audit import (
    GENESIS,
    AuditHead,
    AuditLog,
    AuditTampered,
    format_head,
    parse_head,
    trail_files,
    verify,
)
from capsup.supervisor.audit_record import record_hash
from capsup.supervisor.events import Event, EventType

E = EventType


def ev(kind: EventType = E.CAPABILITY_GRANTED, n: int = 0, **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "principal": "agent-1",
        "pid": 4242,
        "capability_id": f"cap-{n}",
        "resource": "file:///data",
        "operation": "read",
    }
    fields.update(kw)
    return Event(kind, 1_800_000_000.0 + n, f"trace-{n}", **fields)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_every_record_has_its_fields_and_links_to_the_previous(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log(ev(E.CAPABILITY_REQUESTED, 1, capability_id=None))
        log(ev(E.CAPABILITY_GRANTED, 1, decision="allow", detail={"holder": "agent-1"}))
        log(ev(E.CAPABILITY_DENIED, 2, decision="deny", reason="denied_by_policy"))
    recs = records(path)
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert recs[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(recs):
        assert after["prev"] == before["hash"]
    for rec in recs:
        assert rec["hash"] == record_hash(rec)
        for key in ("time", "event", "trace_id", "principal", "pid", "capability_id"):
            assert key in rec
        for key in ("parent_id", "resource", "operation", "decision", "reason", "detail"):
            assert key in rec
    assert recs[1]["detail"] == {"holder": "agent-1"}
    assert recs[2]["reason"] == "denied_by_policy"
    assert recs[0]["capability_id"] is None
    assert verify([path]).ok


def test_lines_are_canonical_json_with_the_hash_last(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log(
            ev(
                resource="file:///d\u00e9j\u00e0",
                detail={"z": 1, "a": ("x", "y"), "n": float("inf")},
            )
        )
    line = path.read_bytes().splitlines()[0]
    rec = json.loads(line)
    body = {k: v for k, v in rec.items() if k != "hash"}
    canonical_body = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert line == canonical_body[:-1] + b',"hash":"' + rec["hash"].encode() + b'"}'
    assert line.isascii()
    assert rec["detail"] == {"a": ["x", "y"], "n": "inf", "z": 1}


def test_denials_and_violations_are_on_file_before_the_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, flush_every=1000, flush_interval=3600)
    for kind in (
        E.CAPABILITY_DENIED,
        E.SECURITY_VIOLATION,
        E.CAPABILITY_GRANTED,
        E.CAPABILITY_DELEGATED,
        E.CAPABILITY_REVOKED,
        E.CAPABILITY_VALIDATION_FAILED,
        E.CONSTRAINT_VIOLATION,
    ):
        log(ev(kind))
        assert records(path)[-1]["event"] == kind.value  # read back through a new handle
    log.close()


def test_validations_are_buffered_and_a_denial_takes_them_along_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock()
    log = AuditLog(path, flush_every=3, flush_interval=10, clock=clock)
    log(ev(E.CAPABILITY_VALIDATED, 1))
    log(ev(E.CAPABILITY_VALIDATED, 2))
    assert path.read_bytes() == b""
    assert log.pending == 2
    assert log.head == AuditHead(0, GENESIS)
    log(ev(E.CAPABILITY_DENIED, 3))
    assert [r["seq"] for r in records(path)] == [1, 2, 3]
    assert log.pending == 0
    log(ev(E.CAPABILITY_VALIDATED, 4))
    log(ev(E.CAPABILITY_VALIDATED, 5))
    log(ev(E.CAPABILITY_VALIDATED, 6))  # the third fills the batch
    assert len(records(path)) == 6
    log(ev(E.CAPABILITY_VALIDATED, 7))
    log.flush_if_due()
    assert len(records(path)) == 6
    clock.now = 11
    log.flush_if_due()
    assert len(records(path)) == 7
    log(ev(E.CAPABILITY_VALIDATED, 8))
    log.close()  # close writes what is pending
    assert len(records(path)) == 8
    assert verify([path]).ok


def test_sampling_applies_to_successful_validations_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    draws = iter([0.9, 0.1, 0.9, 0.9] * 100)
    log = AuditLog(path, sample_rate=0.25, rng=lambda: next(draws), flush_every=1)
    for n in range(4):
        log(ev(E.CAPABILITY_VALIDATED, n))
    failures = [
        E.CAPABILITY_VALIDATION_FAILED,
        E.CONSTRAINT_VIOLATION,
        E.SECURITY_VIOLATION,
        E.CAPABILITY_DENIED,
    ]
    for n, kind in enumerate(failures * 5):
        log(ev(kind, n))
    log.close()
    recs = records(path)
    validated = [r for r in recs if r["event"] == "capability_validated"]
    assert len(validated) == 1
    assert validated[0]["sample_rate"] == 0.25
    assert len(recs) - 1 == 20  # every failure and violation is there
    assert log.sampled_out == 3
    assert verify([path]).ok


def test_on_head_and_on_written_report_each_write(tmp_path: Path) -> None:
    heads: list[tuple[int, str]] = []
    written: list[int] = []
    log = AuditLog(
        tmp_path / "audit.jsonl",
        on_head=lambda seq, h: heads.append((seq, h)),
        on_written=written.append,
        flush_every=2,
    )
    log(ev(E.CAPABILITY_GRANTED))
    log(ev(E.CAPABILITY_VALIDATED))
    log(ev(E.CAPABILITY_VALIDATED))
    assert [seq for seq, _ in heads] == [1, 3]
    assert heads[-1] == tuple(log.head)
    assert written == [1, 2]
    assert log.records_written == 3
    log.close()


def test_a_failing_head_store_fails_closed(tmp_path: Path) -> None:
    def broken(seq: int, digest: str) -> None:
        raise RuntimeError("database is locked")

    log = AuditLog(tmp_path / "audit.jsonl", on_head=broken)
    with pytest.raises(AuditUnavailable, match="database is locked"):
        log(ev())
    log.close()


def test_reopen_resumes_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log(ev(n=1))
        log(ev(n=2))
        head = log.head
    with AuditLog(path, known_head=head) as log:
        assert log.head == head
        log(ev(n=3))
    recs = records(path)
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert recs[2]["prev"] == head.hash
    assert verify([path], head).ok is True


def write_trail(path: Path, count: int) -> AuditHead:
    """A trail of ``count`` records; its head."""
    with AuditLog(path) as log:
        for n in range(count):
            log(ev(n=n))
        return log.head


def test_reopen_detects_a_cut_off_tail_against_the_known_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = write_trail(path, 5)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]))
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, known_head=head)
    assert caught.value.seq == 4
    assert caught.value.reason == "truncated"
    assert isinstance(caught.value, AuditUnavailable)  # callers that fail closed catch it


def test_reopen_detects_a_missing_trail_and_a_rewritten_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with pytest.raises(AuditTampered, match="seq 0"):
        AuditLog(path, known_head=AuditHead(3, "a" * 64))
    with AuditLog(path) as log:
        log(ev(n=1))
        log(ev(n=2))
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, known_head=AuditHead(2, "b" * 64))
    assert caught.value.reason == "rewritten"
    with pytest.raises(AuditTampered) as caught:  # behind the file: found by search
        AuditLog(path, known_head=AuditHead(1, "b" * 64))
    assert caught.value.seq == 1


def trail_stored_at(path: Path, count: int, stored: int) -> tuple[AuditHead, list[bytes]]:
    """A trail of ``count`` records, the head the store kept when record
    ``stored`` was the newest, and the trail's lines."""
    with AuditLog(path) as log:
        for n in range(count):
            log(ev(n=n))
            if n + 1 == stored:
                head = log.head
    return head, path.read_bytes().splitlines(keepends=True)


def test_reopen_detects_that_the_heads_record_was_taken_out(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head, lines = trail_stored_at(path, 5, stored=3)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))  # record 3 is gone, 5 still ends it
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, known_head=head)
    assert (caught.value.seq, caught.value.reason) == (3, "deleted")


def forged_records(first_seq: int, count: int, prev: str) -> bytes:
    """Well-formed, correctly hashed records starting at ``first_seq``."""
    lines = []
    for seq in range(first_seq, first_seq + count):
        body = {"event": "capability_granted", "seq": seq, "prev": prev, "time": 1.0}
        prev = record_hash(body)
        lines.append(json.dumps({**body, "hash": prev}, sort_keys=True) + "\n")
    return "".join(lines).encode()


def test_reopen_detects_a_trail_replaced_by_records_after_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = write_trail(path, 10)
    path.write_bytes(forged_records(11, 2, "f" * 64))  # records 1-10 gone
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, known_head=head)  # keep=None: nothing may rotate away
    assert (caught.value.seq, caught.value.reason) == (10, "deleted")
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, keep=3, known_head=head)  # 11 must link to the head
    assert (caught.value.seq, caught.value.reason) == (11, "rewritten")


def test_reopen_detects_the_heads_record_edited_under_its_old_hash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head, lines = trail_stored_at(path, 5, stored=3)
    record = json.loads(lines[2])
    record["principal"] = "somebody-else"  # the hash field left as it was
    lines[2] = (json.dumps(record, sort_keys=True) + "\n").encode()
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, keep=3, known_head=head)
    assert (caught.value.seq, caught.value.reason) == (3, "edited")


def test_reopen_does_not_skip_a_line_put_in_place_of_the_heads_record(tmp_path: Path) -> None:
    """With ``keep``, a missing head passes if every record left is newer and
    the next links to it: garbage in the head's place must not pass for that."""
    path = tmp_path / "audit.jsonl"
    head, lines = trail_stored_at(path, 5, stored=1)
    path.write_bytes(b"".join([b"not a record\n", *lines[1:]]))
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, keep=3, known_head=head)
    assert caught.value.reason == "edited"


def test_reopen_checks_the_hash_of_the_record_that_must_link_to_the_head(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    head = write_trail(path, 10)
    eleven, twelve = forged_records(11, 2, head.hash).splitlines(keepends=True)
    edited = json.loads(eleven)
    edited["event"] = "capability_revoked"  # after it was hashed; 12 still links to it
    path.write_bytes((json.dumps(edited, sort_keys=True) + "\n").encode() + twelve)
    with pytest.raises(AuditTampered) as caught:
        AuditLog(path, keep=3, known_head=head)
    assert (caught.value.seq, caught.value.reason) == (11, "edited")


def test_a_head_rotated_out_with_its_whole_file_is_no_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=1500, keep=1) as log:
        log(ev(n=0))
        early = log.head
        for n in range(30):
            log(ev(n=n))
    with AuditLog(path, keep=1, known_head=early) as log:
        assert log.head.seq == 31
    with pytest.raises(AuditTampered):  # without keep, nothing may have rotated away
        AuditLog(path, known_head=early)


class BadSector:
    """A file that yields its first ``good`` lines, then fails the way a
    failing disk does (EIO)."""

    def __init__(self, stream: IO[bytes], good: int, path: Path) -> None:
        self._stream = stream
        self._good = good
        self._path = path

    def __enter__(self) -> BadSector:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()

    def __iter__(self) -> Iterator[bytes]:
        yield from itertools.islice(self._stream, self._good)
        raise OSError(errno.EIO, "Input/output error", str(self._path))


def make_unreadable(monkeypatch: pytest.MonkeyPatch, target: Path, good: int | None) -> None:
    """Reading ``target`` fails: at open (EACCES) when ``good`` is None, else
    after ``good`` lines. Patched rather than chmod-ed because the tests may
    run as root, whom file modes do not stop."""
    real_open = Path.open

    def opener(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self != target:
            return real_open(self, *args, **kwargs)
        if good is None:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return BadSector(real_open(self, *args, **kwargs), good, self)

    monkeypatch.setattr(Path, "open", opener)


def make_unlistable(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Listing ``directory`` fails with EACCES (a directory without read
    permission, which root would still list)."""
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self == directory:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)


def seqs_in(path: Path) -> list[int]:
    return [r["seq"] for r in records(path)]


def rotated_trail(path: Path, head_seq: int) -> tuple[AuditHead, Path]:
    """30 records over several rotated files, all kept; the head as it was
    at ``head_seq`` and the file that holds that record."""
    with AuditLog(path, max_bytes=1500) as log:
        for n in range(30):
            log(ev(n=n))
            if log.head.seq == head_seq:
                head = log.head
    holder = next(p for p in trail_files([path], include_rotated=True) if head_seq in seqs_in(p))
    return head, holder


@pytest.mark.parametrize("good", [None, 1], ids=["at-open", "partway"])
def test_an_unreadable_trail_file_at_start_up_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, good: int | None
) -> None:
    # The head is the second record of an older file; every newer file reads
    # fine. Had the search stopped quietly at the unreadable file, "at-open"
    # would have seen only records past head + 1 and, with keep, taken the
    # head for rotated away; "partway" would have called it deleted.
    path = tmp_path / "audit.jsonl"
    head, holder = rotated_trail(path, 10)
    assert seqs_in(holder)[1] == head.seq and holder != path
    make_unreadable(monkeypatch, holder, good)
    with pytest.raises(AuditUnavailable) as caught:
        AuditLog(path, keep=10, known_head=head)
    assert not isinstance(caught.value, AuditTampered)  # unread is not tampered
    message = str(caught.value)
    assert f"cannot read the audit trail {holder}" in message
    assert ("Permission denied" if good is None else "Input/output error") in message
    AuditLog(path).close()  # the refusal let go of the trail's lock


def test_a_trail_directory_that_cannot_be_listed_at_start_up_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seeing no rotated files, the check would find only records past
    # head + 1 in the live file and, with keep, take the head for rotated away.
    path = tmp_path / "audit.jsonl"
    head, _ = rotated_trail(path, 10)
    make_unlistable(monkeypatch, tmp_path)
    with pytest.raises(AuditUnavailable) as caught:
        AuditLog(path, keep=10, known_head=head)
    assert f"cannot list the audit trail's rotated files in {tmp_path}" in str(caught.value)
    assert "Permission denied" in str(caught.value)


def test_rotation_with_an_unlistable_directory_keeps_the_older_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taking "cannot list" for "none there" would rename the live file over
    # PATH.1 and lose the records in it.
    path = tmp_path / "audit.jsonl"
    errors: list[OSError] = []
    rotated = path.with_name("audit.jsonl.1")
    with AuditLog(path, max_bytes=1500, on_error=errors.append) as log:
        for _ in range(10):  # about four records fill a file
            log(ev())
        before = rotated.read_bytes()
        make_unlistable(monkeypatch, tmp_path)
        for _ in range(10):
            log(ev())
        assert rotated.read_bytes() == before
        assert errors and errors[0].errno == errno.EACCES
        monkeypatch.undo()
        log(ev())  # rotation is tried again, and now succeeds
    assert path.with_name("audit.jsonl.2").read_bytes() == before
    assert verify([path]).ok


def test_reopen_refuses_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log(ev(n=1))
        log(ev(n=2))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(AuditTampered, match="partial"):
        AuditLog(path)


def test_rotation_continues_the_chain_and_keeps_the_newest_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=1500) as log:
        for n in range(30):
            log(ev(n=n))
        head = log.head
    rotated = sorted(p.name for p in tmp_path.iterdir())
    assert "audit.jsonl.1" in rotated and "audit.jsonl.3" in rotated
    newest_old = records(tmp_path / "audit.jsonl.1")
    live = records(path)
    if live:
        assert live[0]["prev"] == newest_old[-1]["hash"]
    result = verify([str(tmp_path / "audit.jsonl*")], head)
    assert result.ok, result
    assert result.records == 30
    with AuditLog(path, known_head=head) as log:  # resumes through the rotated files
        log(ev(n=99))
    assert verify([tmp_path]).records == 31

    kept = tmp_path / "kept"
    with AuditLog(kept / "audit.jsonl", max_bytes=1500, keep=2) as log:
        for n in range(30):
            log(ev(n=n))
    names = sorted(p.name for p in kept.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.lock"]
    assert not verify([kept]).ok  # the start is gone ...
    assert verify([kept], allow_partial_start=True).ok  # ... which retention may allow


def test_an_unusable_path_raises_audit_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AuditUnavailable, match="cannot open"):
        AuditLog(blocker / "audit.jsonl")


def test_a_failing_write_raises_audit_unavailable_and_leaves_no_gap(tmp_path: Path) -> None:
    errors: list[OSError] = []
    full = tmp_path / "audit.jsonl"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC
    log = AuditLog(full, on_error=errors.append)
    with pytest.raises(AuditUnavailable, match="cannot write"):
        log(ev(E.CAPABILITY_DENIED))
    assert log.head == AuditHead(0, GENESIS)
    assert errors and errors[0].errno == errno.ENOSPC
    log.close()


def test_a_partial_write_is_cut_back_and_the_chain_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, flush_every=100)
    log(ev(n=1))
    before = path.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    log(ev(E.CAPABILITY_VALIDATED, 2))  # buffered: must survive the failure
    monkeypatch.setattr(os, "write", flaky)
    with pytest.raises(AuditUnavailable):
        log(ev(E.CAPABILITY_DENIED, 3))
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == before
    assert log.pending == 1
    log(ev(E.CAPABILITY_DENIED, 4))
    log.close()
    recs = records(path)
    assert [(r["seq"], r["event"]) for r in recs] == [
        (1, "capability_granted"),
        (2, "capability_validated"),
        (3, "capability_denied"),
    ]
    assert recs[2]["trace_id"] == "trace-4"
    assert verify([path]).ok


def test_a_closed_log_refuses_events(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.close()
    log.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        log(ev())


def test_head_text_round_trips_and_bad_heads_are_refused() -> None:
    head = AuditHead(12, "ab" * 32)
    assert parse_head(format_head(head)) == head
    for bad in ("12", "x:" + "a" * 64, "3:abc", "3:" + "A" * 64):
        with pytest.raises(ValueError, match="SEQ:HASH"):
            parse_head(bad)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AuditLog(tmp_path / "a.jsonl", sample_rate=0)
    with pytest.raises(ValueError, match="keep"):
        AuditLog(tmp_path / "a.jsonl", keep=0)


def test_one_writer_per_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path)
    with pytest.raises(AuditUnavailable, match="in use by another process"):
        AuditLog(path)
    first(ev(n=1))
    first.close()
    with AuditLog(path) as second:  # released on close
        second(ev(n=2))
    assert verify([path]).records == 2
    assert [p.name for p in trail_files([tmp_path])] == ["audit.jsonl"]  # the lock is no trail


def test_a_refused_open_lets_go_of_the_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with pytest.raises(AuditTampered):
        AuditLog(path, known_head=AuditHead(1, "a" * 64))
    AuditLog(path).close()


def test_a_validation_whose_batch_cannot_be_written_is_not_recorded_as_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, flush_every=2)
    log(ev(E.CAPABILITY_VALIDATED, 1))  # allowed; its reply went out
    real_write = os.write

    def failing(fd: int, data: Any) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(AuditUnavailable):
        log(ev(E.CAPABILITY_VALIDATED, 2))  # fills the batch; the write fails
    monkeypatch.setattr(os, "write", real_write)
    assert log.pending == 1
    log(ev(E.CAPABILITY_DENIED, 3))
    log.close()
    assert [(r["seq"], r["trace_id"]) for r in records(path)] == [(1, "trace-1"), (2, "trace-3")]
    assert verify([path]).ok


class Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no")


def test_a_value_that_cannot_be_shown_is_recorded_and_the_batch_with_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, flush_every=100) as log:
        log(ev(E.CAPABILITY_VALIDATED, n=1))
        log(ev(E.CAPABILITY_VALIDATED, n=2, detail={"odd": Unshowable()}))
        log(ev(E.CAPABILITY_VALIDATED, n=3))
        log(ev(E.CAPABILITY_DENIED, n=4))  # takes the batch along
    recs = records(path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4]
    assert recs[1]["detail"]["odd"] == "<Unshowable that cannot be shown>"
    assert verify([path]).ok
