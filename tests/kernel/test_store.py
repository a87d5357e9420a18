"""The SQLite store: schema, round trips, versions, tombstones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from capsup.agents.capability import Capability
from capsup.supervisor.store import SCHEMA_VERSION, Store, StoreError


def cap(i: int, parent: str | None = None) -> Capability:
    return Capability(
        id=f"cap_{i}",
        resource="file:///srv/data",
        operations=frozenset({"read", "list"}),
        constraints={"deny": ["*.key"], "max_bytes": 10},
        holder="agent-1",
        granted_at=float(i),
        expires_at=1e10,
        parent_id=parent,
        delegation_depth=2,
        metadata={"why": "test", "n": [1, 2]},
    )


def test_round_trip_and_tombstones(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.insert([cap(1), cap(2, "cap_1"), cap(3)])
    store.end(["cap_3"], "revoked", 50.0)
    store.close()
    loaded = Store(tmp_path / "s.db").load()
    assert loaded.live == [cap(1), cap(2, "cap_1")]
    assert loaded.tombstones["cap_3"].state == "revoked"
    assert loaded.tombstones["cap_3"].ended_at == 50.0


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    assert store.schema_version == SCHEMA_VERSION
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="upgrade capsup"):
        Store(tmp_path / "s.db")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path / "s.db")


def test_a_failed_batch_changes_nothing(tmp_path: Path) -> None:
    store = Store(":memory:")
    store.insert([cap(1)])
    with pytest.raises(sqlite3.IntegrityError):
        store.insert([cap(2), cap(1)])  # duplicate id in the batch
    assert [c.id for c in store.load().live] == ["cap_1"]


def test_prune(tmp_path: Path) -> None:
    store = Store(":memory:")
    store.insert([cap(1), cap(2)])
    store.end(["cap_1"], "expired", 10.0)
    store.end(["cap_2"], "revoked", 100.0)
    assert store.prune_tombstones(50.0) == 1
    assert set(store.load().tombstones) == {"cap_2"}


def test_prune_keeps_only_the_most_recent(tmp_path: Path) -> None:
    store = Store(":memory:")
    store.insert([cap(i) for i in range(1, 6)])
    for i in range(1, 6):
        store.end([f"cap_{i}"], "revoked", float(i))
    assert store.prune_tombstones(0.0, keep=2) == 3
    assert set(store.load().tombstones) == {"cap_4", "cap_5"}
    assert [c.id for c in store.load().live] == []


def test_meta(tmp_path: Path) -> None:
    store = Store(":memory:")
    assert store.get_meta("audit_head") is None
    store.set_meta("audit_head", "7:abc")
    assert store.get_meta("audit_head") == "7:abc"
