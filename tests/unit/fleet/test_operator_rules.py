"""Issue 18, fleet side: typos refused, rollout cancel, build ids, fresh fleet status.

On the in-memory broker with the simulated devices of test_push_fake (real signing and
manifest checks, real push registry in SQLite).
"""

from __future__ import annotations

import hashlib
import time

import pytest
from test_push_fake import MODEL_A, MODEL_B, SimDevice, devices, fresh_host, model_files

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    PushPlan,
    cancel_rollout,
    device_rows,
    group_target,
    push,
    reassert,
    rollback,
)
from edgefleet.host.fleetdir import DeviceRecord
from edgefleet.host.fleetdir import Registry as DeviceRegistry
from edgefleet.shared.messages import Reported, Status, UpdateState, encode
from edgefleet.shared.topics import Topics

T = Topics("edgefleet")
SHA_A = hashlib.sha256(MODEL_A).hexdigest()


def _provision(host, *ids: str, group: str = "field") -> None:
    """What --fleet DIR gives the host: provisioned devices and their groups."""
    registry = DeviceRegistry(
        devices={
            d: DeviceRecord(device_id=d, groups=[group], serial=i + 1, provisioned_at=0)
            for i, d in enumerate(ids)
        }
    )
    host.view.load_provisioned(registry)


# -- point 6: typos ------------------------------------------------------------------------


def test_a_push_to_an_unknown_group_is_refused_and_publishes_nothing(broker, key, host):
    devices(broker, key, "d1")
    with pytest.raises(FleetError, match=r"group 'nosuch' has no device .* known groups: field"):
        push(host, model_files(MODEL_A), PushPlan(group="nosuch"))
    assert broker.published("edgefleet/models/#") == []
    assert broker.published("edgefleet/groups/+/desired") == []
    assert host.registry.max_version() == 0  # no version used up


def test_a_push_to_an_unprovisioned_device_is_refused_unless_forced(broker, key, host):
    devices(broker, key, "pi-001")
    _provision(host, "pi-001")
    with pytest.raises(FleetError, match=r"unknown device\(s\) pi-009: not provisioned"):
        push(host, model_files(MODEL_A), PushPlan(devices=("pi-009",)))
    assert T.desired_device("pi-009") not in broker.retained
    assert host.registry.max_version() == 0

    forced = push(host, model_files(MODEL_A), PushPlan(devices=("pi-009",), force=True))
    assert forced.version == 1
    assert T.desired_device("pi-009") in broker.retained


def test_a_provisioned_group_is_known_even_before_its_devices_come_online(broker, key, host):
    _provision(host, "pi-001", group="north")
    result = push(host, model_files(MODEL_A), PushPlan(group="north"))
    assert result.targets == ["pi-001"]


# -- point 6: rollout cancel ---------------------------------------------------------------


def test_cancel_retracts_the_group_manifest_and_its_chunks(broker, key, host, tmp_path):
    _, d2 = devices(broker, key, "d1", "d2:silent")
    result = push(host, model_files(MODEL_A), PushPlan(group="field"))
    assert T.desired_group("field") in broker.retained
    assert [t for t in broker.retained if SHA_A in t]

    other = fresh_host(broker, key, tmp_path)  # another process (the CLI, the dashboard)
    cancelled = cancel_rollout(other, group_target("field"))
    assert T.desired_group("field") not in broker.retained
    assert not [t for t in broker.retained if SHA_A in t]
    assert (cancelled.name, cancelled.version) == ("digits", result.version)
    assert cancelled.active == ("d1",)  # it already ran it: cancel does not undo that
    assert cancelled.not_started == ("d2",)
    assert "use `edgefleet rollback`" in cancelled.summary()
    [record] = other.registry.latest_pushes()
    assert record.cancelled_at is not None
    assert other.registry.current_desired() == []
    # Nothing puts the withdrawn manifest back.
    report = reassert(other.conn, other.topics, other.registry)
    assert not report.changed
    assert T.desired_group("field") not in broker.retained
    # A device coming online later does not get it.
    late = SimDevice(broker, "d3", key).start()
    assert late.model is None
    assert d2.model is None


def test_cancel_after_an_aborted_canary_clears_the_canary_device_topic(broker, key, host):
    devices(broker, key, "d1:silent", "d2")
    aborted = push(host, model_files(MODEL_A), PushPlan(group="field", wait=0.2, canary=1))
    assert aborted.aborted is not None
    assert T.desired_device("d1") in broker.retained
    cancelled = cancel_rollout(host, group_target("field"))
    assert cancelled.cleared_topics == (T.desired_device("d1"),)
    assert T.desired_device("d1") not in broker.retained


def test_cancel_with_nothing_to_cancel_says_so(host):
    with pytest.raises(FleetError, match="nothing to cancel for group:field"):
        cancel_rollout(host, group_target("field"))
    with pytest.raises(FleetError, match="name a group:NAME or device:ID"):
        cancel_rollout(host, "field")


# -- point 9: build ids ----------------------------------------------------------------------


def test_push_and_rollback_name_the_build(broker, key, host, tmp_path):
    devices(broker, key, "d1")
    first = push(host, model_files(MODEL_A), PushPlan(group="field", wait=5.0))
    assert first.build == f"int8 {SHA_A[:8]}"
    assert first.label == f"digits v1 (int8 {SHA_A[:8]})"
    second = push(host, model_files(MODEL_B), PushPlan(group="field", wait=5.0))
    assert second.build != first.build
    back = rollback(fresh_host(broker, key, tmp_path), PushPlan(group="field", wait=5.0))
    assert back.returned_to is not None
    assert back.returned_to.startswith(f"digits int8 {SHA_A[:8]}, first pushed as v1 (")
    assert back.build == first.build


# -- point 4: fleet status fresh after a push, --json keeps every figure -------------------


def _device_says(broker, device_id: str, *, status_version: int, report: Reported) -> None:
    conn = broker.connect(f"agent-{device_id}")
    status = Status(
        device_id=device_id,
        online=True,
        agent_version="0.2.0",
        model_name="digits",
        model_version=status_version,
        inference_count=42,
        latency_p50_ms=2.5,
        latency_p95_ms=7.5,
        outbox_depth=5,
        uptime_s=120.0,
        rss_bytes=50_000_000,
        ts=time.time() - 20,
    )
    conn.publish(T.status(device_id), encode(status), retain=True)
    conn.publish(T.reported(device_id), encode(report), retain=True)


def test_fleet_status_follows_the_update_report_when_the_status_is_older(broker, key, host):
    devices(broker, key, "d1")
    pushed = push(host, model_files(MODEL_A), PushPlan(group="field", wait=5.0))
    # The agent's heartbeat status still says the old version; its report says active.
    _device_says(
        broker,
        "d2",
        status_version=0,
        report=Reported(
            device_id="d2",
            state=UpdateState.ACTIVE,
            version=pushed.version,
            sha256=SHA_A,
            active_version=pushed.version,
            ts=time.time(),
        ),
    )
    host.observe()
    rows = {r.device_id: r for r in device_rows(host)}
    assert (rows["d2"].model, rows["d2"].version) == ("digits", pushed.version)
    assert rows["d2"].build == f"int8 {SHA_A[:8]}"
    [row] = [r.as_json() for r in device_rows(host) if r.device_id == "d2"]
    figures = row["figures"]
    assert figures["rss_bytes"] == 50_000_000
    assert figures["uptime_s"] == 120.0
    assert figures["latency_p95_ms"] == 7.5
    assert figures["inference_count"] == 42
    assert figures["agent_version"] == "0.2.0"
    assert figures["outbox_depth"] == 5
    assert row["status_ts"] is not None
    assert row["report_ts"] is not None
