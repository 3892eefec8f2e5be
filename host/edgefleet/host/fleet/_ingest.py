"""Fleet state from the retained status topics, prediction ingestion with acks, remote input.

Ingestion is at-least-once on the wire and exactly-once in the store: records are stored
(unique on device, boot id, sequence) and committed, and only then acknowledged to the
device, which deletes them from its outbox on the ack. Several workers can share the load
through the MQTT shared subscription ``$share/edgefleet/{p}/devices/+/predictions``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.shared.errors import DecodeError, TopicError
from edgefleet.shared.messages import (
    MAX_SEQS,
    Ack,
    ChunkRequest,
    PredictionRecord,
    decode,
    decode_predictions,
    encode,
)
from edgefleet.shared.topics import CHUNK_REQUEST, PREDICTIONS

if TYPE_CHECKING:
    import threading

    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.host.fleet._store import PredictionStore
    from edgefleet.shared.connection import Connection, Message

log = logging.getLogger(__name__)

IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".npy": "npy"}
SHARE_GROUP = "edgefleet"


@dataclass
class IngestStats:
    """Counters of one ingestion worker."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    acked: int = 0
    malformed: int = 0
    chunk_requests: int = 0
    failed_batches: int = 0


@dataclass
class Ingestor:
    """Stores prediction records, commits, then acks them (see the module docstring).

    Args:
        conn: A connected client (persistent session recommended).
        fleet: Gives topics, and answers chunk re-requests from the host registry.
        store: Where records go.
        batch_max: Records per commit at most.
        batch_wait_s: How long to wait for more records before committing a batch.
    """

    conn: Connection
    fleet: Fleet
    store: PredictionStore
    batch_max: int = 500
    batch_wait_s: float = 0.05
    stats: IngestStats = field(default_factory=IngestStats)

    def subscribe(self, *, shared: bool = True) -> None:
        """Subscribe to every device's predictions and chunk requests (shared by workers)."""
        topics = self.fleet.topics
        filters = [topics.all_predictions(), topics.all_chunk_requests()]
        if shared:
            filters = [topics.shared(f, group=SHARE_GROUP) for f in filters]
        self.conn.subscribe(*filters)

    def run(
        self,
        *,
        stop: threading.Event,
        on_batch: Callable[[IngestStats], None] | None = None,
    ) -> IngestStats:
        """Ingest until ``stop`` is set."""
        while not stop.is_set():
            batch = self._collect(timeout=0.5)
            if not batch:
                continue
            try:
                self.commit_and_ack(batch)
            except FleetError as exc:
                # Not stored, so not acked: the devices keep the records and send them again.
                log.error("%s; %d records left to the devices' outboxes", exc, len(batch))  # noqa: TRY400
                self.stats.failed_batches += 1
                stop.wait(1.0)
                continue
            if on_batch is not None:
                on_batch(self.stats)
        return self.stats

    def _collect(self, *, timeout: float) -> list[PredictionRecord]:
        batch: list[PredictionRecord] = []
        msg = self.conn.next_message(timeout)
        while msg is not None:
            batch.extend(self._take(msg))
            if len(batch) >= self.batch_max:
                break
            msg = self.conn.next_message(self.batch_wait_s)
        return batch

    def _take(self, msg: Message) -> list[PredictionRecord]:
        """The records of one message: a single record or a batch, all or nothing."""
        try:
            parsed = self.fleet.topics.parse(msg.topic)
            if parsed.kind == CHUNK_REQUEST:
                self.stats.chunk_requests += 1
                self.fleet.answer_chunk_request(decode(ChunkRequest, msg.payload))
                return []
            if parsed.kind != PREDICTIONS:
                return []
            records = decode_predictions(msg.payload)
        except (DecodeError, TopicError) as exc:
            self.stats.malformed += 1
            log.warning("ignoring malformed message on %s: %s", msg.topic, exc)
            return []
        strangers = {r.device_id for r in records} - {parsed.device_id}
        if strangers:
            self.stats.malformed += 1
            log.warning("records on %s claim device %s; ignored", msg.topic, min(strangers))
            return []
        self.stats.received += len(records)
        return records

    def commit_and_ack(self, batch: list[PredictionRecord]) -> None:
        """Store a batch (one commit), then ack every record in it, duplicates included."""
        new = self.store.add(batch)
        self.stats.stored += new
        self.stats.duplicates += len(batch) - new
        seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        for record in batch:
            seqs[record.device_id, record.boot_id].append(record.seq)
        for (device_id, boot_id), numbers in seqs.items():
            for start in range(0, len(numbers), MAX_SEQS):
                ack = Ack(
                    device_id=device_id,
                    boot_id=boot_id,
                    seqs=sorted(set(numbers[start : start + MAX_SEQS])),
                )
                self.conn.publish(self.fleet.topics.predictions_ack(device_id), encode(ack))
        self.stats.acked += len(batch)
