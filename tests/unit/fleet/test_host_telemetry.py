"""Host side of observability on the in-memory broker and real SQLite: log tap, fleet gauges."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    Fleet,
    Ingestor,
    IngestStats,
    SqliteStore,
    group_target,
    open_registry,
)
from edgefleet.host.fleet._logs import LogStore, LogTap, format_line, parse_since, printable
from edgefleet.host.fleet._metrics import IngestMetrics, MeasuredStore, snapshot
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets
from edgefleet.shared.messages import (
    DeviceLog,
    PredictionRecord,
    Reported,
    Status,
    UpdateState,
    encode,
)
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker

T = Topics("edgefleet")


def line(device: str = "d1", seq: int = 1, message: str = "disk full") -> DeviceLog:
    return DeviceLog(
        device_id=device,
        boot_id="boot1",
        seq=seq,
        ts=1_800_000_000.0 + seq,
        level="WARNING",
        logger="edgefleet.device.agent",
        message=message,
    )


def record(seq: int, ts: float) -> PredictionRecord:
    return PredictionRecord(
        device_id="d1",
        boot_id="boot1",
        seq=seq,
        label="7",
        score=0.9,
        latency_ms=2.0,
        model_name="digits",
        model_version=1,
        ts=ts,
    )


@pytest.fixture
def registry(tmp_path):
    r = open_registry(tmp_path / "state")
    yield r
    r.close()


def test_the_tap_stores_log_lines_once_and_hands_predictions_to_the_ingestor(tmp_path, registry):
    broker = FakeBroker()
    db = tmp_path / "predictions.sqlite"
    store, logs = SqliteStore(db), LogStore(db)  # one file: predictions and logs tables
    conn = broker.connect("host")
    tap = LogTap(conn, T, logs)
    worker = Ingestor(tap, Fleet(conn=tap, topics=T, registry=registry), store)
    worker.subscribe()
    tap.subscribe_logs(shared=True, group="edgefleet")
    device = broker.connect("d1")
    device.publish(T.logs("d1"), encode(line(seq=1)), qos=0)
    device.publish(T.logs("d1"), encode(line(seq=1)), qos=0)  # seen twice: stored once
    device.publish(T.logs("d1"), encode(line(device="d2", seq=2)), qos=0)  # forged device
    device.publish(T.logs("d1"), b"\xff not json", qos=0)
    device.publish(T.predictions("d1"), encode(record(0, ts=time.time())))
    device.publish(T.logs("d1"), encode(line(seq=3, message="after")), qos=0)
    stop = threading.Event()
    stats = worker.run(stop=stop, on_batch=lambda _s: stop.set())
    assert stats.stored == 1
    assert store.count() == 1
    while tap.next_message(0.01) is not None:  # the rest of the queue: the last line
        pass
    assert (tap.stored, tap.malformed) == (2, 2)
    rows = logs.lines("d1")
    assert [r.line.seq for r in rows] == [1, 3]
    assert logs.lines("d2") == []
    assert [r.line.seq for r in logs.lines("d1", since=1_800_000_002.0)] == [3]
    assert [r.line.seq for r in logs.lines("d1", after_id=rows[0].id)] == [3]
    store.close()
    logs.close()


def test_a_device_line_never_reaches_the_terminal_raw():
    shown = format_line(line(message="\x1b[2Jcleared\x07 screen\nTraceback:\tx\x9b"))
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "\x9b" not in shown
    assert "\\x1b[2Jcleared\\x07 screen\nTraceback:\tx\\x9b" in shown
    assert " d1 WARNING  edgefleet.device.agent: " in shown
    assert printable("plain") == "plain"


def test_since_takes_durations_and_dates():
    now = 1_800_000_000.0
    assert parse_since("90s", now=now) == now - 90
    assert parse_since("10m", now=now) == now - 600
    assert parse_since("2h", now=now) == now - 7200
    assert parse_since("1d", now=now) == now - 86400
    assert parse_since("2027-01-01T00:00+00:00", now=now) == 1798761600.0
    assert parse_since("2027-01-01T00:00", now=now) == 1798761600.0  # UTC, as predictions tail
    with pytest.raises(FleetError, match="15m, 2h"):
        parse_since("yesterday", now=now)


def test_measured_store_observes_the_lag_of_each_record(tmp_path):
    registry = CollectorRegistry()
    store = MeasuredStore(SqliteStore(tmp_path / "p.sqlite"), registry)
    now = time.time()
    assert store.add([record(0, ts=now - 30), record(1, ts=now - 1)]) == 2
    assert store.add([record(0, ts=now - 30)]) == 0  # a duplicate: still a commit
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    assert samples["edgefleet_ingest_store_lag_seconds_count", ()] == 3
    assert 60 < samples["edgefleet_ingest_store_lag_seconds_sum", ()] < 70
    assert samples["edgefleet_ingest_store_lag_seconds_bucket", (("le", "10.0"),)] == 1
    assert samples["edgefleet_ingest_commit_seconds_count", ()] == 2
    assert store.count() == 2
    store.close()


def status(device: str, *, online: bool, groups: list[str], version: int | None) -> bytes:
    return encode(
        Status(
            device_id=device,
            online=online,
            groups=groups,
            model_name="digits" if version else None,
            model_version=version,
        )
    )


def manifest(version: int) -> Manifest:
    spec = TensorSpec(shape=(1, 2), dtype="int8")
    return Manifest(
        name="digits",
        version=version,
        created_at=1,
        expires_at=2,
        targets=Targets(groups=["field"]),
        variants=[ModelVariant.for_bytes(b"model %d" % version, accelerator="cpu")],
        mode="int8",
        input=spec,
        output=spec,
        preprocess=PreprocessSpec(height=1, width=1),
        labels=["a", "b"],
    )


def test_fleet_gauges_count_devices_by_group_versions_and_rollouts(registry):
    broker = FakeBroker()
    fleet = Fleet(conn=broker.connect("host"), topics=T, registry=registry)
    fleet.conn.subscribe(T.all_status(), T.all_reported())
    dev = broker.connect("devices")
    dev.publish(T.status("a"), status("a", online=True, groups=["field"], version=2), retain=True)
    dev.publish(T.status("b"), status("b", online=True, groups=["field"], version=1), retain=True)
    dev.publish(T.status("c"), status("c", online=False, groups=["lab"], version=1), retain=True)
    dev.publish(T.status("d"), status("d", online=True, groups=[], version=None), retain=True)
    pushed = manifest(2)
    registry.record_push(target=group_target("field"), manifest=pushed, envelope=b"e")
    active = Reported(
        device_id="a", state=UpdateState.ACTIVE, version=2, active_version=2, ts=time.time()
    )
    dev.publish(T.reported("a"), encode(active), retain=True)
    while (msg := fleet.conn.next_message(0.01)) is not None:
        fleet.handle(msg)
    snap = snapshot(fleet)
    assert snap.online == {"field": 2, "_none": 1}
    assert snap.known == {"field": 2, "lab": 1, "_none": 1}
    assert snap.versions == {("digits", "2"): 1, ("digits", "1"): 1}
    assert snap.rollouts == {("group:field", "active"): 1, ("group:field", "pending"): 1}
    assert snap.in_progress == 1  # b is online and not on v2 yet

    # b gets there: the rollout is no longer in progress.
    done = Reported(
        device_id="b", state=UpdateState.ACTIVE, version=2, active_version=2, ts=time.time()
    )
    dev.publish(T.reported("b"), encode(done), retain=True)
    while (msg := fleet.conn.next_message(0.01)) is not None:
        fleet.handle(msg)
    assert snapshot(fleet).in_progress == 0


def test_an_unusable_metrics_address_is_a_clear_error(tmp_path):
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry, MeasuredStore(SqliteStore(tmp_path / "p"), registry), None)
    with pytest.raises(FleetError, match="HOST:PORT"):
        metrics.serve("9100", IngestStats())
    with pytest.raises(FleetError, match=r"cannot serve metrics on 203\.0\.113\.9:9100"):
        metrics.serve("203.0.113.9:9100", IngestStats())  # not an address of this machine
    metrics.store.close()


def test_the_dashboard_and_scrape_example_use_metrics_that_exist():
    root = Path(__file__).resolve().parents[3]
    dashboard = json.loads((root / "deploy/grafana/edgefleet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    sources = (root / "device/edgefleet/device/metrics.py").read_text()
    sources += (root / "host/edgefleet/host/fleet/_metrics.py").read_text()
    sources += (root / "host/edgefleet/host/cli/_observe.py").read_text()
    names = {n for e in exprs for n in re.findall(r"\b(edgefleet_[a-z_]+)", e)}
    for name in names:
        base = re.sub(r"_(total|bucket|count|sum|info)$", "", name)
        assert f'"{base}"' in sources or 'f"edgefleet_ingest_{name}"' in sources, name
    ingest = {"stored", "received", "duplicates", "malformed", "failed_batches"}
    for name in names:
        if name.startswith("edgefleet_ingest_") and "lag" not in name:
            assert re.sub(r"^edgefleet_ingest_|_total$", "", name) in ingest, name
    scrape = (root / "deploy/prometheus/prometheus.yml").read_text()
    for job in ("edgefleet-ingest", "edgefleet-agents"):
        assert f"job_name: {job}" in scrape
        assert job in json.dumps(dashboard["templating"])
