"""Prometheus metrics on both sides and device logs, with a real agent, broker and listener.

One real agent (``[metrics] listen``, ``[logs] level = "warning"``) gets a signed model and
classifies digits; a real ``edgefleet predictions listen --metrics --logs`` stores and acks
the records. Both endpoints are scraped with real HTTP GETs and parsed with the Prometheus
client's parser; ``edgefleet logs`` prints a WARNING the agent logged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from edgefleet.shared.topics import Topics
from support.agent import (
    AgentProcess,
    FakeHost,
    ModelBundle,
    mnist_eval_pngs,
    shared_mnist_model,
    signed_agent_config,
    write_agent_config,
)
from support.broker import free_port, wait_for_port
from support.scrape import scrape, scrape_until, total, value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICE = "obs-01"
CHUNK = 4096
CLI = "from edgefleet.host.cli import main; main()"


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def listener(broker, prefix, tmp_path):
    port = free_port()
    db = tmp_path / "host" / "predictions.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "predictions", "listen", "--broker", broker.url,
         "--prefix", prefix, "--db", str(db), "--state-dir", str(tmp_path / "host"),
         "--metrics", f"127.0.0.1:{port}", "--logs"],
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )  # fmt: skip
    assert proc.stderr is not None
    lines = []
    while not any("listening on" in line for line in lines):
        line = proc.stderr.readline().decode()
        assert line, f"listen ended early: {lines}"
        lines.append(line)
    yield port, db, "".join(lines)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_both_endpoints_count_while_predictions_flow_and_logs_reach_the_host(
    broker, prefix, tmp_path, mnist_bundle, listener
):
    host_port, _db, banner = listener
    assert f"http://127.0.0.1:{host_port}/metrics" in banner
    dev_port = free_port()
    signer, inbox, config = signed_agent_config(
        tmp_path,
        device_id=DEVICE,
        broker_url=broker.url,
        prefix=prefix,
        groups=["field"],
        extra=f'[metrics]\nlisten = "127.0.0.1:{dev_port}"\n[logs]\nlevel = "warning"\n',
    )
    fake = FakeHost(broker.url, prefix)
    agent = AgentProcess(config)
    try:
        wait_for_port(dev_port, timeout=30)
        first = scrape(dev_port)
        assert value(first, "edgefleet_agent_update_state", state="idle") == 1
        assert total(first, "edgefleet_agent_inferences_total") == 0

        fake.offer(mnist_bundle.data, chunk_size=CHUNK)
        _, envelope = signer.manifest(mnist_bundle, version=1, devices=[DEVICE], chunk_size=CHUNK)
        fake.push(envelope, device=DEVICE)
        fake.wait_report(DEVICE, state="active", version=1)
        host_before = scrape(host_port)

        truth = mnist_eval_pngs(inbox, 12)
        fake.wait(lambda h: {r.source for r in h.records.values()} >= set(truth), 60)
        dev = scrape_until(
            dev_port,
            lambda s: total(s, "edgefleet_agent_inferences_total") == 12,
            what="12 inferences on the device's endpoint",
        )
        host = scrape_until(
            host_port,
            lambda s: (
                value(s, "edgefleet_ingest_stored_total") == 12
                and value(s, "edgefleet_fleet_devices_online", group="field") == 1
                and value(s, "edgefleet_fleet_model_devices", model="mnist_tiny", version="1")
            ),
            what="12 stored records, the device online and on v1 on the host's endpoint",
        )
    finally:
        fake.close()
        stopped = agent.stop()
    assert stopped == 0

    # The device: counters moved with the inputs, and the state is what the agent did.
    assert value(dev, "edgefleet_agent_inference_seconds_count", stage="total") == 12
    assert value(dev, "edgefleet_agent_inference_seconds_count", stage="preprocess") == 12
    assert value(dev, "edgefleet_agent_inference_seconds_sum", stage="invoke") > 0
    assert value(dev, "edgefleet_agent_update_state", state="active") == 1
    assert value(dev, "edgefleet_agent_mqtt_connected") == 1
    assert value(dev, "edgefleet_agent_updates_total", outcome="active") == 1
    assert value(dev, "edgefleet_agent_last_update_bytes") == len(mnist_bundle.data)
    assert 0 < value(dev, "edgefleet_agent_last_update_duration_seconds") < 60
    info = {lbls: v for (n, lbls), v in dev.items() if n == "edgefleet_agent_model_info"}
    (labels,) = info
    assert dict(labels) == {
        "name": "mnist_tiny",
        "version": "1",
        "mode": "int8",
        "sha256": mnist_bundle.sha256,
    }
    assert value(dev, "process_resident_memory_bytes") > 10 * 2**20
    assert value(dev, "process_cpu_seconds_total") > 0
    assert value(dev, "edgefleet_agent_outbox_depth") is not None

    # The host: the ingest counters moved by exactly the records sent.
    assert value(host_before, "edgefleet_ingest_stored_total") == 0
    assert value(host, "edgefleet_ingest_received_total") >= 12
    assert value(host, "edgefleet_ingest_malformed_total") == 0
    assert value(host, "edgefleet_ingest_store_lag_seconds_count") >= 12
    assert value(host, "edgefleet_fleet_model_devices", model="mnist_tiny", version="1") == 1
    assert value(host, "edgefleet_fleet_devices", group="field") == 1


def test_logs_shows_a_warning_the_agent_logged(broker, prefix, tmp_path, listener):
    host_port, db, _ = listener
    config = write_agent_config(
        tmp_path / "device",
        device_id=DEVICE,
        broker_url=broker.url,
        prefix=prefix,
        keys=[],
    )
    fake = FakeHost(broker.url, prefix)
    agent = AgentProcess(config)
    follower = subprocess.Popen(
        [sys.executable, "-c", CLI, "logs", DEVICE, "--follow", "--broker", broker.url,
         "--prefix", prefix, "--db", str(tmp_path / "none.sqlite")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert follower.stderr is not None
        assert "following" in follower.stderr.readline()
        fake.wait(lambda h: h.latest_status(DEVICE), 30)
        # An unreadable ack: the agent logs a WARNING (and goes on).
        fake.client.publish(Topics(prefix).predictions_ack(DEVICE), b"\x1b[2J not json", qos=1)
        shown = wait_for(
            lambda: (
                (r := edgefleet("logs", DEVICE, "--db", str(db), "--since", "5m"))
                and "ignoring an unreadable ack" in r.stdout
                and r
            ),
            30,
            "the warning in `edgefleet logs`",
        )
        assert shown.returncode == 0, shown.stderr
        (line,) = [ln for ln in shown.stdout.splitlines() if "unreadable ack" in ln]
        assert f" {DEVICE} WARNING " in line
        assert "edgefleet.device._inflight" in line
        assert "\x1b" not in shown.stdout  # the device's bytes never reach the terminal raw
        assert follower.stdout is not None
        followed = follower.stdout.readline()
        assert "ignoring an unreadable ack" in followed
        assert " WARNING " in followed
        host = scrape(host_port)
        assert value(host, "edgefleet_ingest_log_lines_stored_total") >= 1
        # Nothing stored for a time after the line: --since filters.
        later = edgefleet("logs", DEVICE, "--db", str(db), "--since", "2099-01-01")
        assert later.returncode == 0
        assert "unreadable ack" not in later.stdout
    finally:
        follower.kill()
        follower.wait()
        fake.close()
        agent.stop()


def test_logs_without_a_store_says_what_to_do(tmp_path):
    result = edgefleet("logs", DEVICE, "--db", str(tmp_path / "missing.sqlite"))
    assert result.returncode == 1
    assert "predictions listen --logs" in result.stderr
    bad = edgefleet("logs", DEVICE, "--db", str(tmp_path / "x.sqlite"), "--since", "yesterday")
    assert bad.returncode == 1
    assert "--since 'yesterday' is not a time" in bad.stderr
    assert "15m" in bad.stderr
