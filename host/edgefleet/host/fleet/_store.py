"""The host's prediction store: a small interface and its SQLite implementation (the default).

Records are unique on (device_id, boot_id, seq), so storing a record twice (a device resent
it because an ack was lost, or two workers raced) changes nothing. ``add`` commits before it
returns: callers publish the application-level ack only after that.

``add`` tells two kinds of failure apart, and the Ingestor relies on it:

- ``FleetError``: the database failed (disk full, locked too long, I/O error). Nothing is
  acked; the devices keep the records and send them again.
- any other exception (``ValueError`` with the reason from :func:`check_record`,
  ``OverflowError``, ...): a record itself cannot be stored. Nothing of that call was
  committed; the Ingestor then stores the batch record by record to find the bad one.

The CSV export neutralises spreadsheet formulas in every text cell (:func:`csv_safe`).

Input thumbnails (docs/protocol.md 4.3.2) are kept beside the records in a side table
``thumbnails``, keyed by the record's identity (device_id, boot_id, seq) and not joined to
it when stored: a thumbnail may come before its record, or with no record at all. The table
is bounded: each device keeps its newest :data:`THUMBNAILS_PER_DEVICE` thumbnails.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._migrations import Migration, migrate_sqlite
from edgefleet.host.fleet._sqlite import open_wal
from edgefleet.shared.messages import MAX_COUNT, InputThumbnail, PredictionRecord

# Changes to the schema after _SCHEMA (the baseline), applied on open (see _migrations).
PREDICTIONS_MIGRATIONS: tuple[Migration, ...] = ()

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
-- For the dashboard: per-minute chart and per-class counts (docs/dashboard.md).
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions(ts);
CREATE INDEX IF NOT EXISTS predictions_label ON predictions(label, score);
-- Input thumbnails, keyed by their record's identity; no foreign key (docs/protocol.md 4.3.2).
CREATE TABLE IF NOT EXISTS thumbnails (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    image BLOB NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (device_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS thumbnails_device ON thumbnails(device_id, id);
"""
THUMBNAILS_PER_DEVICE = 1000  # newest thumbnails kept per device (older ones are deleted)
THUMB_COLUMNS = (
    "device_id",
    "boot_id",
    "seq",
    "format",
    "width",
    "height",
    "image",
    "received_at",
)
# Keep the newest THUMBNAILS_PER_DEVICE of one device (parameters: device, device, bound).
THUMB_PRUNE = (
    "DELETE FROM thumbnails WHERE device_id = ? AND id <= (SELECT id FROM thumbnails"
    " WHERE device_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
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


# Text cells a spreadsheet would read as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Errors the sqlite3 module raises for what it was given (a value it cannot bind or store),
# not for the state of the database: the record's own problem.
_RECORD_SQL_ERRORS = (sqlite3.InterfaceError, sqlite3.DataError, sqlite3.IntegrityError)


def check_record(record: PredictionRecord) -> None:
    """Refuse a record the store cannot hold as is (the schema normally refused it already).

    Raises:
        ValueError: An integer outside 0 .. 2^63-1 (SQLite's INTEGER), naming the field.
    """
    for name in ("seq", "model_version"):
        value = getattr(record, name)
        if not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise ValueError(
                f"record {record.device_id}/{record.boot_id} seq {record.seq}: {name} "
                f"{value!r} is outside 0 .. 2^63-1"
            )


def load_record(text: str) -> PredictionRecord:
    """A record from its stored JSON.

    A development version of the protocol kept a ``thumbnail`` object inside the record;
    such a stored record still loads (without it: thumbnails are in their own table now).
    """
    if '"thumbnail":' in text:
        data = json.loads(text)
        if isinstance(data, dict):
            data.pop("thumbnail", None)
            return PredictionRecord.model_validate_json(json.dumps(data))
    return PredictionRecord.model_validate_json(text)


def thumbnail_row(thumb: InputThumbnail, received_at: float) -> tuple[object, ...]:
    """The ``thumbnails`` row of a message, in :data:`THUMB_COLUMNS` order."""
    return (
        thumb.device_id,
        thumb.boot_id,
        thumb.seq,
        thumb.format,
        thumb.width,
        thumb.height,
        thumb.data(),
        received_at,
    )


def csv_safe(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: ``'`` before a leading = + - @ tab or CR.

    Numbers pass unchanged (a negative score stays a number); only strings are escaped.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class PredictionStore(Protocol):
    """What ingestion and export need; a server database can implement it too."""

    def add(self, records: Iterable[PredictionRecord]) -> int:
        """Store records durably (ignoring ones already stored); return how many were new.

        Raises ``FleetError`` only for a database failure; any other exception means a
        record itself cannot be stored, and nothing of the call was committed.
        """

    def count(self) -> int:
        """How many records are stored."""

    def iter_records(
        self, *, device_id: str | None = None, after_id: int = 0
    ) -> Iterator[tuple[int, PredictionRecord]]:
        """Yield (row id, record) in arrival order."""

    def close(self) -> None:
        """Release the store."""


@runtime_checkable
class ThumbnailStore(Protocol):
    """A store that also keeps input thumbnails (both edgefleet stores do)."""

    def add_thumbnails(self, thumbs: Sequence[tuple[InputThumbnail, float]]) -> int:
        """Store (thumbnail, received_at) pairs in one commit; return how many were new.

        Each record's thumbnail is stored once; each device keeps its newest ones.

        Raises ``FleetError`` for a database failure.
        """


class StoreWrapper:
    """A PredictionStore around another: passes every call on (subclasses extend ``add``)."""

    def __init__(self, inner: PredictionStore) -> None:
        self.inner = inner

    def add(self, records: Iterable[PredictionRecord]) -> int:
        """Store in the wrapped store."""
        return self.inner.add(records)

    def add_thumbnails(self, thumbs: Sequence[tuple[InputThumbnail, float]]) -> int:
        """Store in the wrapped store, if it keeps thumbnails (else drop them: 0)."""
        if isinstance(self.inner, ThumbnailStore):
            return self.inner.add_thumbnails(thumbs)
        return 0

    def count(self) -> int:
        """How many records are stored."""
        return self.inner.count()

    def iter_records(
        self, *, device_id: str | None = None, after_id: int = 0
    ) -> Iterator[tuple[int, PredictionRecord]]:
        """The wrapped store's records."""
        return self.inner.iter_records(device_id=device_id, after_id=after_id)

    def close(self) -> None:
        """Close the wrapped store."""
        self.inner.close()


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
            self._db = open_wal(path, busy_timeout_s)
            # NORMAL in WAL mode survives a process crash; FULL also survives power loss,
            # which is the promise made to devices when they delete acked records.
            self._db.execute("PRAGMA synchronous=FULL")
            migrate_sqlite(
                self._db, "predictions", _SCHEMA, PREDICTIONS_MIGRATIONS, where=str(path)
            )
        except sqlite3.Error as exc:
            raise FleetError(f"cannot open prediction store {path}: {exc}") from exc

    def add(self, records: Iterable[PredictionRecord]) -> int:
        """Insert records, ignoring duplicates, and commit.

        Raises:
            FleetError: The database refused the write (disk full, locked too long).
            ValueError: A record cannot be stored (see :func:`check_record`); nothing of
                this call was committed.
        """
        records = list(records)
        for r in records:
            check_record(r)
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
        except _RECORD_SQL_ERRORS as exc:
            raise ValueError(f"a record cannot be stored: {exc}") from exc
        except sqlite3.Error as exc:
            raise FleetError(
                f"storing {len(rows)} predictions in {self.path} failed: {exc}"
            ) from exc

    def add_thumbnails(self, thumbs: Sequence[tuple[InputThumbnail, float]]) -> int:
        """Store thumbnails in one commit; return how many were new.

        The first copy of a record's thumbnail wins; each device keeps its newest ones.

        Raises:
            FleetError: The database refused the write.
        """
        rows = [thumbnail_row(t, at) for t, at in thumbs]
        devices = sorted({t.device_id for t, _ in thumbs})
        try:
            with self._db:
                before = self._db.total_changes
                self._db.executemany(
                    f"INSERT OR IGNORE INTO thumbnails ({', '.join(THUMB_COLUMNS)})"  # noqa: S608 - constants
                    f" VALUES ({', '.join('?' * len(THUMB_COLUMNS))})",
                    rows,
                )
                new = self._db.total_changes - before
                self._db.executemany(THUMB_PRUNE, [(d, d, THUMBNAILS_PER_DEVICE) for d in devices])
                return new
        except sqlite3.Error as exc:
            raise FleetError(f"storing thumbnails in {self.path} failed: {exc}") from exc

    def add_thumbnail(self, thumb: InputThumbnail, *, received_at: float) -> bool:
        """Store one thumbnail (see :meth:`add_thumbnails`); True if it was new."""
        return self.add_thumbnails([(thumb, received_at)]) == 1

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
            yield int(row_id), load_record(text)

    def close(self) -> None:
        """Close the database."""
        self._db.close()
