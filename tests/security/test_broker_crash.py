"""Attack 9 of issue 16: a broker crash loses fresh retained state.

A push to a group whose device is offline; mosquitto (the generated config) is killed with
SIGKILL 2 s later and restarted. The host re-asserts what its push registry says is current
(`edgefleet fleet reassert`, also run by `predictions listen`), and the device that comes
back afterwards gets the model.
"""

from __future__ import annotations

import time

import pytest

from edgefleet.host.fleet import (
    PushPlan,
    close_fleet,
    load_model,
    open_fleet,
    push,
    reassert,
)
from edgefleet.host.fleet._reassert import retained_version
from support.agent import shared_mnist_model

try:
    from test_trust import make_fleet, start_agent
except ImportError:  # pragma: no cover - run from another rootdir
    from security.test_trust import make_fleet, start_agent


def _retained(root, state, *topics: str) -> dict[str, bytes]:
    """What the broker retains on ``topics``, read on a connection of its own."""
    fleet = open_fleet(broker=None, fleet_dir=root, state_dir=state / "reader")
    try:
        fleet.conn.subscribe(*topics)
        return {m.topic: m.payload for m in fleet.conn.drain_retained(quiet_s=0.5)}
    finally:
        close_fleet(fleet)


def _wait_active(root, state, device: str, version: int, agent) -> None:
    fleet = open_fleet(broker=None, fleet_dir=root, state_dir=state)
    try:
        fleet.observe()
        deadline = time.monotonic() + 60
        while True:
            report = fleet.view.reports.get(device)
            if report is not None and report.active_version == version:
                return
            assert time.monotonic() < deadline, agent.log()[-3000:]
            fleet.pump(0.5)
    finally:
        close_fleet(fleet)


@pytest.mark.integration
@pytest.mark.slow
def test_a_push_lost_in_a_broker_crash_is_reasserted_and_reaches_the_returning_device(
    tmp_path, tmp_path_factory
):
    model = shared_mnist_model(tmp_path_factory)
    config, bundles, broker = make_fleet(tmp_path, {"field-1": ["field"]})
    conf = config.resolve(config.broker_conf)
    assert "autosave_interval 10" in conf.read_text()
    state = tmp_path / "host"
    agent = None
    try:
        fleet = open_fleet(broker=None, fleet_dir=config.root, state_dir=state, need_key=True)
        try:
            result = push(fleet, load_model(model.path), PushPlan(group="field"))
            topic = fleet.topics.desired_group("field")
            sha = fleet.registry.current_desired()[0].shas[0]
        finally:
            close_fleet(fleet)
        time.sleep(2.0)
        broker.kill()
        broker.start(conf=conf)
        chunk0 = f"{config.prefix}/models/{sha}/chunks/0"
        before = _retained(config.root, state, topic, chunk0)

        fleet = open_fleet(broker=None, fleet_dir=config.root, state_dir=state)
        try:
            report = reassert(fleet.conn, fleet.topics, fleet.registry)
        finally:
            close_fleet(fleet)
        after = _retained(config.root, state, topic, chunk0)
        assert retained_version(after.get(topic, b"")) == result.version
        assert after.get(chunk0)
        if not before.get(topic):  # the crash lost it (unless an autosave fell in the 2 s)
            assert report.manifests == ["group:field"], report.summary()

        # a second run finds everything in place and does nothing
        fleet = open_fleet(broker=None, fleet_dir=config.root, state_dir=state)
        try:
            again = reassert(fleet.conn, fleet.topics, fleet.registry)
        finally:
            close_fleet(fleet)
        assert not again.changed, again.summary()

        agent = start_agent(bundles["field-1"], tmp_path / "home" / "field-1")
        _wait_active(config.root, state, "field-1", result.version, agent)
    finally:
        if agent is not None:
            agent.stop()
        broker.stop()


@pytest.mark.integration
def test_reassert_clears_a_withdrawn_group_manifest_and_superseded_chunks_that_came_back(
    tmp_path, tmp_path_factory
):
    model = shared_mnist_model(tmp_path_factory)
    config, _bundles, broker = make_fleet(tmp_path, {"d1": ["g"]})
    state = tmp_path / "host"
    try:
        fleet = open_fleet(broker=None, fleet_dir=config.root, state_dir=state, need_key=True)
        try:
            push(fleet, load_model(model.path), PushPlan(group="g"))
            record = fleet.registry.current_desired()[0]
            topic = fleet.topics.desired_group("g")
            # The host withdrew the group's manifest and its chunks ...
            fleet.conn.wait_published([fleet.conn.publish(topic, b"", retain=True)])
            fleet.registry.record_cleared("group:g")
            # ... and a broker restored from an old save brings both back.
            chunk0 = fleet.topics.chunk(record.shas[0], 0)
            fleet.conn.wait_published(
                [
                    fleet.conn.publish(topic, record.envelope, retain=True),
                    fleet.conn.publish(chunk0, b"x", retain=True),
                ]
            )
            report = reassert(fleet.conn, fleet.topics, fleet.registry)
        finally:
            close_fleet(fleet)
        assert report.cleared_targets == ["group:g"], report.summary()
        assert report.cleared_models == [record.shas[0]], report.summary()
        assert report.manifests == []
        left = _retained(config.root, state, topic, fleet.topics.chunk(record.shas[0], 0))
        assert not left.get(topic)
        assert not left.get(fleet.topics.chunk(record.shas[0], 0))
    finally:
        broker.stop()
