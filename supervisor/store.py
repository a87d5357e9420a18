"""Durable kernel state in SQLite (WAL mode).

The kernel calls the store inside each operation and returns only after the
transaction committed, so every acknowledged grant, delegation and revocation
survives a supervisor crash. With ``synchronous="normal"`` (the default) a
commit reaches the operating system before the call returns: it survives the
supervisor being killed, not a power cut; ``synchronous="full"`` adds an fsync
per commit for the latter, at a cost the benchmark shows.

Capability rows never change. Ending one (revoked or expired) adds a row to
``ended``, its tombstone, kept until :meth:`Store.prune_tombstones` removes
those older than the retention, so a late use still answers ``revoked`` rather
than ``unknown_capability``. Appending tombstones, sorted by id, is what makes
revoking a 100,000-node tree one short transaction: updating the rows in place
in random id order cost several times more.

The file is its owner's alone (mode 0600), like the audit trail: it holds
every capability id and the audit chain's head. The store creates it so
before SQLite opens it, and SQLite gives the ``-wal`` and ``-shm`` files it
makes beside it the database file's mode. An existing file (or ``-wal``,
``-shm``, ``-journal``) that others may only read is narrowed to its owner:
earlier versions of capsup made it 0644, and what it leaked it leaked
already. One that others may write, or that another user owns, is refused
with :class:`StoreError`: someone else may have rewritten it (an audit head
to match a rewritten trail), and narrowing its mode now would not undo that.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from capsup.agents.capability import Capability
from capsup.agents.confine._libc import describe_errno

__all__ = ["SCHEMA_VERSION", "LoadedState", "Store", "StoreError", "Tombstone"]

SCHEMA_VERSION = 2

EndState = Literal["revoked", "expired"]

_SCHEMA_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE capabilities (
    id               TEXT PRIMARY KEY,
    resource         TEXT NOT NULL,
    operations       TEXT NOT NULL,
    constraints      TEXT NOT NULL,
    holder           TEXT NOT NULL,
    granted_at       REAL NOT NULL,
    expires_at       REAL NOT NULL,
    parent_id        TEXT,
    delegation_depth INTEGER NOT NULL,
    metadata         TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE ended (
    id       TEXT PRIMARY KEY,
    state    TEXT NOT NULL CHECK (state IN ('revoked', 'expired')),
    ended_at REAL NOT NULL
) WITHOUT ROWID;
"""

#: The files besides the database that SQLite may have made, holding its data.
_COMPANIONS = ("-wal", "-shm", "-journal")
#: How the store opens the state file and its companions to check them: to
#: fstat and fchmod what it checked (no second lookup), without blocking on
#: a FIFO put in the file's place.
_CHECK_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK

#: Tombstones are pruned oldest first, by age and by count (the kernel's
#: ``max_tombstones``), once a minute on the supervisor's loop: without an
#: index each prune would scan and sort them all.
_SCHEMA_V2 = """
CREATE INDEX ended_by_time ON ended (ended_at);
"""

#: version -> the script that brings a store of version-1 up to it.
_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


class StoreError(Exception):
    """The state file cannot be opened, is of an unknown version, or is corrupt."""


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What is remembered of a capability that ended."""

    state: EndState
    ended_at: float


@dataclass(frozen=True, slots=True)
class LoadedState:
    live: list[Capability]
    tombstones: dict[str, Tombstone]


class Store:
    """The kernel's SQLite file. ``path`` may be ``":memory:"`` for tests."""

    def __init__(
        self, path: str | Path, *, synchronous: Literal["normal", "full"] = "normal"
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = str(path)
        if self.path not in (":memory:", ""):
            _make_private(self.path)
        try:
            # Autocommit mode: transactions are opened explicitly, one per
            # kernel operation, so that commit points are exactly the acks.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute("PRAGMA foreign_keys=OFF")
            self._migrate()
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot open the state store {self.path}: {error}") from error

    # -- schema ---------------------------------------------------------------

    def _version(self) -> int:
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return 0
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        version = self._version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state store {self.path} has schema version {version}; this capsup "
                f"understands up to {SCHEMA_VERSION}: upgrade capsup"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(target),),
                )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    @property
    def schema_version(self) -> int:
        return self._version()

    # -- reads ----------------------------------------------------------------

    def load(self) -> LoadedState:
        """Every live capability and every tombstone, as the kernel starts."""
        live: list[Capability] = []
        tombstones: dict[str, Tombstone] = {}
        rows = self._db.execute(
            "SELECT c.id, c.resource, c.operations, c.constraints, c.holder, c.granted_at,"
            " c.expires_at, c.parent_id, c.delegation_depth, c.metadata, e.state, e.ended_at"
            " FROM capabilities c LEFT JOIN ended e ON e.id = c.id"
        )
        for row in rows:
            if row[10] is None:
                live.append(_row_to_capability(row))
            else:
                tombstones[row[0]] = Tombstone(row[10], row[11])
        # Parents before children, so the kernel can rebuild its tree in one pass.
        live.sort(key=lambda cap: cap.granted_at)
        return LoadedState(live, tombstones)

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- writes (each one a committed transaction) ---------------------------

    def insert(self, capabilities: Sequence[Capability]) -> None:
        """Persist new capabilities in one transaction (a plan is all or nothing)."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO capabilities (id, resource, operations, constraints, holder,"
                " granted_at, expires_at, parent_id, delegation_depth, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_capability_to_row(cap) for cap in capabilities],
            )

    def end(self, ids: Iterable[str], state: EndState, at: float) -> None:
        """Turn live capabilities into tombstones, in one transaction."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO ended (id, state, ended_at) VALUES (?, ?, ?)",
                ((cap_id, state, at) for cap_id in sorted(ids)),
            )

    def prune_tombstones(self, before: float, *, keep: int | None = None) -> int:
        """Forget tombstones that ended before ``before``, and beyond the
        ``keep`` most recent; returns how many."""
        with self._transaction():
            self._db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS pruned (id TEXT PRIMARY KEY) WITHOUT ROWID"
            )
            self._db.execute(
                "INSERT OR IGNORE INTO pruned SELECT id FROM ended WHERE ended_at < ?", (before,)
            )
            if keep is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO pruned SELECT id FROM ended"
                    " ORDER BY ended_at DESC LIMIT -1 OFFSET ?",
                    (keep,),
                )
            self._db.execute("DELETE FROM capabilities WHERE id IN (SELECT id FROM pruned)")
            cursor = self._db.execute("DELETE FROM ended WHERE id IN (SELECT id FROM pruned)")
            self._db.execute("DELETE FROM pruned")
        return cursor.rowcount

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()


def _make_private(path: str) -> None:
    """Create the state file 0600 if it is missing; narrow an existing one
    and its companions to their owner, or refuse them (see the module's
    docstring). Raises :class:`StoreError`."""
    try:
        fd = os.open(path, _CHECK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise StoreError(
            f"cannot create the state store {path}: {describe_errno(error.errno or 0)}"
        ) from None
    else:
        try:
            os.fchmod(fd, 0o600)  # exactly: the umask may have taken more
        finally:
            os.close(fd)
    for name in (path, *(path + suffix for suffix in _COMPANIONS)):
        # A companion is never followed: SQLite would write the database's
        # pages wherever a planted symlink points.
        flags = _CHECK_FLAGS if name == path else _CHECK_FLAGS | os.O_NOFOLLOW
        try:
            fd = os.open(name, flags)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StoreError(
                f"cannot open the state store's {name}: {describe_errno(error.errno or 0)}"
            ) from None
        try:
            _narrow(fd, name)
        finally:
            os.close(fd)


def _narrow(fd: int, name: str) -> None:
    """Narrow the file ``fd`` to its owner if others may only read it;
    refuse it if it is not a regular file of this user's that only its
    owner may write."""
    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"the state store's {name} is not a regular file")
    if info.st_uid != os.geteuid():
        raise StoreError(
            f"the state store's {name} belongs to uid {info.st_uid}, not to this user"
            f" ({os.geteuid()}): it may have been rewritten; check it, then chown it"
        )
    if mode & 0o022:
        raise StoreError(
            f"the state store's {name} is writable by others (mode {mode:04o}): it may"
            " have been rewritten; check it, then chmod 600 it"
        )
    if mode & 0o077:
        try:
            os.fchmod(fd, mode & 0o700)
        except OSError as error:
            raise StoreError(
                f"cannot narrow the state store's {name} to its owner:"
                f" {describe_errno(error.errno or 0)}"
            ) from None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _capability_to_row(cap: Capability) -> tuple[Any, ...]:
    return (
        cap.id,
        cap.resource,
        _dumps(sorted(cap.operations)),
        _dumps(cap.constraints),
        cap.holder,
        cap.granted_at,
        cap.expires_at,
        cap.parent_id,
        cap.delegation_depth,
        _dumps(cap.metadata),
    )


_loads: Callable[[str], Any] = json.loads


def _row_to_capability(row: Sequence[Any]) -> Capability:
    return Capability(
        id=row[0],
        resource=row[1],
        operations=frozenset(_loads(row[2])),
        constraints=_loads(row[3]),
        holder=row[4],
        granted_at=row[5],
        expires_at=row[6],
        parent_id=row[7],
        delegation_depth=row[8],
        metadata=_loads(row[9]),
    )
