"""Opening the host's SQLite files in WAL mode, safely when several openers race.

Several threads and processes open the same file at once: the dashboard's page thread, its
metrics thread and its audit log share ``registry.sqlite``; listen workers share the
prediction store. The switch to WAL is retried while another opener holds a lock
(``edgefleet.shared.sqlite_wal``, shared with the device's outbox).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgefleet.shared.sqlite_wal import set_wal


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
