"""Fleet state from the retained status topics, prediction ingestion with acks, remote input.

Ingestion is at-least-once on the wire and exactly-once in the store: records are stored
(unique on device, boot id, sequence) and committed, and only then acknowledged to the
device, which deletes them from its outbox on the ack. Several workers can share the load
through the MQTT shared subscription ``$share/edgefleet/{p}/devices/+/predictions``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.host.errors import FleetError
from edgefleet.shared.errors import DecodeError, TopicError
from edgefleet.shared.messages import (
    MAX_SEQS,
    Ack,
    ChunkRequest,
    ImageMessage,
    PredictionRecord,
    Reported,
    Status,
    decode,
    decode_predictions,
    encode,
)
from edgefleet.shared.topics import CHUNK_REQUEST, PREDICTIONS

if TYPE_CHECKING:
    import threading

    from edgefleet.host.mqttconn import Connection, Message
    from edgefleet.host.publish import Fleet
    from edgefleet.host.store import PredictionStore

log = logging.getLogger(__name__)

IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".npy": "npy"}
SHARE_GROUP = "edgefleet"


# -- fleet status -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRow:
    """One line of ``edgefleet fleet status``."""

    device_id: str
    online: bool | None
    last_seen: float | None
    model: str | None
    version: int | None
    runtime: str | None
    accelerator: str | None
    latency_p50_ms: float | None
    outbox_depth: int | None
    dropped: int | None
    update: str | None
    groups: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """A dict for ``--json``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def device_rows(fleet: Fleet) -> list[DeviceRow]:
    """Join retained status, reported state and what the host saw before into table rows."""
    view = fleet.view
    known = fleet.registry.known_devices()
    rows = []
    for device_id in sorted(set(view.statuses) | set(view.reports) | set(known)):
        status = view.statuses.get(device_id)
        groups, last_json, last_seen = known.get(device_id, ([], None, None))
        # An offline device's last will carries only its id: fill in from its last status.
        last = status if status is not None and status.online else _parse_status(last_json)
        report = view.reports.get(device_id)
        seen = status.ts if status is not None and status.online and status.ts else last_seen
        rows.append(
            DeviceRow(
                device_id=device_id,
                online=status.online if status is not None else None,
                last_seen=seen,
                model=last.model_name if last else None,
                version=last.model_version if last else None,
                runtime=last.runtime if last else None,
                accelerator=last.accelerator if last else None,
                latency_p50_ms=last.latency_p50_ms if last else None,
                outbox_depth=last.outbox_depth if last else None,
                dropped=last.dropped if last else None,
                update=_update_text(report),
                groups=tuple((last.groups if last and last.groups else None) or groups),
            )
        )
    return rows


def _parse_status(text: str | None) -> Status | None:
    if text is None:
        return None
    try:
        return decode(Status, text.encode())
    except DecodeError:
        return None


def _update_text(report: Reported | None) -> str | None:
    if report is None:
        return None
    text = str(report.state)
    if report.state.value == "downloading":
        text += f" {report.progress * 100:.0f}%"
    if report.reason:
        text += f": {report.reason}"
    return text


def format_table(rows: list[DeviceRow], *, now: float | None = None) -> str:
    """Render rows as an aligned text table."""
    now = time.time() if now is None else now
    head = (
        "DEVICE",
        "STATE",
        "LAST SEEN",
        "MODEL",
        "VER",
        "RUNTIME",
        "ACCEL",
        "P50 MS",
        "OUTBOX",
        "DROPPED",
        "UPDATE",
    )
    body = [
        (
            r.device_id,
            {True: "online", False: "offline", None: "?"}[r.online],
            _ago(r.last_seen, now),
            r.model or "-",
            _s(r.version),
            r.runtime or "-",
            r.accelerator or "-",
            "-" if r.latency_p50_ms is None else f"{r.latency_p50_ms:.2f}",
            _s(r.outbox_depth),
            _s(r.dropped),
            r.update or "-",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *body)
    ]
    return "\n".join(lines) if body else "no devices have reported yet"


def _s(value: object) -> str:
    return "-" if value is None else str(value)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    delta = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} ago"
    return f"{delta:.0f}s ago"


# -- prediction ingestion -----------------------------------------------------------------


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


# -- remote input -------------------------------------------------------------------------


def image_message(path: Path) -> ImageMessage:
    """Wrap an image file for a device's image topic.

    Raises:
        FleetError: Unreadable file or unsupported suffix.
    """
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FleetError(f"{path}: send .png, .jpg/.jpeg or .npy files")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc}") from exc
    return ImageMessage.from_bytes(name=path.name, format=fmt, data=data)


def send_images(conn: Connection, fleet: Fleet, device_id: str, paths: list[Path]) -> int:
    """Publish images to ``device_id``'s image topic (QoS 1) and wait for the broker's acks."""
    messages = [image_message(p) for p in paths]
    topic = fleet.topics.images(device_id)
    conn.wait_published([conn.publish(topic, encode(m)) for m in messages])
    return len(messages)


# -- opening a fleet ----------------------------------------------------------------------


def open_fleet(
    *,
    broker: str | None,
    fleet_dir: Path | None,
    prefix: str | None = None,
    state_dir: Path | None = None,
    key_file: Path | None = None,
    client_id: str | None = None,
    persistent: bool = False,
    need_key: bool = False,
) -> Fleet:
    """Connect to the broker and open the host registry, from CLI-style options.

    ``--fleet DIR`` supplies broker URL, TLS files, prefix, signing key and the provisioned
    device list; ``--broker``/``--prefix``/``--key`` override or replace it.

    Raises:
        FleetError: Unreachable broker, unreadable fleet config or key.
        ProvisionError: The fleet config is invalid.
    """
    from edgefleet.host.fleetconfig import load_fleet_config, load_registry  # noqa: PLC0415
    from edgefleet.host.mqttconn import connect, settings_from  # noqa: PLC0415
    from edgefleet.host.publish import Fleet  # noqa: PLC0415
    from edgefleet.host.registry import open_registry  # noqa: PLC0415
    from edgefleet.shared.topics import Topics  # noqa: PLC0415

    config = load_fleet_config(fleet_dir) if fleet_dir is not None else None
    settings = settings_from(broker=broker, fleet=config, prefix=prefix)
    if key_file is None and config is not None:
        key_file = config.resolve(config.signing_key)
    key = _load_key(key_file) if need_key else None
    conn = connect(settings, client_id=client_id, persistent=persistent)
    try:
        registry = open_registry(state_dir)
    except FleetError:
        conn.close()
        raise
    fleet = Fleet(conn=conn, topics=Topics(settings.prefix), registry=registry, signing_key=key)
    if config is not None:
        for record in load_registry(config.root).active():
            fleet.view.known_groups.setdefault(record.device_id, set()).update(record.groups)
    return fleet


def _load_key(path: Path | None) -> Any:  # noqa: ANN401 - Ed25519PrivateKey, imported lazily
    from edgefleet.shared.errors import KeyFormatError  # noqa: PLC0415
    from edgefleet.shared.manifest import load_private_key  # noqa: PLC0415

    if path is None:
        raise FleetError(
            "no signing key: pass --fleet DIR (its fleet.toml names the key) or --key FILE"
        )
    try:
        return load_private_key(path.read_bytes())
    except OSError as exc:
        raise FleetError(f"cannot read signing key {path}: {exc}") from exc
    except KeyFormatError as exc:
        raise FleetError(f"signing key {path}: {exc}") from exc


def close_fleet(fleet: Fleet) -> None:
    """Disconnect and close the registry."""
    fleet.conn.close()
    fleet.registry.close()
