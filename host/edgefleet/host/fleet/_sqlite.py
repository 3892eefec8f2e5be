"""Opening the host's SQLite files in WAL mode, safely when several openers race.

Several threads and processes open the same file at once: the dashboard's page thread, its
metrics thread and its audit log share ``registry.sqlite``; listen workers share the
prediction store. On a new file the first ``PRAGMA journal_mode=WAL`` has to take an
exclusive lock, and SQLite answers "database is locked" at once when another connection
holds a lock at that moment: the busy timeout is not applied to that switch. So the switch
is retried here, for as long as the busy timeout would have waited.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

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


def open_wal(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Connect to the SQLite file ``path`` (its directory made if missing) in WAL mode.

    Raises:
        OSError: The directory cannot be made.
        sqlite3.Error: The file cannot be opened, is not an SQLite database, or stayed
            locked for ``busy_timeout_s``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # One thread at a time uses it; the check would refuse a hand-over between threads.
    db = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False)
    try:
        set_wal(db, busy_timeout_s)
    except BaseException:
        db.close()
        raise
    return db
