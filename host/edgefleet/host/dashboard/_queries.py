"""What the dashboard reads from SQLite: the prediction store (read-only) and the audit log.

The prediction store is the one ``edgefleet predictions listen`` (or the dashboard's own
ingestor) writes; the dashboard opens it read-only with its own connection, so it never
blocks a writer for long (WAL). Every query is bounded: the newest 100 matching rows, counts
grouped by class, a per-minute histogram over the last hour of data.

Input thumbnails are in the store's side table ``thumbnails``, keyed by the record's
identity (device_id, boot_id, seq); a record shows its picture by joining it. A store
written by an edgefleet without that table simply has no pictures.

The audit log is a table ``audit`` in the push registry (``STATE_DIR/registry.sqlite``): one
row per dashboard action (who, what, target, result).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._pushes import BUSY_TIMEOUT_S
from edgefleet.host.fleet._sqlite import open_wal
from edgefleet.host.fleet._store import load_record

PAGE_ROWS = 100
CHART_MINUTES = 60
LOG_ROWS = 100
_LIST_COLUMNS = (
    "id, device_id, seq, ts, label, score, model_name, model_version, latency_ms, source"
)
# A record's thumbnail, joined on its identity (the side table's UNIQUE index).
_THUMB_OF = (
    "t.device_id = predictions.device_id AND t.boot_id = predictions.boot_id"
    " AND t.seq = predictions.seq"
)
_HAS_THUMB = f"EXISTS (SELECT 1 FROM thumbnails t WHERE {_THUMB_OF})"  # noqa: S608 - constants


@dataclass(frozen=True)
class Search:
    """Filters of the predictions page (all optional)."""

    device: str | None = None
    label: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    since: float | None = None
    until: float | None = None

    def where(self, *, by_time: bool = False) -> tuple[str, list[object]]:
        """A WHERE clause of constant text with ``?`` parameters.

        ``by_time``: keep SQLite on the time index (``+column`` disables the others), for
        queries over a recent time window.
        """
        parts: list[str] = []
        args: list[object] = []
        plus = "+" if by_time else ""
        for clause, value in (
            (f"{plus}device_id = ?", self.device),
            (f"{plus}label = ?", self.label),
            (f"{plus}score >= ?", self.min_score),
            (f"{plus}score <= ?", self.max_score),
            ("ts >= ?", self.since),
            ("ts <= ?", self.until),
        ):
            if value is not None and value != "":
                parts.append(clause)
                args.append(value)
        return (" WHERE " + " AND ".join(parts)) if parts else "", args


def open_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the prediction store, or None if it does not exist yet."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        db.execute("PRAGMA query_only=1")
    except sqlite3.Error as exc:
        raise FleetError(f"cannot open prediction store {path} read-only: {exc}") from exc
    return db


def has_thumbnails(db: sqlite3.Connection) -> bool:
    """True if the store has the ``thumbnails`` side table (a store made before it has not)."""
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'thumbnails'"
    ).fetchone()
    return row is not None


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    keys = [*_LIST_COLUMNS.split(", "), "has_thumb"]
    return dict(zip(keys, r, strict=True))


def latest(
    db: sqlite3.Connection, search: Search, *, limit: int = PAGE_ROWS, after_id: int = 0
) -> list[dict[str, Any]]:
    """The newest ``limit`` records matching ``search`` (above ``after_id``), newest first."""
    where, args = search.where()
    if after_id:
        where += (" AND" if where else " WHERE") + " id > ?"
        args.append(after_id)
    has_thumb = _HAS_THUMB if has_thumbnails(db) else "0"
    sql = f"SELECT {_LIST_COLUMNS}, {has_thumb} FROM predictions{where} ORDER BY id DESC LIMIT ?"  # noqa: S608 - constant clauses
    return [_row(r) for r in db.execute(sql, [*args, limit])]


def class_counts(db: sqlite3.Connection, search: Search) -> list[tuple[str, int]]:
    """(label, count) of the matching records, most frequent first."""
    where, args = search.where()
    sql = f"SELECT label, COUNT(*) FROM predictions{where} GROUP BY label ORDER BY 2 DESC, 1"  # noqa: S608
    return [(str(a), int(b)) for a, b in db.execute(sql, args)]


def per_minute(
    db: sqlite3.Connection, search: Search, *, minutes: int = CHART_MINUTES
) -> tuple[float, list[int]]:
    """(start, counts): matching records per minute over the last ``minutes`` minutes of data.

    The window ends at the newest record of the store (or at the search's ``until``), so an
    idle fleet still has a chart; only the window's rows are read (the ``ts`` index).
    """
    newest = db.execute("SELECT MAX(ts) FROM predictions").fetchone()[0]
    end = float(newest) if newest is not None else time.time()
    if search.until is not None:
        end = min(end, search.until)
    end_minute = int(end // 60) + 1
    start = (end_minute - minutes) * 60.0
    where, args = search.where(by_time=True)
    clause = (where + " AND" if where else " WHERE") + " ts >= ?"
    sql = f"SELECT CAST(ts / 60 AS INTEGER), COUNT(*) FROM predictions{clause} GROUP BY 1"  # noqa: S608
    counts = [0] * minutes
    for minute, n in db.execute(sql, [*args, start]):
        i = int(minute) - (end_minute - minutes)
        if 0 <= i < minutes:
            counts[i] = int(n)
    return start, counts


def record_json(db: sqlite3.Connection, row_id: int) -> dict[str, Any] | None:
    """The full stored record of one row, or None.

    Every field of the current schema is present (a record stored before a field existed
    has it as None), plus ``thumbnail``: ``{"format", "width", "height"}`` of the input
    thumbnail stored for the record, or None.
    """
    row = db.execute("SELECT record FROM predictions WHERE id = ?", (row_id,)).fetchone()
    if row is None:
        return None
    record = load_record(row[0]).model_dump(mode="json")
    record["thumbnail"] = None
    if has_thumbnails(db):
        found = db.execute(
            f"SELECT t.format, t.width, t.height FROM predictions JOIN thumbnails t ON {_THUMB_OF}"  # noqa: S608 - constant clauses
            " WHERE predictions.id = ?",
            (row_id,),
        ).fetchone()
        if found is not None:
            record["thumbnail"] = dict(zip(("format", "width", "height"), found, strict=True))
    return record


def thumbnail_image(db: sqlite3.Connection, row_id: int) -> tuple[str, bytes] | None:
    """(format, image bytes) of the input thumbnail stored for a row's record, or None."""
    if not has_thumbnails(db):
        return None
    found = db.execute(
        f"SELECT t.format, t.image FROM predictions JOIN thumbnails t ON {_THUMB_OF}"  # noqa: S608 - constant clauses
        " WHERE predictions.id = ?",
        (row_id,),
    ).fetchone()
    return None if found is None else (str(found[0]), bytes(found[1]))


LOG_COLUMNS = ("ts", "level", "logger", "message")


def device_logs(
    db: sqlite3.Connection, device_id: str, *, limit: int = LOG_ROWS
) -> list[dict[str, Any]] | None:
    """The device's newest log lines (time, level, logger, message), or None without a log table.

    The ``logs`` table is what ``edgefleet predictions listen --logs`` writes into the store.
    """
    names = [r[1] for r in db.execute("PRAGMA table_info(logs)")]
    if "device_id" not in names:
        return None
    columns = [c for c in LOG_COLUMNS if c in names] or [n for n in names if n != "device_id"]
    order = "ts DESC" if "ts" in names else "rowid DESC"
    sql = f"SELECT {', '.join(columns)} FROM logs WHERE device_id = ? ORDER BY {order} LIMIT ?"  # noqa: S608 - column names from the table itself
    return [dict(zip(columns, r, strict=True)) for r in db.execute(sql, (device_id, limit))]


_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    remote TEXT NOT NULL DEFAULT ''
);
"""


class AuditLog:
    """The ``audit`` table in the push registry's database."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "registry.sqlite"
        try:
            self._db = open_wal(self.path, BUSY_TIMEOUT_S)
            with self._db:
                self._db.executescript(_AUDIT_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise FleetError(f"cannot open the audit log in {self.path}: {exc}") from exc

    def add(self, *, user: str, action: str, target: str, result: str, remote: str = "") -> None:
        """Append one line (committed before it returns)."""
        with self._db:
            self._db.execute(
                "INSERT INTO audit (ts, user, action, target, result, remote)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), user, action, target, result[:1000], remote),
            )

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest lines, newest first."""
        cur = self._db.execute(
            "SELECT ts, user, action, target, result, remote FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        keys = ("ts", "user", "action", "target", "result", "remote")
        return [dict(zip(keys, r, strict=True)) for r in cur]

    def close(self) -> None:
        """Close the database."""
        self._db.close()
