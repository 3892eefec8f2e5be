"""Many devices' prediction outboxes over one MQTT client, speaking the device protocol.

Each simulated device numbers its records 0, 1, ... under one boot id, publishes them in
batches (``PredictionBatch``, QoS 1) on ``{p}/devices/{id}/predictions`` as the agent does,
deletes a record when an ``Ack`` naming it arrives on ``.../predictions/ack``, and sends
every record not acked within ``resend_after_s`` again: what a real agent's outbox does
across a host that dies. Tests then compare the store with ``sent``.
"""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared.errors import DecodeError
from edgefleet.shared.messages import Ack, PredictionRecord, TopK, batch_payload, decode, encode
from edgefleet.shared.topics import Topics


def make_record(device: str, boot: str, seq: int) -> PredictionRecord:
    """A plausible record (the label and source vary with ``seq``)."""
    label = ("concrete", "metal", "plastic", "void")[seq % 4]
    return PredictionRecord(
        device_id=device,
        boot_id=boot,
        seq=seq,
        source=f"scan-{seq:06d}.npy",
        label=label,
        score=0.91,
        topk=[TopK(label=label, score=0.91), TopK(label="void", score=0.05)],
        latency_ms=2.5,
        model_name="gpr_convnet",
        model_version=3,
        ts=1_700_000_000.0 + seq,
    )


class SimulatedDevices:
    """Outboxes of ``devices`` devices with ``per_device`` records each (see module docstring)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        devices: int,
        per_device: int,
        batch: int = 20,
        resend_after_s: float = 5.0,
    ) -> None:
        self.topics = Topics(prefix)
        self.batch = batch
        self.resend_after_s = resend_after_s
        boot = uuid.uuid4().hex[:12]
        self.sent: dict[tuple[str, str, int], PredictionRecord] = {}
        self._payload: dict[tuple[str, str, int], bytes] = {}
        self.devices = devices
        for s in range(per_device):  # seq-major: every device streams at once
            for d in range(devices):
                rec = make_record(f"sim-{d:03d}", boot, s)
                key = (rec.device_id, rec.boot_id, rec.seq)
                self.sent[key] = rec
                self._payload[key] = encode(rec)
        self.unacked: dict[tuple[str, str, int], float] = dict.fromkeys(self.sent, 0.0)
        self.acks = 0  # acked seqs received, repeats included
        self.resent = 0
        self.lock = threading.Lock()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{uuid.uuid4().hex[:8]}"
        )
        self.client.max_inflight_messages_set(200)
        self.client.on_message = self._on_ack
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/devices/+/predictions/ack", qos=1)
        time.sleep(0.3)

    def _on_ack(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = decode(Ack, msg.payload)
        except DecodeError:
            return
        with self.lock:
            self.acks += len(ack.seqs)
            for seq in ack.seqs:
                self.unacked.pop((ack.device_id, ack.boot_id, seq), None)

    def acked(self) -> set[tuple[str, str, int]]:
        """Keys acked so far."""
        with self.lock:
            return set(self.sent) - set(self.unacked)

    def send_due(self, *, limit: int | None = None) -> int:
        """Publish unacked records never sent or sent too long ago; return how many."""
        now = time.monotonic()
        with self.lock:
            due = [
                k for k, at in self.unacked.items() if at == 0.0 or now - at >= self.resend_after_s
            ]
            due = due[:limit] if limit is not None else due
            self.resent += sum(1 for k in due if self.unacked[k] != 0.0)
            for k in due:
                self.unacked[k] = now
        by_device: dict[str, list[tuple[str, str, int]]] = {}
        for k in due:
            by_device.setdefault(k[0], []).append(k)
        for device, keys in by_device.items():
            for start in range(0, len(keys), self.batch):
                payload = batch_payload(
                    [self._payload[k] for k in keys[start : start + self.batch]]
                )
                self.client.publish(self.topics.predictions(device), payload, qos=1)
        return len(due)

    def stream(
        self,
        *,
        rate: float,
        stop: threading.Event,
        hold_after: int | None = None,
        resume: threading.Event | None = None,
    ) -> None:
        """Send every record once at about ``rate`` records/s, then resend until all are acked.

        With ``hold_after`` and ``resume``: after that many first sends, wait for ``resume``
        (resends wait too), so that a test knows records are still to come.
        """
        step = self.batch * self.devices  # one batch per device per step
        first = 0
        while not stop.is_set() and self.unacked:
            if hold_after is not None and resume is not None and first >= hold_after:
                while not resume.wait(0.1):
                    if stop.is_set():
                        return
                hold_after = None
            started = time.monotonic()
            before = self.resent
            sent = self.send_due(limit=step)
            first += sent - (self.resent - before)
            pause = sent / rate - (time.monotonic() - started) if sent else 0.2
            stop.wait(max(pause, 0.0))

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()
