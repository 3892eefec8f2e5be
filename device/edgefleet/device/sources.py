"""Inference sources: a watched folder (polled, no inotify) and helpers for one-shot files.

Inbox rules (docs/agent.md, "Watched folder"):

* Only visible entries with a supported suffix are looked at; hidden names (``.scan.png``,
  ``.scan.png.tmp``) and other suffixes are left alone - write there first.
* Each entry is examined with ``lstat`` only: a symbolic link, fifo, socket, device or
  directory is refused **without being opened** and moved (the entry itself, never what a
  link points to) to ``rejected/`` with a ``.error.txt`` saying why. A regular file larger
  than ``max_bytes`` is refused the same way, unread.
* A regular file is taken once it is complete: renamed into the folder (its ctime is
  after its mtime: the last change was the rename, not a write), or not modified for
  ``settle_s`` - by its mtime, or as observed over the polls.
* An empty (0-byte) file, and a file the agent could not decode (:meth:`retry`: it may be
  half-written, a writer that paused), stays while it changes and is tried again after
  each change; once unchanged for ``incomplete_timeout_s`` it goes to ``rejected/`` with
  the reason. Delivering by rename avoids all waiting: write ``.name.tmp`` (or outside the
  folder, on the same file system), then rename it to ``name``.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from edgefleet.device.inputs import SIDECAR_SUFFIX, describe_file_type

log = logging.getLogger(__name__)

SUPPORTED: Final = frozenset({".png", ".jpg", ".jpeg", ".npy"})
PROCESSED: Final = "processed"
REJECTED: Final = "rejected"
NOTE_SUFFIX: Final = ".error.txt"


def is_candidate(path: Path) -> bool:
    """A visible regular file (not a link) with a supported extension."""
    if path.name.startswith(".") or path.suffix.lower() not in SUPPORTED:
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _named_like_input(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED


@dataclass
class _Seen:
    sig: tuple[int, int]  # size, mtime_ns
    since: float  # monotonic time this signature was first seen
    failed: str | None = None  # why the attempt on this very signature failed


@dataclass
class FolderWatcher:
    """Polls ``directory`` for new sensor files (see the module docstring for the rules).

    Attributes:
        directory: The watched folder (created if missing).
        after: ``move`` classified files to ``processed/`` or ``delete`` them.
        settle_s: A file written in place is complete once unchanged for this long.
        incomplete_timeout_s: An empty or undecodable file is rejected once unchanged this long.
        max_bytes: Larger files are rejected without being read (``limits.max_input_bytes``).
        clock: Wall-clock time (compared with mtimes).
        monotonic: Monotonic time (how long a file has been seen unchanged).
    """

    directory: Path
    after: Literal["move", "delete"] = "move"
    settle_s: float = 1.0
    incomplete_timeout_s: float = 60.0
    max_bytes: int | None = None
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rejected: int = 0  # entries moved to rejected/ (the status' rejected_inputs)
    _seen: dict[Path, _Seen] = field(default_factory=dict)
    _stuck: set[Path] = field(default_factory=set)  # could not be moved: not logged again

    def __post_init__(self) -> None:
        for sub in ("", PROCESSED, REJECTED):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    def poll(self) -> list[Path]:
        """Complete regular files, oldest first; refuses what must not be opened on the way."""
        now, wall = self.monotonic(), self.clock()
        current: dict[Path, _Seen] = {}
        ready: list[tuple[int, str, Path]] = []
        try:
            with os.scandir(self.directory) as listing:
                entries = list(listing)
        except OSError as exc:
            log.warning("cannot list the watched folder %s: %s", self.directory, exc)
            return []
        self._stuck &= {Path(e.path) for e in entries}
        for entry in entries:
            if _named_like_input(entry.name) and Path(entry.path) not in self._stuck:
                self._examine(Path(entry.path), now, wall, current, ready)
        self._seen = current
        return [path for _, _, path in sorted(ready)]

    def _examine(
        self,
        path: Path,
        now: float,
        wall: float,
        current: dict[Path, _Seen],
        ready: list[tuple[int, str, Path]],
    ) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return  # vanished between listing and lstat
        reason = self._refusal(st)
        if reason is not None:
            self.done(path, error=f"{path.name}: {reason}")
            return
        sig = (st.st_size, st.st_mtime_ns)
        seen = self._seen.get(path)
        if seen is None or seen.sig != sig:
            seen = _Seen(sig, now)
        unchanged_s = now - seen.since
        if st.st_size == 0 or seen.failed is not None:
            if unchanged_s >= self.incomplete_timeout_s:
                self.done(path, error=self._timed_out(path.name, seen.failed))
            else:
                current[path] = seen
            return
        current[path] = seen
        renamed = st.st_ctime_ns > st.st_mtime_ns  # the last change was no write: a rename
        untouched_s = wall - st.st_mtime_ns / 1e9
        if renamed or untouched_s >= self.settle_s or unchanged_s >= self.settle_s:
            ready.append((st.st_mtime_ns, path.name, path))

    def _refusal(self, st: os.stat_result) -> str | None:
        if not stat.S_ISREG(st.st_mode):
            return (
                f"refused without opening it: {describe_file_type(st.st_mode)}, not a regular "
                "file; deliver inputs as regular files (write a temporary name, then rename it "
                "into place)"
            )
        if self.max_bytes is not None and st.st_size > self.max_bytes:
            return (
                f"refused unread: {st.st_size:,} bytes, over the limit of {self.max_bytes:,} "
                "bytes (raise limits.max_input_bytes in agent.toml's [limits] to accept it)"
            )
        return None

    def _timed_out(self, name: str, failed: str | None) -> str:
        waited = f"{self.incomplete_timeout_s:g} s"
        if failed is None:
            return (
                f"{name}: an empty file (0 bytes), unchanged for {waited}: nothing to classify "
                "(raise inference.incomplete_timeout_s if writers pause longer)"
            )
        return (
            f"{failed} (unchanged for {waited}, so not a file still being written; raise "
            "inference.incomplete_timeout_s if writers pause longer)"
        )

    def retry(self, path: Path, error: str) -> None:
        """An attempt failed the way a half-written file fails: try again after it changes.

        Once the file has not changed for ``incomplete_timeout_s`` it is rejected with
        ``error``; :meth:`poll` does not offer it again before it changes.
        """
        seen = self._seen.get(path)
        if seen is None:
            self.done(path, error=error)
            return
        seen.failed = error
        if self.monotonic() - seen.since >= self.incomplete_timeout_s:
            del self._seen[path]
            self.done(path, error=self._timed_out(path.name, error))

    def pending(self) -> int:
        """Files seen but not taken yet (settling, empty, or waiting after a failure)."""
        return len(self._seen)

    def done(self, path: Path, *, error: str | None = None) -> None:
        """Move a handled entry out of the way (``rejected/`` with a note if it failed).

        Only the directory entry is moved (a link is not followed, a fifo not opened); the
        note is created exclusively and never through a link.
        """
        self._seen.pop(path, None)
        try:
            if error is not None:
                self.rejected += 1
                target = _unique(self._subdir(REJECTED) / path.name)
                _move(path, target)
                _move_sidecar(path, target)
                _write_note(target.with_name(target.name + NOTE_SUFFIX), error)
                log.warning("rejected %s: %s", path.name, error)
            elif self.after == "delete":
                path.unlink(missing_ok=True)
                _sidecar(path).unlink(missing_ok=True)
            else:
                target = _unique(self._subdir(PROCESSED) / path.name)
                _move(path, target)
                _move_sidecar(path, target)
        except OSError as exc:
            self._stuck.add(path)
            log.warning("cannot move %s out of the watched folder: %s", path, exc)

    def _subdir(self, name: str) -> Path:
        sub = self.directory / name
        try:
            st = os.lstat(sub)
        except FileNotFoundError:
            sub.mkdir()
            return sub
        if not stat.S_ISDIR(st.st_mode):
            msg = f"{sub} is {describe_file_type(st.st_mode)}, not a directory"
            raise OSError(msg)
        return sub


def _move(path: Path, target: Path) -> None:
    # A rename moves the entry itself (link, fifo, file). Only a regular file may be
    # copied across file systems (a processed/ on a mount): shutil would open a fifo.
    try:
        path.rename(target)
    except OSError:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise
        shutil.move(path, target)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(SIDECAR_SUFFIX)


def _move_sidecar(path: Path, target: Path) -> None:
    # A GPR scan's metadata sidecar (scan.json beside scan.npy) goes where its scan went.
    sidecar = _sidecar(path)
    if os.path.lexists(sidecar) and sidecar != path:
        _move(sidecar, target.with_suffix(SIDECAR_SUFFIX))


def _write_note(note: Path, text: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(note, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def _unique(target: Path) -> Path:
    def taken(p: Path) -> bool:
        note = p.with_name(p.name + NOTE_SUFFIX)
        return os.path.lexists(p) or os.path.lexists(note)

    n = 1
    candidate = target
    while taken(candidate):
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    return candidate
