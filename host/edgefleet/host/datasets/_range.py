"""Check that user data holds what ``shared.preprocess`` expects: pixel intensities 0-255.

A data set already normalised to [0, 1] (or [-1, 1]) would be divided by 255 a second time:
every input would become nearly black, int8 calibration would see almost no range, and the
accuracy would drop to chance without a word. So the range is inspected before use, and data
that does not look like raw pixel intensities is refused with the range seen and the range
expected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgefleet.host.errors import DatasetError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from edgefleet.shared.spec import PreprocessSpec

# The model input each preprocess scale produces from 0-255 pixels.
MODEL_RANGES = {"unit": "[0, 1]", "minus_one_one": "[-1, 1]", "raw": "[0, 255]"}
_FULL_SCALE_8 = 255.0
_FULL_SCALE_16 = 65535.0


def check_pixel_range(
    raw: Sequence[npt.NDArray[np.generic]], *, source: str, spec: PreprocessSpec
) -> None:
    """Refuse image data whose values are not raw pixel intensities (0-255, or 0-65535 uint16).

    GPR B-scans (``spec.kind == "gpr"``) hold amplitudes of any sign and scale; they are
    conditioned and scaled per scan, so they are not checked.

    Raises:
        DatasetError: naming the range seen, the range expected and what to do.
    """
    if spec.kind != "image" or not raw:
        return
    wide = [a for a in raw if a.dtype == np.uint16]  # 16-bit PNGs: 0-65535, always valid
    narrow = [a for a in raw if a.dtype != np.uint16 and a.size]
    if not narrow:
        return
    low = min(float(np.min(a)) for a in narrow)
    high = max(float(np.max(a)) for a in narrow)
    dtypes = "/".join(sorted({str(a.dtype) for a in narrow}))
    seen = f"data set {source!r} holds values in [{low:g}, {high:g}] ({dtypes})"
    expected = (
        f"edgefleet expects raw pixel intensities 0-{_FULL_SCALE_8:.0f} (uint8, or floats on "
        f"that scale, as a PNG holds; 16-bit PNGs 0-{_FULL_SCALE_16:.0f}) and maps them itself "
        f"to the model's input range {MODEL_RANGES[spec.scale]} (preprocess scale "
        f"{spec.scale!r}), exactly as the device does"
    )
    if low < 0:
        raise DatasetError(
            f"{seen}: negative values; {expected}. If x was normalised to [-1, 1], "
            "store (x + 1) * 127.5 (or as uint8) instead"
        )
    if high > _FULL_SCALE_8:
        raise DatasetError(
            f"{seen}: above {_FULL_SCALE_8:.0f}; {expected}. Store 16-bit images as uint16, "
            "or scale x to 0-255"
        )
    all_float = all(a.dtype.kind == "f" for a in narrow)
    if all_float and 0.0 < high <= 1.0 and not wide:
        raise DatasetError(
            f"{seen}, which looks normalised to [0, 1]; {expected}, so these inputs would be "
            "divided by 255 a second time and the model would see almost black images. "
            "Store x * 255 (or as uint8) instead"
        )
