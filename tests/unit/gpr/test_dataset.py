"""The GPR generator's pure parts: parameters, gprMax input, resampling, loading, resuming."""

import json
import math

import numpy as np
import pytest

from edgefleet.host.datasets import _gpr as gpr
from edgefleet.host.datasets import _gprmax
from edgefleet.host.errors import DatasetError
from edgefleet.shared.gpr import resample_samples


def test_params_are_reproducible_from_the_scan_seed():
    assert gpr.sample_params(1234) == gpr.sample_params(1234)
    assert gpr.sample_params(1234) != gpr.sample_params(1235)


def test_classes_cycle_with_the_seed():
    labels = [gpr.sample_params(s).label for s in range(100, 108)]
    assert labels == [gpr.CLASSES[s % 4] for s in range(100, 108)]


@pytest.mark.parametrize("seed", range(0, 400, 7))
def test_params_are_physical(seed):
    p = gpr.sample_params(seed)
    assert 3.0 <= p.soil_eps <= 25.0
    assert 1e-4 <= p.soil_sigma <= 0.06
    assert gpr.DX_MIN <= p.dx <= gpr.DX_MAX
    # the target is resolved: >= 5 cells per radius (10 across), so a pipe's air core is
    # most of the pipe (the wall is 4-8 mm, or one cell where the cell is coarser)
    assert p.dx <= max(p.target_radius / gpr.CELLS_PER_RADIUS, gpr.DX_MIN)
    assert p.dx <= p.pipe_wall <= max(0.008, p.dx)
    assert (p.target_radius - p.pipe_wall) / p.target_radius >= 0.6
    # one radar, one offset: the Tx-Rx offset follows the antenna's wavelength
    assert p.offset == pytest.approx(gpr.OFFSET_WAVELENGTHS * gpr.C0 / p.freq_hz, abs=6e-5)
    # the window holds the two-way time to the bottom of the target plus the wavelet
    bottom = p.target_depth + 2 * p.target_radius
    assert p.time_window > 2 * bottom * math.sqrt(p.soil_eps) / gpr.C0 + 2.8 / p.freq_hz
    # sampled at >= 5 samples per centre period (the wavelet's band ends near 2.5 x fc)
    assert p.n_samples >= 5.0 * p.freq_hz * p.time_window - 1
    # the target lies under the survey line and inside the soil, clear of the PML
    assert p.x0 < p.target_x < p.x0 + p.offset + (p.n_traces - 1) * p.spacing
    assert p.soil_top - bottom > gpr.PML_CELLS * p.dx
    for s in p.stones:
        assert s.y + s.radius < p.soil_top
        assert math.hypot(
            s.x - p.target_x, s.y - (p.soil_top - p.target_depth - p.target_radius)
        ) > (p.target_radius + s.radius)


def test_every_scan_has_stones_and_traces_vary():
    params = [gpr.sample_params(s) for s in range(200)]
    assert all(len(p.stones) > 0 for p in params)
    assert len({p.n_traces for p in params}) > 5
    assert len({p.n_samples for p in params}) > 20


def _seed_of(label, start=0):
    return next(s for s in range(start, start + 4) if gpr.sample_params(s).label == label)


def test_input_file_models_each_class():
    metal = gpr.input_file(gpr.sample_params(_seed_of("metal")))
    plastic = gpr.input_file(gpr.sample_params(_seed_of("plastic")))
    concrete = gpr.input_file(gpr.sample_params(_seed_of("concrete")))
    none = gpr.input_file(gpr.sample_params(_seed_of("none")))
    assert " pec" in metal
    assert "free_space" in plastic
    assert "pvc" in plastic
    assert "concrete" in concrete.split("#title")[1].split("\n", 1)[1]
    assert " pec" not in none
    assert "pvc" not in none
    for text in (metal, plastic, concrete, none):
        assert "#domain_mode: TM" in text
        assert "#src_steps:" in text
        assert "#rx_steps:" in text


def test_resample_keeps_a_band_limited_signal():
    t = np.arange(1000) / 1000
    signal = np.sin(2 * np.pi * 5 * t)[np.newaxis, :]
    out = resample_samples(signal, 100)
    assert out.shape == (1, 100)
    np.testing.assert_allclose(out[0], np.sin(2 * np.pi * 5 * np.arange(100) / 100), atol=1e-6)


def _fake_set(root, seeds):
    for s in seeds:
        p = gpr.sample_params(s)
        path = gpr.scan_path(root, p)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.full((p.n_traces, p.n_samples), s, dtype=np.float32))


def test_load_gpr_returns_scans_of_varying_size(tmp_path):
    _fake_set(tmp_path / "train", range(10, 18))
    _fake_set(tmp_path / "heldout", range(900, 904))
    train = gpr.load_gpr("train", tmp_path)
    assert len(train) == 8
    assert train.x.dtype == object
    assert {scan.shape for scan in train.x} == {
        (gpr.sample_params(s).n_traces, gpr.sample_params(s).n_samples) for s in range(10, 18)
    }
    for scan, label in zip(train.x, train.y, strict=True):
        assert gpr.CLASSES[label] == gpr.sample_params(int(scan[0, 0])).label
    assert len(gpr.load_gpr("eval", tmp_path)) == len(gpr.load_gpr("heldout", tmp_path)) == 4


def test_load_gpr_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="no GPR scans"):
        gpr.load_gpr("train", tmp_path)
    with pytest.raises(DatasetError, match="unknown GPR split"):
        gpr.load_gpr("test", tmp_path)  # type: ignore[arg-type]
    bad = tmp_path / "train" / "metal" / "0000000.npy"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not numpy")
    with pytest.raises(DatasetError, match="unreadable"):
        gpr.load_gpr("train", tmp_path)


def test_generate_resumes_without_redoing_finished_scans(tmp_path):
    _fake_set(tmp_path, range(40, 46))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*.npy")}
    paths = _gprmax.generate(tmp_path, n=6, seed=40, workers=1)
    assert sorted(paths) == sorted(before)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*.npy")} == before
    rows = [json.loads(line) for line in (tmp_path / gpr.MANIFEST).read_text().splitlines()]
    assert [r["seed"] for r in rows] == list(range(40, 46))
    assert rows[0]["label"] == gpr.sample_params(40).label


def test_generate_refuses_nonsense(tmp_path):
    with pytest.raises(DatasetError, match="positive"):
        _gprmax.generate(tmp_path, n=0, seed=0)
