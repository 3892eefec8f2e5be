"""Pushing models to real agents over a real Mosquitto: groups, rejections, canary, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_helpers import AgentFleet, wait_online

from edgefleet.host.fleet import Phase, PushPlan, close_fleet, load_model, push, rollout_status
from support.agent import Signer, shared_mnist_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory):
    return shared_mnist_model(tmp_path_factory)


@pytest.fixture
def agents(broker, prefix, tmp_path):
    fleet = AgentFleet(tmp_path / "agents", broker.url, prefix, Signer(tmp_path / "keys"))
    yield fleet
    fleet.stop_all()


@pytest.fixture
def host(agents, tmp_path):
    handle = agents.host(tmp_path / "host-state")
    yield handle
    close_fleet(handle)


def _phases(result) -> dict[str, Phase]:
    return {p.device_id: p.phase for p in result.progress}


def test_push_to_a_group_of_three_ends_with_all_active(agents, host, mnist_bundle):
    names = ["g3-a", "g3-b", "g3-c"]
    for name in names:
        agents.start(name, groups=["field"])
    wait_online(host, names)

    result = push(host, load_model(mnist_bundle.path), PushPlan(group="field", wait=90))

    assert result.exit_code == 0, (result.progress, agents.logs())
    assert _phases(result) == dict.fromkeys(names, Phase.ACTIVE)
    # the devices themselves say so in their retained status
    host.pump(2.0)
    assert {host.view.reports[n].active_version for n in names} == {result.version}
    [(record, progress)] = rollout_status(host, target="group:field")
    assert record.version == result.version
    assert all(p.phase == Phase.ACTIVE for p in progress)


def test_a_push_one_agent_rejects_ends_nonzero_naming_it(agents, host, mnist_bundle, tmp_path):
    other = Signer(tmp_path / "other-keys", name="other")
    agents.start("rj-good", groups=["rj"])
    agents.start("rj-bad", groups=["rj"], keys=[other.public_path])  # does not trust our key
    wait_online(host, ["rj-good", "rj-bad"])

    result = push(host, load_model(mnist_bundle.path), PushPlan(group="rj", wait=60))

    assert result.exit_code != 0
    phases = _phases(result)
    assert phases["rj-good"] == Phase.ACTIVE
    assert phases["rj-bad"] == Phase.REJECTED
    bad = next(p for p in result.progress if p.device_id == "rj-bad")
    assert bad.reason == "unknown_key"


def test_a_failed_canary_stops_the_rollout_before_the_rest(agents, host, mnist_bundle, tmp_path):
    other = Signer(tmp_path / "other-keys", name="other")
    # sorted order makes "cn-0" the canary; it refuses our key
    agents.start("cn-0", groups=["cn"], keys=[other.public_path])
    agents.start("cn-1", groups=["cn"])
    agents.start("cn-2", groups=["cn"])
    wait_online(host, ["cn-0", "cn-1", "cn-2"])

    result = push(host, load_model(mnist_bundle.path), PushPlan(group="cn", wait=60, canary=1))

    assert result.exit_code != 0
    assert result.aborted is not None
    assert "cn-0" in result.aborted
    host.pump(2.0)
    # the rest never saw the manifest: no group desired, still on no model
    for name in ("cn-1", "cn-2"):
        report = host.view.reports.get(name)
        assert report is None or report.active_version in (None, 0), report
    assert host.registry.latest("group:cn") is None


def test_an_agent_offline_during_the_push_gets_the_model_when_it_returns(
    agents, host, mnist_bundle
):
    agents.start("off-a", groups=["off"])
    agents.start("off-b", groups=["off"])
    wait_online(host, ["off-a", "off-b"])
    agents.stop("off-b")  # clean stop: its status goes offline

    result = push(host, load_model(mnist_bundle.path), PushPlan(group="off", wait=8))
    assert _phases(result) == {"off-a": Phase.ACTIVE, "off-b": Phase.PENDING}
    assert result.exit_code != 0
    close_fleet(host)  # the host is gone too: retained manifest + chunks must suffice

    agents.start("off-b", groups=["off"])
    later = agents.host(Path(host.registry.state_dir))
    try:
        wait_online(later, ["off-b"])
        for _ in range(120):
            later.pump(0.5)
            report = later.view.reports.get("off-b")
            if report is not None and report.active_version == result.version:
                break
        else:
            pytest.fail(f"off-b never activated v{result.version}\n{agents.logs()}")
    finally:
        close_fleet(later)


def test_a_good_canary_and_doubling_waves_end_with_the_whole_group_active(
    agents, host, mnist_bundle
):
    names = ["ok-0", "ok-1", "ok-2"]
    for name in names:
        agents.start(name, groups=["ok"])
    wait_online(host, names)

    plan = PushPlan(group="ok", wait=60, canary=1, max_failures=0)
    result = push(host, load_model(mnist_bundle.path), plan)

    assert result.exit_code == 0, (result.aborted, result.progress, agents.logs())
    assert _phases(result) == dict.fromkeys(names, Phase.ACTIVE)
    # canary and wave devices were handed over to the group topic
    assert host.registry.latest("group:ok").members == tuple(names)
    assert all(host.registry.latest(f"device:{n}") is None for n in names)


def test_max_failures_stops_later_waves_and_leaves_the_rest_alone(
    agents, host, mnist_bundle, tmp_path
):
    other = Signer(tmp_path / "other-keys", name="other")
    agents.start("mf-0", groups=["mf"], keys=[other.public_path])  # first wave; refuses
    agents.start("mf-1", groups=["mf"])
    agents.start("mf-2", groups=["mf"])
    wait_online(host, ["mf-0", "mf-1", "mf-2"])

    plan = PushPlan(group="mf", wait=60, max_failures=20)  # 1 of 3 is 33% > 20%
    result = push(host, load_model(mnist_bundle.path), plan)

    assert result.exit_code != 0
    assert result.aborted is not None
    assert "failure limit exceeded" in result.aborted
    phases = _phases(result)
    assert phases["mf-0"] == Phase.REJECTED
    assert phases["mf-1"] == phases["mf-2"] == Phase.PENDING  # never offered the model
    assert host.registry.latest("group:mf") is None
