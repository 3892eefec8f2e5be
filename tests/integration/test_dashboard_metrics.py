"""`edgefleet dashboard --metrics`: the host's Prometheus metrics from the dashboard.

A real ``edgefleet dashboard --ingest --metrics`` runs as a child process against the test
mosquitto; a device is played with a real MQTT client (retained status, prediction records,
acks read back). The endpoint is scraped with real HTTP GETs and parsed with the Prometheus
client's parser: the fleet gauges follow the status messages and the push registry, and the
ingest counters move by exactly the records sent.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet.host.fleet import group_target, open_registry
from edgefleet.shared.messages import Ack, PredictionRecord, Status, batch_payload, decode, encode
from edgefleet.shared.topics import Topics
from support.broker import free_port, wait_for_port
from support.manifests import manifest
from support.scrape import scrape, scrape_until, total, value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLI = "from edgefleet.host.cli import main; main()"
DEVICE = "dm-01"


class Dashboard:
    """``edgefleet dashboard ... --metrics`` as a child process, its stderr in a file."""

    def __init__(self, tmp_path: Path, *args: str, metrics: str) -> None:
        self.log = tmp_path / f"dashboard-{free_port()}.log"
        self.port = free_port()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CLI, "dashboard", "--listen", f"127.0.0.1:{self.port}",
                 "--metrics", metrics, *args],
                stdout=out,
                stderr=out,
                env=dict(os.environ),
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_started(self) -> str:
        return wait_for(
            lambda: (
                (self.proc.poll() is None or pytest.fail(f"dashboard ended: {self.output()}"))
                and "dashboard: http://" in (text := self.output())
                and text
            ),
            60,
            "the dashboard to start",
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Device:
    """A device played by a plain MQTT client: retained status, records, acks received."""

    def __init__(self, broker_url: str, prefix: str, device_id: str) -> None:
        self.topics = Topics(prefix)
        self.device_id = device_id
        self.acked: list[int] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{os.getpid()}"
        )
        self.client.on_message = lambda _c, _u, msg: self.acked.extend(
            decode(Ack, msg.payload).seqs
        )
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe(self.topics.predictions_ack(device_id), qos=1)

    def status(self, *, online: bool, groups: list[str], version: int) -> None:
        status = Status(
            device_id=self.device_id,
            online=online,
            groups=groups,
            model_name="mnist_tiny",
            model_version=version,
            ts=time.time(),
        )
        self.publish(self.topics.status(self.device_id), encode(status), retain=True)

    def records(self, *seqs: int) -> None:
        payload = batch_payload(
            [
                encode(
                    PredictionRecord(
                        device_id=self.device_id,
                        boot_id="boot-1",
                        seq=seq,
                        label="7",
                        score=0.9,
                        latency_ms=1.0,
                        model_name="mnist_tiny",
                        model_version=3,
                        ts=time.time(),
                        source=f"scan-{seq}.png",
                    )
                )
                for seq in seqs
            ]
        )
        self.publish(self.topics.predictions(self.device_id), payload)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        # Clear the retained status so that no later test of the session sees it.
        self.publish(self.topics.status(self.device_id), b"", retain=True)
        self.client.loop_stop()
        self.client.disconnect()


def test_dashboard_metrics_follow_the_fleet_and_count_what_it_ingests(broker, prefix, tmp_path):
    state = tmp_path / "state"
    registry = open_registry(state)
    # A push to group north whose member runs another version: a rollout in progress.
    registry.record_push(
        target=group_target("north"), manifest=manifest(4, b"four"), envelope=b"e",
        members=(DEVICE,),
    )  # fmt: skip
    registry.close()
    metrics_port = free_port()
    dash = Dashboard(
        tmp_path,
        "--ingest", "--broker", broker.url, "--prefix", prefix, "--state-dir", str(state),
        metrics=f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    device = Device(broker.url, prefix, DEVICE)
    try:
        banner = dash.wait_started()
        assert f"Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics" in banner
        wait_for_port(metrics_port, timeout=30)
        first = scrape(metrics_port)
        assert value(first, "edgefleet_ingest_stored_total") == 0
        assert value(first, "edgefleet_ingest_received_total") == 0
        assert total(first, "edgefleet_fleet_devices_online") == 0

        device.status(online=True, groups=["north", "field"], version=3)
        fleet = scrape_until(
            metrics_port,
            lambda s: value(s, "edgefleet_fleet_devices_online", group="north") == 1,
            what="the device online in group north on the dashboard's endpoint",
        )
        assert value(fleet, "edgefleet_fleet_devices_online", group="field") == 1
        assert value(fleet, "edgefleet_fleet_devices", group="north") == 1
        assert value(fleet, "edgefleet_fleet_model_devices", model="mnist_tiny", version="3") == 1
        assert total(fleet, "edgefleet_fleet_rollout_devices", target="group:north") == 1
        assert value(fleet, "edgefleet_fleet_rollouts_in_progress") == 1
        assert value(fleet, "edgefleet_fleet_snapshot_timestamp_seconds") > time.time() - 60

        device.records(0, 1, 2)
        wait_for(lambda: sorted(device.acked) == [0, 1, 2], 30, "the three records acked")
        device.records(1)  # sent again (a lost ack): absorbed, acked again
        device.publish(device.topics.predictions(DEVICE), b"not json")
        host = scrape_until(
            metrics_port,
            lambda s: (
                value(s, "edgefleet_ingest_duplicates_total") == 1
                and value(s, "edgefleet_ingest_malformed_total") == 1
            ),
            30,
            "the duplicate and the malformed message counted",
        )
        assert value(host, "edgefleet_ingest_stored_total") == 3
        assert value(host, "edgefleet_ingest_received_total") == 4
        assert value(host, "edgefleet_ingest_acked_total") == 4
        assert value(host, "edgefleet_ingest_store_lag_seconds_count") == 4
        assert value(host, "edgefleet_ingest_commit_seconds_count") >= 2
        # The records are in the dashboard's store, not just counted.
        db = state / "predictions.sqlite"
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone() == (3,)

        device.status(online=False, groups=["north", "field"], version=3)
        gone = scrape_until(
            metrics_port,
            lambda s: value(s, "edgefleet_fleet_devices_online", group="north") == 0,
            what="the device offline on the dashboard's endpoint",
        )
        assert value(gone, "edgefleet_fleet_devices", group="north") == 1
        assert value(gone, "edgefleet_fleet_model_devices", model="mnist_tiny", version="3") is None
    finally:
        device.close()
        dash.stop()


def test_without_ingest_the_dashboard_serves_only_the_fleet_figures(broker, prefix, tmp_path):
    metrics_port = free_port()
    dash = Dashboard(
        tmp_path, "--broker", broker.url, "--prefix", prefix, "--state-dir",
        str(tmp_path / "state"), metrics=f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    try:
        banner = dash.wait_started()
        assert f"Prometheus metrics on http://127.0.0.1:{metrics_port}/metrics" in banner
        wait_for_port(metrics_port, timeout=30)
        samples = scrape_until(
            metrics_port,
            lambda s: value(s, "edgefleet_fleet_snapshot_timestamp_seconds"),
            30,
            "the first fleet snapshot",
        )
        assert value(samples, "edgefleet_fleet_rollouts_in_progress") == 0
        # It stores nothing, so it claims no ingest figures (a listener elsewhere has them).
        assert not [n for n, _ in samples if n.startswith("edgefleet_ingest_")]
    finally:
        dash.stop()


def test_a_metrics_port_in_use_stops_the_dashboard_with_the_reason(broker, prefix, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-c", CLI, "dashboard", "--listen", f"127.0.0.1:{free_port()}",
             "--broker", broker.url, "--prefix", prefix, "--state-dir", str(tmp_path / "s"),
             "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-c", CLI, "dashboard", "--broker", broker.url, "--state-dir",
         str(tmp_path / "s"), "--metrics", "9100"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "--metrics: listen address '9100' is not HOST:PORT" in bad.stderr
