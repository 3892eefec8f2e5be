"""The GPR training set's shifted copies: honest moves of a scan, nothing invented."""

import numpy as np

from edgefleet.host.training import _gpr as gpr_model


def _scans(n=5, h=16, w=12, c=3):
    rng = np.random.default_rng(0)
    return rng.random((n, h, w, c), dtype=np.float32)


def test_copies_follow_the_originals_unchanged():
    x = _scans()
    out = gpr_model.shifted_copies(x, 2, np.random.default_rng(1))
    assert out.shape == (15, *x.shape[1:])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:5], x)


def test_each_copy_is_its_scan_moved_within_the_limits():
    x = _scans()
    out = gpr_model.shifted_copies(x, 3, np.random.default_rng(2))
    h, w = x.shape[1:3]
    moved_any = False
    for k, copy in enumerate(out[len(x) :]):
        scan = x[k % len(x)]
        matches = [
            (dt, dx)
            for dt in range(gpr_model.MAX_TIME_SHIFT + 1)
            for dx in range(-gpr_model.MAX_TRACE_SHIFT, gpr_model.MAX_TRACE_SHIFT + 1)
            # the interior of the copy is the scan moved up by dt and right by dx
            if np.array_equal(
                copy[: h - dt, max(dx, 0) : w + min(dx, 0)],
                scan[dt:, max(-dx, 0) : w - max(dx, 0)],
            )
        ]
        assert matches, f"copy {k} is not a bounded shift of its scan"
        moved_any |= (0, 0) not in matches
    assert moved_any  # not every copy is the identity


def test_zero_copies_is_the_input():
    x = _scans()
    np.testing.assert_array_equal(gpr_model.shifted_copies(x, 0, np.random.default_rng(0)), x)
