"""The real agent and Mosquitto against docs/protocol.md's statements (issue 18).

An independent implementation written from the document found the agent saying otherwise
in places; each statement it tripped on is checked here on the wire: the state sequence
with ``verifying`` and progress reaching 1.0 (4.2), what an ``expired`` refusal carries
(4.2), the record's ``source`` (4.3), the retained ``reported`` after an ignored older
manifest (8.1), and a whole-file mismatch retried on the next delivery only (7.2, 8.2).
Also the broker outage said at the default log level (docs/agent.md, "MQTT").
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared.messages import ImageMessage, Reported, UpdateState, encode
from support.agent import (
    AgentProcess,
    FakeHost,
    ModelBundle,
    Signer,
    mnist_eval_pngs,
    shared_mnist_model,
    signed_agent_config,
)
from support.broker import MosquittoBroker, free_port

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICE = "pi-proto"
CHUNK = 4096


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


def retained(url: str, topic: str, timeout: float = 10.0) -> bytes:
    """The retained message of ``topic``, as a host that connects now gets it."""
    got: list[bytes] = []
    done = threading.Event()
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

    def on_message(_c, _u, msg) -> None:
        got.append(bytes(msg.payload))
        done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.connect(host, int(port))
    client.loop_start()
    try:
        assert done.wait(timeout), f"no retained message on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def tampered(envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    signature = bytearray(base64.b64decode(doc["signature"]))
    signature[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(signature)).decode()
    return json.dumps(doc, separators=(",", ":")).encode()


def reports_of(host: FakeHost, version: int) -> list[Reported]:
    with host.lock:
        return [r for r in host.reports if r.device_id == DEVICE and r.version == version]


def _update_states(host: FakeHost, signer: Signer, bundle: ModelBundle) -> None:
    # 4.2: downloading (0 .. <1), verifying (1.0), health_check, activating, active
    host.offer(bundle.data, chunk_size=CHUNK)
    _, v1 = signer.manifest(bundle, version=1, devices=[DEVICE], chunk_size=CHUNK)
    host.push(v1, device=DEVICE)
    host.wait_report(DEVICE, state="active", version=1)
    got = reports_of(host, 1)
    states = [r.state for r in got]
    first = states.index(UpdateState.VERIFYING)
    assert set(states[:first]) == {UpdateState.DOWNLOADING}
    assert states[first:] == ["verifying", "health_check", "activating", "active"]
    assert [r.progress for r in got[first:]] == [1.0] * 4
    assert got[0].progress == 0.0
    assert all(r.progress < 1.0 for r in got[:first])
    assert len(got[:first]) >= 2  # 10 % steps of a 13-chunk file

    # a model file already on the device: the same states from verifying on
    _, v2 = signer.manifest(bundle, version=2, devices=[DEVICE], chunk_size=CHUNK)
    host.push(v2, device=DEVICE)
    host.wait_report(DEVICE, state="active", version=2)
    assert [r.state for r in reports_of(host, 2)] == [
        "verifying",
        "health_check",
        "activating",
        "active",
    ]


def _retained_after_an_ignored_manifest(host: FakeHost, signer: Signer, bundle: ModelBundle):
    # 8.1: an ignored older manifest must not leave an earlier refusal retained
    _, v3 = signer.manifest(bundle, version=3, devices=[DEVICE], chunk_size=CHUNK)
    host.push(tampered(v3), device=DEVICE)
    host.wait_report(DEVICE, state="rejected", reason="bad_signature")
    topic = host.topics.reported(DEVICE)
    assert Reported.model_validate_json(retained(host.url, topic)).state == "rejected"
    _, old = signer.manifest(bundle, version=1, groups=["field"], chunk_size=CHUNK)
    host.push(old, group="field")
    now = host.wait(
        lambda h: (r := h.reports[-1]).state == "active" and r.device_id == DEVICE and r
    )
    assert (now.version, now.active_version, now.progress) == (2, 2, 1.0)
    assert Reported.model_validate_json(retained(host.url, topic)) == now


def _expired_refusal(host: FakeHost, signer: Signer, bundle: ModelBundle) -> None:
    # 4.2's expired example: the signed manifest's name, version, variant sha256, step
    _, expired = signer.manifest(
        bundle,
        version=9,
        devices=[DEVICE],
        chunk_size=CHUNK,
        created_at=int(time.time()) - 7200,
        ttl_s=3600,
    )
    host.push(expired, device=DEVICE)
    refusal = host.wait_report(DEVICE, state="rejected", reason="expired")
    assert (refusal.model_name, refusal.version) == (bundle.name, 9)
    assert (refusal.sha256, refusal.step, refusal.progress) == (bundle.sha256, "verifying", 0.0)
    assert refusal.active_version == 2


def _sources(host: FakeHost, inbox: Path, tmp_path: Path) -> None:
    # 4.3: source is the bare file name, or mqtt:<name> for an image message
    (name,) = mnist_eval_pngs(inbox, 1)
    npy = tmp_path / "digit.npy"
    np.save(npy, np.zeros((28, 28), dtype=np.uint8))
    image = ImageMessage.from_bytes(name="scan-7.npy", format="npy", data=npy.read_bytes())
    host.client.publish(host.topics.images(DEVICE), encode(image), 1)
    sources = host.wait(
        lambda h: (s := {r.source for r in h.records.values()}) >= {name, "mqtt:scan-7.npy"} and s
    )
    assert sources == {name, "mqtt:scan-7.npy"}


def _integrity_retry(host: FakeHost, signer: Signer, bundle: ModelBundle, tmp_path: Path):
    # 7.2 / 8.2: a whole-file mismatch is failed/verifying/integrity (progress 1.0), no
    # chunk requests follow, and the same envelope published again is downloaded afresh
    data = bundle.data + b"\0" * 16
    good = ModelBundle(tmp_path / "v10.tflite", data, bundle.input, bundle.output)
    host.offer(bytes(reversed(data)), chunk_size=CHUNK, sha256=good.sha256)
    _, v10 = signer.manifest(good, version=10, devices=[DEVICE], chunk_size=CHUNK)
    host.push(v10, device=DEVICE)
    failed = host.wait_report(DEVICE, state="failed", version=10)
    assert (failed.step, failed.reason, failed.progress) == ("verifying", "integrity", 1.0)
    assert [r.state for r in reports_of(host, 10)][-2:] == ["verifying", "failed"]
    with host.lock:
        asked = len(host.chunk_requests)
    time.sleep(3.0)  # six of the agent's quiet periods (chunk_timeout_s = 0.5)
    with host.lock:
        assert len(host.chunk_requests) == asked
    host.offer(data, chunk_size=CHUNK)  # the host fixed its copy and publishes again
    host.push(v10, device=DEVICE)
    host.wait_report(DEVICE, state="active", version=10, active_version=10)


def test_the_agent_on_the_wire_says_what_the_protocol_document_says(
    tmp_path: Path, broker, prefix, mnist_bundle
):
    signer, inbox, config = signed_agent_config(
        tmp_path, device_id=DEVICE, broker_url=broker.url, prefix=prefix, groups=["field"]
    )
    host = FakeHost(broker.url, prefix)
    agent = AgentProcess(config)
    try:
        _update_states(host, signer, mnist_bundle)
        _retained_after_an_ignored_manifest(host, signer, mnist_bundle)
        _expired_refusal(host, signer, mnist_bundle)
        _sources(host, inbox, tmp_path)
        _integrity_retry(host, signer, mnist_bundle, tmp_path)
        assert agent.stop() == 0
    finally:
        agent.kill()
        host.close()


def test_an_unreachable_broker_is_said_at_the_default_log_level(tmp_path: Path, prefix):
    port = free_port()
    _, _, config = signed_agent_config(
        tmp_path,
        device_id=DEVICE,
        broker_url=f"mqtt://127.0.0.1:{port}",
        prefix=prefix,
        watch=False,
    )
    text = config.read_text().replace('log_level = "info"\n', "")  # the default: warning
    config.write_text(text)
    agent = AgentProcess(config)
    broker = MosquittoBroker(tmp_path / "mosquitto", port=port, persistence=False)
    try:
        deadline = time.monotonic() + 20
        while "cannot reach the broker" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = agent.log()
        assert f"cannot reach the broker at mqtt://127.0.0.1:{port}" in log, log
        assert "Connection refused" in log
        assert '"level": "info"' not in log  # only the warnings are printed by default
        time.sleep(4)  # many attempts (reconnect_max_s = 1): still one warning a 30 s
        assert agent.log().count("cannot reach the broker") == 1
        broker.start()
        deadline = time.monotonic() + 20
        while "connected to the broker" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"connected to the broker at mqtt://127.0.0.1:{port} after" in agent.log()
        assert agent.stop() == 0
    finally:
        agent.kill()
        broker.stop()
