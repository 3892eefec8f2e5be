"""One model download under way: chunks collected in a part file, saved so a restart resumes.

A download lives in ``downloads/<sha256>/`` of the state directory (see
:class:`~edgefleet.device.store.StateStore`): the signed manifest it is for, the chunks at
their places in ``model.part`` and the reassembler's state (which chunks arrived, with
their sha256). :class:`Download` knows nothing of MQTT or of the update states: the
:class:`~edgefleet.device.updater.Updater` feeds it chunks, asks it which are missing and
has it check the whole file before staging it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.device.store import PartFileChunkStore, atomic_write, grow_in_place, sha256_file
from edgefleet.shared.chunks import MAX_CHUNKS, Reassembler
from edgefleet.shared.errors import ChunkError, DecodeError, IntegrityError
from edgefleet.shared.messages import ChunkRequest

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.shared.manifest import Manifest, ModelVariant

log = logging.getLogger(__name__)

MAX_REQUEST_INDEXES = 4096
STATE_FILE = "reassembler.state"
PART_FILE = "model.part"  # the chunks at their places; renamed into models/ when verified
MANIFEST_FILE = "manifest.signed"
# The reassembler state is saved after every new chunk (exact if the process dies) and
# fsynced every this many seconds of a download (100 agents downloading at once on one
# disk spent more time in these fsyncs than in anything else): a checkpoint is a whole
# new file (temp, fsync, rename), the saves in between grow it in place (one pwrite: the
# state only gets longer). Chunks are never fsynced. After a power cut the resumed
# download checks each chunk the state lists against its sha256 and fetches again what
# did not reach the disk; a state that does not parse starts the download over. The
# finished file is fsynced when it is staged.
CHECKPOINT_S = 5.0
PROGRESS_STEP = 0.1  # a "downloading" report for every tenth of the file


class ChunkFetch:
    """What a whole download and a delta download share: progress reports, chunk requests.

    The subclass (a dataclass) has these fields and says how far along it is in ``progress``.
    """

    variant: ModelVariant
    last_activity: float
    reported_progress: float
    requests: int

    @property
    def progress(self) -> float:
        """The share of chunks in place, 0.0 to 1.0."""
        raise NotImplementedError

    def progress_due(self) -> bool:
        """True once per ``PROGRESS_STEP`` of progress: time to report it."""
        if self.progress - self.reported_progress < PROGRESS_STEP:
            return False
        self.reported_progress = self.progress
        return True

    def _request(self, device_id: str, now: float, missing: list[int]) -> ChunkRequest:
        """Ask for the first ``MAX_REQUEST_INDEXES`` of ``missing`` (indexes in the manifest)."""
        self.last_activity = now
        self.requests += 1
        indexes = missing[:MAX_REQUEST_INDEXES]
        return ChunkRequest(device_id=device_id, sha256=self.variant.sha256, indexes=indexes)


@dataclass
class Download(ChunkFetch):
    """The download of one model variant (see the module docstring)."""

    manifest: Manifest
    envelope_sha: str
    variant: ModelVariant
    reassembler: Reassembler
    directory: Path
    last_activity: float
    reported_progress: float = 0.0
    requests: int = 0
    synced_at: float = 0.0  # when the state was last saved with an fsync
    saved_size: int = 0  # bytes of the saved state (0: write a new file)

    @classmethod
    def start(
        cls,
        manifest: Manifest,
        variant: ModelVariant,
        envelope: bytes,
        envelope_sha: str,
        *,
        directory: Path,
        now: float,
        max_chunks: int = MAX_CHUNKS,
    ) -> Download:
        """Begin, or resume from what ``directory`` holds, the download of ``variant``.

        Raises:
            OSError: the directory or the manifest cannot be written.
            ValueError: the variant has more than ``max_chunks`` chunks (checked first, so
                nothing is written for it).
        """
        if variant.chunk_count > min(max_chunks, MAX_CHUNKS):
            msg = f"{variant.chunk_count} chunks exceed the limit of {min(max_chunks, MAX_CHUNKS)}"
            raise ValueError(msg)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / MANIFEST_FILE, envelope)
        reassembler = _reassembler(variant, directory)
        return cls(manifest, envelope_sha, variant, reassembler, directory, now, synced_at=now)

    @property
    def part(self) -> Path:
        """The file the chunks are written into."""
        return self.directory / PART_FILE

    @property
    def complete(self) -> bool:
        """Every chunk arrived."""
        return self.reassembler.complete

    @property
    def progress(self) -> float:
        """The share of chunks received, 0.0 to 1.0."""
        return self.reassembler.progress

    def add(self, raw: bytes, now: float) -> bool:
        """Take one chunk as it came off the wire; True if it was new (and is saved).

        A chunk that does not belong (another file, a bad digest) is logged and ignored.

        Raises:
            OSError: the chunk or the state cannot be written (disk full, I/O error).
        """
        try:
            new = self.reassembler.add(raw)
        except ChunkError as exc:
            log.info("ignoring a chunk that does not belong: %s", exc)
            return False
        if new:
            self._save_state(now)
        return new

    def request_missing(self, device_id: str, now: float) -> ChunkRequest:
        """Ask for the chunks still missing (the first ``MAX_REQUEST_INDEXES`` of them)."""
        return self._request(device_id, now, self.reassembler.missing())

    def verify(self) -> None:
        """Check the whole downloaded file against the manifest's sha256, in one pass.

        That file, cut to its size, is what ``stage_part`` renames into ``models/``. If it
        does not match, the chunk-by-chunk check says which chunks are damaged.

        Raises:
            IntegrityError: it does not match (the damaged chunks, or all, are forgotten).
            OSError: it cannot be read.
        """
        part = self.part
        size = self.variant.size
        if part.stat().st_size == size and sha256_file(part) == self.variant.sha256:
            return
        self.reassembler.verify()  # raises, naming the damaged chunks (or all of them)
        self.reassembler.reset()
        msg = f"{part.name} is not the manifest's {size} bytes; all chunks discarded"
        raise IntegrityError(msg, indexes=tuple(range(self.reassembler.count)))

    def _save_state(self, now: float) -> None:
        state = self.reassembler.state()
        path = self.directory / STATE_FILE
        # A complete download is staged (fsynced) next: no checkpoint for it.
        checkpoint = not self.reassembler.complete and now - self.synced_at >= CHECKPOINT_S
        if checkpoint or not 0 < self.saved_size <= len(state):
            atomic_write(path, state, durable=checkpoint)
            self.synced_at = now if checkpoint else self.synced_at
        else:
            grow_in_place(path, state)
        self.saved_size = len(state)


def _reassembler(variant: ModelVariant, directory: Path) -> Reassembler:
    """The reassembler saved in ``directory`` if usable and for ``variant``, else a new one."""
    chunk_store = PartFileChunkStore(
        directory / PART_FILE, size=variant.size, chunk_size=variant.chunk_size
    )
    saved = directory / STATE_FILE
    if saved.exists():
        try:
            restored = Reassembler.restore(
                _stored_chunks(saved.read_bytes(), chunk_store), chunk_store
            )
        except (DecodeError, ChunkError) as exc:
            log.warning("partial download state unusable, starting over: %s", exc)
        else:
            wanted = (variant.sha256, variant.size, variant.chunk_size)
            if (restored.sha256, restored.size, restored.chunk_size) == wanted:
                return restored
            log.warning("partial download state is for another file, starting over")
        chunk_store.clear()
    return Reassembler(
        sha256=variant.sha256,
        size=variant.size,
        chunk_size=variant.chunk_size,
        store=chunk_store,
    )


def _stored_chunks(state: bytes, chunks: PartFileChunkStore) -> bytes:
    """The saved reassembler state without the chunks that are not on disk as it says.

    Chunks are not fsynced: after a power cut a chunk the state lists may be missing,
    empty or stale. Those are dropped here (and fetched again), never used. A state that
    is not even shaped right is returned as it is, for ``Reassembler.restore`` to refuse.
    """
    try:
        raw = json.loads(state)
        entries = raw["received"]
        kept = [e for e in entries if chunks.matches(int(e[0]), bytes.fromhex(e[1]))]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return state
    if len(kept) == len(entries):
        return state
    log.warning(
        "%d of %d saved chunks are missing or damaged on disk (power cut?): fetching them again",
        len(entries) - len(kept),
        len(entries),
    )
    raw["received"] = kept
    return json.dumps(raw).encode()
