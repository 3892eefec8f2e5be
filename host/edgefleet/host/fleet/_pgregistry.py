"""The push registry in PostgreSQL, so ingest workers on several machines share it.

:class:`PostgresRegistry` is the :class:`~edgefleet.host.fleet._pushes.Registry` with its
SQLite connection replaced by :class:`PgDb`, an adapter that runs the registry's own SQL on
PostgreSQL: one set of queries for both backends, and a table another change adds to the
SQLite baseline appears in PostgreSQL too (``_migrations.postgres_ddl``). The adapter turns
``?`` placeholders into psycopg's, ``INSERT OR IGNORE`` into ``ON CONFLICT DO NOTHING``,
SQLite's two-argument ``MAX`` into ``GREATEST``, and gives ``lastrowid`` through
``RETURNING id``; ``with db:`` is one transaction, as with sqlite3.

Model bytes live in the database too (table ``models``), so any worker can answer a
device's chunk re-request and re-assert retained chunks; a copy is kept in the local state
directory as before (``models/{sha256}.tflite``), which also caches what other hosts pushed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, cast

import psycopg

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._migrations import migrate_postgres
from edgefleet.host.fleet._pgstore import is_postgres_url, pg_connect, redact
from edgefleet.host.fleet._pushes import (
    _SCHEMA,
    DEFAULT_STATE_DIR,
    REGISTRY_MIGRATIONS,
    Registry,
    open_registry,
)
from edgefleet.shared.atomic import write_atomic

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

_MODELS = """
CREATE TABLE IF NOT EXISTS models (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
"""
STORE_ENV = "EDGEFLEET_STORE"
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_SCALAR_MAX = re.compile(r"\bMAX\((?=COALESCE\()", re.IGNORECASE)
# Tables whose rows have a generated ``id`` the registry reads back as ``lastrowid``.
_ID_TABLE = re.compile(r"^\s*INSERT\s+INTO\s+(pushes)\b", re.IGNORECASE)


def to_postgres(sql: str) -> tuple[str, bool]:
    """The registry's SQLite statement for PostgreSQL, and whether it returns a new id."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    sql = _SCALAR_MAX.sub("GREATEST(", sql)
    if _INSERT_OR_IGNORE.match(sql):
        sql = _INSERT_OR_IGNORE.sub("INSERT INTO", sql) + " ON CONFLICT DO NOTHING"
    returns_id = bool(_ID_TABLE.match(sql)) and "RETURNING" not in sql.upper()
    if returns_id:
        sql += " RETURNING id"
    return sql, returns_id


class PgCursor:
    """The part of ``sqlite3.Cursor`` the registry reads: rows and ``lastrowid``."""

    def __init__(self, rows: list[tuple[object, ...]], lastrowid: int | None) -> None:
        self._rows = rows
        self.lastrowid = lastrowid

    def fetchone(self) -> tuple[object, ...] | None:
        """The first row, or None."""
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[object, ...]]:
        """Every row."""
        return self._rows

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        return iter(self._rows)


class PgDb:
    """The part of ``sqlite3.Connection`` the registry uses, on a PostgreSQL connection.

    Outside ``with``, each statement commits on its own (autocommit); inside, the block is
    one transaction, committed at its end or rolled back on an exception. A database error
    is a ``FleetError`` naming the registry; after a lost connection (server restart) the
    next statement outside a transaction connects again, so a long-running ``listen``
    recovers by itself.
    """

    def __init__(
        self, connect: Callable[[], psycopg.Connection[tuple[object, ...]]], where: str
    ) -> None:
        self._connect = connect
        self.where = where
        self.conn = connect()
        self._tx: list[contextlib.AbstractContextManager[object]] = []

    def _live(self) -> psycopg.Connection[tuple[object, ...]]:
        if (self.conn.closed or self.conn.broken) and not self._tx:
            self.conn.close()
            self.conn = self._connect()
        return self.conn

    def _failed(self, exc: psycopg.Error) -> FleetError:
        return FleetError(f"the host registry in {self.where} failed: {str(exc).strip()}")

    def execute(self, sql: str, args: Sequence[object] = ()) -> PgCursor:
        """Run one statement; the result is fetched at once (registry results are small)."""
        text, returns_id = to_postgres(sql)
        try:
            cur = self._live().execute(text, list(args))
            rows = cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        lastrowid = int(str(rows[0][0])) if returns_id and rows else None
        return PgCursor(rows, lastrowid)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> PgCursor:
        """Run one statement per row."""
        text, _ = to_postgres(sql)
        try:
            with self._live().cursor() as cur:
                cur.executemany(text, [list(r) for r in rows])
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        return PgCursor([], None)

    def executescript(self, script: str) -> None:
        """Not used on PostgreSQL: the schema comes from ``_migrations``."""
        raise NotImplementedError(script[:40])

    def __enter__(self) -> None:
        tx = self._live().transaction()
        tx.__enter__()
        self._tx.append(tx)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tx.pop().__exit__(exc_type, exc, tb)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class PostgresRegistry(Registry):
    """The push registry in PostgreSQL (see the module docstring).

    Args:
        state_dir: Local directory for the model copies (created if missing).
        url: ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE``.
        read_only: For status commands: the local directory is not created and devices
            seen are not recorded (as ``Registry(read_only=True)``).

    Raises:
        FleetError: The database cannot be reached or set up, or the directory made.
    """

    def __init__(self, state_dir: Path, url: str, *, read_only: bool = False) -> None:
        self.state_dir = state_dir
        self.read_only = read_only  # status commands: no local directory, no devices noted
        self.where = redact(url)
        try:
            if not read_only:
                (state_dir / "models").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FleetError(
                f"cannot create the model cache in {state_dir}: {exc}; pass --state-dir "
                "to a writable directory"
            ) from exc
        db = PgDb(partial(pg_connect, url, what="host registry", client_side=True), self.where)
        try:
            migrate_postgres(
                db.conn, "registry", _SCHEMA + _MODELS, REGISTRY_MIGRATIONS, where=self.where
            )
        except psycopg.Error as exc:
            db.close()
            raise FleetError(f"cannot set up the host registry in {self.where}: {exc}") from exc
        except FleetError:
            db.close()
            raise
        # The registry's queries run unchanged through the adapter (see PgDb).
        self._db = cast("sqlite3.Connection", db)

    def keep_model(self, sha256: str, data: bytes) -> None:
        """Store a variant's bytes in the database (once) and in the local directory."""
        super().keep_model(sha256, data)
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO models (sha256, data) VALUES (?, ?)", (sha256, data)
            )

    def model_bytes(self, sha256: str) -> bytes | None:
        """A variant's bytes: the local copy, else the database's (then kept locally)."""
        local = super().model_bytes(sha256)
        if local is not None:
            return local
        row = self._db.execute("SELECT data FROM models WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            return None
        data = bytes(row[0])
        with contextlib.suppress(OSError):  # only a cache
            write_atomic(self.model_path(sha256), data)
        return data


def open_any_registry(
    state_dir: Path | None, store: str | None = None, *, read_only: bool = False
) -> Registry:
    """The registry in PostgreSQL if the store is a ``postgresql://`` URL, else in ``state_dir``.

    ``store`` defaults to ``$EDGEFLEET_STORE``, so that every command of a host whose
    workers share a PostgreSQL database (push, rollback, rollout, fleet, listen) uses it.

    Raises:
        FleetError: The registry cannot be opened.
    """
    if store is None:
        store = os.environ.get(STORE_ENV)
    if store is not None and is_postgres_url(store):
        return PostgresRegistry(state_dir or DEFAULT_STATE_DIR, store, read_only=read_only)
    return open_registry(state_dir, read_only=read_only)


def registry_location(state_dir: Path | None, store: str | None) -> str:
    """Where the registry is, for messages."""
    if store is not None and is_postgres_url(store):
        return redact(store)
    return str((state_dir or DEFAULT_STATE_DIR) / "registry.sqlite")
