"""Inference sources: a watched folder (polled, no inotify) and helpers for one-shot files.

A file is taken only once it is stable - same size and mtime on two consecutive polls, or
not modified for ``settle_s`` (the poll interval) by its mtime - so a scan still being
copied in is never read half-written, while a file renamed into place (write
``.name.tmp``, then rename) or already waiting at start-up is taken at the first poll.
Hidden files and unknown extensions are ignored.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

log = logging.getLogger(__name__)

SUPPORTED: Final = frozenset({".png", ".jpg", ".jpeg", ".npy"})
PROCESSED: Final = "processed"
REJECTED: Final = "rejected"


def is_candidate(path: Path) -> bool:
    """A visible regular file with a supported extension."""
    return not path.name.startswith(".") and path.suffix.lower() in SUPPORTED and path.is_file()


@dataclass
class FolderWatcher:
    """Polls ``directory`` for new sensor files.

    Attributes:
        directory: The watched folder (created if missing).
        after: ``move`` classified files to ``processed/`` or ``delete`` them.
        settle_s: A file whose mtime is at least this old is complete (the poll interval:
            a writer still copying would have touched it since the last poll).
        clock: Wall-clock time (compared with mtimes).
    """

    directory: Path
    after: Literal["move", "delete"] = "move"
    settle_s: float = 0.2
    clock: Callable[[], float] = time.time
    _seen: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for sub in ("", PROCESSED, REJECTED):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    def poll(self) -> list[Path]:
        """Files that have not changed since the previous poll, oldest first."""
        current: dict[Path, tuple[int, int]] = {}
        for path in self.directory.iterdir():
            try:
                if is_candidate(path):
                    st = path.stat()
                    current[path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue  # vanished between listing and stat
        settled_ns = int((self.clock() - self.settle_s) * 1e9)
        ready = [
            p
            for p, sig in current.items()
            if sig[0] > 0 and (self._seen.get(p) == sig or sig[1] <= settled_ns)
        ]
        self._seen = current
        return sorted(ready, key=lambda p: (current[p][1], p.name))

    def done(self, path: Path, *, error: str | None = None) -> None:
        """Move a handled file out of the way (``rejected/`` with a note if it failed)."""
        self._seen.pop(path, None)
        try:
            if error is not None:
                target = _unique(self.directory / REJECTED / path.name)
                shutil.move(path, target)
                target.with_name(target.name + ".error.txt").write_text(error + "\n")
            elif self.after == "delete":
                path.unlink(missing_ok=True)
            else:
                _move(path, _unique(self.directory / PROCESSED / path.name))
        except OSError as exc:
            log.warning("cannot move %s out of the watched folder: %s", path, exc)


def _move(path: Path, target: Path) -> None:
    # A rename within the folder (the usual case) without shutil.move's checks; a
    # processed/ on another file system (a mount) still works through the copy.
    try:
        path.rename(target)
    except OSError:
        shutil.move(path, target)


def _unique(target: Path) -> Path:
    n = 1
    candidate = target
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    return candidate
