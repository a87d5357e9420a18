"""The state file and SQLite's companions to it are their owner's alone:
created 0600 whatever the umask, an existing one that others may read is
narrowed, one that others may write (or another user owns) is refused."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from capsup.supervisor.store import Store, StoreError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask a careless service manager leaves: others may read all."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_state_file_and_its_wal_and_shm_are_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    try:
        store.set_meta("k", "v")
        companions = [Path(f"{path}{s}") for s in ("-wal", "-shm")]
        assert all(c.exists() for c in companions), "SQLite made no WAL: nothing was tested"
        assert [_mode(p) for p in (path, *companions)] == [0o600, 0o600, 0o600]
    finally:
        store.close()
    # Without the store's care, SQLite makes them 0644 under this umask.
    plain = tmp_path / "plain.db"
    db = sqlite3.connect(plain)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    assert _mode(plain) == 0o644 and _mode(Path(f"{plain}-wal")) == 0o644
    db.close()


def test_an_existing_readable_file_and_stale_wal_are_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    wal = Path(f"{path}-wal")
    wal.write_bytes(b"")  # a stale companion an earlier run left, as SQLite made it
    path.chmod(0o644)
    wal.chmod(0o640)
    store = Store(path)
    try:
        store.set_meta("k", "v")
        assert _mode(path) == 0o600 and _mode(wal) == 0o600
        assert _mode(Path(f"{path}-shm")) == 0o600
    finally:
        store.close()


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_file_others_may_write_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    target = Path(f"{path}{suffix}")
    target.touch()
    target.chmod(0o662)
    with pytest.raises(StoreError, match=f"{target.name} is writable by others"):
        Store(path)
    assert _mode(target) == 0o662, "a refused file must be left as it was found"


def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    path = tmp_path / "state.db"
    Store(path).close()
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(StoreError, match="belongs to uid 65534"):
        Store(path)


def test_a_planted_symlink_companion_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    Path(f"{path}-wal").symlink_to(elsewhere)
    with pytest.raises(StoreError, match="ELOOP"):
        Store(path)
    assert elsewhere.read_bytes() == b""


def test_a_state_path_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "state.db"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(StoreError, match="not a regular file"):
        Store(fifo)  # and it does not block on the FIFO
