"""Records in flight: what goes out after a reconnect, which acks count, nothing while offline."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgefleet.device._inflight import ACK_BATCH, InFlight
from edgefleet.device.config import OutboxConfig
from edgefleet.device.outbox import Outbox
from edgefleet.shared.messages import Ack, PredictionRecord, decode_predictions, encode

TOPIC = "t/devices/d1/predictions"


class _Link:
    """Stands in for the broker link: records what was published."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected.set()
        self.sent: list[bytes] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        assert (topic, qos, retain) == (TOPIC, 1, False)
        self.sent.append(payload)


def _build(seq: int) -> bytes:
    return encode(
        PredictionRecord(
            device_id="d1", boot_id="boot", seq=seq, source="s", label="7", score=0.5,
            latency_ms=0.1, model_name="m", model_version=1, ts=1.0,
        )
    )  # fmt: skip


@pytest.fixture
def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.db", max_records=1000, when_full="drop_oldest")
    yield box
    box.close()


def _seqs(link: _Link) -> list[list[int]]:
    return [[r.seq for r in decode_predictions(p)] for p in link.sent]


def _ack(device_id: str, seqs: list[int]) -> bytes:
    return encode(Ack(device_id=device_id, boot_id="boot", seqs=seqs))


def test_a_reset_sends_every_unacknowledged_record_again_in_order(outbox: Outbox):
    link = _Link()
    flight = InFlight(outbox, OutboxConfig(batch_records=3), topic=TOPIC, link=link)
    outbox.append_many("boot", [_build] * 5)
    flight.drain()
    flight.on_ack(_ack("d1", [2]), device_id="d1")
    flight.flush_acks()
    link.sent.clear()
    flight.drain()
    assert link.sent == []  # in flight, not stale yet: nothing is sent twice
    flight.reset()  # as after a reconnect
    flight.drain()
    assert _seqs(link) == [[1, 3, 4], [5]]


def test_only_readable_acks_for_this_device_remove_records(outbox: Outbox):
    link = _Link()
    flight = InFlight(outbox, OutboxConfig(), topic=TOPIC, link=link)
    outbox.append_many("boot", [_build] * 3)
    flight.drain()
    flight.on_ack(_ack("other", [1]), device_id="d1")
    flight.on_ack(b"{not json", device_id="d1")
    flight.on_ack(b"", device_id="d1")  # a cleared retained ack
    flight.flush_acks()
    assert outbox.depth() == 3
    flight.on_ack(_ack("d1", [1, 3]), device_id="d1")
    flight.flush_acks()
    assert [r.seq for r in outbox.pending(limit=10)] == [2]
    assert set(flight.sent) == {2}


def test_many_acks_are_applied_without_waiting_for_the_queue_to_run_dry(outbox: Outbox):
    link = _Link()
    flight = InFlight(outbox, OutboxConfig(max_in_flight=ACK_BATCH), topic=TOPIC, link=link)
    outbox.append_many("boot", [_build] * ACK_BATCH)
    flight.drain()
    flight.on_ack(_ack("d1", list(range(1, ACK_BATCH))), device_id="d1")
    assert outbox.depth() == ACK_BATCH  # one short of a batch: still waiting
    flight.on_ack(_ack("d1", [ACK_BATCH]), device_id="d1")
    assert outbox.depth() == 0


def test_nothing_is_published_while_offline(outbox: Outbox):
    link = _Link()
    link.connected.clear()
    flight = InFlight(outbox, OutboxConfig(), topic=TOPIC, link=link)
    outbox.append_many("boot", [_build] * 2)
    flight.drain()
    assert link.sent == []
    link.connected.set()
    flight.drain()
    assert _seqs(link) == [[1, 2]]
