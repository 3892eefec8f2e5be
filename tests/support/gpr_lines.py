"""A synthetic long GPR survey line (shared by the line-window and frequency-plane tests)."""

from __future__ import annotations

import math

import numpy as np

from edgefleet.shared import gpr
from edgefleet.shared.spec import GprOptions, PreprocessSpec

C0 = 299_792_458.0
META = gpr.ScanMetadata(sample_interval_ns=0.1, trace_spacing_m=0.01, antenna_mhz=1000)
APEX, BUMP = 30, (140, 152)  # traces: the hyperbola's apex, the surface bump
# The radar model's conditioning, one window (recipe v2) and window by window (v3)
WINDOWED = GprOptions(
    stack=True,
    gain="exponential",
    gain_factor=1.0,
    resample=True,
    line_windows=True,
    empty_label="none",
)
SINGLE = PreprocessSpec(
    schema_version=2,
    kind="gpr",
    height=64,
    width=32,
    channels=3,
    gpr=GprOptions(stack=True, gain="exponential", gain_factor=1.0, resample=True),
)


def _ricker(t: np.ndarray, fc: float) -> np.ndarray:
    a = (math.pi * fc * t) ** 2
    return (1 - 2 * a) * np.exp(-a)


def long_line(
    *, traces: int = 200, samples: int = 256, seed: int = 0, dt_ns: float = 0.1
) -> np.ndarray:
    """(traces, samples) at 1 GHz, 0.1 ns, 1 cm: direct wave, a hyperbola, a bump, noise.

    The point target lies 0.3 m deep (eps 9) under trace ``APEX``; the bump is a bright,
    flat, shallow echo under the traces ``BUMP`` (a rough-surface patch); the receiver
    noise is white, 0.5 % of the direct wave.
    """
    fc, dt, spacing, depth, v = 1e9, dt_ns * 1e-9, 0.01, 0.3, C0 / 3.0
    t = np.arange(samples) * dt
    t0 = 2.0 / fc
    scan = np.empty((traces, samples))
    for i in range(traces):
        r = math.hypot(depth, (i - APEX) * spacing)
        scan[i] = _ricker(t - t0, fc) + 0.3 * (depth / r) ** 2 * _ricker(t - t0 - 2 * r / v, fc)
        if BUMP[0] <= i < BUMP[1]:
            scan[i] += 0.8 * _ricker(t - t0 - 1.0 / fc, fc)
    return scan + np.random.default_rng(seed).normal(0.0, 0.005, scan.shape)
