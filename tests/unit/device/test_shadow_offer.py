"""The hot-path hand-off to a shadow candidate: sampled, never waits, drops and counts."""

from __future__ import annotations

import time

import numpy as np

from edgefleet.device.config import ShadowConfig
from edgefleet.device.inference import Prediction
from edgefleet.device.shadow import Shadow, _Run
from support.shadow import idle_shadow


def _shadow(tmp_path, sample: float) -> tuple[Shadow, _Run]:
    return idle_shadow(tmp_path, sample)


PRED = Prediction("a", 0.9, [("a", 0.9)], 1.0)
QUEUE_SIZE = ShadowConfig().queue


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path):
    shadow, run = _shadow(tmp_path, 1.0)
    array = np.zeros((4, 4), np.uint8)
    start = time.perf_counter()
    for i in range(QUEUE_SIZE + 50):
        shadow.offer(array, PRED, f"s{i}")
    assert time.perf_counter() - start < 0.5  # never blocked on the full queue
    assert (run.stats.offered, run.stats.dropped) == (QUEUE_SIZE, 50)
    report = shadow.summary(run)
    assert report.dropped == 50
    assert "dropped" in (report.reason or "")


def test_only_the_sampled_share_is_offered(tmp_path):
    shadow, run = _shadow(tmp_path, 0.2)
    run.capacity = 10**6  # unbounded here: count what the sampler lets through
    for i in range(5000):
        shadow.offer(np.zeros((4, 4), np.uint8), PRED, f"s{i}")
    assert 850 < run.stats.offered < 1150  # 20 % of 5000, +-5 sigma


def test_nothing_is_offered_unless_the_candidate_runs_or_for_a_failed_input(tmp_path):
    shadow, run = _shadow(tmp_path, 1.0)
    shadow.offer(np.zeros(1), Prediction("", 0.0, [], 1.0, error="non_finite"), "bad")
    run.state = "health_check"
    shadow.offer(np.zeros(1), PRED, "early")
    assert run.stats.offered == 0
    assert not run.queue
