"""Varied forms of the radar set's training scans (``training._radar_augment``).

A varied scan must be one a radar could have recorded: its sidecar has to follow every
change, so the common scale puts it back where the original was, and no change may reach
into a setting the out-of-distribution split holds out.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgefleet.host.training._radar_augment import (
    MAX_CUT,
    MIN_SAMPLES_PER_PERIOD,
    NOISE_DB,
    vary_scan,
)
from edgefleet.shared.preprocess import preprocess
from support.gpr_lines import META, SINGLE, long_line

SPEC = SINGLE  # the radar model's conditioning, one window
LINE = long_line(traces=60, samples=256)  # 1 GHz, 0.1 ns, 1 cm: the apex at trace 30


class Scripted:
    """A stand-in for numpy's generator: ``random()`` answers from a script."""

    def __init__(self, answers: list[float], seed: int = 0) -> None:
        self.answers = answers
        self.real = np.random.default_rng(seed)

    def random(self) -> float:
        return self.answers.pop(0)

    def integers(self, low: int, high: int) -> int:
        return int(self.real.integers(low, high))

    def uniform(self, low: float, high: float) -> float:
        return float(self.real.uniform(low, high))

    def normal(self, loc: float, scale: float, size: tuple[int, ...]) -> np.ndarray:
        return self.real.normal(loc, scale, size)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_dropping_every_second_trace_doubles_the_spacing_and_keeps_the_common_scale():
    varied, meta = vary_scan(LINE, META, Scripted([1.0, 0.0, 1.0, 1.0]))
    assert varied.shape == (30, 256)
    assert meta.trace_spacing_m == pytest.approx(2 * META.trace_spacing_m)
    assert meta.sample_interval_ns == META.sample_interval_ns
    assert _corr(preprocess(varied, SPEC, meta), preprocess(LINE, SPEC, META)) > 0.95
    # and the sidecar matters: the same scan with the old spacing is another picture
    assert _corr(preprocess(varied, SPEC, META), preprocess(LINE, SPEC, META)) < 0.5


def test_dropping_every_second_sample_doubles_the_interval_and_keeps_the_common_scale():
    fine = long_line(traces=60, samples=512, dt_ns=0.05)  # 20 samples a period
    fine_meta = dataclasses.replace(META, sample_interval_ns=0.05)
    varied, meta = vary_scan(fine, fine_meta, Scripted([1.0, 1.0, 0.0, 1.0]))
    assert varied.shape == (60, 256)
    assert meta.sample_interval_ns == pytest.approx(0.1)
    # (white noise aliases when thinned, so a little less alike than the spacing case)
    assert _corr(preprocess(varied, SPEC, meta), preprocess(fine, SPEC, fine_meta)) > 0.9
    assert _corr(preprocess(varied, SPEC, fine_meta), preprocess(fine, SPEC, fine_meta)) < 0.5


def test_a_trace_too_coarse_to_thin_is_kept():
    # 1 GHz at 0.1 ns is 10 samples a period: halving would leave 5, under the floor
    coarse = dataclasses.replace(
        META, sample_interval_ns=1e3 / 1000 / (MIN_SAMPLES_PER_PERIOD * 1.5)
    )
    varied, meta = vary_scan(LINE, coarse, Scripted([1.0, 1.0, 0.0, 1.0]))
    assert varied.shape == LINE.shape
    assert meta.sample_interval_ns == coarse.sample_interval_ns


def test_a_cut_line_keeps_at_least_half_of_it_unchanged():
    for seed in range(30):
        cut, meta = vary_scan(LINE, META, Scripted([0.0, 1.0, 1.0, 1.0], seed))
        assert LINE.shape[0] * (1 - 2 * MAX_CUT) <= cut.shape[0] <= LINE.shape[0]
        assert meta == META  # a cut changes no spacing or interval
        # the traces kept are the original ones, in order and unchanged (no noise added)
        start = next(
            i for i in range(LINE.shape[0]) if np.array_equal(LINE[i].astype(np.float32), cut[0])
        )
        np.testing.assert_array_equal(cut, LINE[start : start + cut.shape[0]].astype(np.float32))


def test_added_noise_stays_within_the_training_noise_range():
    levels = []
    for seed in range(40):
        varied, _ = vary_scan(LINE, META, Scripted([1.0, 1.0, 1.0, 0.0], seed))
        added = varied.astype(np.float64) - LINE
        levels.append(20 * np.log10(added.std() / np.abs(LINE).max()))
    assert min(levels) >= NOISE_DB[0] - 0.5
    assert max(levels) <= NOISE_DB[1] + 0.5
    assert max(levels) - min(levels) > 5.0  # the level is drawn, not fixed
    assert NOISE_DB[1] <= -30.0  # the ood split's -35..-25 dB noise stays held out
