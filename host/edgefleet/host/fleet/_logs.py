"""Device log lines on the host: the ``logs`` table, the listener's tap, and ``edgefleet logs``.

Devices publish their log lines on ``{p}/devices/{id}/logs`` (QoS 0, docs/protocol.md).
``edgefleet predictions listen --logs`` stores them in a ``logs`` table beside the
predictions: in the same SQLite file (:class:`LogStore`), or in the same PostgreSQL database
(:class:`~edgefleet.host.fleet._pgstore.PostgresLogStore`). :class:`LogTap` sits between the
broker connection and the Ingestor, stores every log message it sees and hands the rest on.
A line is unique on (device, boot id, seq), so a line seen by two workers is stored once.
A log line that does not decode, names another device than its topic, or that the database
refuses for its values, is dropped and counted (``malformed``). Lines are kept until
deleted (no retention of their own).

The table is the ``logs`` component's migration 2 (:data:`LOGS_MIGRATIONS`; its baseline is
empty), applied on open to either backend, so both get the same table and a version row.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._export import iso, parse_time
from edgefleet.host.fleet._ingest import WarningBudget
from edgefleet.host.fleet._migrations import Migration, migrate_sqlite
from edgefleet.host.fleet._sqlite import open_wal
from edgefleet.shared.errors import DecodeError, TopicError
from edgefleet.shared.messages import DeviceLog, decode
from edgefleet.shared.topics import LOGS

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from edgefleet.shared.connection import Connection, Message, PublishHandle
    from edgefleet.shared.topics import Topics

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    level TEXT NOT NULL,
    logger TEXT NOT NULL,
    message TEXT NOT NULL,
    dropped INTEGER NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (device_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS logs_device_ts ON logs(device_id, ts);
"""
LOG_COLUMNS = (
    "device_id",
    "boot_id",
    "seq",
    "ts",
    "level",
    "logger",
    "message",
    "dropped",
    "received_at",
)
# The ``logs`` component: an empty baseline, then the table (both backends, see _migrations).
LOGS_BASELINE = ""
LOGS_MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "device log lines: the logs table", sqlite=_SCHEMA),
)


@dataclass(frozen=True)
class LogRow:
    """One stored line."""

    id: int
    line: DeviceLog


def log_row(line: DeviceLog, received_at: float) -> tuple[object, ...]:
    """The values of :data:`LOG_COLUMNS` for one line."""
    return (
        line.device_id,
        line.boot_id,
        line.seq,
        line.ts,
        line.level,
        line.logger,
        line.message,
        line.dropped,
        received_at,
    )


def load_log(row: Sequence[object]) -> LogRow:
    """A stored row: id, then the columns of :data:`LOG_COLUMNS` up to ``dropped``."""
    return LogRow(
        int(str(row[0])),
        DeviceLog(
            device_id=str(row[1]),
            boot_id=str(row[2]),
            seq=int(str(row[3])),
            ts=float(str(row[4])),
            level=str(row[5]),  # type: ignore[arg-type]  # validated by DeviceLog
            logger=str(row[6]),
            message=str(row[7]),
            dropped=int(str(row[8])),
        ),
    )


class LogLines(Protocol):
    """Where the log tap stores lines and ``edgefleet logs`` reads them (either backend)."""

    @property
    def where(self) -> str:
        """The store, for messages (a URL without its password)."""

    def add(self, line: DeviceLog, *, received_at: float) -> bool:
        """Store one line (once); True if it was new.

        Raises ``ValueError`` for a line the database refuses for its values, and
        ``FleetError`` for a database failure.
        """

    def lines(
        self, device_id: str, *, since: float = 0.0, after_id: int = 0, limit: int = 10_000
    ) -> list[LogRow]:
        """Lines of ``device_id`` written at or after ``since``, in the order stored."""

    def close(self) -> None:
        """Close the store."""


class LogStore:
    """The ``logs`` table in the SQLite prediction store file (WAL, shared by workers).

    Raises:
        FleetError: The file cannot be opened or is not an SQLite database.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        try:
            self._db = open_wal(path, busy_timeout_s)
        except sqlite3.Error as exc:
            raise FleetError(f"cannot open the log store {path}: {exc}") from exc
        try:
            migrate_sqlite(self._db, "logs", LOGS_BASELINE, LOGS_MIGRATIONS, where=str(path))
        except FleetError:
            self._db.close()
            raise

    @property
    def where(self) -> str:
        """The file, for messages."""
        return str(self.path)

    def add(self, line: DeviceLog, *, received_at: float) -> bool:
        """Store one line (once); True if it was new.

        Raises:
            ValueError: The line's values cannot be stored (a NaN time).
            FleetError: The database refused the write.
        """
        try:
            with self._db:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO logs (device_id, boot_id, seq, ts, level, logger, "
                    "message, dropped, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    log_row(line, received_at),
                )
                return cur.rowcount == 1
        except (sqlite3.IntegrityError, OverflowError) as exc:  # NaN is NULL to SQLite
            raise ValueError(f"a log line cannot be stored: {exc}") from exc
        except sqlite3.Error as exc:
            raise FleetError(f"storing a log line in {self.path} failed: {exc}") from exc

    def lines(
        self, device_id: str, *, since: float = 0.0, after_id: int = 0, limit: int = 10_000
    ) -> list[LogRow]:
        """Lines of ``device_id`` written at or after ``since`` (unix time), oldest first."""
        rows = self._db.execute(
            "SELECT id, device_id, boot_id, seq, ts, level, logger, message, dropped FROM logs "
            "WHERE device_id = ? AND ts >= ? AND id > ? ORDER BY id LIMIT ?",
            (device_id, since, after_id, limit),
        ).fetchall()
        return [load_log(r) for r in rows]

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def parse_log(topics: Topics, msg: Message) -> DeviceLog | None:
    """The log line of ``msg`` if it is a valid one on a device's logs topic, else None.

    A line naming another device than the topic's (which the broker authenticated) is
    refused, like a prediction record.
    """
    try:
        parsed = topics.parse(msg.topic)
        if parsed.kind != LOGS:
            return None
        line = decode(DeviceLog, msg.payload)
    except (DecodeError, TopicError):
        return None
    return line if line.device_id == parsed.device_id else None


class LogTap:
    """A Connection that stores log messages on the way and hands everything else on.

    Args:
        conn: The listener's connection.
        topics: The fleet's topics.
        store: Where lines go (SQLite or PostgreSQL).
    """

    def __init__(self, conn: Connection, topics: Topics, store: LogLines) -> None:
        self.conn = conn
        self.topics = topics
        self.store = store
        self.stored = 0
        self.malformed = 0
        self.warnings = WarningBudget()

    def subscribe_logs(self, *, shared: bool, group: str) -> None:
        """Subscribe to every device's logs (shared by the workers when ``shared``)."""
        topic_filter = self.topics.all_logs()
        self.conn.subscribe(
            self.topics.shared(topic_filter, group=group) if shared else topic_filter
        )

    def _is_log(self, msg: Message) -> bool:
        levels = msg.topic.split("/")
        return len(levels) > 3 and levels[-1] == LOGS and levels[-3] == "devices"  # noqa: PLR2004

    def next_message(self, timeout: float) -> Message | None:
        """The next message that is not a log line (those are stored meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.conn.next_message(max(0.0, deadline - time.monotonic()))
            if msg is None or not self._is_log(msg):
                return msg
            self._take(msg)

    def _take(self, msg: Message) -> None:
        line = parse_log(self.topics, msg)
        if line is None:
            self.malformed += 1
            return
        try:
            new = self.store.add(line, received_at=msg.received_at)
        except ValueError as exc:
            if self.warnings.allow(line.device_id):
                log.warning("dropping a log line of %s: %s", line.device_id, exc)
            self.malformed += 1
            return
        if new:
            self.stored += 1

    # -- the rest of the Connection protocol, passed through ------------------------------

    @property
    def mqtt5(self) -> bool:
        """True if the session speaks MQTT 5."""
        return self.conn.mqtt5

    @property
    def url(self) -> str:
        """The broker URL."""
        return self.conn.url

    def subscribe(self, *filters: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe on the wrapped connection."""
        self.conn.subscribe(*filters, qos=qos, timeout=timeout)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> PublishHandle:
        """Publish on the wrapped connection."""
        return self.conn.publish(topic, payload, qos=qos, retain=retain)

    def wait_published(self, handles: Sequence[PublishHandle], *, timeout: float = 60.0) -> None:
        """Wait on the wrapped connection."""
        self.conn.wait_published(handles, timeout=timeout)

    def drain_retained(self, *, quiet_s: float = 0.3, max_s: float = 5.0) -> list[Message]:
        """Drain the wrapped connection (log lines among them are stored, not returned)."""
        out = []
        for msg in self.conn.drain_retained(quiet_s=quiet_s, max_s=max_s):
            if self._is_log(msg):
                self._take(msg)
            else:
                out.append(msg)
        return out

    def close(self) -> None:
        """Close the wrapped connection."""
        self.conn.close()


def format_line(line: DeviceLog) -> str:
    """One printable line: time (UTC, the device's clock), device, level, logger, message."""
    dropped = f" [{line.dropped} line(s) dropped before this]" if line.dropped else ""
    text = printable(line.message)
    return (
        f"{iso(line.ts)} {line.device_id} {line.level:<8} {printable(line.logger)}: {text}{dropped}"
    )


def parse_since(text: str, *, now: float) -> float:
    """``--since``, as for ``predictions tail``: ISO 8601 (UTC unless an offset) or 15m, 2h, 7d.

    Raises:
        FleetError: Neither form, with examples of both.
    """
    return parse_time(text, now=now, what="--since")


def printable(text: str) -> str:
    r"""``text`` with control characters (terminal escapes from a device) shown as ``\xNN``.

    Newlines and tabs stay (tracebacks); everything else below 0x20, DEL and C1 is escaped.
    """
    return "".join(
        c if c in "\n\t" or (c >= " " and not "\x7f" <= c <= "\x9f") else f"\\x{ord(c):02x}"
        for c in text
    )


def follow(conn: Connection, topics: Topics, device_id: str) -> Iterator[DeviceLog]:
    """Yield the device's lines as they arrive on the broker (until the caller stops)."""
    conn.subscribe(topics.logs(device_id), qos=0)
    while True:
        msg = conn.next_message(0.5)
        if msg is None:
            continue
        line = parse_log(topics, msg)
        if line is not None:
            yield line
