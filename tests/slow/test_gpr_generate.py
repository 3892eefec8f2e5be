"""A real gprMax run: one scan, reproducible from its seed."""

import numpy as np
import pytest

pytest.importorskip("gprMax")

from edgefleet.host.datasets import _gpr as gpr
from edgefleet.host.datasets import _gprmax

pytestmark = pytest.mark.slow


def test_one_scan_is_simulated_and_reproducible(tmp_path):
    seed = 8  # a metal pipe
    params = gpr.sample_params(seed)
    assert params.label == "metal"
    (path,) = _gprmax.generate(tmp_path, n=1, seed=seed, workers=1)
    scan = np.load(path)
    assert path == gpr.scan_path(tmp_path, params)
    assert scan.dtype == np.float32
    assert scan.shape == (params.n_traces, params.n_samples)
    assert np.isfinite(scan).all()
    assert np.abs(scan).max() > 0
    # The direct wave is the same in every trace; the pipe makes traces differ.
    assert np.abs(scan - scan.mean(axis=0)).max() > 1e-3 * np.abs(scan).max()
    np.testing.assert_array_equal(_gprmax.simulate(params), scan)
