"""SQLite store-and-forward outbox: a prediction is committed before it is published.

A record leaves the outbox only when the host's application-level ack names it (a
broker's PUBACK is not enough: a broker can lose what it acknowledged). When the bound
is reached the configured policy drops the oldest or the newest record and counts it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgefleet.device.errors import StoreError
from edgefleet.shared.sqlite_wal import set_wal

WhenFull = Literal["drop_oldest", "drop_newest"]
BUSY_TIMEOUT_S = 5.0  # SQLite's own default: how long an opener waits for another's lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    boot_id TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 1);
INSERT OR IGNORE INTO meta VALUES ('dropped', 0);
"""


@dataclass(frozen=True)
class Pending:
    """One record waiting for the host's ack."""

    seq: int
    boot_id: str
    payload: bytes


class Outbox:
    """The prediction outbox in ``path`` (WAL, ``synchronous=FULL``).

    Sequence numbers grow across restarts (the counter is stored with the records), so
    ``(device, boot_id, seq)`` is unique and the host can deduplicate on it.
    """

    def __init__(self, path: Path, *, max_records: int, when_full: WhenFull) -> None:
        self.max_records = max_records
        self.when_full = when_full
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            # The agent and `edgefleet-agent status` may open a new outbox at the same moment.
            set_wal(self._db, BUSY_TIMEOUT_S)
            self._db.execute("PRAGMA synchronous=FULL")
            # 256 KiB of page cache (SQLite's default is 2 MiB): records are appended, read
            # about once and deleted, and the agent's whole footprint is meant to stay small.
            self._db.execute("PRAGMA cache_size=-256")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the outbox {path}: {exc}") from exc

    def close(self) -> None:
        """Close the database (everything is already committed)."""
        with self._lock:
            self._db.close()

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def append(self, boot_id: str, build: Callable[[int], bytes]) -> int | None:
        """Commit one record; ``build(seq)`` makes its payload with the seq it gets.

        Returns:
            The record's seq, or None when the outbox was full and drops the newest.
        """
        return self.append_many(boot_id, [build])[0]

    def append_many(
        self, boot_id: str, builds: Sequence[Callable[[int], bytes]]
    ) -> list[int | None]:
        """Commit several records in one transaction (one fsync for the batch)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seqs = self._insert_all(boot_id, builds)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return seqs

    def _insert_all(
        self, boot_id: str, builds: Sequence[Callable[[int], bytes]]
    ) -> list[int | None]:
        first = self._meta("next_seq")
        if self._count() + len(builds) > self.max_records:  # the bound applies: one by one
            return [self._insert(boot_id, build) for build in builds]
        seqs = list(range(first, first + len(builds)))
        self._db.executemany(
            "INSERT INTO records (seq, boot_id, payload) VALUES (?, ?, ?)",
            [(seq, boot_id, build(seq)) for seq, build in zip(seqs, builds, strict=True)],
        )
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (first + len(builds),))
        return list[int | None](seqs)

    def _insert(self, boot_id: str, build: Callable[[int], bytes]) -> int | None:
        seq = self._meta("next_seq")
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'next_seq'")
        if self._count() >= self.max_records:
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped'")
            if self.when_full == "drop_newest":
                return None
            self._db.execute("DELETE FROM records WHERE seq = (SELECT MIN(seq) FROM records)")
        self._db.execute(
            "INSERT INTO records (seq, boot_id, payload) VALUES (?, ?, ?)",
            (seq, boot_id, build(seq)),
        )
        return seq

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def pending(self, *, after_seq: int = 0, limit: int = 100) -> list[Pending]:
        """Records not yet acknowledged, oldest first, with ``seq > after_seq``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, boot_id, payload FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Pending(int(s), str(b), bytes(p)) for s, b, p in rows]

    def ack(self, boot_id: str, seqs: Iterable[int]) -> int:
        """Delete the acknowledged records; return how many were still here."""
        return self.ack_many([(boot_id, int(s)) for s in seqs])

    def ack_many(self, keys: Iterable[tuple[str, int]]) -> int:
        """Delete records named by ``(boot_id, seq)`` in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany(
                "DELETE FROM records WHERE boot_id = ? AND seq = ?", list(keys)
            )
            self._db.execute("COMMIT")
            return int(cur.rowcount)

    def depth(self) -> int:
        """How many records wait for an ack."""
        with self._lock:
            return self._count()

    def dropped(self) -> int:
        """How many records the full-outbox policy has dropped, ever."""
        with self._lock:
            return self._meta("dropped")
