"""Fleet load: N real agents on one Mosquitto get a ~4 MB model, then predict at a steady rate.

N comes from ``EDGEFLEET_LOAD_AGENTS`` (default 100); CI runs it smaller. Agents run
``EDGEFLEET_LOAD_PER_PROCESS`` to a process (default 25), each with its own MQTT session,
state dir and outbox (tests/support/agent_pool.py). The host side is the real one:
``host.publish.push`` to the group, the real ``Ingestor`` into a real SQLite store.
Timings are printed (and written to ``EDGEFLEET_LOAD_REPORT`` if set), never asserted:
the assertions are that every agent activates the model and that no prediction is lost
or stored twice.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from edgefleet.host.fleet import (
    Ingestor,
    Phase,
    PushPlan,
    SqliteStore,
    close_fleet,
    load_model,
    open_fleet,
    push,
)
from edgefleet.shared.manifest import private_key_pem
from support.agent import Signer, write_agent_config
from support.agent_pool import PoolProcess
from support.faults import build_big_model, image_payload

pytestmark = [pytest.mark.load, pytest.mark.integration, pytest.mark.slow]

N = int(os.environ.get("EDGEFLEET_LOAD_AGENTS", "100"))
PER_PROCESS = int(os.environ.get("EDGEFLEET_LOAD_PER_PROCESS", "25"))
RATE_HZ = float(os.environ.get("EDGEFLEET_LOAD_RATE_HZ", "1"))  # per agent
SECONDS = float(os.environ.get("EDGEFLEET_LOAD_SECONDS", "10"))


class TimedStore(SqliteStore):
    """The real SQLite store, noting when each record was committed (for latency)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.committed: dict[str, float] = {}

    def add(self, records):
        batch = list(records)
        new = super().add(batch)
        now = time.time()
        for record in batch:
            self.committed.setdefault(record.source, now)
        return new


def _configs(root: Path, url: str, prefix: str, signer: Signer) -> list[Path]:
    paths = []
    for i in range(N):
        path = write_agent_config(
            root / f"load-{i:04d}",
            device_id=f"load-{i:04d}",
            broker_url=url,
            prefix=prefix,
            keys=[signer.public_path],
            groups=["load"],
        )
        # Field-like timings: the test defaults (0.5 s) would make 100 agents chatter.
        text = path.read_text().replace("heartbeat_s = 0.5", "heartbeat_s = 5")
        text = text.replace("chunk_timeout_s = 0.5", "chunk_timeout_s = 5")
        # N simulated devices share the test machine's cores, and every one starts its
        # health-check child at the same moment: 30 s is too short for 100 on 2 cores.
        path.write_text(text.replace("health_timeout_s = 30", "health_timeout_s = 900"))
        paths.append(path)
    return paths


def _wait_online(fleet, devices: list[str], timeout: float) -> None:
    fleet.observe()
    deadline = time.monotonic() + timeout
    while not set(devices) <= fleet.view.online():
        assert time.monotonic() < deadline, sorted(set(devices) - fleet.view.online())[:10]
        fleet.pump(0.5)


def test_fleet_of_n_agents_update_then_predict_without_loss(tmp_path, broker, prefix):
    model = build_big_model(tmp_path / "model" / "mnist_big.tflite")
    signer = Signer(tmp_path / "keys")
    key_file = tmp_path / "signing.key"
    key_file.write_bytes(private_key_pem(signer.key))
    configs = _configs(tmp_path / "agents", broker.url, prefix, signer)
    devices = [c.parent.name for c in configs]
    pools = [
        PoolProcess(configs[i : i + PER_PROCESS], tmp_path / f"pool-{i}.log")
        for i in range(0, N, PER_PROCESS)
    ]
    fleet = open_fleet(
        broker=broker.url,
        fleet_dir=None,
        prefix=prefix,
        state_dir=tmp_path / "host",
        key_file=key_file,
        need_key=True,
    )
    report: dict[str, object] = {"agents": N, "model_bytes": len(model.data)}
    try:
        _wait_online(fleet, devices, timeout=60 + N)
        t0 = time.monotonic()
        result = push(fleet, load_model(model.path), PushPlan(group="load", wait=120 + 3 * N))
        report["update_all_active_s"] = round(time.monotonic() - t0, 2)
        phases = {p.device_id: p.phase for p in result.progress}
        assert phases == dict.fromkeys(devices, Phase.ACTIVE), {
            d: p for d, p in phases.items() if p != Phase.ACTIVE
        }
        report |= _predict(fleet, devices, tmp_path / "predictions.sqlite")
    finally:
        close_fleet(fleet)
        for pool in pools:
            pool.stop()
        print("\nLOAD", json.dumps(report))
        if out := os.environ.get("EDGEFLEET_LOAD_REPORT"):
            Path(out).write_text(json.dumps(report, indent=2) + "\n")
    assert all(pool.proc.returncode == 0 for pool in pools)


def _predict(fleet, devices: list[str], db: Path) -> dict[str, object]:
    """Send images at RATE_HZ per agent for SECONDS; every one must come back once."""
    store = TimedStore(db)
    ingestor = Ingestor(fleet.conn, fleet, store)
    ingestor.subscribe(shared=False)
    stop = threading.Event()
    worker = threading.Thread(target=ingestor.run, kwargs={"stop": stop}, daemon=True)
    worker.start()
    sent: dict[str, float] = {}
    ticks = int(SECONDS * RATE_HZ)
    start = time.monotonic()
    for tick in range(ticks):
        for i, device in enumerate(devices):
            name = f"{device}-{tick}"
            sent[f"mqtt:{name}"] = time.time()
            fleet.conn.publish(fleet.topics.images(device), image_payload(name, i % 50))
        time.sleep(max(0.0, start + (tick + 1) / RATE_HZ - time.monotonic()))
    deadline = time.monotonic() + 60 + len(sent) / 50
    while set(store.committed) < set(sent) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    worker.join(timeout=10)
    rows = [record.source for _id, record in store.iter_records()]
    store.close()
    assert set(rows) == set(sent), f"{len(set(sent) - set(rows))} of {len(sent)} lost"
    assert len(rows) == len(set(rows)), "a prediction stored twice"
    latencies = sorted((store.committed[s] - t) * 1000 for s, t in sent.items())
    q = statistics.quantiles(latencies, n=100)
    return {
        "predictions": len(sent),
        "rate_per_agent_hz": RATE_HZ,
        "latency_p50_ms": round(q[49], 1),
        "latency_p99_ms": round(q[98], 1),
        "lost": 0,
        "duplicates": 0,
    }
