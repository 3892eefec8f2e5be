"""Delta pushes (manifest v2): sign chunk lists, send each device only the chunks it lacks.

The host signs a v2 manifest that lists every variant's content-defined chunks
(:func:`edgefleet.shared.chunklist.make_chunk_list`). Each device reports in ``reported``
the sha256 of the model files it holds (``held``); for those the host still keeps, it
computes their chunk lists the same way, so it knows per device which chunks, and how many
bytes, the device needs. It publishes, retained and once for all targets, the union of
those chunks on ``{prefix}/models/{chunk sha256}/chunks/0`` (raw bytes; a chunk shared by
several models or variants has one topic and is published once). A device whose holdings
are unknown, and every device under ``--full``, is counted (and served) the whole file.
Each device's figure is recorded in the registry (table ``transfers``); chunks a host sends a
device again on its request (``push --wait``, ``predictions listen``, any process answering
chunk requests) are added to it (table ``resent``,
:meth:`edgefleet.host.fleet._pushes.Registry.record_resent`), so the registry holds the bytes
actually sent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.shared.chunklist import MAX_LISTED_CHUNKS, ChunkEntry, make_chunk_list

if TYPE_CHECKING:
    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.shared.manifest import Manifest, ModelVariant


@dataclass(frozen=True)
class DeviceTransfer:
    """What one device needs of a push: its variant, what it holds, the bytes to send."""

    device_id: str
    sha256: str
    full_bytes: int
    send_bytes: int
    known: bool  # False: the device reported no model files this host knows

    @property
    def saving(self) -> float:
        """Share of the whole file the device does not need sent (0.0 .. 1.0)."""
        return 1.0 - self.send_bytes / self.full_bytes if self.full_bytes else 0.0

    def describe(self) -> str:
        """``pi-07  41.2 KiB of 271.5 KiB (saving 85 %)``."""
        base = "" if self.known else " (holds nothing known: whole file)"
        return (
            f"{self.device_id}  {_kib(self.send_bytes)} of {_kib(self.full_bytes)} "
            f"(saving {100 * self.saving:.0f} %){base}"
        )


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


@functools.lru_cache(maxsize=16)
def _chunks_of(data: bytes) -> tuple[ChunkEntry, ...]:
    return tuple(make_chunk_list(data))


def as_delta(template: Manifest, blobs: dict[str, bytes]) -> Manifest:
    """``template`` as a v2 manifest listing each variant's chunks.

    A file cut into more than ``MAX_LISTED_CHUNKS`` chunks keeps the v1 manifest (whole
    transfer): its list would not fit a manifest envelope.
    """
    variants = []
    for variant in template.variants:
        chunks = list(_chunks_of(blobs[variant.accelerator]))
        if len(chunks) > MAX_LISTED_CHUNKS:
            return template
        variants.append(
            variant.model_copy(
                update={
                    "chunks": chunks,
                    "chunk_count": len(chunks),
                    "chunk_size": max(c[2] for c in chunks),
                }
            )
        )
    return template.model_copy(update={"v": 2, "variants": variants})


def delta_capable(fleet: Fleet, targets: list[str]) -> bool:
    """True when every target has reported ``held`` (only agents that take v2 manifests do)."""
    reports = [fleet.view.reports.get(d) for d in targets]
    return bool(targets) and all(r is not None and r.held is not None for r in reports)


def held_chunks(fleet: Fleet, device_id: str) -> set[str] | None:
    """sha256 of every chunk the device holds, or None when none of its files is known."""
    report = fleet.view.reports.get(device_id)
    shas: set[str] | None = None
    for sha in (report.held or []) if report is not None else []:
        data = fleet.registry.model_bytes(sha)
        if data is not None:
            shas = (shas or set()) | {c[0] for c in _chunks_of(data)}
    return shas


def _variant_for(fleet: Fleet, manifest: Manifest, device_id: str) -> ModelVariant:
    status = fleet.view.statuses.get(device_id)
    by_accel: dict[str, ModelVariant] = {v.accelerator: v for v in manifest.variants}
    accel = status.accelerator if status is not None else None
    return by_accel.get(accel or "cpu") or by_accel.get("cpu") or manifest.variants[0]


def plan_transfers(
    fleet: Fleet, manifest: Manifest, targets: list[str], *, full: bool
) -> tuple[list[DeviceTransfer], set[str]]:
    """Per target the bytes to send, and the chunks (sha256) to publish for all of them."""
    transfers: list[DeviceTransfer] = []
    publish: set[str] = set()
    for device in targets:
        variant = _variant_for(fleet, manifest, device)
        chunks = variant.chunks or []
        held = None if full else held_chunks(fleet, device)
        need = {c[0]: c[2] for c in chunks if held is None or c[0] not in held}
        publish |= set(need)
        sizes = (variant.size, sum(need.values()))
        transfers.append(DeviceTransfer(device, variant.sha256, *sizes, known=held is not None))
    return transfers, publish


def publish_delta_chunks(
    fleet: Fleet, blobs: dict[str, bytes], manifest: Manifest, wanted: set[str] | None = None
) -> tuple[int, int]:
    """Publish each wanted chunk (None: all) once, retained, on its content topic.

    Returns:
        (bytes, messages) published.
    """
    infos, sent, done = [], 0, set()
    for variant in manifest.variants:
        data = blobs[variant.accelerator]
        fleet.registry.keep_model(variant.sha256, data)
        for sha, offset, length in variant.chunks or []:
            if (wanted is None or sha in wanted) and sha not in done:
                done.add(sha)
                payload = data[offset : offset + length]
                infos.append(fleet.conn.publish(fleet.topics.chunk(sha, 0), payload, retain=True))
                sent += length
    fleet.conn.wait_published(infos)
    return sent, len(infos)


def probe_topics(fleet: Fleet, variant: ModelVariant) -> list[str]:
    """Topics of a variant's first and last chunk: both retained means all were published."""
    if variant.chunks:
        return [fleet.topics.chunk(variant.chunks[i][0], 0) for i in (0, -1)]
    return [fleet.topics.chunk(variant.sha256, i) for i in {0, variant.chunk_count - 1}]


def clear_content_chunks(fleet: Fleet, variant: ModelVariant, keep: set[str]) -> list[Any]:
    """Clear the retained content chunks of ``variant`` that no model in ``keep`` lists."""
    still = {
        c[0]
        for record in fleet.registry.current_desired()
        for v in record.manifest.variants
        if v.sha256 in keep
        for c in v.chunks or []
    }
    drop = sorted({c[0] for c in variant.chunks or []} - still)
    return [fleet.conn.publish(fleet.topics.chunk(sha, 0), b"", retain=True) for sha in drop]


def answer_delta_request(
    fleet: Fleet, variant: ModelVariant, indexes: list[int]
) -> tuple[int, int]:
    """Publish (not retained) the listed chunks of a v2 variant a device asked for again.

    Returns:
        (chunks, bytes) published.
    """
    data = fleet.registry.model_bytes(variant.sha256)
    chunks = variant.chunks or []
    if data is None:
        return 0, 0
    sent = nbytes = 0
    for i in indexes:
        if 0 <= i < len(chunks):
            sha, offset, length = chunks[i]
            fleet.conn.publish(fleet.topics.chunk(sha, 0), data[offset : offset + length])
            sent += 1
            nbytes += length
    return sent, nbytes
