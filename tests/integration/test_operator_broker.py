"""Issue 18 against a real mosquitto: the documented broker start as root, a lost broker
during `push --wait`, and `fleet status` that creates no file and keeps every figure.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt import publish
from typer.testing import CliRunner

import edgefleet.host.fleet as fleet_pkg
from edgefleet.host.cli import app
from edgefleet.host.fleet import ModelFiles, close_fleet, open_fleet
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, private_key_pem
from edgefleet.shared.messages import Status, encode
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics
from support.broker import MosquittoBroker, free_port

pytestmark = pytest.mark.integration


def _model() -> ModelFiles:
    """A signed-push payload without TensorFlow: a few bytes and a hand-made template."""
    data = bytes(range(256)) * 4
    template = Manifest(
        name="digits",
        version=1,
        created_at=0,
        expires_at=1,
        targets=Targets(),
        variants=[ModelVariant.for_bytes(data, accelerator="cpu", chunk_size=512)],
        mode="int8",
        input=TensorSpec(shape=(1, 28, 28, 1), dtype="int8", scale=0.0039, zero_point=-128),
        output=TensorSpec(shape=(1, 10), dtype="int8", scale=0.00390625, zero_point=-128),
        preprocess=PreprocessSpec(height=28, width=28),
        labels=[str(i) for i in range(10)],
    )
    return ModelFiles("digits", {"cpu": data}, template)


def _has_mosquitto_user() -> bool:
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return False
    return True


@pytest.mark.skipif(
    os.geteuid() != 0 or not _has_mosquitto_user(),
    reason="needs root and a mosquitto account (what the documented start does)",
)
def test_the_documented_broker_start_as_root_works():
    """`edgefleet init` then `mosquitto -c FLEET/broker/mosquitto.conf`, as root (point 2)."""
    base = Path(tempfile.mkdtemp(prefix="edgefleet-root-", dir="/tmp"))
    base.chmod(0o755)
    device_port, host_port = free_port(), free_port()
    fleet = base / "fleet"
    broker = MosquittoBroker(base / "run", port=host_port)
    try:
        init = CliRunner().invoke(
            app,
            [
                "init",
                "--fleet",
                str(fleet),
                "--broker-url",
                f"mqtts://127.0.0.1:{device_port}",
                "--host-broker-url",
                f"mqtts://127.0.0.1:{host_port}",
            ],
        )
        assert init.exit_code == 0, init.output
        assert "broker files readable by 'mosquitto'" in init.output
        assert (fleet / "ca/ca.key").stat().st_mode & 0o077 == 0  # CA key stays private
        broker.start(conf=fleet / "broker/mosquitto.conf")  # as root: drops to mosquitto
        time.sleep(0.5)
        assert broker.proc is not None
        assert broker.proc.poll() is None, broker.log_path.read_text()
        # The host reaches it over TLS with the fleet's certificates.
        status = CliRunner().invoke(
            app, ["fleet", "status", "--fleet", str(fleet), "--state-dir", str(base / "state")]
        )
        assert status.exit_code == 0, status.output
        assert "no devices have reported yet" in status.output
    finally:
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_losing_the_broker_during_push_wait_is_reported_with_its_own_exit_code(
    own_broker, prefix, tmp_path, monkeypatch
):
    """Point 7: in words, and exit 3 instead of the 1 of a failed device."""
    monkeypatch.setattr(fleet_pkg, "load_model", lambda _path: _model())
    key = tmp_path / "signing.key"
    key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    killer = threading.Timer(2.0, own_broker.kill)
    killer.start()
    try:
        result = CliRunner().invoke(
            app,
            [
                "push",
                str(tmp_path / "model.tflite"),
                "--device",
                "ghost",
                "--force",
                "--wait",
                "6",
                "--broker",
                own_broker.url,
                "--prefix",
                prefix,
                "--state-dir",
                str(tmp_path / "state"),
                "--key",
                str(key),
            ],
        )
    finally:
        killer.cancel()
    assert result.exit_code == 3, result.output
    assert f"lost the connection to the broker at {own_broker.url}" in result.output
    assert "still not reconnected" in result.output
    assert "edgefleet rollout status" in result.output


def test_fleet_status_creates_no_file_and_keeps_every_reported_figure(broker, prefix, tmp_path):
    """Points 4 and 15."""
    status = Status(
        device_id="pi-001",
        online=True,
        agent_version="0.2.0",
        model_name="gpr_convnet",
        model_version=3,
        inference_count=1234,
        latency_p50_ms=2.0,
        latency_p95_ms=9.5,
        outbox_depth=5,
        uptime_s=3600.0,
        rss_bytes=73_000_000,
        ts=time.time(),
    )
    publish.single(
        Topics(prefix).status("pi-001"),
        encode(status),
        qos=1,
        retain=True,
        hostname="127.0.0.1",
        port=broker.port,
    )
    home = tmp_path / "home"
    home.mkdir()
    state = tmp_path / "state"
    args = ["fleet", "status", "--json", "--broker", broker.url, "--prefix", prefix]
    result = CliRunner().invoke(app, [*args, "--state-dir", str(state)], env={"HOME": str(home)})
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["device_id"], row["version"]) == ("pi-001", 3)
    figures = row["figures"]
    assert figures["rss_bytes"] == 73_000_000
    assert figures["uptime_s"] == 3600.0
    assert figures["latency_p95_ms"] == 9.5
    assert figures["inference_count"] == 1234
    assert figures["agent_version"] == "0.2.0"
    assert figures["outbox_depth"] == 5
    assert not state.exists()
    assert list(home.iterdir()) == []


def test_a_forced_push_to_a_device_that_never_comes_can_be_cancelled(
    broker, prefix, tmp_path, monkeypatch
):
    """Point 6: `--device pi-009` is refused; forced, it waits retained; cancel removes it."""
    monkeypatch.setattr(fleet_pkg, "load_model", lambda _path: _model())
    key = tmp_path / "signing.key"
    key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    common = ["--broker", broker.url, "--prefix", prefix, "--state-dir", str(tmp_path / "s")]
    push = ["push", str(tmp_path / "m.tflite"), "--device", "pi-009", "--key", str(key), *common]
    runner = CliRunner()
    refused = runner.invoke(app, push)
    assert refused.exit_code == 1
    assert "unknown device(s) pi-009" in refused.output
    assert "--force" in refused.output
    forced = runner.invoke(app, [*push, "--force"])
    assert forced.exit_code == 0, forced.output
    assert re.search(r"digits v1 \(int8 [0-9a-f]{8}\) published to 1 device", forced.output)
    topic = Topics(prefix).desired_device("pi-009")
    assert _retained(broker, topic)

    cancel = runner.invoke(app, ["rollout", "cancel", "--device", "pi-009", *common])
    assert cancel.exit_code == 0, cancel.output
    assert "cancelled digits v1 (int8 " in cancel.output
    assert "will not get it: pi-009" in cancel.output
    assert not _retained(broker, topic)
    status = runner.invoke(app, ["rollout", "status", "--device", "pi-009", *common])
    assert "device:pi-009: digits v1 (int8 " in status.output
    assert " push CANCELLED at " in status.output
    again = runner.invoke(app, ["rollout", "cancel", "--device", "pi-009", *common])
    assert again.exit_code == 1
    assert "nothing to cancel for device:pi-009" in again.output


def _retained(broker, topic: str) -> bytes:
    """The retained payload on ``topic`` (b"" if none), read by a fresh client."""
    fleet = open_fleet(broker=broker.url, fleet_dir=None, prefix="x", read_only=True)
    try:
        fleet.conn.subscribe(topic)
        messages = fleet.conn.drain_retained(quiet_s=0.5)
    finally:
        close_fleet(fleet)
    return b"".join(m.payload for m in messages if m.topic == topic)
