"""Prediction ingestion on a real Mosquitto: shared-subscription workers, acks, export, errors."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    BrokerSettings,
    Ingestor,
    SqliteStore,
    close_fleet,
    connect,
    export,
    open_fleet,
)
from edgefleet.shared.messages import (
    Ack,
    PredictionRecord,
    TopK,
    batch_payload,
    decode,
    encode,
)
from edgefleet.shared.topics import Topics

pytestmark = pytest.mark.integration


def _record(device: str, boot: str, seq: int) -> PredictionRecord:
    return PredictionRecord(
        device_id=device,
        boot_id=boot,
        seq=seq,
        source=f"digit-{seq}.png",
        label=str(seq % 10),
        score=0.9,
        topk=[TopK(label=str(seq % 10), score=0.9)],
        latency_ms=0.4,
        model_name="mnist_tiny",
        model_version=3,
        ts=time.time(),
    )


class DeviceClient:
    """A raw paho client publishing records exactly as an agent does and collecting acks."""

    def __init__(self, url: str, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.acked: set[tuple[str, str, int]] = set()
        self.lock = threading.Lock()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_ack
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/devices/+/predictions/ack", qos=1)
        time.sleep(0.2)

    def _on_ack(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        ack = decode(Ack, msg.payload)
        with self.lock:
            self.acked.update((ack.device_id, ack.boot_id, s) for s in ack.seqs)

    def send(self, records: list[PredictionRecord]) -> None:
        infos = [
            self.client.publish(self.topics.predictions(r.device_id), encode(r), qos=1)
            for r in records
        ]
        for info in infos:
            info.wait_for_publish(30)

    def wait_acked(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.acked) >= n:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"only {len(self.acked)} of {n} records acked")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _listen(url: str, prefix: str, db: Path, worker: str, state: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from edgefleet.host.cli import main; main()",
            "predictions",
            "listen",
            "--broker",
            url,
            "--prefix",
            prefix,
            "--db",
            str(db),
            "--worker",
            worker,
            "--state-dir",
            str(state),
        ],
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # "listening on ..." once subscribed
    assert "listening on" in line, line
    return proc


def _stored(db: Path) -> set[tuple[str, str, int]]:
    with sqlite3.connect(db) as conn:
        return set(conn.execute("SELECT device_id, boot_id, seq FROM predictions"))


def test_two_shared_workers_store_every_record_exactly_once(broker, prefix, tmp_path):
    dbs = [tmp_path / "w1.sqlite", tmp_path / "w2.sqlite"]  # separate files: no UNIQUE help
    workers = [
        _listen(broker.url, prefix, db, f"w{i}", tmp_path / "state") for i, db in enumerate(dbs)
    ]
    device = DeviceClient(broker.url, prefix)
    try:
        records = [_record(f"dev-{d}", "boot1", s) for d in range(3) for s in range(1000)]
        device.send(records)
        device.wait_acked(len(records))
    finally:
        device.close()
        for w in workers:
            w.send_signal(signal.SIGTERM)
            w.wait(30)
    first, second = _stored(dbs[0]), _stored(dbs[1])
    expected = {(r.device_id, r.boot_id, r.seq) for r in records}
    assert first | second == expected
    assert not first & second  # no record went to both workers
    assert first  # both shared the load
    assert second
    assert device.acked == expected


@contextlib.contextmanager
def _listening(broker, prefix, tmp_path):
    """A running Ingestor on the fleet's connection and a raw device client; both closed after."""
    fleet = open_fleet(broker=broker.url, fleet_dir=None, prefix=prefix, state_dir=tmp_path / "s")
    store = SqliteStore(tmp_path / "p.sqlite")
    ingestor = Ingestor(fleet.conn, fleet, store)
    ingestor.subscribe(shared=False)
    device = DeviceClient(broker.url, prefix)
    stop = threading.Event()
    runner = threading.Thread(target=ingestor.run, kwargs={"stop": stop})
    runner.start()
    try:
        yield store, ingestor, device
    finally:
        stop.set()
        runner.join()
        device.close()
        close_fleet(fleet)


def test_a_resent_record_is_stored_once_and_acked_again(broker, prefix, tmp_path):
    with _listening(broker, prefix, tmp_path) as (store, ingestor, device):
        batch = [_record("dup-dev", "b", s) for s in range(5)]
        device.send(batch)
        device.send(batch[:3])  # the device resends after a lost ack
        device.client.publish(Topics(prefix).predictions("dup-dev"), b"{not json", qos=1)
        device.client.publish(  # a device may not file records for another device
            Topics(prefix).predictions("dup-dev"), encode(_record("other", "b", 9)), qos=1
        )
        device.wait_acked(5)
        deadline = time.monotonic() + 30
        while (
            ingestor.stats.received + ingestor.stats.malformed < 10 and time.monotonic() < deadline
        ):
            time.sleep(0.05)
    assert store.count() == 5
    assert ingestor.stats.duplicates == 3
    assert ingestor.stats.malformed == 2
    out = io.StringIO()
    assert export(store, out, fmt="csv") == 5
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [int(r["seq"]) for r in rows] == [0, 1, 2, 3, 4]
    assert (rows[0]["top1_label"], rows[0]["top1_score"]) == ("0", "0.9000")


def test_batches_and_single_records_are_stored_once_and_a_bad_batch_is_refused_whole(
    broker, prefix, tmp_path
):
    topic = Topics(prefix).predictions("batch-dev")
    with _listening(broker, prefix, tmp_path) as (_, ingestor, device):
        first = [_record("batch-dev", "b1", s) for s in range(1, 51)]
        second = [_record("batch-dev", "b2", s) for s in range(51, 61)]
        # two boots in one batch (an outbox holding an earlier run's records), a resent
        # overlapping batch, an old-style single record, and two batches refused whole
        device.client.publish(topic, batch_payload([encode(r) for r in first + second]), qos=1)
        device.client.publish(topic, batch_payload([encode(r) for r in first[40:]]), qos=1)
        device.client.publish(topic, encode(_record("batch-dev", "b2", 61)), qos=1)
        stranger = [encode(_record("batch-dev", "b3", 1)), encode(_record("other", "b3", 2))]
        device.client.publish(topic, batch_payload(stranger), qos=1)
        broken = [encode(_record("batch-dev", "b4", 1)), b'{"v":1,"seq":2}']
        device.client.publish(topic, batch_payload(broken), qos=1)
        device.wait_acked(61)
        deadline = time.monotonic() + 30
        while ingestor.stats.malformed < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    expected = {(r.device_id, r.boot_id, r.seq) for r in [*first, *second]}
    expected.add(("batch-dev", "b2", 61))
    assert _stored(tmp_path / "p.sqlite") == expected
    assert device.acked == expected
    assert ingestor.stats.duplicates == 10
    assert ingestor.stats.malformed == 2


def test_an_unreachable_broker_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FleetError, match=r"cannot reach broker at mqtt://127\.0\.0\.1"):
        connect(BrokerSettings(url=f"mqtt://127.0.0.1:{port}"), timeout=2)


def test_a_port_that_does_not_answer_mqtt_fails_within_the_timeout():
    with socket.socket() as server:  # accepts TCP, never speaks MQTT
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"mqtt://127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(FleetError, match="no MQTT answer within 1 s"):
            connect(BrokerSettings(url=url), timeout=1)


def test_a_bad_broker_url_says_what_is_expected():
    with pytest.raises(FleetError, match="mqtt://HOST:PORT"):
        BrokerSettings(url="http://example:1883")
