"""The common physical scale: scan metadata, its parsing, and radar-independent conditioning.

A synthetic B-scan (a Ricker direct wave and one diffraction hyperbola from a point at a
known depth) is recorded as two different radars would - different trace spacing, sample
interval, number of traces and samples - and must look the same to the model once its
metadata puts both on the common scale. That is the property the radar model depends on.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgefleet.shared import gpr
from edgefleet.shared.errors import InputError
from edgefleet.shared.preprocess import preprocess
from edgefleet.shared.spec import GprOptions, PreprocessSpec

C0 = 299_792_458.0
OPTIONS = GprOptions(stack=True, gain="exponential", gain_factor=1.0, resample=True)
SPEC = PreprocessSpec(schema_version=2, kind="gpr", height=64, width=32, channels=3, gpr=OPTIONS)


def _ricker(t: np.ndarray, fc: float) -> np.ndarray:
    a = (math.pi * fc * t) ** 2
    return (1 - 2 * a) * np.exp(-a)


def synthetic_scan(
    *,
    fc: float,
    spacing: float,
    traces: int,
    dt: float,
    samples: int,
    depth: float = 0.3,
    eps: float = 9.0,
    target_at: float = 0.5,
    echo: float = 0.3,
) -> np.ndarray:
    """(traces, samples): direct wave at 2/fc, one hyperbola from a point ``depth`` deep.

    The echo weakens away from the apex as (depth / range)^2: the antenna pattern and the
    spreading of a cylindrical wave.
    """
    v = C0 / math.sqrt(eps)
    t = np.arange(samples) * dt
    t0 = 2.0 / fc
    x = np.arange(traces) * spacing
    x0 = target_at * x[-1]
    scan = np.empty((traces, samples))
    for i, xi in enumerate(x):
        r = math.hypot(depth, xi - x0)
        scan[i] = _ricker(t - t0, fc) + echo * (depth / r) ** 2 * _ricker(t - t0 - 2 * r / v, fc)
    return scan


def _meta(fc: float, spacing: float, dt: float) -> gpr.ScanMetadata:
    return gpr.ScanMetadata(
        sample_interval_ns=dt * 1e9, trace_spacing_m=spacing, antenna_mhz=fc / 1e6
    )


def _blur(x: np.ndarray) -> np.ndarray:
    # 3 x 3 box: two radars' samplings differ by a fraction of a row or column; a thin
    # hyperbola shifted by half a row correlates poorly with itself unblurred.
    p = np.pad(x, 1, mode="edge")
    return sum(p[i : i + x.shape[0], j : j + x.shape[1]] for i in range(3) for j in range(3)) / 9


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_blur(a).ravel(), _blur(b).ravel())[0, 1])


def test_two_radars_recording_the_same_ground_look_the_same_on_the_common_scale():
    fc = 500e6
    coarse = synthetic_scan(fc=fc, spacing=0.05, traces=30, dt=0.1e-9, samples=256)
    fine = synthetic_scan(fc=fc, spacing=0.01, traces=150, dt=0.025e-9, samples=1024)
    a = preprocess(coarse, SPEC, _meta(fc, 0.05, 0.1e-9))
    b = preprocess(fine, SPEC, _meta(fc, 0.01, 0.025e-9))
    assert a.shape == b.shape == (64, 32, 3)
    same = _corr(a[:, :, 2], b[:, :, 2])  # the echoes' view: the hyperbola itself
    assert same > 0.75
    # Another ground (a deeper target) recorded by the fine radar: a different picture.
    deeper = synthetic_scan(fc=fc, spacing=0.01, traces=150, dt=0.025e-9, samples=1024, depth=0.5)
    d = preprocess(deeper, SPEC, _meta(fc, 0.01, 0.025e-9))
    assert _corr(a[:, :, 2], d[:, :, 2]) < same - 0.2
    # Without the metadata the fine scan is resized whole: less alike than with it.
    c = preprocess(fine, SPEC, None)
    assert _corr(a[:, :, 2], c[:, :, 2]) < same


def test_a_scaled_ground_at_a_scaled_frequency_is_the_same_picture():
    # Maxwell's equations scale: twice the frequency over a ground half the size is the
    # same in periods and wavelengths, which is what the common scale measures in.
    low = synthetic_scan(fc=300e6, spacing=0.04, traces=60, dt=0.1e-9, samples=512, depth=0.4)
    high = synthetic_scan(fc=1200e6, spacing=0.01, traces=60, dt=0.025e-9, samples=512, depth=0.1)
    a = preprocess(low, SPEC, _meta(300e6, 0.04, 0.1e-9))
    b = preprocess(high, SPEC, _meta(1200e6, 0.01, 0.025e-9))
    assert _corr(a, b) > 0.95


def test_a_long_line_is_windowed_on_its_strongest_echo():
    fc = 800e6
    scan = synthetic_scan(fc=fc, spacing=0.01, traces=300, dt=0.05e-9, samples=512, target_at=0.8)
    out = gpr.common_scale(gpr.align_time_zero(scan), OPTIONS, _meta(fc, 0.01, 0.05e-9), (64, 32))
    echoes = out - np.median(out, axis=0, keepdims=True)
    energy = (echoes**2).sum(axis=1)
    assert abs(int(np.argmax(energy)) - 15.5) <= 3  # the hyperbola's apex near the middle


@pytest.mark.parametrize("dt", [0.02e-9, 0.05e-9, 0.1e-9])
@pytest.mark.parametrize("fc", [250e6, 600e6, 1500e6])
def test_the_period_estimate_is_close_without_metadata(fc, dt):
    if 1 / fc / dt < 4:  # fewer than 4 samples a period: not a sensible recording
        pytest.skip("undersampled")
    scan = synthetic_scan(fc=fc, spacing=0.02, traces=40, dt=dt, samples=512)
    rng = np.random.default_rng(0)
    scan = scan + rng.normal(0, 0.01, scan.shape)
    estimated = gpr.samples_per_period(gpr.align_time_zero(scan))
    assert estimated == pytest.approx(1 / fc / dt, rel=0.3)


def test_a_scan_without_metadata_gets_a_note_and_the_same_shape():
    scan = synthetic_scan(fc=400e6, spacing=0.02, traces=200, dt=0.05e-9, samples=700)
    assert preprocess(scan, SPEC, None).shape == (64, 32, 3)
    note = gpr.metadata_note(OPTIONS, None)
    assert note is not None
    assert "sample interval" in note
    assert "antenna frequency" in note
    assert "trace spacing" in note
    full = _meta(400e6, 0.02, 0.05e-9)
    assert gpr.metadata_note(OPTIONS, full) is None
    no_spacing = gpr.ScanMetadata(sample_interval_ns=0.05, antenna_mhz=400)
    assert gpr.metadata_note(OPTIONS, no_spacing) == (
        "no scan metadata for: trace spacing (the whole scan was resized to the model's width)"
        " - add a sidecar (docs/gpr.md)"
    )
    assert gpr.metadata_note(GprOptions(), None) is None  # a model without the common scale


def test_any_size_and_any_metadata_gives_the_model_shape():
    rng = np.random.default_rng(1)
    for traces, samples in [(1, 8), (2, 3000), (700, 64), (5, 5)]:
        scan = rng.normal(size=(traces, samples))
        for meta in (None, gpr.ScanMetadata(time_window_ns=50.0), _meta(1e9, 0.5, 1e-9)):
            out = preprocess(scan, SPEC, meta)
            assert out.shape == (64, 32, 3)
            assert np.isfinite(out).all()
            assert 0.0 <= out.min() <= out.max() <= 1.0


def test_metadata_is_parsed_strictly_with_the_key_named():
    meta = gpr.parse_metadata(
        json.dumps({"sample_interval_ns": 0.1, "trace_spacing_m": 0.02, "antenna_mhz": 400})
    )
    assert meta == gpr.ScanMetadata(sample_interval_ns=0.1, trace_spacing_m=0.02, antenna_mhz=400)
    assert gpr.parse_metadata(b'{"time_window_ns": 50}').interval_ns(500) == pytest.approx(0.1)
    assert gpr.parse_metadata({}) == gpr.ScanMetadata()
    bad = [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"antenna": 400}', "unknown key"),
        (b'{"antenna_mhz": -1}', "antenna_mhz"),
        (b'{"antenna_mhz": true}', "antenna_mhz"),
        (b'{"trace_spacing_m": "2 cm"}', "trace_spacing_m"),
        (b'{"sample_interval_ns": 0}', "sample_interval_ns"),
        (b" " * 5000, "bytes"),
    ]
    for raw, words in bad:
        with pytest.raises(InputError, match=words):
            gpr.parse_metadata(raw)


def test_the_common_scale_needs_spec_version_2_and_is_not_written_when_off():
    with pytest.raises(ValueError, match="schema_version 2"):
        PreprocessSpec(kind="gpr", height=8, width=8, gpr=GprOptions(resample=True))
    plain = PreprocessSpec(kind="gpr", height=8, width=8, gpr=GprOptions()).model_dump_json()
    assert "resample" not in plain
    assert "periods" not in plain  # older agents read such a recipe as before
    scaled = SPEC.model_dump_json()
    assert '"resample":true' in scaled
    assert PreprocessSpec.model_validate_json(scaled) == SPEC
    with pytest.raises(ValueError, match=r"schema_version 4 .*upgrade the agent"):
        PreprocessSpec(schema_version=4, height=8, width=8)  # 3: line windows (test_line_windows)
