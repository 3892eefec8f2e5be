"""The agent's state directory: models, the active-model pointer, anti-rollback floor, downloads.

Layout::

    state_dir/
      models/<sha256>.tflite       verified model files (active, previous, staged)
      active.json                  pointer to the serving model (written atomically)
      previous.json                pointer to the model served before (kept for rollback)
      antirollback.json            highest activated version + signing-time floor
      bad_models.json              models that failed their health check / activation /
                                   real inputs (reverted)
      restarts.json                running marker, unclean exits, known-good model (safety)
      inflight.txt                 watched-folder files being classified (safety)
      ignored.json                 count of signed manifests not newer than the active one
      downloads/<sha256>/          partial download: manifest, reassembler state, model.part
      outbox.sqlite                prediction outbox

Every file is written to a temp name, fsynced, ``os.replace``d and the directory fsynced,
so a power cut leaves either the old or the new file, never half of one. Partial downloads
are the exception: their chunks (written at their place in ``model.part``) and most saves
of the reassembler state are not fsynced, because each chunk's sha256 is in the state and
is checked again when the download resumes: a chunk that did not reach the disk before a
power cut is fetched again, never used (see ``Updater``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.device.errors import StoreError
from edgefleet.device.faults import fault
from edgefleet.shared.atomic import fsync_dir, write_atomic

BAD_MODELS = "bad_models.json"
MAX_BAD_MODELS = 100


def atomic_write(path: Path, data: bytes, *, fault_point: str = "", durable: bool = True) -> None:
    """Write a state file (0600) with ``write_atomic``: readers see the old or the new file.

    Args:
        path: Destination.
        data: The whole content.
        fault_point: A named fault point fired between the fsync and the rename.
        durable: fsync the file and the directory; see ``write_atomic`` for when not to.
    """
    # `fault` is looked up when the hook runs, so tests that replace it see their version.
    hook = (lambda: fault(fault_point)) if fault_point else None
    write_atomic(path, data, mode=0o600, durable=durable, before_replace=hook)


def grow_in_place(path: Path, data: bytes) -> None:
    """Overwrite the start of ``path`` (no longer than ``data``) with ``data``, no fsync.

    For a file whose every version is longer than the last (the reassembler state gains
    one entry per chunk): one ``pwrite``, no new inode, no rename. What a reader can catch
    mid-write, or a power cut can leave, is a prefix of the new content over the old one:
    a file that does not parse, or one a checker must not trust blindly (see ``Updater``).

    Raises:
        ValueError: ``data`` is shorter than the file (stale bytes would remain).
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size > len(data):
            raise ValueError(f"{path} is longer than its new content")
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PartFileChunkStore:
    """A ``ChunkStore`` that writes each chunk at its place in one file: the model to be.

    No file per chunk (each create, rename and unlink cost 1-2 ms on ext4 with many
    agents writing), no reassembly: once every chunk is in and the whole file matches its
    sha256, ``StateStore.stage_part`` renames this very file into ``models/``. Chunks are
    written without an fsync: the reassembler state, saved after the chunk, holds each
    chunk's sha256, and ``Updater`` checks every stored chunk against it when a download
    resumes, so a chunk cut short, lost or damaged by a power cut is fetched again.
    """

    def __init__(self, path: Path, *, size: int, chunk_size: int) -> None:
        self.path = path
        self.size = size
        self.chunk_size = chunk_size
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))

    def _span(self, index: int) -> tuple[int, int]:
        offset = index * self.chunk_size
        return offset, max(0, min(self.chunk_size, self.size - offset))

    def put(self, index: int, data: bytes) -> None:
        """Write chunk ``index`` at its offset (no fsync)."""
        offset, length = self._span(index)
        if len(data) != length:
            raise ValueError(f"chunk {index} has {len(data)} bytes, its place {length}")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view = memoryview(data)
            done = 0
            while done < length:
                done += os.pwrite(fd, view[done:], offset + done)
        finally:
            os.close(fd)

    def get(self, index: int) -> bytes:
        """Read chunk ``index``'s place back (shorter if the file is; KeyError if gone)."""
        offset, length = self._span(index)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise KeyError(index) from exc
        try:
            parts = []
            while length > 0:
                part = os.pread(fd, length, offset)
                if not part:
                    break
                parts.append(part)
                offset, length = offset + len(part), length - len(part)
            return b"".join(parts)
        finally:
            os.close(fd)

    def clear(self) -> None:
        """Forget every chunk (empty the file)."""
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.path, 0)

    def matches(self, index: int, digest: bytes) -> bool:
        """True if chunk ``index`` is stored and its sha256 is ``digest``."""
        try:
            return hashlib.sha256(self.get(index)).digest() == digest
        except (KeyError, OSError):
            return False


@dataclass(frozen=True)
class Pointer:
    """What ``active.json`` / ``previous.json`` say: a model file and its manifest."""

    sha256: str
    name: str
    version: int
    manifest: dict[str, Any]

    def to_json(self) -> bytes:
        """Serialize for the pointer file."""
        return json.dumps(self.__dict__, sort_keys=True).encode()


class StateStore:
    """Files under ``state_dir`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            for sub in ("models", "downloads"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the state directory {root}: {exc}") from exc
        self._clean_temp_files()

    def _clean_temp_files(self) -> None:
        # Leftovers of writes interrupted before their rename: never used, safe to drop.
        for tmp in (*self.root.glob(".*.tmp"), *self.root.glob("models/.*.tmp")):
            tmp.unlink(missing_ok=True)

    @property
    def outbox_path(self) -> Path:
        """Where the outbox database lives."""
        return self.root / "outbox.sqlite"

    def model_path(self, sha256: str) -> Path:
        """Where a verified model with this hash is kept."""
        return self.root / "models" / f"{sha256}.tflite"

    def has_model(self, sha256: str) -> bool:
        """True when a model file with exactly this content is stored."""
        path = self.model_path(sha256)
        return path.is_file() and sha256_file(path) == sha256

    def stage_model(self, sha256: str, data: bytes) -> Path:
        """Write a verified model file atomically and return its path."""
        path = self.model_path(sha256)
        atomic_write(path, data)
        return path

    def stage_part(self, sha256: str, part: Path, size: int) -> Path:
        """Make a verified, complete download file the model file ``sha256`` (no copy).

        Cut to ``size``, fsynced, renamed into ``models/`` (one file system) and the
        directory fsynced: after a power cut the model file is there whole or not at all.
        """
        fd = os.open(part, os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        path = self.model_path(sha256)
        part.replace(path)
        fsync_dir(path.parent)
        return path

    def download_dir(self, sha256: str) -> Path:
        """Folder for a partial download of this model."""
        return self.root / "downloads" / sha256

    def drop_download(self, sha256: str) -> None:
        """Forget a partial download."""
        shutil.rmtree(self.download_dir(sha256), ignore_errors=True)

    def _read_pointer(self, name: str) -> Pointer | None:
        path = self.root / name
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_bytes())
            return Pointer(
                sha256=str(raw["sha256"]),
                name=str(raw["name"]),
                version=int(raw["version"]),
                manifest=dict(raw["manifest"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is unreadable ({exc}); remove it to start clean") from exc

    def active(self) -> Pointer | None:
        """The model being served, if any."""
        return self._read_pointer("active.json")

    def previous(self) -> Pointer | None:
        """The model served before the active one, if any."""
        return self._read_pointer("previous.json")

    def activate(self, pointer: Pointer) -> None:
        """Make ``pointer`` the active model; the old one becomes ``previous``."""
        old = self.active()
        if old is not None and old.sha256 != pointer.sha256:
            atomic_write(self.root / "previous.json", old.to_json())
        atomic_write(self.root / "active.json", pointer.to_json(), fault_point="during_activate")
        self.prune_models()

    def revert(self) -> Pointer | None:
        """Serve the previous model again (the active one failed); return it, or None.

        ``previous.json`` becomes ``active.json`` (atomically) and is removed, so the failed
        model is no fallback any more; with no usable previous model nothing is active
        afterwards. The anti-rollback floor is left as it is.
        """
        previous = self.previous()
        if previous is not None and self.has_model(previous.sha256):
            atomic_write(self.root / "active.json", previous.to_json())
            (self.root / "previous.json").unlink(missing_ok=True)
            fsync_dir(self.root)
            self.prune_models()
            return previous
        (self.root / "active.json").unlink(missing_ok=True)
        (self.root / "previous.json").unlink(missing_ok=True)
        fsync_dir(self.root)
        self.prune_models()
        return None

    def prune_models(self) -> None:
        """Delete model files that are neither active nor previous."""
        keep = {p.sha256 for p in (self.active(), self.previous()) if p is not None}
        for path in (self.root / "models").glob("*.tflite"):
            if path.stem not in keep:
                path.unlink(missing_ok=True)

    def remember_bad_model(self, sha256: str, record: dict[str, Any]) -> None:
        """Persist that model ``sha256`` failed (``record``: version, step, reason, message).

        Kept across restarts so that a model that crashes its health check is not checked
        again after every reboot; only the newest ``MAX_BAD_MODELS`` are kept.
        """
        bad = self.bad_models()
        bad[sha256] = record
        newest = sorted(bad.items(), key=lambda kv: int(kv[1]["version"]))[-MAX_BAD_MODELS:]
        atomic_write(self.root / BAD_MODELS, json.dumps(dict(newest), sort_keys=True).encode())

    def bad_models(self) -> dict[str, dict[str, Any]]:
        """sha256 -> what ``remember_bad_model`` recorded ({} if none or unreadable)."""
        try:
            raw = json.loads((self.root / BAD_MODELS).read_bytes())
            return {str(k): dict(v) | {"version": int(v["version"])} for k, v in raw.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # Missing or damaged: at worst a bad model is health-checked once more.
            return {}

    def note_ignored(self, manifest: dict[str, Any]) -> int:
        """Count a signed manifest that was not news (older than the active model).

        Args:
            manifest: What to remember about the last one (name, version, why, when).

        Returns:
            How many were ignored so far (persisted in ``ignored.json``).
        """
        count = int(self.ignored()["count"]) + 1
        data = {"count": count, "last": manifest}
        atomic_write(self.root / "ignored.json", json.dumps(data, sort_keys=True).encode())
        return count

    def ignored(self) -> dict[str, Any]:
        """``{"count": n, "last": {...} | None}``: stale manifests ignored so far."""
        path = self.root / "ignored.json"
        try:
            raw = json.loads(path.read_bytes())
            return {"count": int(raw["count"]), "last": dict(raw["last"])}
        except (OSError, ValueError, KeyError, TypeError):
            # Missing, or unreadable: only a counter, so start again rather than fail.
            return {"count": 0, "last": None}

    def floor(self) -> tuple[int, float]:
        """(highest activated version, signing-time floor) for anti-rollback."""
        path = self.root / "antirollback.json"
        active = self.active()
        # The pointer is written before the floor: after a crash between the two, the
        # active model's version is the floor.
        version, time_floor = (active.version if active else 0), 0.0
        if path.exists():
            raw = json.loads(path.read_bytes())
            version, time_floor = max(version, int(raw["version"])), float(raw["time_floor"])
        return version, time_floor

    def raise_floor(self, version: int, time_floor: float) -> None:
        """Persist a higher anti-rollback version / time floor (never lowers them)."""
        cur_version, cur_time = self.floor()
        data = {"version": max(cur_version, version), "time_floor": max(cur_time, time_floor)}
        atomic_write(self.root / "antirollback.json", json.dumps(data).encode())
