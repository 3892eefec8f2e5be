"""The prediction store in PostgreSQL (``--store postgresql://...``), shared by ingest workers.

The same contract as :class:`~edgefleet.host.fleet._store.SqliteStore` (see ``_store``):
records are unique on (device_id, boot_id, seq); ``add`` inserts a batch in one transaction
(``INSERT ... ON CONFLICT DO NOTHING``, the rows pipelined), committed before ``add``
returns, so the Ingestor acks only what is durable. Several workers on several machines may
write into one database at once: a record two of them receive (a redelivery after a worker
died) is stored once, and the second insert counts as a duplicate.

Batches are committed one at a time across all workers: each insert transaction first takes
a transaction-scoped advisory lock (``_INSERT_LOCK``), held until its commit. Row ids then
grow in commit order, so a reader following ``iter_records(after_id=...)`` (``tail -f``)
never passes over a row that commits later with a lower id, and two workers' batches cannot
deadlock on each other's rows. The lock covers only the insert and commit (milliseconds);
decoding, MQTT and acks stay parallel. Rows go in key order, and a transaction PostgreSQL
still rolls back for concurrency is retried at once. A lost connection (server restart,
network) is a ``FleetError`` (nothing acked, the devices resend); the next call reconnects.

PostgreSQL text cannot hold NUL characters: the flat columns get U+FFFD instead; the full
record (``record``, what export and tail read) keeps them, escaped in its JSON.

Device log lines (``listen --logs``) go to a ``logs`` table of the same database
(:class:`PostgresLogStore`), with the SQLite table's columns and key (see ``_logs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._logs import (
    LOG_COLUMNS,
    LOGS_BASELINE,
    LOGS_MIGRATIONS,
    LogLines,
    LogRow,
    LogStore,
    load_log,
    log_row,
)
from edgefleet.host.fleet._migrations import Migration, migrate_postgres
from edgefleet.host.fleet._store import (
    _COLUMNS,
    _SCHEMA,
    PREDICTIONS_MIGRATIONS,
    THUMB_COLUMNS,
    THUMB_PRUNE,
    THUMBNAILS_PER_DEVICE,
    PredictionStore,
    SqliteStore,
    check_record,
    load_record,
    thumbnail_row,
)
from edgefleet.shared.messages import DeviceLog, InputThumbnail, PredictionRecord

SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 10
_RETRIES = 3  # attempts of a batch PostgreSQL rolled back for concurrency
# The advisory lock key that orders batch commits ("edgeflt1" as a 64-bit integer).
_INSERT_LOCK = int.from_bytes(b"edgeflt1", "big")
_INSERT = (
    f"INSERT INTO predictions ({', '.join(_COLUMNS)}, record)"  # noqa: S608 - constants
    f" VALUES ({', '.join(['%s'] * (len(_COLUMNS) + 1))})"
    " ON CONFLICT (device_id, boot_id, seq) DO NOTHING"
)
_INSERT_THUMB = (
    f"INSERT INTO thumbnails ({', '.join(THUMB_COLUMNS)})"  # noqa: S608 - constants
    f" VALUES ({', '.join(['%s'] * len(THUMB_COLUMNS))})"
    " ON CONFLICT (device_id, boot_id, seq) DO NOTHING"
)
_PRUNE_THUMBS = THUMB_PRUNE.replace("?", "%s")
_INSERT_LOG = (
    f"INSERT INTO logs ({', '.join(LOG_COLUMNS)})"  # noqa: S608 - constants
    f" VALUES ({', '.join(['%s'] * len(LOG_COLUMNS))})"
    " ON CONFLICT (device_id, boot_id, seq) DO NOTHING"
)
_SELECT_LOGS = (
    "SELECT id, device_id, boot_id, seq, ts, level, logger, message, dropped FROM logs"
    " WHERE device_id = %s AND ts >= %s AND id > %s ORDER BY id LIMIT %s"
)
# Errors PostgreSQL raises for the values it was given: the record's own problem.
_RECORD_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


def is_postgres_url(location: str | Path) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) connection URL."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL without its password (in the user part or ``?password=``), for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://<unparseable URL>"
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "password" for k, _ in query):
        hidden = [(k, "***" if k == "password" else v) for k, v in query]
        parts = parts._replace(query=urlencode(hidden, safe="*"))
    return urlunsplit(parts)


def pg_connect(
    url: str, *, what: str, client_side: bool = False
) -> psycopg.Connection[tuple[object, ...]]:
    """Connect in autocommit mode (each statement commits; ``transaction()`` groups).

    ``client_side`` binds parameters in the client, as sqlite3 does (no server-side type
    inference for a bare ``? IS NULL``): for the registry's SQL, not for bulk inserts.

    Raises:
        FleetError: Bad URL, server unreachable, authentication refused (the message has
            the URL without its password).
    """
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="edgefleet",
            cursor_factory=psycopg.ClientCursor if client_side else psycopg.Cursor,
        )
    except psycopg.Error as exc:
        raise FleetError(
            f"cannot connect to the {what} at {redact(url)}: {str(exc).strip()}; check the "
            "URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE), that the server runs and "
            "that the user may connect"
        ) from exc


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class _PgTables:
    """One connection to a PostgreSQL store, its tables migrated on open, reopened if lost.

    ``what`` names the store in errors; ``component``, ``baseline`` and ``migrations`` are
    the schema part these tables belong to (:func:`migrate_postgres`).
    """

    what = "store"

    def __init__(
        self, url: str, component: str, baseline: str, migrations: Sequence[Migration]
    ) -> None:
        self.url = url
        self.where = redact(url)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = pg_connect(url, what=self.what)
        try:
            migrate_postgres(self._conn, component, baseline, migrations, where=self.where)
        except psycopg.Error as exc:
            self._conn.close()
            raise FleetError(f"cannot set up the {self.what} {self.where}: {exc}") from exc
        except FleetError:
            self._conn.close()
            raise

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = pg_connect(self.url, what=self.what)
        return self._conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresStore(_PgTables):
    """PredictionStore in a PostgreSQL database (see the module docstring).

    Args:
        url: ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` (libpq also takes the
            password from ``PGPASSWORD`` or ``~/.pgpass``).

    Raises:
        FleetError: The database cannot be reached, or its schema is newer than this
            edgefleet.
    """

    what = "prediction store"

    def __init__(self, url: str) -> None:
        super().__init__(url, "predictions", _SCHEMA, PREDICTIONS_MIGRATIONS)

    def add(self, records: Iterable[PredictionRecord]) -> int:
        """Insert records, ignoring duplicates; committed when this returns.

        Raises:
            FleetError: The database failed (connection lost, disk full, read-only).
            ValueError: A record cannot be stored; nothing of this call was committed.
        """
        batch = sorted(records, key=lambda r: (r.device_id, r.boot_id, r.seq))
        if not batch:
            return 0
        for r in batch:
            check_record(r)
        rows = [
            tuple(
                _clean(v) if isinstance(v, str) else v
                for v in (*(getattr(r, c) for c in _COLUMNS), r.model_dump_json())
            )
            for r in batch
        ]
        for attempt in range(_RETRIES):
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSERT_LOCK,))
                    cur.executemany(_INSERT, rows)  # rowcount: the rows inserted, summed
                    new = cur.rowcount
            except pg_errors.TransactionRollback:
                if attempt == _RETRIES - 1:
                    raise FleetError(
                        f"storing {len(batch)} predictions in {self.where}: rolled back "
                        f"{_RETRIES} times for concurrency"
                    ) from None
                continue
            except _RECORD_ERRORS as exc:
                raise ValueError(f"a record cannot be stored: {exc}") from exc
            except psycopg.Error as exc:
                self._drop_if_broken()
                raise FleetError(
                    f"storing {len(batch)} predictions in {self.where} failed: {exc}"
                ) from exc
            return max(new, 0)
        return 0  # pragma: no cover - the loop returns or raises

    def add_thumbnails(self, thumbs: Sequence[tuple[InputThumbnail, float]]) -> int:
        """Store thumbnails in one transaction; return how many were new.

        The first copy of a record's thumbnail wins; each device keeps its newest ones.

        Raises:
            FleetError: The database failed.
        """
        rows = [
            tuple(_clean(v) if isinstance(v, str) else v for v in thumbnail_row(t, at))
            for t, at in sorted(thumbs, key=lambda p: (p[0].device_id, p[0].boot_id, p[0].seq))
        ]
        devices = sorted({t.device_id for t, _ in thumbs})
        if not rows:
            return 0
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT_THUMB, rows)  # rowcount: the rows inserted, summed
                new = cur.rowcount
                cur.executemany(_PRUNE_THUMBS, [(d, d, THUMBNAILS_PER_DEVICE) for d in devices])
                return max(new, 0)
        except psycopg.Error as exc:
            self._drop_if_broken()
            raise FleetError(f"storing thumbnails in {self.where} failed: {exc}") from exc

    def add_thumbnail(self, thumb: InputThumbnail, *, received_at: float) -> bool:
        """Store one thumbnail (see :meth:`add_thumbnails`); True if it was new."""
        return self.add_thumbnails([(thumb, received_at)]) == 1

    def _drop_if_broken(self) -> None:
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            conn.close()
            self._conn = None

    def count(self) -> int:
        """How many records are stored.

        Raises:
            FleetError: The database failed.
        """
        try:
            row = self._connection().execute("SELECT COUNT(*) FROM predictions").fetchone()
        except psycopg.Error as exc:
            raise FleetError(f"reading {self.where} failed: {str(exc).strip()}") from exc
        return int(str(row[0])) if row else 0

    def iter_records(
        self, *, device_id: str | None = None, after_id: int = 0
    ) -> Iterator[tuple[int, PredictionRecord]]:
        """Yield (row id, record) with row id above ``after_id``, oldest first (streamed).

        Raises:
            FleetError: The database failed.
        """
        sql = "SELECT id, record FROM predictions WHERE id > %s"
        args: list[object] = [after_id]
        if device_id is not None:
            sql += " AND device_id = %s"
            args.append(device_id)
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor(name="edgefleet_records") as cur:
                cur.itersize = 2000
                cur.execute(sql + " ORDER BY id", args)
                for row_id, text in cur:
                    yield int(str(row_id)), load_record(str(text))
        except psycopg.Error as exc:
            raise FleetError(f"reading {self.where} failed: {str(exc).strip()}") from exc


class PostgresLogStore(_PgTables):
    """Device log lines in the ``logs`` table of a PostgreSQL store (``listen --logs``).

    The same contract as the SQLite :class:`~edgefleet.host.fleet._logs.LogStore`: a line
    is unique on (device_id, boot_id, seq), ``add`` commits before it returns, and lines
    read back in the order they were stored. NUL characters become U+FFFD.

    Raises:
        FleetError: The database cannot be reached, or its schema is newer than this
            edgefleet.
    """

    what = "log store"

    def __init__(self, url: str) -> None:
        super().__init__(url, "logs", LOGS_BASELINE, LOGS_MIGRATIONS)

    def add(self, line: DeviceLog, *, received_at: float) -> bool:
        """Store one line (once, committed); True if it was new.

        Raises:
            ValueError: PostgreSQL refused the line's values.
            FleetError: The database failed (the next call reconnects).
        """
        row = tuple(_clean(v) if isinstance(v, str) else v for v in log_row(line, received_at))
        try:
            cur = self._connection().execute(_INSERT_LOG, row)
        except _RECORD_ERRORS as exc:
            raise ValueError(f"a log line cannot be stored: {exc}") from exc
        except psycopg.Error as exc:
            self._drop_if_broken()
            raise FleetError(f"storing a log line in {self.where} failed: {exc}") from exc
        return cur.rowcount == 1

    def lines(
        self, device_id: str, *, since: float = 0.0, after_id: int = 0, limit: int = 10_000
    ) -> list[LogRow]:
        """Lines of ``device_id`` written at or after ``since`` (unix time), oldest first.

        Raises:
            FleetError: The database failed.
        """
        try:
            rows = (
                self._connection()
                .execute(_SELECT_LOGS, (device_id, since, after_id, limit))
                .fetchall()
            )
        except psycopg.Error as exc:
            self._drop_if_broken()
            raise FleetError(f"reading {self.where} failed: {str(exc).strip()}") from exc
        return [load_log(r) for r in rows]

    def _drop_if_broken(self) -> None:
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            conn.close()
            self._conn = None


def open_log_store(location: str | Path) -> LogLines:
    """The log table of the store at ``location`` (a ``postgresql://`` URL or a SQLite file).

    Raises:
        FleetError: Another URL scheme, or the store cannot be opened.
    """
    if is_postgres_url(location):
        return PostgresLogStore(str(location))
    _check_scheme(str(location))
    return LogStore(Path(location))


def _check_scheme(text: str) -> None:
    if "://" in text:
        raise FleetError(
            f"unknown store {redact(text) if '@' in text else text!r}: give a SQLite file "
            "path or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )


def open_store(location: str | Path) -> PredictionStore:
    """The prediction store at ``location``: a ``postgresql://`` URL or a SQLite file path.

    Raises:
        FleetError: Another URL scheme, or the store cannot be opened.
    """
    if is_postgres_url(location):
        return PostgresStore(str(location))
    text = str(location)
    _check_scheme(text)
    return SqliteStore(Path(text))


def describe(location: str | Path) -> str:
    """Where a store is, for messages (a URL without its password)."""
    return redact(str(location)) if is_postgres_url(location) else str(location)
