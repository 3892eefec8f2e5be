"""A delta download (manifest v2): copy the chunks held locally, fetch only the rest.

For a v2 manifest the variant lists its content-defined chunks (sha256, offset, length;
docs/protocol.md 7.5). :class:`DeltaDownload` fills ``downloads/<sha256>/model.part`` from

1. the part file itself (a download interrupted, even by kill -9: every chunk is checked
   against its sha256 in place, so nothing needs to have been saved beside it),
2. the active and previous models (their chunk lists from the manifests they were
   installed with, or made here with the same chunker when that manifest had none),

and fetches every chunk still missing from ``{prefix}/models/{chunk sha256}/chunks/0``
(a raw payload, checked against its name). Every local chunk is read and hashed before it
is used, so a damaged local copy is simply fetched. Memory stays bounded: one chunk at a
time is read, hashed and written (a model with no stored chunk list is read whole once,
one model at a time). The whole-file sha256 is then checked by the updater exactly as for
a full download, before the health check.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.device.download import PART_FILE, ChunkFetch, Download
from edgefleet.device.store import atomic_write
from edgefleet.shared.chunklist import ChunkEntry, make_chunk_list
from edgefleet.shared.errors import IntegrityError
from edgefleet.shared.messages import ChunkRequest

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.device.store import StateStore
    from edgefleet.shared.manifest import Manifest, ModelVariant
    from edgefleet.shared.topics import Topics

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.signed"


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def _sha256_stream(path: Path, block: int = 64 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


def _write(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view, done = memoryview(data), 0
        while done < len(data):
            done += os.pwrite(fd, view[done:], offset + done)
    finally:
        os.close(fd)


def held_models(store: StateStore) -> list[str]:
    """sha256 of the model files here (active, previous): what the host may diff against."""
    pointers = (store.active(), store.previous())
    shas = [p.sha256 for p in pointers if p is not None and store.model_path(p.sha256).is_file()]
    return list(dict.fromkeys(shas))


def held_chunk_lists(store: StateStore) -> list[tuple[Path, list[ChunkEntry]]]:
    """The local models (active, previous) with the chunk list of each."""
    out = []
    for pointer in (store.active(), store.previous()):
        if pointer is None:
            continue
        path = store.model_path(pointer.sha256)  # each chunk is checked as it is read
        if not path.is_file():
            continue
        listed = _listed(pointer.manifest, pointer.sha256)
        if listed is None:
            try:
                listed = make_chunk_list(path.read_bytes())
            except OSError as exc:
                log.warning("cannot read local model %s: %s", path.name, exc)
                continue
        out.append((path, listed))
    return out


def _listed(document: dict[str, Any], sha256: str) -> list[ChunkEntry] | None:
    for variant in document.get("variants") or []:
        if isinstance(variant, dict) and variant.get("sha256") == sha256 and variant.get("chunks"):
            return [(str(c[0]), int(c[1]), int(c[2])) for c in variant["chunks"]]
    return None


@dataclass
class DeltaDownload(ChunkFetch):
    """The delta download of one v2 variant (see the module docstring)."""

    manifest: Manifest
    envelope_sha: str
    variant: ModelVariant
    directory: Path
    last_activity: float
    missing: dict[str, list[int]] = field(default_factory=dict)  # chunk sha -> entry indexes
    reported_progress: float = 0.0
    requests: int = 0
    local_bytes: int = 0  # bytes taken from the device itself (part file, held models)
    entries: list[ChunkEntry] = field(default_factory=list)  # the variant's chunk list
    fetching: list[str] = field(default_factory=list)  # chunks subscribed to (sha256)

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
        store: StateStore,
    ) -> DeltaDownload:
        """Begin or resume: everything found locally is in the part file on return.

        Raises:
            OSError: the directory, manifest or part file cannot be written.
        """
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / MANIFEST_FILE, envelope)
        job = cls(manifest, envelope_sha, variant, directory, now)
        job.entries = list(variant.chunks or [])
        part = job.part
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != variant.size:
                os.ftruncate(fd, variant.size)
        finally:
            os.close(fd)
        entries = job.entries
        for i, (sha, offset, length) in enumerate(entries):
            if hashlib.sha256(_read(part, offset, length)).hexdigest() == sha:
                job.local_bytes += length
            else:
                job.missing.setdefault(sha, []).append(i)
        if job.missing:
            job._copy_held(store)
        job.fetching = sorted(job.missing)
        log.info(
            "delta download of %s: %d of %d bytes found locally, %d chunk(s) to fetch",
            variant.sha256[:12],
            job.local_bytes,
            variant.size,
            len(job.missing),
        )
        return job

    def _copy_held(self, store: StateStore) -> None:
        for path, listed in held_chunk_lists(store):
            for sha, offset, length in listed:
                if sha not in self.missing:
                    continue
                try:
                    data = _read(path, offset, length)
                except OSError:
                    break
                if hashlib.sha256(data).hexdigest() != sha:
                    log.warning("local chunk %s of %s is damaged: fetching it", sha[:12], path.name)
                    continue
                self._put(sha, data, local=True)

    def _put(self, sha: str, data: bytes, *, local: bool) -> None:
        for i in self.missing.pop(sha):
            _write(self.part, self.entries[i][1], data)
            self.local_bytes += len(data) if local else 0

    @property
    def part(self) -> Path:
        """The file the chunks are written into."""
        return self.directory / PART_FILE

    @property
    def complete(self) -> bool:
        """Every chunk is in the part file."""
        return not self.missing

    @property
    def progress(self) -> float:
        """The share of chunks in place, 0.0 to 1.0."""
        total = self.variant.chunk_count
        return (total - sum(len(v) for v in self.missing.values())) / total

    def filters(self, topics: Topics) -> list[str]:
        """One subscription per chunk that was missing when the download (re)started."""
        return [topics.chunk(sha, 0) for sha in self.fetching]

    def add(self, raw: bytes, now: float) -> bool:
        """Take one chunk payload; True if it was missing (and is now written)."""
        sha = hashlib.sha256(raw).hexdigest()
        if sha not in self.missing:
            return False
        self._put(sha, bytes(raw), local=False)
        self.last_activity = now
        return True

    def request_missing(self, device_id: str, now: float) -> ChunkRequest:
        """Ask for the chunks still missing, by their index in the manifest's list."""
        return self._request(device_id, now, sorted(i for v in self.missing.values() for i in v))

    def verify(self) -> None:
        """Check the whole part file against the manifest's sha256, streaming it.

        Raises:
            IntegrityError: it does not match (the chunks that differ are fetched again).
            OSError: it cannot be read.
        """
        if self.part.stat().st_size == self.variant.size and (
            _sha256_stream(self.part) == self.variant.sha256
        ):
            return
        bad = [
            i
            for i, (sha, offset, length) in enumerate(self.entries)
            if hashlib.sha256(_read(self.part, offset, length)).hexdigest() != sha
        ]
        for i in bad:
            self.missing.setdefault(self.entries[i][0], []).append(i)
        msg = f"{self.part.name} does not hash to the manifest's sha256; chunks {bad[:10]} differ"
        raise IntegrityError(msg, indexes=tuple(bad))


Job = Download | DeltaDownload


def chunk_filters(job: Job, topics: Topics) -> list[str]:
    """What to subscribe to for ``job``'s chunks."""
    if isinstance(job, DeltaDownload):
        return job.filters(topics)
    return [topics.chunks_filter(job.variant.sha256)]
