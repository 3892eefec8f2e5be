"""Prediction records in flight: publish them from the outbox in batches, apply the host's acks.

A record stays in the outbox until the host acknowledges its seq. :class:`InFlight` keeps
at most ``max_in_flight`` records published and unacknowledged, sends each again when no
ack came within ``resend_after_s``, and after a reconnect sends everything unacknowledged
again, in order. Acks are collected and applied in one outbox transaction per batch.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from edgefleet.shared.errors import DecodeError
from edgefleet.shared.messages import Ack, batch_payload, decode

if TYPE_CHECKING:
    import threading

    from edgefleet.device.config import OutboxConfig
    from edgefleet.device.outbox import Outbox, Pending

log = logging.getLogger(__name__)

ACK_BATCH = 256  # acks applied in one outbox transaction at most
BATCH_BYTES = 256 * 1024  # a PredictionBatch stays well under MAX_MESSAGE_BYTES (1 MiB)


class Publisher(Protocol):
    """The part of the broker link that records go out through."""

    @property
    def connected(self) -> threading.Event:
        """Set while the broker session is up."""
        ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> object:
        """Queue a publish."""
        ...


class InFlight:
    """The records published and waiting for the host's ack (see the module docstring).

    Called on the agent's main thread only.
    """

    def __init__(
        self, outbox: Outbox, settings: OutboxConfig, *, topic: str, link: Publisher
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.topic = topic
        self.link = link
        self.sent: dict[int, float] = {}  # seq -> when it was (last) published, monotonic
        self.cursor = 0  # the highest seq published since the last reset
        self._acks: list[tuple[str, int]] = []  # (boot_id, seq) received, not yet applied

    def reset(self) -> None:
        """Forget what was sent: the next drain sends everything unacknowledged, in order."""
        self.sent = {}
        self.cursor = 0

    def on_ack(self, payload: bytes, *, device_id: str) -> None:
        """Take an ack message; applied in a batch by :meth:`flush_acks` (or when many wait)."""
        try:
            ack = decode(Ack, payload) if payload else None
        except DecodeError as exc:
            log.warning("ignoring an unreadable ack: %s", exc)
            return
        if ack is None or ack.device_id != device_id:
            return
        self._acks.extend((ack.boot_id, seq) for seq in ack.seqs)
        if len(self._acks) >= ACK_BATCH:
            self.flush_acks()

    def flush_acks(self) -> None:
        """Remove the acknowledged records from the outbox (one transaction), then drain."""
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        self.outbox.ack_many(acks)
        for _boot, seq in acks:
            self.sent.pop(seq, None)
        self.drain()

    def drain(self) -> None:
        """Publish what the outbox holds beyond what is in flight, and re-send stale records."""
        if not self.link.connected.is_set():
            return
        cfg = self.settings
        now = time.monotonic()
        stale = {s for s, t in self.sent.items() if now - t > cfg.resend_after_s}
        if stale:
            records = self.outbox.pending(after_seq=0, limit=cfg.max_in_flight)
            self._publish_records([r for r in records if r.seq in stale], now)
        room = cfg.max_in_flight - len(self.sent)
        if room <= 0:
            return
        fresh = self.outbox.pending(after_seq=self.cursor, limit=room)
        if fresh:
            self._publish_records(fresh, now)
            self.cursor = fresh[-1].seq

    def _publish_records(self, records: list[Pending], now: float) -> None:
        """Publish records in order, up to ``batch_records`` (and BATCH_BYTES) per message."""
        cap = self.settings.batch_records
        batch: list[bytes] = []
        size = 0
        for record in records:
            if batch and (len(batch) >= cap or size + len(record.payload) > BATCH_BYTES):
                self.link.publish(self.topic, batch_payload(batch))
                batch, size = [], 0
            batch.append(record.payload)
            size += len(record.payload) + 1
            self.sent[record.seq] = now
        if batch:
            self.link.publish(self.topic, batch_payload(batch))
