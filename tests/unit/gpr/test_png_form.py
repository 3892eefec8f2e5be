"""A bundled scan gives the same model input as .npy and as a PNG file (through preprocess)."""

import io

import numpy as np
import pytest
from PIL import Image

from edgefleet.device.inputs import decode_input
from edgefleet.host.datasets import load_gpr
from edgefleet.shared import gpr
from edgefleet.shared.preprocess import preprocess
from edgefleet.shared.spec import GprOptions, PreprocessSpec

SPECS = [
    PreprocessSpec(kind="gpr", height=48, width=32, gpr=GprOptions()),
    PreprocessSpec(
        kind="gpr",
        height=48,
        width=32,
        gpr=GprOptions(background_removal=False, gain="exponential", gain_factor=1.5),
    ),
    PreprocessSpec(
        kind="gpr",
        height=64,
        width=32,
        channels=3,
        gpr=GprOptions(stack=True, gain="exponential", gain_factor=1.5),
    ),
]


@pytest.fixture(scope="module")
def scans():
    ds = load_gpr("heldout")
    return list(ds.x)


def _png_bytes(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("spec", SPECS, ids=["background-removed", "direct-wave", "stacked"])
def test_16_bit_png_and_npy_give_the_same_input(scans, spec):
    correlations = []
    for scan in scans:
        from_npy = preprocess(scan, spec)
        decoded = decode_input(_png_bytes(gpr.render_png(scan)), "png")
        assert decoded.dtype == np.uint16  # a 16-bit PNG is decoded whole, not cut to 8 bits
        assert decoded.shape == scan.shape[::-1]  # time down the rows
        from_png = preprocess(decoded, spec)
        assert from_png.shape == from_npy.shape == (spec.height, spec.width, spec.channels)
        assert np.abs(from_png - from_npy).mean() < 0.05
        correlations += [
            np.corrcoef(from_png[..., c].ravel(), from_npy[..., c].ravel())[0, 1]
            for c in range(spec.channels)
            if from_npy[..., c].std() > 0
        ]
    # Scans whose echoes are ~100 dB under the direct wave differ in the noise; the rest agree.
    assert np.mean(np.array(correlations) > 0.98) >= 0.98


def test_8_bit_png_is_still_read_but_loses_weak_echoes(scans):
    spec = SPECS[0]  # background removal: what 8 bits cannot survive
    worst = 1.0
    for scan in scans[::10]:
        decoded = decode_input(_png_bytes(gpr.render_png(scan, bits=8)), "png")
        assert decoded.dtype == np.uint8
        from_png = preprocess(decoded, spec)
        assert from_png.shape == (48, 32, 1)
        worst = min(worst, np.corrcoef(from_png.ravel(), preprocess(scan, spec).ravel())[0, 1])
    assert worst < 0.98


def test_render_png_rejects_other_depths(scans):
    with pytest.raises(gpr.InputError, match="8 or 16 bits"):
        gpr.render_png(scans[0], bits=12)


def test_stacked_spec_needs_three_channels():
    with pytest.raises(ValueError, match="channels = 3"):
        PreprocessSpec(kind="gpr", height=8, width=8, channels=1, gpr=GprOptions(stack=True))
