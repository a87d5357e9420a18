"""verify(): every kind of tampering is found, named, and placed, across rotation too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from capsup.supervisor.audit import AuditHead, AuditLog, trail_files, verify
from capsup.supervisor.audit_record import canonical, record_hash
from capsup.supervisor.events import Event, EventType

N = 24


def write_trail(directory: Path, *, rotate: bool) -> tuple[list[Path], AuditHead]:
    """A trail of N records; with ``rotate``, spread over several files."""
    path = directory / "audit.jsonl"
    with AuditLog(path, max_bytes=1500 if rotate else 1 << 30) as log:
        for n in range(1, N + 1):
            kind = EventType.CAPABILITY_DENIED if n % 3 else EventType.CAPABILITY_GRANTED
            log(
                Event(
                    kind,
                    1_800_000_000.0 + n,
                    f"trace-{n}",
                    principal="agent-1",
                    capability_id=f"cap-{n}",
                    decision="deny" if n % 3 else "allow",
                )
            )
        head = log.head
    files = trail_files([path], include_rotated=True)
    assert (len(files) > 2) == rotate
    return files, head


class Trail:
    """The records of a trail as (file, index) places, for surgical edits."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.lines = {p: p.read_bytes().splitlines(keepends=True) for p in files}

    def place(self, seq: int) -> tuple[Path, int]:
        for path, lines in self.lines.items():
            for index, line in enumerate(lines):
                if json.loads(line)["seq"] == seq:
                    return path, index
        raise LookupError(seq)

    def record(self, seq: int) -> dict[str, Any]:
        path, index = self.place(seq)
        return dict(json.loads(self.lines[path][index]))

    def put(self, seq: int, record: dict[str, Any]) -> None:
        path, index = self.place(seq)
        self.lines[path][index] = canonical(record) + b"\n"

    def save(self) -> None:
        for path, lines in self.lines.items():
            path.write_bytes(b"".join(lines))


@pytest.fixture(params=[False, True], ids=["one-file", "rotated"])
def trail(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Trail, AuditHead]:
    files, head = write_trail(tmp_path, rotate=request.param)
    return Trail(files), head


def test_an_intact_trail_verifies(trail: tuple[Trail, AuditHead]) -> None:
    t, head = trail
    result = verify(t.files, head)
    assert result.ok
    assert (result.records, result.first_seq, result.head) == (N, 1, head)


def test_an_edited_record(trail: tuple[Trail, AuditHead]) -> None:
    t, head = trail
    rec = t.record(10)
    rec["decision"] = "allow"
    t.put(10, rec)
    t.save()
    result = verify(t.files, head)
    assert (result.ok, result.broken_seq, result.reason) == (False, 10, "edited")
    assert result.path == t.place(10)[0]


def test_an_edited_record_with_a_recomputed_hash(trail: tuple[Trail, AuditHead]) -> None:
    t, _ = trail
    rec = t.record(10)
    rec["principal"] = "someone-else"
    rec["hash"] = record_hash(rec)
    t.put(10, rec)
    t.save()
    result = verify(t.files)
    assert (result.broken_seq, result.reason) == (10, "edited")


@pytest.mark.parametrize("seq", [11, 1], ids=["inside", "first"])
def test_a_deleted_record(trail: tuple[Trail, AuditHead], seq: int) -> None:
    t, head = trail
    path, index = t.place(seq)
    del t.lines[path][index]
    t.save()
    result = verify(t.files, head)
    assert (result.ok, result.broken_seq, result.reason) == (False, seq, "deleted")


def test_two_swapped_records(trail: tuple[Trail, AuditHead]) -> None:
    t, head = trail
    (pa, ia), (pb, ib) = t.place(7), t.place(8)
    t.lines[pa][ia], t.lines[pb][ib] = t.lines[pb][ib], t.lines[pa][ia]
    t.save()
    result = verify(t.files, head)
    assert (result.ok, result.broken_seq, result.reason) == (False, 7, "reordered")


def test_a_cut_off_tail_is_found_with_the_stores_head(trail: tuple[Trail, AuditHead]) -> None:
    t, head = trail
    for seq in (N, N - 1):
        path, index = t.place(seq)
        del t.lines[path][index]
    t.save()
    assert verify(t.files).ok  # without the head a clean cut looks like an end
    result = verify(t.files, head)
    assert (result.ok, result.broken_seq, result.reason) == (False, N - 1, "truncated")


def test_a_partial_last_line(trail: tuple[Trail, AuditHead]) -> None:
    t, _ = trail
    path, index = t.place(N)
    t.lines[path][index] = t.lines[path][index][:40]
    t.save()
    result = verify(t.files)
    assert (result.ok, result.broken_seq, result.reason) == (False, N, "truncated")


def test_a_rewritten_chain_is_caught_by_the_head(trail: tuple[Trail, AuditHead]) -> None:
    """Unkeyed hashes can be recomputed by whoever can write the file; the
    head in the state store is what such a rewrite cannot match."""
    t, head = trail
    prev = t.record(5)["prev"]
    for seq in range(5, N + 1):
        rec = t.record(seq)
        if seq == 5:
            rec["decision"] = "allow"
        rec["prev"] = prev
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
        t.put(seq, rec)
    t.save()
    assert verify(t.files).ok
    result = verify(t.files, head)
    assert (result.ok, result.broken_seq, result.reason) == (False, N, "rewritten")


def test_garbage_in_the_middle_is_an_edit(trail: tuple[Trail, AuditHead]) -> None:
    t, _ = trail
    path, index = t.place(9)
    t.lines[path][index] = b"{not json}\n"
    t.save()
    result = verify(t.files)
    assert (result.broken_seq, result.reason) == (9, "edited")
    assert result.line == index + 1


def test_rotated_files_are_ordered_by_name_whatever_order_they_come_in(tmp_path: Path) -> None:
    files, head = write_trail(tmp_path, rotate=True)
    shell_order = sorted(str(p) for p in files)  # audit.jsonl, audit.jsonl.1, ...
    assert verify(shell_order, head).ok
    assert verify([tmp_path / "audit.jsonl*"], head).ok
    assert verify([tmp_path], head).ok


def test_a_missing_rotated_file_is_a_deletion(tmp_path: Path) -> None:
    files, head = write_trail(tmp_path, rotate=True)
    middle = files[1]
    first_missing = json.loads(middle.read_bytes().splitlines()[0])["seq"]
    middle.unlink()
    result = verify([tmp_path], head)
    assert (result.broken_seq, result.reason) == (first_missing, "deleted")


def test_two_rotated_files_swapped_by_name(tmp_path: Path) -> None:
    files, head = write_trail(tmp_path, rotate=True)
    a, b = files[0], files[1]
    first_of_b = json.loads(b.read_bytes().splitlines()[0])["seq"]
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    result = verify([tmp_path], head)
    assert (result.ok, result.broken_seq, result.reason) == (False, 1, "reordered")
    assert "before seq 1" in result.message
    assert result.path == a and first_of_b > 1


def test_an_empty_trail_is_intact_unless_the_store_knows_better(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    assert verify([path]).ok
    result = verify([path], AuditHead(2, "a" * 64))
    assert (result.broken_seq, result.reason) == (1, "truncated")


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify([tmp_path / "nope.jsonl"])
