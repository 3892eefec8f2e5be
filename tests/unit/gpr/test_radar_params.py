"""The radar set's scan parameters: the ranges docs/gpr.md promises and the held-out settings."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.host.datasets._radar import (
    CONCRETE_BORE_RADIUS,
    CONCRETE_WALL,
    FREQ_RANGE,
    HELDOUT_BAND,
    MAX_DEPTH,
    MAX_TRAIN_DEPTH,
    RADIUS_RANGE,
    metadata,
    radar_input_file,
    reach,
    sample_radar_params,
)
from edgefleet.host.datasets._radar_clutter import (
    STONE_RADIUS,
    STONE_SIGMA,
    stone_model,
    stone_model_radius,
)


def _draw(split: str, n: int = 400, start: int = 0) -> list:
    return [sample_radar_params(start + i, split) for i in range(n)]  # type: ignore[arg-type]


def test_training_scans_span_the_band_but_never_the_held_out_settings():
    scans = _draw("train")
    freqs = np.array([p.freq_hz for p in scans])
    assert freqs.min() >= FREQ_RANGE[0]
    assert freqs.max() <= FREQ_RANGE[1]
    assert freqs.min() < 300e6  # both ends of the band are drawn
    assert freqs.max() > 1.4e9
    assert not ((freqs >= HELDOUT_BAND[0]) & (freqs < HELDOUT_BAND[1])).any()
    depths = np.array([p.target_depth for p in scans])
    assert depths.max() <= MAX_TRAIN_DEPTH
    assert depths.max() > 0.3  # deep targets where the window reaches them
    assert {p.label for p in scans[:4]} == {"metal", "plastic", "concrete", "none"}
    assert all(16 <= p.n_traces <= 20 and 256 <= p.n_samples <= 512 for p in scans)
    assert all(-60 <= p.noise_db <= -30 for p in scans)


def test_the_ood_split_holds_out_a_band_and_the_deepest_targets():
    scans = _draw("ood", 200, 940000)
    in_band = [HELDOUT_BAND[0] <= p.freq_hz < HELDOUT_BAND[1] for p in scans]
    deep = [p.target_depth > MAX_TRAIN_DEPTH for p in scans]
    assert all(b or d for b, d in zip(in_band, deep, strict=True))  # every scan is held out
    assert 0.4 < np.mean(in_band) < 0.6
    assert max(p.target_depth for p in scans) <= MAX_DEPTH
    assert max(p.target_depth for p in scans) >= 0.5  # down to half a metre
    assert all(32 <= p.n_traces <= 40 and 512 <= p.n_samples <= 1024 for p in scans)


def test_every_target_top_echo_is_inside_its_window():
    for p in _draw("train", 200) + _draw("ood", 100, 940000):
        periods = (p.time_window - 2 * p.height / 299_792_458.0) * p.freq_hz - 1.5
        # The echo from the target's top, and a period of its wavelet, are recorded.
        assert p.target_depth <= reach(p.freq_hz, p.soil_eps, periods - 1.0)


def test_a_scan_is_its_seed_and_its_input_file_holds_the_clutter():
    a, b = sample_radar_params(20001, "train"), sample_radar_params(20001, "train")
    assert a == b
    assert a != sample_radar_params(20001, "heldout") or a.seed == 20001  # same seed, any split
    text = radar_input_file(a)
    assert "#box:" in text  # soil and its second layer
    assert text.count("layer") >= 2
    assert text.count("stone") >= 4  # at least two stones, each a material and a cylinder
    assert f"#waveform: ricker 1 {a.freq_hz:.6g} pulse" in text
    meta = metadata(a)
    assert meta["antenna_mhz"] * 1e6 == round(a.freq_hz / 1e6, 3) * 1e6
    assert meta["trace_spacing_m"] == round(a.spacing, 5)
    assert abs(meta["sample_interval_ns"] * a.n_samples - a.time_window * 1e9) < 1e-3


def test_native_scans_are_long_lines():
    for p in _draw("native", 20, 960000):
        assert 150 <= p.n_traces <= 250
        assert 0.005 <= p.spacing <= max(0.015, p.dx) + p.dx / 2  # 1-1.5 cm, whole cells
        assert p.n_samples >= 512


def test_the_spacing_is_what_gprmax_simulates_and_every_trace_is_outside_the_pml():
    # gprMax rounds #src_steps / #rx_steps to whole cells: a spacing between cells would be
    # simulated as another one (the sidecar would lie) and the line could run into the PML.
    for split, start in (("train", 20000), ("ood", 940000), ("native", 960000)):
        for p in _draw(split, 100 if split != "native" else 20, start):
            cells = p.spacing / p.dx
            assert abs(cells - round(cells)) < 1e-6
            assert round(cells) >= 1
            last_rx = p.x0 + p.offset + (p.n_traces - 1) * p.spacing
            assert last_rx <= p.width - 8 * p.dx - 0.03  # the PML is 8 cells


def test_stones_are_gravel_well_smaller_than_any_target():
    # In 2-D every stone is a rod along the pipe axis: a stone as wide as a duct would be an
    # unlabelled duct in a `none` scan. Stones are 2-4 cm across, targets 8-20 cm.
    scans = _draw("train", 200) + _draw("ood", 40, 940000) + _draw("native", 4, 960000)
    radii = [s.radius for p in scans for s in p.stones]
    assert min(radii) >= STONE_RADIUS[0]
    assert max(radii) <= STONE_RADIUS[1]
    assert max(radii) <= 0.5 * min(p.target_radius for p in scans)


def test_a_stone_finer_than_the_grid_is_simulated_with_its_cross_section_times_contrast():
    scans = [p for p in _draw("train", 200) if p.stones]
    coarse = 0
    for p in scans:
        layer_top = p.soil_top - p.layer_depth
        for s in p.stones:
            radius, eps, sigma = stone_model(s, p)
            eps0 = p.layer_eps if s.y < layer_top else p.soil_eps
            sigma0 = p.layer_sigma if s.y < layer_top else p.soil_sigma
            assert radius >= 1.2 * p.dx - 1e-12  # the grid resolves what is simulated
            assert radius >= s.radius
            # contrast x area is the stone's own (the Rayleigh-regime scattering strength)
            assert (eps - eps0) * radius**2 == pytest.approx((s.eps - eps0) * s.radius**2)
            assert (sigma - sigma0) * radius**2 == pytest.approx(
                (STONE_SIGMA - sigma0) * s.radius**2
            )
            if radius > s.radius:
                coarse += 1
                assert min(eps0, s.eps) <= eps <= max(eps0, s.eps)
            else:
                assert eps == pytest.approx(s.eps)
        text = radar_input_file(p)
        for i, s in enumerate(p.stones):
            radius, eps, _ = stone_model(s, p)
            assert f"#material: {eps:.4f} " in text
            assert f"inf {radius:.4f} stone{i}" in text
    assert coarse > 0  # low-frequency scans have cells coarser than a stone


def test_no_stone_touches_the_target():
    for p in _draw("train", 200):
        ty = p.soil_top - p.target_depth - p.target_radius
        for s in p.stones:
            r = stone_model_radius(s.radius, p.dx)
            assert np.hypot(s.x - p.target_x, s.y - ty) > p.target_radius + r + 0.02 - 1e-9


def test_target_contrast_is_the_concretes_reflection_against_the_soil_around_its_top():
    scans = _draw("train", 80)
    for p in scans:
        if p.label != "concrete":
            assert np.isnan(p.target_contrast)
            continue
        around = p.layer_eps if p.target_depth > p.layer_depth else p.soil_eps
        r = (np.sqrt(around) - np.sqrt(p.target_eps)) / (np.sqrt(around) + np.sqrt(p.target_eps))
        assert p.target_contrast == pytest.approx(abs(r))
    concrete = [p.target_contrast for p in scans if p.label == "concrete"]
    assert min(concrete) < 0.1 < max(concrete)  # both kinds are drawn


def test_a_concrete_target_is_a_hollow_pipe_with_a_wall_the_grid_resolves():
    pipes = [p for p in _draw("train", 800) if p.label == "concrete"]
    assert len(pipes) == 200
    bores = np.array([p.target_radius - p.pipe_wall for p in pipes])
    lo, hi = CONCRETE_BORE_RADIUS
    assert bores.min() >= lo - 1e-4
    assert bores.max() <= hi + 1e-4
    assert bores.min() < lo + 0.01  # the whole range is drawn
    assert bores.max() > hi - 0.01
    for p, bore in zip(pipes, bores, strict=True):
        low, high, extra = CONCRETE_WALL
        assert 2 * bore * low + extra - 1e-4 <= p.pipe_wall <= 2 * bore * high + extra + 1e-4
        assert p.pipe_wall >= 1.5 * p.dx - 1e-4  # a ring of concrete, not a blur of cells
    p = pipes[0]
    lines = radar_input_file(p).splitlines()
    centre = f"{p.target_x} {p.soil_top - p.target_depth - p.target_radius:.4f}"
    # the concrete cylinder, then the air bore cut out of it (gprMax: later objects win)
    assert lines[-2].endswith(f"inf {p.target_radius} concrete")
    assert lines[-1].endswith(f"inf {p.target_radius - p.pipe_wall:.4f} free_space")
    assert f"#cylinder: {centre} 0" in lines[-1]


def test_the_concrete_pipe_leaves_every_other_class_as_it_was():
    # The bore comes from the same draw as every target's radius and the wall from a stream
    # of its own: another class's scan keeps its parameters, and its simulation stays valid.
    for p in _draw("train", 40):
        if p.label != "concrete":
            assert RADIUS_RANGE[0] <= p.target_radius <= RADIUS_RANGE[1]
            assert p.pipe_wall <= 0.008
    first = sample_radar_params(20000, "train")  # metal, from the shipped manifest
    assert (first.label, first.target_radius, first.freq_hz) == ("metal", 0.069, 263451317)
