"""Prediction ingestion on the in-memory broker, into a real SQLite store.

The contract under test (docs/protocol.md): a record is stored once however often it
arrives, committed before its ack is published, every received record is acked (duplicates
too, so the device can drop them from its outbox), and a malformed message is skipped
without stopping the worker.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import Fleet, Ingestor, IngestStats, SqliteStore, _store, open_registry
from edgefleet.shared.messages import (
    Ack,
    InputThumbnail,
    PredictionRecord,
    batch_payload,
    decode,
    encode,
)
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker, FakeClient

T = Topics("edgefleet")


def record(seq: int, device: str = "d1", boot: str = "boot1") -> PredictionRecord:
    return PredictionRecord(
        device_id=device,
        boot_id=boot,
        seq=seq,
        label="7",
        score=0.9,
        latency_ms=2.0,
        model_name="digits",
        model_version=1,
        ts=1_800_000_000.0 + seq,
    )


class Device:
    """Publishes predictions; on each ack notes what the store had committed by then."""

    def __init__(self, broker: FakeBroker, store_path, device_id: str = "d1") -> None:
        self.device_id = device_id
        self.acks: list[tuple[list[int], int]] = []
        self._reader = SqliteStore(store_path)  # a second handle sees only committed rows
        self.conn: FakeClient = broker.connect(f"agent-{device_id}", on_message=self._on_ack)
        self.conn.subscribe(T.predictions_ack(device_id))

    def _on_ack(self, msg) -> None:
        ack = decode(Ack, msg.payload)
        self.acks.append((ack.seqs, self._reader.count()))

    def send(self, *records: PredictionRecord) -> None:
        payload = batch_payload([encode(r) for r in records])
        self.conn.publish(T.predictions(self.device_id), payload)

    def acked(self) -> list[int]:
        return sorted(s for seqs, _ in self.acks for s in seqs)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "predictions.sqlite")
    yield s
    s.close()


@pytest.fixture
def registry(tmp_path):
    r = open_registry(tmp_path / "state")
    yield r
    r.close()


def ingestor(broker, registry, store, client_id: str | None = None, **kw) -> Ingestor:
    conn = broker.connect(client_id, clean_session=client_id is None)
    fleet = Fleet(conn=conn, topics=T, registry=registry)
    worker = Ingestor(conn, fleet, store, **kw)
    worker.subscribe()
    return worker


def run_once(worker: Ingestor) -> IngestStats:
    """Ingest what is queued: one batch, then stop (run() loops until stop is set)."""
    stop = threading.Event()
    return worker.run(stop=stop, on_batch=lambda _stats: stop.set())


def test_a_record_is_stored_then_acked(broker, registry, store, tmp_path):
    worker = ingestor(broker, registry, store)
    device = Device(broker, tmp_path / "predictions.sqlite")
    device.send(record(0))
    stats = run_once(worker)
    assert store.count() == 1
    assert device.acks == [([0], 1)]  # the ack came after the commit
    assert (stats.received, stats.stored, stats.duplicates, stats.acked) == (1, 1, 0, 1)
    [(_, stored)] = store.iter_records()
    assert stored == record(0)


def test_a_batch_message_is_stored_and_acked_as_one_commit(broker, registry, store, tmp_path):
    worker = ingestor(broker, registry, store)
    device = Device(broker, tmp_path / "predictions.sqlite")
    device.send(*(record(i) for i in range(5)))
    run_once(worker)
    assert device.acks == [([0, 1, 2, 3, 4], 5)]


def test_a_duplicate_is_stored_once_and_acked_again(broker, registry, store, tmp_path):
    worker = ingestor(broker, registry, store)
    device = Device(broker, tmp_path / "predictions.sqlite")
    device.send(record(0))
    run_once(worker)
    device.send(record(0))  # the device missed the ack and sent it again
    device.send(record(1))
    stats = run_once(worker)
    assert store.count() == 2
    assert device.acked() == [0, 0, 1]
    assert (stats.stored, stats.duplicates, stats.acked) == (2, 1, 3)


def test_a_malformed_message_is_skipped_and_the_worker_goes_on(broker, registry, store, tmp_path):
    worker = ingestor(broker, registry, store)
    device = Device(broker, tmp_path / "predictions.sqlite")
    device.conn.publish(T.predictions("d1"), b"{not json")
    device.send(record(0, device="d2"))  # claims another device: not trusted
    device.conn.publish(T.predictions("d1"), b'{"v":1,"records":[]}')
    device.send(record(3))
    stats = run_once(worker)
    assert stats.malformed == 3
    assert [r.seq for _, r in store.iter_records()] == [3]
    assert device.acks == [([3], 1)]


PNG_B64 = (  # a 2x2 PNG (docs/protocol.md, vector input-thumbnail)
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42gXBAQEAAACCIPs/mmAqQjkt7gb7C98nEwAAAABJRU5ErkJggg=="
)


def thumbnail(seq: int, device: str = "d1", boot: str = "boot1") -> InputThumbnail:
    return InputThumbnail(
        device_id=device, boot_id=boot, seq=seq, format="png", data_b64=PNG_B64, width=2, height=2
    )


def stored_thumbnails(path) -> list[tuple[str, str, int]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT device_id, boot_id, seq FROM thumbnails ORDER BY id").fetchall()
    finally:
        db.close()


def test_thumbnails_are_stored_beside_the_records_and_bad_ones_never_stop_ingest(
    broker, registry, store, tmp_path
):
    worker = ingestor(broker, registry, store)
    device = Device(broker, tmp_path / "predictions.sqlite")
    topic = T.thumbnails("d1")
    device.conn.publish(topic, encode(thumbnail(0)))  # before its record
    device.conn.publish(topic, encode(thumbnail(77)))  # a record that never comes
    device.conn.publish(topic, b"{not json")
    device.conn.publish(topic, encode(thumbnail(1, device="d2")))  # names another device
    bad_image = encode(thumbnail(2)).replace(PNG_B64.encode(), b"not base64!")
    device.conn.publish(topic, bad_image)
    device.conn.publish(topic, b'{"v":1,"device_id":"d1"}')  # fields missing
    device.send(record(0), record(1))
    device.conn.publish(topic, encode(thumbnail(1)))  # after its record
    device.conn.publish(topic, encode(thumbnail(1)))  # a second copy: stored once
    stats = run_once(worker)
    assert [r.seq for _, r in store.iter_records()] == [0, 1]
    assert device.acks == [([0, 1], 2)]  # thumbnails are never acked
    assert (stats.thumbnails, stats.bad_thumbnails, stats.malformed) == (3, 4, 0)
    assert stored_thumbnails(tmp_path / "predictions.sqlite") == [
        ("d1", "boot1", 0),
        ("d1", "boot1", 77),
        ("d1", "boot1", 1),
    ]
    assert all("thumbnail" not in p.payload.decode() for p in broker.published(T.predictions("d1")))


class ThumbnailDiskFull(SqliteStore):
    def add_thumbnails(self, thumbs):  # noqa: ARG002 - fails whatever it gets
        raise FleetError("storing a thumbnail failed: database or disk is full")


def test_a_thumbnail_the_store_refuses_is_dropped_and_its_record_still_acked(
    broker, registry, tmp_path
):
    store = ThumbnailDiskFull(tmp_path / "predictions.sqlite")
    try:
        worker = ingestor(broker, registry, store)
        device = Device(broker, tmp_path / "predictions.sqlite")
        device.conn.publish(T.thumbnails("d1"), encode(thumbnail(0)))
        device.send(record(0))
        stats = run_once(worker)
        assert (stats.bad_thumbnails, stats.stored, stats.failed_batches) == (1, 1, 0)
        assert device.acks == [([0], 1)]
    finally:
        store.close()


def test_each_device_keeps_only_its_newest_thumbnails(store, tmp_path, monkeypatch):
    monkeypatch.setattr(_store, "THUMBNAILS_PER_DEVICE", 3)
    for seq in range(6):
        assert store.add_thumbnail(thumbnail(seq), received_at=1.0)
        assert store.add_thumbnail(thumbnail(seq, device="d2"), received_at=1.0)
    assert not store.add_thumbnail(thumbnail(5), received_at=2.0)  # already there
    kept = stored_thumbnails(tmp_path / "predictions.sqlite")
    assert [(d, s) for d, _, s in kept] == [
        ("d1", 3), ("d2", 3), ("d1", 4), ("d2", 4), ("d1", 5), ("d2", 5)
    ]  # fmt: skip


class FailingStore(SqliteStore):
    """A store whose disk is full: every add fails (and stops the worker's loop)."""

    stop: threading.Event

    def add(self, records):  # noqa: ARG002 - fails whatever it is given
        self.stop.set()
        raise FleetError("storing predictions failed: database or disk is full")


def test_a_batch_that_cannot_be_stored_is_not_acked(broker, registry, tmp_path):
    store = FailingStore(tmp_path / "predictions.sqlite")
    worker = ingestor(broker, registry, store)
    device = Device(broker, tmp_path / "predictions.sqlite")
    device.send(record(0))
    store.stop = threading.Event()
    stats = worker.run(stop=store.stop)
    assert stats.failed_batches == 1
    assert device.acks == []  # the device keeps the record in its outbox and resends it
    store.close()


def test_records_sent_while_a_persistent_worker_was_away_arrive_on_return(
    broker, registry, store, tmp_path
):
    worker = ingestor(broker, registry, store, client_id="ingest-1")
    device = Device(broker, tmp_path / "predictions.sqlite")
    device.send(record(0))
    worker.conn.close()  # crashed before taking the message: it stays unacknowledged
    device.send(record(1))
    again = Ingestor(broker.connect("ingest-1", clean_session=False), worker.fleet, store)
    run_once(again)
    assert [r.seq for _, r in store.iter_records()] == [0, 1]
    assert device.acked() == [0, 1]


def test_shared_workers_split_the_load_and_store_each_record_once(
    broker, registry, store, tmp_path
):
    workers = [ingestor(broker, registry, store) for _ in range(2)]
    device = Device(broker, tmp_path / "predictions.sqlite")
    for i in range(10):
        device.send(record(i))
    stats = [run_once(w) for w in workers]
    assert all(s.stored > 0 for s in stats)
    assert sum(s.stored for s in stats) == store.count() == 10
    assert device.acked() == list(range(10))
