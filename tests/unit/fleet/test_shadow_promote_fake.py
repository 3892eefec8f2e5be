"""`edgefleet shadow promote` on the in-memory broker, with the simulated devices of test_push_fake.

The command line itself (typer) runs against a fleet on the fake broker (its ``_open`` is
the only thing replaced); the shadow is started by the host code, the devices' retained
reports are published as the devices would. Checked: ``--canary N`` promotes the canary
first and the rest of the group only once it is active (and ends the shadow); a failing
canary stops the promotion and the shadow stays; ``--if`` refuses a candidate that failed
on a device whatever its agreement elsewhere.
"""

from __future__ import annotations

import time

import pytest
from test_push_fake import MODEL_A, devices, fresh_host, model_files
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.cli import shadow as shadow_cli
from edgefleet.host.fleet._shadow import ShadowPlan, start_shadow
from edgefleet.shared.shadow import ShadowReport
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker

T = Topics("edgefleet")
ROLLOUT = "digits-v1"


@pytest.fixture
def cli(broker, key, tmp_path, monkeypatch):
    """Run ``edgefleet ...`` with each command's fleet on the fake broker (a new host)."""
    monkeypatch.setattr(shadow_cli, "_open", lambda *_a, **_k: fresh_host(broker, key, tmp_path))

    def run(*args: str):
        return CliRunner().invoke(app, list(args))

    return run


def _report(dev, state: str = "done", compared: int = 100, agreed: int = 100) -> None:
    """The device's retained shadow summary, as its agent publishes it."""
    report = ShadowReport(
        device_id=dev.device_id,
        name="digits",
        version=1,
        state=state,
        reason="health check: cannot load model" if state == "failed" else None,
        sample=1.0,
        compared=compared,
        agreed=agreed,
        ts=time.time(),
    )
    dev.conn.publish(T.shadow_report(dev.device_id), report.model_dump_json().encode(), retain=True)


def _shadow(host, *fleet) -> None:
    shadow = start_shadow(host, model_files(MODEL_A), ShadowPlan(group="field", sample=1.0))
    assert shadow.rollout == ROLLOUT
    for dev in fleet:
        _report(dev)


def _desired(broker: FakeBroker) -> list[str]:
    """The desired topics the promotion published a manifest on, in order."""
    return [p.topic for p in broker.published("edgefleet/+/+/desired") if p.payload]


def test_promote_with_canary_updates_the_canary_first_then_the_group_and_ends_the_shadow(
    broker, host, key, cli
):
    fleet = devices(broker, key, "d1", "d2", "d3")
    _shadow(host, *fleet)
    out = cli(
        "shadow", "promote", ROLLOUT, "--canary", "1", "--wait", "5", "--if", "agreement>=0.97"
    )
    assert out.exit_code == 0, out.output
    version = 1  # the next version to sign: the shadow's own, as a shadow activates nothing
    assert all(d.seen_manifests == [version] and d.model == MODEL_A for d in fleet)
    # The canary alone first, then the waves, then the group topic (test_push_fake's rule).
    assert _desired(broker)[:1] == [T.desired_device("d1")]
    assert T.desired_group("field") in broker.retained
    assert T.shadow_group("field") not in broker.retained  # the shadow ended
    assert all(d.active_version == version for d in fleet)


def test_promote_with_a_failing_canary_stops_there_and_the_shadow_stays(broker, host, key, cli):
    canary, d2, d3 = devices(broker, key, "d1:fail", "d2", "d3")
    _shadow(host, canary, d2, d3)
    out = cli("shadow", "promote", ROLLOUT, "--canary", "1", "--wait", "5")
    assert out.exit_code == 1, out.output
    assert "canary failed: d1" in out.output
    assert canary.seen_manifests == [1]
    assert d2.seen_manifests == d3.seen_manifests == []
    assert _desired(broker) == [T.desired_device("d1")]
    assert T.desired_group("field") not in broker.retained
    assert T.shadow_group("field") in broker.retained  # not promoted: the shadow goes on


def test_promote_if_refuses_a_candidate_that_failed_on_a_device(broker, host, key, cli):
    d1, d2, d3 = devices(broker, key, "d1", "d2", "d3")
    _shadow(host, d2, d3)  # both agree on every input ...
    _report(d1, state="failed", compared=0, agreed=0)  # ... the candidate failed on d1
    out = cli(
        "shadow", "promote", ROLLOUT, "--if", "agreement>=0.97", "--canary", "1", "--wait", "5"
    )
    assert out.exit_code == 1, out.output
    assert "not promoted (agreement>=0.97): the candidate failed on d1" in out.output
    assert _desired(broker) == []
    assert [d.seen_manifests for d in (d1, d2, d3)] == [[], [], []]
    assert T.shadow_group("field") in broker.retained


def test_plain_promote_refuses_a_failed_candidate_unless_forced(broker, host, key, cli):
    d1, d2, d3 = devices(broker, key, "d1", "d2", "d3")
    _shadow(host, d2, d3)
    _report(d1, state="failed", compared=0, agreed=0)
    out = cli("shadow", "promote", ROLLOUT, "--wait", "5")
    assert out.exit_code == 1, out.output
    assert "not promoted: the candidate failed on d1" in out.output
    assert "--force" in out.output
    assert _desired(broker) == []
    assert T.shadow_group("field") in broker.retained
    # --force: the operator's call; the rollout itself (and its health checks) goes ahead
    forced = cli("shadow", "promote", ROLLOUT, "--wait", "5", "--force")
    assert forced.exit_code == 0, forced.output
    assert all(d.active_version == 1 for d in (d1, d2, d3))
    assert T.shadow_group("field") not in broker.retained
