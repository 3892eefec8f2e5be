"""The demo's live part: drop held-out scans into watched folders, ingest and show predictions."""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.host.fleet import Ingestor, IngestStats, PredictionStore, SqliteStore
from edgefleet.host.fleet._store import StoreWrapper
from edgefleet.host.quantize import _measure as measure
from edgefleet.shared.preprocess import preprocess
from edgefleet.shared.tflite_model import read_model_info

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from edgefleet.host.demo._data import Scan
    from edgefleet.host.demo._summary import Summary
    from edgefleet.host.fleet import Fleet
    from edgefleet.shared.messages import PredictionRecord


class _LiveStore(StoreWrapper):
    """A PredictionStore that also hands each newly stored record to a callback."""

    def __init__(self, inner: PredictionStore, on_new: Callable[[PredictionRecord], None]) -> None:
        super().__init__(inner)
        self.on_new = on_new
        self.seen: set[tuple[str, str, int]] = set()

    def add(self, records: Iterable[PredictionRecord]) -> int:
        batch = list(records)
        new = self.inner.add(batch)  # committed before anyone sees it (and before the ack)
        for record in batch:
            key = (record.device_id, record.boot_id, record.seq)
            if key not in self.seen:
                self.seen.add(key)
                self.on_new(record)
        return new


@dataclass
class _Arrival:
    record: PredictionRecord
    at: float


@dataclass
class LiveRun:
    """Feeds ``scans`` round-robin to the devices' inboxes and ingests their predictions.

    Attributes:
        fleet: The connected host (its connection carries the predictions and acks).
        scans: What to feed, with the true classes.
        labels: Class names (model output order).
        inboxes: Device id -> watched folder.
        store_path: The SQLite prediction store.
        say: Where the live lines go.
    """

    fleet: Fleet
    scans: list[Scan]
    labels: tuple[str, ...]
    inboxes: dict[str, Path]
    store_path: Path
    say: Callable[[str], None]
    fed: dict[str, tuple[str, float]] = field(default_factory=dict)
    arrived: dict[str, _Arrival] = field(default_factory=dict)
    strays: int = 0
    feed_error: str | None = None
    stored: int = 0
    stats: IngestStats = field(default_factory=IngestStats)
    _done: threading.Event = field(default_factory=threading.Event)
    _stop_feeding: threading.Event = field(default_factory=threading.Event)
    _by_name: dict[str, Scan] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name = {s.name: s for s in self.scans}

    def run(self, *, interval_s: float, timeout_s: float) -> None:
        """Feed and ingest until every scan's prediction is stored, or ``timeout_s`` passes."""
        store = _LiveStore(SqliteStore(self.store_path), self._on_new)
        ingestor = Ingestor(conn=self.fleet.conn, fleet=self.fleet, store=store)
        ingestor.subscribe(shared=False)
        self.say(f"           {'DEVICE':<9} {'FILE':<16} {'TRUE':<9} {'PREDICTED':<9}      LATENCY")
        feeder = threading.Thread(target=self._feed, args=(interval_s,), daemon=True)
        timer = threading.Timer(timeout_s + len(self.scans) * interval_s, self._done.set)
        timer.daemon = True
        feeder.start()
        timer.start()
        try:
            self.stats = ingestor.run(stop=self._done)
        finally:
            timer.cancel()
            self._stop_feeding.set()
            feeder.join(timeout=5)
            self.stored = store.count()
            store.close()

    def _feed(self, interval_s: float) -> None:
        try:
            self._feed_all(interval_s)
        except OSError as exc:
            self.feed_error = f"cannot write into a watched folder: {exc}"
            self._done.set()

    def _feed_all(self, interval_s: float) -> None:
        devices = sorted(self.inboxes)
        recorded = time.time() - 1.0  # as if the scans were recorded before the feed began
        for i, scan in enumerate(self.scans):
            if self._stop_feeding.is_set():
                return
            device = devices[i % len(devices)]
            inbox = self.inboxes[device]
            # Delivered as rsync does: written under a temp name with the scan's recording
            # time as its mtime, then renamed into place. The agent sees a rename (ctime after
            # mtime) and takes it at once instead of waiting for the file to settle.
            tmp = inbox / f".{scan.name}.tmp"
            tmp.write_bytes(scan.data)
            os.utime(tmp, (recorded, recorded))
            self.fed[scan.name] = (device, time.time())
            tmp.rename(inbox / scan.name)
            time.sleep(interval_s)

    def _on_new(self, record: PredictionRecord) -> None:
        scan = self._by_name.get(record.source)
        if scan is None or record.source in self.arrived:
            self.strays += 1  # not one of ours (an earlier run's leftovers)
            return
        self.arrived[record.source] = _Arrival(record, time.time())
        truth = self.labels[scan.label]
        mark = "ok" if record.label == truth else "MISS"
        self.say(
            f"           {record.device_id:<9} {record.source:<16} {truth:<9} "
            f"{record.label:<9} {mark:<4} {record.latency_ms:7.3f} ms"
        )
        if len(self.arrived) == len(self.scans):
            self._done.set()

    # -- the summary ------------------------------------------------------------------------

    def fill(self, summary: Summary, deployed: Path) -> None:
        """Write sent/received, accuracy, latencies and host agreement into ``summary``."""
        truth = {s.name: self.labels[s.label] for s in self.scans}
        records = [a.record for a in self.arrived.values()]
        summary.sent = len(self.fed)
        summary.received = len(records)
        summary.duplicates = self.stats.duplicates
        correct = [r for r in records if r.label == truth[r.source]]
        summary.accuracy = round(len(correct) / len(records), 4) if records else None
        summary.median_latency_ms = _median([r.latency_ms for r in records])
        summary.median_end_to_end_ms = _median(
            [(a.at - self.fed[name][1]) * 1000 for name, a in self.arrived.items()]
        )
        for device in summary.devices:
            mine = [r for r in records if r.device_id == device.device_id]
            device.sent = sum(1 for d, _t in self.fed.values() if d == device.device_id)
            device.received = len(mine)
            device.correct = sum(1 for r in mine if r.label == truth[r.source])
            device.median_latency_ms = _median([r.latency_ms for r in mine])
        summary.host_agreement = self._host_agreement(deployed, records)

    def _host_agreement(self, deployed: Path, records: list[PredictionRecord]) -> float | None:
        """Share of device predictions equal to the host's LiteRT run of the same file."""
        info = read_model_info(deployed.read_bytes())
        if info is None or not records:
            return None
        x = np.stack([preprocess(self._by_name[r.source].raw, info.preprocess) for r in records])
        host = np.argmax(measure.predict_all(deployed, x.astype(np.float32), info), axis=1)
        same = [r.label == info.labels[int(h)] for r, h in zip(records, host, strict=True)]
        return round(sum(same) / len(same), 4)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None
