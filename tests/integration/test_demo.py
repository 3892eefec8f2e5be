"""`edgefleet demo` end to end (the real CLI, agents and broker), its cleanup, and its brokers."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edgefleet.device.config import load_config
from edgefleet.host.demo import _data as demo_data
from edgefleet.host.demo._agents import demo_agent_config, extract_bundle
from edgefleet.host.demo._brokers import EmbeddedBroker, MosquittoProcess
from edgefleet.host.fleet import BrokerSettings, connect
from edgefleet.host.fleetdir import dump_toml
from edgefleet.host.provision import init_fleet, provision_device
from support.broker import free_port, wait_for_port
from support.scrape import wait_for

pytestmark = pytest.mark.integration

EDGEFLEET = Path(sys.executable).with_name("edgefleet")


def _gone(pid: int, wait_s: float = 15.0) -> bool:
    """True once no process has this pid (bounded wait: the reaper may lag a little)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_demo_json_summary_all_active_nothing_lost_accurate():
    proc = subprocess.run(
        [str(EDGEFLEET), "demo", "--devices", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary = json.loads(proc.stdout)  # stdout holds the JSON and nothing else

    assert summary["ok"] is True, summary["problems"]
    assert summary["all_active"] is True
    devices = summary["devices"]
    assert [d["device_id"] for d in devices] == ["demo-01", "demo-02"]
    assert all(d["update"] == f"active v{summary['deployed']['version']}" for d in devices)
    assert summary["sent"] > 0
    assert summary["received"] == summary["sent"]
    # the round robin gave both devices work, and each answered for all of it
    assert all(d["sent"] > 0 and d["received"] == d["sent"] for d in devices)
    assert summary["accuracy"] >= summary["min_accuracy"] > 0
    # the devices ran the same preprocessing and model as the host's LiteRT check
    assert summary["host_agreement"] >= 0.98
    modes = {m["mode"]: m for m in summary["quantization"]}
    assert {"float32", "int8"} <= set(modes)
    assert modes["int8"]["size_bytes"] < modes["float32"]["size_bytes"] / 3
    assert summary["deployed"]["mode"] == "int8"
    assert summary["median_latency_ms"] > 0
    for device in devices:  # cleaned up on the way out
        assert _gone(device["pid"]), f"agent {device['device_id']} still runs"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_demo_stops_its_agents_and_broker(tmp_path, sig):
    proc = subprocess.Popen(
        [str(EDGEFLEET), "demo", "--dataset", "mnist", "--json", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        pids += [int(p) for p in re.findall(r"\(pid (\d+)\)", line)]
        if "agents:" in line:
            break
    assert len(pids) == 3, "".join(seen)  # mosquitto and two agents
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err
    assert all(_gone(pid) for pid in pids)


def _output_with(proc: subprocess.Popen[str], out: Path, needle: str, wait_s: float) -> str:
    """The process's output (written to ``out``) once it holds ``needle``; fail if it ends first."""

    def ready() -> str | None:
        text = out.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"the demo ended ({proc.returncode}) before {needle!r}:\n{text[-5000:]}")
        return None

    return wait_for(ready, wait_s, f"{needle!r} in the demo's output")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        assert response.status == 200
        return response.read().decode()


def _stored(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT source FROM predictions")}


@pytest.mark.slow
def test_demo_with_shadow_reports_then_its_dashboard_shows_the_fleet_and_new_scans(tmp_path):
    port = free_port()
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [str(EDGEFLEET), "demo", "--devices", "2", "--shadow", "--dashboard",
             "--dashboard-listen", f"127.0.0.1:{port}", "--workdir", str(tmp_path / "work")],
            stdout=sink, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        text = _output_with(proc, out, f"dashboard: http://127.0.0.1:{port}/", 400)
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
        # --shadow: the candidate ran beside the deployed model on both devices, and the
        # report compared every scan the demo fed (none failed, none dropped).
        assert "shadow: every device runs the candidate" in text, text[-5000:]
        fleet_line = re.search(r"fleet: (\d+) compared, agreement ([\d.]+) ?%.*?(\d+) "
                               r"candidate failure\(s\), (\d+) dropped", text)  # fmt: skip
        assert fleet_line is not None, text[-5000:]
        compared, agreement, failures, dropped = fleet_line.groups()
        assert int(compared) > 0
        assert (int(failures), int(dropped)) == (0, 0)
        assert float(agreement) >= 90.0  # float32 beside its own int8 conversion
        for device in ("demo-01", "demo-02"):
            assert re.search(rf"{device}\s+\S+\s+\d+", text), text[-5000:]

        # --dashboard: the demo fleet's page lists both devices.
        wait_for_port(port, timeout=60)
        page = _get(f"http://127.0.0.1:{port}/")
        assert "demo-01" in page
        assert "demo-02" in page
        # A scan dropped into an agent's inbox now reaches the dashboard's store and page.
        scan = demo_data.pick("gpr").scans(1)[0]
        name = f"late-{scan.name}"
        inbox = tmp_path / "work" / "devices" / "demo-01" / "inbox"
        (inbox / f".{name}.tmp").write_bytes(scan.data)
        (inbox / f".{name}.tmp").rename(inbox / name)
        db = tmp_path / "work" / "host-state" / "predictions.sqlite"
        wait_for(lambda: name in _stored(db), 60, f"{name} in the dashboard's store")
        assert name in _get(f"http://127.0.0.1:{port}/predictions")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130
    assert all(_gone(pid) for pid in pids)


def test_embedded_amqtt_broker_serves_mqtt311_clients_and_stops():
    broker = EmbeddedBroker().start()
    try:
        conn = connect(BrokerSettings(url=broker.url), protocol="3.1.1")
        try:
            conn.subscribe("demo-test/#")
            conn.wait_published([conn.publish("demo-test/a", b"hello", retain=True)])
            msg = conn.next_message(5)
            assert msg is not None
            assert (msg.topic, msg.payload) == ("demo-test/a", b"hello")
        finally:
            conn.close()
    finally:
        broker.stop()
    assert broker._thread is not None
    assert not broker._thread.is_alive()


def test_mosquitto_process_listens_then_stops(tmp_path):
    broker = MosquittoProcess(tmp_path).start()
    assert broker.proc is not None
    pid = broker.proc.pid
    conn = connect(BrokerSettings(url=broker.url))
    assert conn.mqtt5
    conn.close()
    broker.stop()
    assert _gone(pid)


@pytest.mark.parametrize("tls", [True, False])
def test_the_agent_accepts_the_config_the_demo_makes_from_a_real_bundle(tmp_path, tls):
    config = init_fleet(
        tmp_path / "fleet", broker_url="mqtts://127.0.0.1:18883", bind_address="127.0.0.1"
    )
    bundle = extract_bundle(
        provision_device(config.root, "demo-01", groups=["demo"]), tmp_path / "dev" / "bundle"
    )
    url = "mqtts://127.0.0.1:18883" if tls else "mqtt://127.0.0.1:1883"
    settings = demo_agent_config(bundle, home=tmp_path / "dev", url=url, tls=tls, mqtt311=False)
    (bundle / "agent.toml").write_text(dump_toml(settings))

    agent = load_config(bundle / "agent.toml")
    assert agent.device_id == "demo-01"
    assert agent.groups == ["demo"]
    assert agent.mqtt.url == url
    assert agent.state_dir == tmp_path / "dev" / "state"
    assert agent.inference.watch_dir == tmp_path / "dev" / "inbox"
    assert [p.is_dir() for p in agent.trust.signing_keys] == [True]
    if tls:
        assert agent.mqtt.cert_file is not None
        assert agent.mqtt.cert_file.is_file()
    else:
        assert agent.mqtt.ca_file is None
        assert agent.mqtt.cert_file is None
