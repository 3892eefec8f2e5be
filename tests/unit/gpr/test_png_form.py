"""A bundled scan gives the same model input as .npy and as a PNG file (through preprocess)."""

import io

import numpy as np
import pytest
from PIL import Image

from edgefleet.host.datasets.gpr import load_gpr
from edgefleet.shared import gpr
from edgefleet.shared.preprocess import decode_input, preprocess
from edgefleet.shared.spec import GprOptions, PreprocessSpec

SPECS = [
    PreprocessSpec(kind="gpr", height=48, width=32, gpr=GprOptions()),
    PreprocessSpec(
        kind="gpr",
        height=48,
        width=32,
        gpr=GprOptions(background_removal=False, gain="exponential", gain_factor=1.5),
    ),
]


@pytest.fixture(scope="module")
def scans():
    ds = load_gpr("heldout")
    return [ds.x[i] for i in range(0, len(ds), 20)]


def _png_bytes(scan):
    buf = io.BytesIO()
    Image.fromarray(gpr.render_png(scan), mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("spec", SPECS)
def test_png_and_npy_give_the_same_input(scans, spec):
    for scan in scans:
        from_npy = preprocess(scan, spec)
        decoded = decode_input(_png_bytes(scan), "png")
        assert decoded.dtype == np.uint8
        assert decoded.shape == scan.shape[::-1]  # time down the rows
        from_png = preprocess(decoded, spec)
        assert from_png.shape == from_npy.shape == (48, 32, 1)
        assert np.abs(from_png - from_npy).mean() < 0.01
        assert np.corrcoef(from_png.ravel(), from_npy.ravel())[0, 1] > 0.98
