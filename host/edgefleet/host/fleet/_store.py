"""The host's prediction store: a small interface and its SQLite implementation (the default).

Records are unique on (device_id, boot_id, seq), so storing a record twice (a device resent
it because an ack was lost, or two workers raced) changes nothing. ``add`` commits before it
returns: callers publish the application-level ack only after that.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Protocol

from edgefleet.host.errors import FleetError
from edgefleet.shared.messages import PredictionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    model_name TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    source TEXT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (device_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS predictions_device_ts ON predictions(device_id, ts);
"""
_COLUMNS = (
    "device_id",
    "boot_id",
    "seq",
    "ts",
    "label",
    "score",
    "model_name",
    "model_version",
    "latency_ms",
    "source",
)


class PredictionStore(Protocol):
    """What ingestion and export need; a server database can implement it too."""

    def add(self, records: Iterable[PredictionRecord]) -> int:
        """Store records durably (ignoring ones already stored); return how many were new."""

    def count(self) -> int:
        """How many records are stored."""

    def iter_records(
        self, *, device_id: str | None = None, after_id: int = 0
    ) -> Iterator[tuple[int, PredictionRecord]]:
        """Yield (row id, record) in arrival order."""

    def close(self) -> None:
        """Release the store."""


class SqliteStore:
    """PredictionStore in one SQLite file (WAL; several processes may share it).

    Args:
        path: The database file; created with its directory if missing.
        busy_timeout_s: How long a writer waits for another process's lock.

    Raises:
        FleetError: The file cannot be opened or is not an edgefleet store.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One thread at a time uses it; the check would refuse a hand-over between threads.
            self._db = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; FULL also survives power loss,
            # which is the promise made to devices when they delete acked records.
            self._db.execute("PRAGMA synchronous=FULL")
            with self._db:
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise FleetError(f"cannot open prediction store {path}: {exc}") from exc

    def add(self, records: Iterable[PredictionRecord]) -> int:
        """Insert records, ignoring duplicates, and commit.

        Raises:
            FleetError: The database refused the write (disk full, locked too long).
        """
        rows = [
            (
                r.device_id,
                r.boot_id,
                r.seq,
                r.ts,
                r.label,
                r.score,
                r.model_name,
                r.model_version,
                r.latency_ms,
                r.source,
                r.model_dump_json(),
            )
            for r in records
        ]
        try:
            with self._db:
                before = self._db.total_changes
                self._db.executemany(
                    f"INSERT OR IGNORE INTO predictions ({', '.join(_COLUMNS)}, record)"  # noqa: S608 - constants
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                return self._db.total_changes - before
        except sqlite3.Error as exc:
            raise FleetError(
                f"storing {len(rows)} predictions in {self.path} failed: {exc}"
            ) from exc

    def count(self) -> int:
        """How many records are stored."""
        return int(self._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def iter_records(
        self, *, device_id: str | None = None, after_id: int = 0
    ) -> Iterator[tuple[int, PredictionRecord]]:
        """Yield (row id, record) with row id above ``after_id``, oldest first."""
        sql = "SELECT id, record FROM predictions WHERE id > ?"
        args: list[object] = [after_id]
        if device_id is not None:
            sql += " AND device_id = ?"
            args.append(device_id)
        for row_id, text in self._db.execute(sql + " ORDER BY id", args):
            yield int(row_id), PredictionRecord.model_validate_json(text)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def export(store: PredictionStore, out: IO[str], *, fmt: str, device_id: str | None = None) -> int:
    """Write every record as CSV (flat columns) or JSON lines (full records); return the count.

    Raises:
        FleetError: Unknown format.
    """
    if fmt not in ("csv", "jsonl"):
        raise FleetError(f"unknown export format {fmt!r}: use csv or jsonl")
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow([*_COLUMNS, "topk"])
    n = 0
    for _id, rec in store.iter_records(device_id=device_id):
        if writer is not None:
            topk = ";".join(f"{t.label}:{t.score:.4f}" for t in rec.topk)
            writer.writerow([getattr(rec, c) for c in _COLUMNS] + [topk])
        else:
            out.write(json.dumps(rec.model_dump(mode="json"), separators=(",", ":")) + "\n")
        n += 1
    return n
