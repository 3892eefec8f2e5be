"""Switching a SQLite connection to WAL safely when several openers race on a new file.

On a new file the first ``PRAGMA journal_mode=WAL`` has to take an exclusive lock, and
SQLite answers "database is locked" at once when another connection holds a lock at that
moment: the connection's busy timeout is not applied to that switch. Host and device open
their files from several threads and processes (the dashboard's threads, listen workers,
an agent beside ``edgefleet-agent status``), so the switch is retried here, for as long as
the busy timeout would have waited.
"""

from __future__ import annotations

import sqlite3
import time

_FIRST_DELAY_S = 0.005
_MAX_DELAY_S = 0.1


def set_wal(db: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switch ``db`` to WAL, retrying while another connection holds a lock.

    Raises:
        sqlite3.Error: The switch failed for another reason, or stayed locked for
            ``busy_timeout_s``.
    """
    deadline = time.monotonic() + busy_timeout_s
    delay = _FIRST_DELAY_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        else:
            return
        time.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY_S)
