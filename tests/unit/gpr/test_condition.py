"""GPR conditioning: layouts, PNG round trip, time zero, background removal, gain, scaling."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.shared import gpr
from edgefleet.shared.errors import InputError
from edgefleet.shared.spec import GprOptions

OFF = GprOptions(time_zero=False, background_removal=False, gain="none")


def ricker(n, centre, width=3.0):
    t = (np.arange(n) - centre) / width
    return (1 - 2 * t**2) * np.exp(-(t**2))


def synthetic_bscan(
    *, traces=24, samples=128, apex=10, apex_time=70, start=8, spread=3.0, amplitude=0.3
):
    """Strong flat direct wave at `start` plus a weak hyperbola with its apex at trace `apex`."""
    scan = np.zeros((traces, samples))
    for i in range(traces):
        scan[i] += 10.0 * ricker(samples, start)
        delay = np.hypot(apex_time - start, spread * (i - apex)) + start
        scan[i] += amplitude * ricker(samples, delay)
    return scan


def test_output_is_samples_by_traces_float32_in_unit_range():
    out = gpr.condition(synthetic_bscan(), GprOptions())
    assert out.dtype == np.float32
    assert out.shape[1] == 24  # traces become columns, time runs down the rows
    assert out.shape[0] <= 128
    assert np.abs(out).max() <= 1.0


def test_background_removal_removes_the_direct_wave_and_keeps_the_hyperbola():
    scan = synthetic_bscan()
    opts = GprOptions(time_zero=False, background_removal=True, gain="none")
    out = gpr.condition(scan, opts)
    # The flat direct wave is gone: the strongest remaining energy is the hyperbola.
    energy_by_time = np.abs(out).sum(axis=1)
    assert abs(int(energy_by_time.argmax()) - 70) < 15
    raw = gpr.condition(scan, OFF)
    assert int(np.abs(raw).sum(axis=1).argmax()) < 15  # without it, the direct wave wins


def test_hyperbola_apex_is_where_it_was_placed():
    out = gpr.condition(synthetic_bscan(apex=5), GprOptions())
    earliest = np.array([int(np.abs(out[:, j]).argmax()) for j in range(out.shape[1])])
    apex_traces = np.flatnonzero(earliest == earliest.min())
    assert abs(apex_traces.mean() - 5) <= 1
    assert earliest[-1] > earliest.min() + 10  # the far end arrives much later


def test_time_zero_cuts_the_samples_before_the_first_break():
    scan = synthetic_bscan(start=30, apex_time=90)
    out = gpr.condition(scan, GprOptions(background_removal=False, gain="none"))
    assert out.shape[0] < 128 - 20
    assert np.abs(out[:3]).max() > 0.1  # the scan now starts at the direct wave


def test_time_zero_realigns_a_drifting_trace():
    scan = synthetic_bscan()
    scan[7] = np.roll(scan[7], 3)  # one trace fired 3 samples late
    aligned = gpr.align_time_zero(scan)
    reference = gpr.align_time_zero(synthetic_bscan())
    np.testing.assert_allclose(aligned[7, 10:-10], reference[7, 10:-10], atol=1e-6)


def test_time_zero_does_not_flatten_a_hyperbola_without_direct_wave():
    scan = synthetic_bscan(samples=200, apex_time=40, spread=8.0)
    scan -= scan.mean(axis=0)  # direct wave already removed upstream
    np.testing.assert_array_equal(gpr.align_time_zero(scan), scan)


@pytest.mark.parametrize(("kind", "late_over_early"), [("none", 1.0), ("linear", 11.0)])
def test_gain_grows_with_time(kind, late_over_early):
    ones = np.ones((3, 50))
    gained = gpr.apply_gain(ones, kind=kind, factor=1.0)
    assert gained[0, -1] / gained[0, 0] == pytest.approx(late_over_early)


def test_exponential_gain_and_unknown_gain():
    gained = gpr.apply_gain(np.ones((1, 10)), kind="exponential", factor=1.0)
    assert gained[0, -1] == pytest.approx(np.exp(3.0))
    with pytest.raises(InputError, match="unknown GPR gain"):
        gpr.apply_gain(np.ones((1, 10)), kind="log", factor=1.0)


def test_png_round_trip_keeps_weak_reflections():
    scan = synthetic_bscan()
    image = gpr.render_png(scan)
    assert image.dtype == np.uint16
    assert image.shape == (128, 24)  # rows are time
    back = gpr.from_png(image)
    assert back.shape == scan.shape
    np.testing.assert_allclose(back, scan / np.abs(scan).max(), rtol=2e-4, atol=2e-6)
    eight = gpr.from_png(gpr.render_png(scan, bits=8))
    np.testing.assert_allclose(eight, scan / np.abs(scan).max(), rtol=0.03, atol=3e-4)
    # The hyperbola (3% of the direct wave) survives: conditioned forms agree.
    a = gpr.condition(scan, GprOptions())
    b = gpr.condition(image, GprOptions())
    assert a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_rgb_png_is_accepted():
    image = gpr.render_png(synthetic_bscan())
    rgba = np.dstack([image, image, image, np.full_like(image, 255)])
    np.testing.assert_array_equal(gpr.from_png(rgba), gpr.from_png(image))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 3, 5)), "2-D"),
        (np.zeros((0, 5)), "2-D"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "HxW"),
    ],
)
def test_bad_input_is_refused_clearly(bad, message):
    with pytest.raises(InputError, match=message):
        gpr.condition(bad, GprOptions())


def test_stacked_views_keep_echo_strength():
    # Same geometry, echo 4x weaker: the direct-wave-relative view sees it, the
    # self-normalised views (1, 2) do not - that is what the first view is for.
    strong = synthetic_bscan()
    weak = synthetic_bscan(amplitude=0.075)
    opts = GprOptions(stack=True, gain="none")
    a, b = gpr.condition(strong, opts), gpr.condition(weak, opts)
    assert a.shape[1:] == (strong.shape[0], 3)  # time zero cuts a few samples
    assert np.abs(b[..., 0]).max() < 0.8 * np.abs(a[..., 0]).max()
    assert np.abs(a[..., 2]).max() == pytest.approx(np.abs(b[..., 2]).max(), rel=0.05)


def test_all_zero_scan_gives_zeros():
    out = gpr.condition(np.zeros((5, 20), dtype=np.float32), GprOptions())
    assert out.shape == (20, 5)
    assert not np.abs(out).any()


@settings(max_examples=60, deadline=None)
@given(
    traces=st.integers(1, 70),
    samples=st.integers(1, 300),
    seed=st.integers(0, 2**16),
    time_zero=st.booleans(),
    background=st.booleans(),
    gain=st.sampled_from(["none", "linear", "exponential"]),
)
def test_any_size_works(traces, samples, seed, time_zero, background, gain):  # noqa: PLR0917 - hypothesis passes each drawn value by position
    scan = np.random.default_rng(seed).normal(size=(traces, samples)).astype(np.float32)
    opts = GprOptions(time_zero=time_zero, background_removal=background, gain=gain)
    out = gpr.condition(scan, opts)
    assert out.ndim == 2
    assert out.shape[1] == traces
    assert 1 <= out.shape[0] <= samples
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= 1.0
    views = gpr.condition(scan, GprOptions(time_zero=time_zero, stack=True, gain=gain))
    assert views.shape == (*out.shape, 3)
    assert np.isfinite(views).all()
    assert np.abs(views).max() <= 1.0
    png = gpr.render_png(scan)
    assert png.shape == (samples, traces)
    assert gpr.from_png(png).shape == (traces, samples)
