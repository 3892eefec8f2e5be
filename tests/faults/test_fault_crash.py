"""The agent killed (os._exit at a named fault point) at each step of an update, then restarted."""

from __future__ import annotations

import pytest

from edgefleet.shared.chunks import chunk_count
from support.faults import CHUNK, check_state_dir, variant_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# point -> (hits during the v1 install before the one that kills v2, active after the crash)
POINTS = {
    "after_chunk_write": (None, 1),  # the count depends on v1's chunk count
    "after_verify": (1, 1),
    "after_stage": (1, 1),
    "during_activate": (1, 1),
    "after_activate_before_report": (1, 2),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_at_each_step_of_an_update_then_restarted_completes_it(point, rig, mnist_bundle):
    v2 = variant_of(mnist_bundle, b"v2")
    before, active_after_crash = POINTS[point]
    if before is None:  # die after the second chunk of v2 is persisted
        before = chunk_count(len(mnist_bundle.data), CHUNK) + 1
    first = rig.start(fault=f"{point}:{before + 1}")
    rig.push(mnist_bundle, 1)
    rig.wait_report(state="active", version=1)
    rig.push(v2, 2)
    assert first.wait_exit(timeout=90) == 137, first.log()[-2000:]

    crashed = check_state_dir(rig.state_dir, signed=rig.signed)
    assert crashed.version == active_after_crash
    assert crashed.sha256 == (mnist_bundle, v2)[active_after_crash - 1].sha256

    rig.start()
    rig.wait_report(state="active", version=2, sha256=v2.sha256)
    state = rig.invariant()  # and the restarted agent serves v2
    assert (state.version, state.floor) == (2, 2)
    assert not list(rig.state_dir.glob("downloads/*")), "a finished download was left behind"
    assert not list(rig.state_dir.glob("**/.*.tmp")), "a temp file of an interrupted write"
    assert {p.stem for p in rig.state_dir.glob("models/*.tflite")} <= rig.signed


def test_health_check_child_killed_fails_cleanly_and_the_update_is_retried(rig, mnist_bundle):
    first = rig.start(fault="health_child")
    rig.push(mnist_bundle, 1)
    failed = rig.wait_report(state="failed", step="health_check", version=1)
    assert failed.active_version is None
    state = rig.invariant()
    assert state.version is None  # nothing half-installed became active
    first.stop()

    # Without the fault: the agent remembers the failed model by hash (docs/agent.md), so
    # the retry is a higher version, as an operator would publish it.
    rig.start()
    rig.push(mnist_bundle, 2)
    rig.wait_report(state="active", version=2)
    assert rig.invariant().version == 2
