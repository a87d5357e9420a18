"""A keyed audit chain (issue 15): rewriting the trail needs the key, so a
rewrite is caught even without the head the state store kept."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
from capsup.agents.errors import AuditUnavailable
from capsup.supervisor.audit import AuditLog, read_key_file, trail_files, verify
from capsup.supervisor.audit_record import KEYED, canonical, record_hash
from capsup.supervisor.events import Event, EventType
from test_audit_verify import Trail

KEY = b"k" * 32
N = 12


def _log(path: Path, key: bytes | None, count: int = N, start: int = 0) -> None:
    with AuditLog(path, key=key) as log:
        for n in range(start + 1, start + count + 1):
            log(Event(EventType.CAPABILITY_DENIED, 1_800_000_000.0 + n, f"t{n}", decision="deny"))


def _rewrite_without_the_key(path: Path, key: bytes | None = None) -> Trail:
    """What an attacker who can write the trail does: change record 3 and
    seal every record again, with plain hashes (or under a key of its own)."""
    t = Trail(trail_files([path], include_rotated=True))
    prev = t.record(3)["prev"]
    for seq in range(3, N + 1):
        rec = t.record(seq)
        if seq == 3:
            rec["decision"] = "allow"
        rec["prev"] = prev
        body = canonical({k: v for k, v in rec.items() if k != "hash"})
        rec["hash"] = (
            KEYED + hmac.new(key, body, hashlib.sha256).hexdigest()
            if key
            else hashlib.sha256(body).hexdigest()
        )
        prev = rec["hash"]
        t.put(seq, rec)
    t.save()
    return t


def test_a_keyed_trail_verifies_with_its_key_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, KEY)
    first = Trail([path]).record(1)
    assert first["hash"].startswith(KEYED) and record_hash(first, KEY) == first["hash"]
    result = verify([path], key=KEY)
    assert result.ok and result.keyed == N and "12 keyed" in result.message
    without = verify([path])
    assert (without.ok, without.reason, without.broken_seq) == (False, "key_required", 1)
    other = verify([path], key=b"x" * 32)
    assert (other.ok, other.reason, other.broken_seq) == (False, "edited", 1)


def test_a_rewrite_without_the_key_is_caught_without_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, KEY)
    _rewrite_without_the_key(path)
    result = verify([path], key=KEY)  # no stored head
    assert (result.ok, result.reason) == (False, "unkeyed")


def test_the_same_rewrite_passes_an_unkeyed_trail(tmp_path: Path) -> None:
    """The control: without a key, a rewritten chain is internally sound,
    and only a head kept elsewhere can tell."""
    path = tmp_path / "audit.jsonl"
    _log(path, None)
    _rewrite_without_the_key(path)
    assert verify([path]).ok


def test_a_rewrite_under_another_key_is_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, KEY)
    _rewrite_without_the_key(path, key=b"attacker" * 4)
    result = verify([path], key=KEY)
    assert (result.ok, result.reason, result.broken_seq) == (False, "edited", 3)


def test_a_key_configured_later_pins_the_unkeyed_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, None, count=4)
    _log(path, KEY, count=N - 4, start=4)
    result = verify([path], key=KEY)
    assert result.ok and result.keyed == N - 4
    # The unkeyed start cannot be rewritten either: the first keyed record's
    # prev (under the key) names the last unkeyed one's hash.
    t = Trail([path])
    rec = t.record(2)
    rec["decision"] = "allow"
    rec["hash"] = ""
    rec["hash"] = record_hash(rec)
    t.put(2, rec)
    later = t.record(3)
    later["prev"] = rec["hash"]
    later["hash"] = ""
    later["hash"] = record_hash(later)
    t.put(3, later)
    t.save()
    broken = verify([path], key=KEY)
    assert (broken.ok, broken.reason, broken.broken_seq) == (False, "edited", 3)


def test_unkeyed_records_after_keyed_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, KEY, count=4)
    # (the supervisor refuses to resume a keyed trail without its key: see
    # below; an attacker appends by hand)
    last = Trail([path]).record(4)
    extra = dict(last, seq=5, prev=last["hash"], hash="")
    extra["hash"] = record_hash(extra)
    with path.open("ab") as trail:
        trail.write(canonical(extra) + b"\n")
    result = verify([path], key=KEY)
    assert (result.ok, result.reason, result.broken_seq) == (False, "unkeyed", 5)


def test_a_keyed_trail_is_not_resumed_without_its_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, KEY, count=2)
    with pytest.raises(AuditUnavailable, match="sealed with a key"):
        AuditLog(path)
    with pytest.raises(Exception, match="does not match its hash"):
        AuditLog(path, key=b"y" * 32)


def _key_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "audit.key"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_the_key_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    hexkey = b"ab" * 32
    assert read_key_file(_key_file(tmp_path, hexkey + b"\n")) == hexkey
    with pytest.raises(AuditUnavailable, match="chmod 600"):
        read_key_file(_key_file(tmp_path, hexkey, 0o644))
    with pytest.raises(AuditUnavailable, match="holds 16 bytes"):
        read_key_file(_key_file(tmp_path, b"s" * 16))
    link = tmp_path / "link.key"
    link.symlink_to(_key_file(tmp_path, hexkey))
    with pytest.raises(AuditUnavailable, match="is a symlink; name the file it points to"):
        read_key_file(link)


def _capsup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capsup.supervisor", *args], capture_output=True, text=True
    )


def test_capsup_audit_verify_with_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, KEY)
    key_file = _key_file(tmp_path, KEY)
    ok = _capsup("audit", "verify", "--key-file", str(key_file), str(path))
    assert ok.returncode == 0 and "12 records intact (12 keyed)" in ok.stdout, ok.stderr
    needs = _capsup("audit", "verify", str(path))
    assert needs.returncode == 1 and "key_required" in needs.stdout
    os.chmod(key_file, 0o640)
    bad = _capsup("audit", "verify", "--key-file", str(key_file), str(path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "chmod 600" in bad.stderr
