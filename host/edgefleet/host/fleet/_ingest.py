"""Fleet state from the retained status topics, prediction ingestion with acks, remote input.

Ingestion is at-least-once on the wire and exactly-once in the store: records are stored
(unique on device, boot id, sequence) and committed, and only then acknowledged to the
device, which deletes them from its outbox on the ack. Several workers can share the load
through the MQTT shared subscription ``$share/edgefleet/{p}/devices/+/predictions``.

No message a device sends can stop a worker (docs/fleet.md, "Bad records"):

- a payload that does not decode (bad JSON, schema, an integer outside 0 .. 2^63-1, a record
  naming another device) is counted as malformed, logged and dropped **without an ack**:
  nothing in it can be trusted, and a valid resend is stored normally;
- a record that decodes but that the store refuses for a reason of its own (any exception
  but ``FleetError``) is counted as malformed, logged with the reason and **acked**, so the
  device deletes it instead of resending a record no host can ever take;
- a database failure (``FleetError`` from the store) acks nothing: the devices keep the
  records and send them again; the worker waits a second and goes on.

Input thumbnails (``{p}/devices/+/thumbnails``, docs/protocol.md 4.3.2) are not part of
this exactly-once path: the ones collected with a batch are stored in the store's
``thumbnails`` side table (if the store keeps them) in one commit just before the batch's,
never acked, and whatever goes wrong with one (it does not decode, names another device,
the table refuses it) is counted, logged and dropped. A
thumbnail may arrive before its record, or with no record at all; the store keeps it
keyed by the record's identity either way (bounded per device).

Warnings are rate-limited per device (:class:`WarningBudget`), so a flood of bad messages
costs counters, not log disk.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._store import ThumbnailStore
from edgefleet.shared.errors import DecodeError, TopicError
from edgefleet.shared.messages import (
    MAX_COUNT,
    MAX_SEQS,
    Ack,
    ChunkRequest,
    InputThumbnail,
    PredictionRecord,
    decode,
    decode_predictions,
    encode,
)
from edgefleet.shared.topics import CHUNK_REQUEST, PREDICTIONS, THUMBNAILS

if TYPE_CHECKING:
    import threading

    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.host.fleet._store import PredictionStore
    from edgefleet.shared.connection import Connection, Message

log = logging.getLogger(__name__)

SHARE_GROUP = "edgefleet"
DB_RETRY_S = 1.0  # pause after a database failure before taking more messages


@dataclass
class IngestStats:
    """Counters of one ingestion worker.

    ``malformed`` counts messages that did not decode and records the store refused for a
    reason of their own; ``unstorable`` is the second kind alone (acked and dropped).
    ``errors`` counts unexpected failures the worker survived. ``thumbnails`` counts input
    thumbnails stored, ``bad_thumbnails`` the ones dropped (undecodable, naming another
    device, or refused by the store).
    """

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    acked: int = 0
    malformed: int = 0
    unstorable: int = 0
    chunk_requests: int = 0
    failed_batches: int = 0
    errors: int = 0
    thumbnails: int = 0
    bad_thumbnails: int = 0


@dataclass
class WarningBudget:
    """At most ``per_window`` warnings per key (a device, a topic) per ``window_s`` seconds.

    The first suppressed warning of a window says so; the counters keep counting.
    """

    per_window: int = 10
    window_s: float = 60.0
    _seen: dict[str, tuple[float, int]] = field(default_factory=dict)

    def allow(self, key: str, *, now: float | None = None) -> bool:
        """True if a warning about ``key`` may be logged now."""
        now = time.monotonic() if now is None else now
        start, n = self._seen.get(key, (now, 0))
        if now - start >= self.window_s:
            start, n = now, 0
        self._seen[key] = (start, n + 1)
        if n == self.per_window:
            log.warning(
                "more bad messages from %s; not logging them for %.0f s (still counted)",
                key,
                self.window_s - (now - start),
            )
        if len(self._seen) > 10_000:  # noqa: PLR2004 - a bound, so keys cannot grow memory
            self._seen.clear()
        return n < self.per_window


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
    warnings: WarningBudget = field(default_factory=WarningBudget)
    _thumbs: list[tuple[InputThumbnail, float]] = field(default_factory=list, repr=False)

    def subscribe(self, *, shared: bool = True) -> None:
        """Subscribe to every device's predictions and chunk requests (shared by workers).

        Also to their input thumbnails, when the store keeps them.
        """
        topics = self.fleet.topics
        filters = [topics.all_predictions(), topics.all_chunk_requests()]
        if isinstance(self.store, ThumbnailStore):
            filters.append(topics.all_thumbnails())
        if shared:
            filters = [topics.shared(f, group=SHARE_GROUP) for f in filters]
        self.conn.subscribe(*filters)

    def run(
        self,
        *,
        stop: threading.Event,
        on_batch: Callable[[IngestStats], None] | None = None,
    ) -> IngestStats:
        """Ingest until ``stop`` is set; nothing a device sends ends the loop."""
        while not stop.is_set():
            try:
                batch = self._collect(timeout=0.5)
                self._store_thumbnails()
                if not batch:
                    continue
                self.commit_and_ack(batch)
            except FleetError as exc:
                # Not stored (or not acked), so the devices keep the records and resend them.
                log.error("%s; records left to the devices' outboxes", exc)  # noqa: TRY400
                self.stats.failed_batches += 1
                stop.wait(DB_RETRY_S)
                continue
            except Exception:
                # A bug must not make the listener deaf: unacked records come again.
                log.exception("unexpected error in the ingest loop; going on")
                self.stats.errors += 1
                stop.wait(DB_RETRY_S)
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

    def _warn(self, key: str, text: str, *args: object) -> None:
        if self.warnings.allow(key):
            log.warning(text, *args)

    def _take(self, msg: Message) -> list[PredictionRecord]:
        """The records of one message: a single record or a batch, all or nothing."""
        try:
            parsed = self.fleet.topics.parse(msg.topic)
            if parsed.kind == CHUNK_REQUEST:
                self.stats.chunk_requests += 1
                self._answer(msg, decode(ChunkRequest, msg.payload), parsed.device_id)
                return []
            if parsed.kind == THUMBNAILS:
                self._thumbnail(msg, parsed.device_id)
                return []
            if parsed.kind != PREDICTIONS:
                return []
            records = decode_predictions(msg.payload)
        except (DecodeError, TopicError) as exc:
            self.stats.malformed += 1
            self._warn(msg.topic, "ignoring malformed message on %s: %s", msg.topic, exc)
            return []
        strangers = {r.device_id for r in records} - {parsed.device_id}
        if strangers:
            self.stats.malformed += 1
            self._warn(
                msg.topic, "records on %s claim device %s; ignored", msg.topic, min(strangers)
            )
            return []
        self.stats.received += len(records)
        return records

    def _thumbnail(self, msg: Message, device_id: str | None) -> None:
        """Take one input thumbnail for the next commit, or drop it (counted, logged)."""
        try:
            thumb = decode(InputThumbnail, msg.payload)
        except DecodeError as exc:
            problem = str(exc)
        else:
            if thumb.device_id == device_id:
                self._thumbs.append((thumb, msg.received_at))
                return
            problem = f"it names device {thumb.device_id!r}"
        self.stats.bad_thumbnails += 1
        self._warn(msg.topic, "dropping the thumbnail on %s: %s", msg.topic, problem)

    def _store_thumbnails(self) -> None:
        """Store the thumbnails collected with a batch (one commit); never raises.

        Called before the records' commit, so a page that shows a new record finds its
        picture.
        """
        thumbs, self._thumbs = self._thumbs, []
        if not thumbs or not isinstance(self.store, ThumbnailStore):
            return
        try:
            new = self.store.add_thumbnails(thumbs)
        except Exception as exc:  # noqa: BLE001 - a thumbnail is best effort, never fatal
            self.stats.bad_thumbnails += len(thumbs)
            self._warn("thumbnails", "dropping %d thumbnails: %s", len(thumbs), exc)
        else:
            self.stats.thumbnails += new

    def _answer(self, msg: Message, request: ChunkRequest, device_id: str | None) -> None:
        try:
            self.fleet.answer_chunk_request(request, device_id=device_id)
        except Exception as exc:  # noqa: BLE001 - not connected, registry: never fatal
            self.stats.errors += 1
            self._warn(msg.topic, "cannot answer the chunk request on %s: %s", msg.topic, exc)

    def commit_and_ack(self, batch: list[PredictionRecord]) -> None:
        """Store a batch (one commit), then ack every record in it, duplicates included.

        A record the store refuses for its own reason is logged, counted and acked (see the
        module docstring); the rest of the batch is stored normally.

        Raises:
            FleetError: The database failed; nothing of what failed is acked.
        """
        refused = 0
        try:
            new = self.store.add(batch)
        except FleetError:
            raise
        except Exception:  # noqa: BLE001 - some record is unstorable: find which
            new, refused = self._add_one_by_one(batch)
        self.stats.stored += new
        self.stats.duplicates += len(batch) - new - refused
        self._ack(batch)

    def _add_one_by_one(self, batch: list[PredictionRecord]) -> tuple[int, int]:
        """Store each record alone; return (new records, records refused)."""
        new = refused = 0
        for record in batch:
            try:
                new += self.store.add([record])
            except FleetError:
                raise
            except Exception as exc:  # noqa: BLE001 - the record's own problem, not the DB's
                refused += 1
                self.stats.malformed += 1
                self.stats.unstorable += 1
                self._warn(
                    record.device_id,
                    "cannot store record %s/%s seq %s (%s: %s); acked and dropped: %.2000s",
                    record.device_id,
                    record.boot_id,
                    record.seq,
                    type(exc).__name__,
                    exc,
                    _json_of(record),
                )
        return new, refused

    def _ack(self, batch: list[PredictionRecord]) -> None:
        seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        for record in batch:
            # A seq an Ack cannot carry cannot be acked (the schema refuses it at decode).
            if isinstance(record.seq, int) and 0 <= record.seq <= MAX_COUNT:
                seqs[record.device_id, record.boot_id].append(record.seq)
        for (device_id, boot_id), numbers in seqs.items():
            for start in range(0, len(numbers), MAX_SEQS):
                ack = Ack(
                    device_id=device_id,
                    boot_id=boot_id,
                    seqs=sorted(set(numbers[start : start + MAX_SEQS])),
                )
                self.conn.publish(self.fleet.topics.predictions_ack(device_id), encode(ack))
                self.stats.acked += len(numbers[start : start + MAX_SEQS])


def _json_of(record: PredictionRecord) -> str:
    try:
        return record.model_dump_json()
    except Exception as exc:  # noqa: BLE001 - only for the log line
        return f"<not serialisable: {exc}>"
