"""The one image -> tensor recipe, shared by host calibration/evaluation and device inference.

Pure numpy + Pillow (never TensorFlow, no file reading: Pillow only resizes arrays here),
so the device runs exactly the code the host calibrated with. Files and bytes become arrays
in :mod:`edgefleet.device.inputs`. Conventions:

* Image arrays (``kind="image"``) hold pixel intensities on a 0-255 scale, whatever their
  dtype (uint8 from PNG/JPEG, or float from ``.npy``), except uint16 (a 16-bit grayscale
  PNG, decoded whole) on 0-65535; 2-D is grayscale, 3-D is ``HxWxC``.
* GPR inputs (``kind="gpr"``) are first conditioned by :func:`edgefleet.shared.gpr.condition`
  (time zero, background removal, gain); the resulting amplitudes are mapped to [0, 1] by
  their largest absolute value (zero amplitude -> 0.5), then treated like a unit image. A
  stacked spec (``gpr.stack``) gives three views, each already on its own [-1, 1] scale,
  mapped to [0, 1] as they are.
* :func:`preprocess` returns float32 ``(height, width, channels)`` in the spec's scale, with
  one more channel, last, for ``gpr.frequency_plane`` (:func:`frequency_plane_value`);
  :func:`to_input_tensor` adds the batch dimension and quantizes for integer inputs.
* :func:`preprocess_windows` gives one such input per window along a long GPR line for
  ``gpr.line_windows`` recipes (the device classifies them all), and ``[(None,
  preprocess(...))]`` for every other recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image

from edgefleet.shared import gpr, gpr_windows
from edgefleet.shared.errors import InputError
from edgefleet.shared.spec import GprOptions

if TYPE_CHECKING:
    from edgefleet.shared.spec import PreprocessSpec, TensorSpec

FloatArray = npt.NDArray[np.float32]

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
_NP_DTYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "float16": np.float16}
_RGB_TO_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma


def preprocess(
    array: npt.NDArray[np.generic], spec: PreprocessSpec, meta: gpr.ScanMetadata | None = None
) -> FloatArray:
    """Turn one decoded input into float32 ``(height, width, channels)`` in ``spec.scale``.

    ``meta`` is a GPR scan's physical metadata (sidecar), used by ``gpr.resample`` specs.

    Raises:
        InputError: the array is empty, not 2-D/3-D, or not finite.
    """
    if spec.kind == "gpr":
        unit = _gpr_to_unit(array, spec, meta)
    else:
        full_scale = 65535.0 if array.dtype == np.uint16 else 255.0  # 16-bit PNGs too
        unit = _as_hwc(array).astype(np.float32) / np.float32(full_scale)
    return _finish(unit, spec, meta)


def preprocess_windows(
    array: npt.NDArray[np.generic],
    spec: PreprocessSpec,
    meta: gpr.ScanMetadata | None = None,
    max_windows: int = gpr_windows.MAX_WINDOWS,
) -> list[tuple[float | None, FloatArray]]:
    """One model input per window along a survey line (``gpr.line_windows`` specs).

    Each window (:func:`edgefleet.shared.gpr_windows.condition_windows`, in line order) goes through
    the same steps as :func:`preprocess` after conditioning; its centre is in input traces.
    Any other spec gives exactly ``[(None, preprocess(array, spec, meta))]``.

    Raises:
        InputError: the array is not a usable input for ``spec``.
    """
    options = spec.gpr
    if spec.kind != "gpr" or options is None or not options.line_windows:
        return [(None, preprocess(array, spec, meta))]
    windows = gpr_windows.condition_windows(
        array, options, meta, (spec.height, spec.width), max_windows
    )
    return [(centre, _finish(_conditioned_to_unit(bscan), spec, meta)) for centre, bscan in windows]


# gpr.frequency_plane: log antenna frequency from FREQUENCY_PLANE_MHZ[0] (0.1) to [1] (1.0)
FREQUENCY_PLANE_MHZ = (250.0, 1600.0)
_PLANE_LOW = 0.1  # the plane's value at the band's low end; 0 means "no antenna frequency"


def frequency_plane_value(meta: gpr.ScanMetadata | None) -> float:
    """The ``gpr.frequency_plane`` channel's value (on the unit scale) for a scan's metadata.

    ``0.1 + 0.9 * ln(f / 250 MHz) / ln(1600 / 250)``, clipped to [0.1, 1], for an antenna
    frequency ``f`` in the metadata; 0 when there is none.
    """
    if meta is None or meta.antenna_mhz is None:
        return 0.0
    low, high = FREQUENCY_PLANE_MHZ
    share = float(np.log(meta.antenna_mhz / low) / np.log(high / low))
    return _PLANE_LOW + (1.0 - _PLANE_LOW) * min(max(share, 0.0), 1.0)


def _finish(unit: FloatArray, spec: PreprocessSpec, meta: gpr.ScanMetadata | None) -> FloatArray:
    unit = _match_channels(unit, spec.channels)
    unit = _resize(unit, spec.height, spec.width)
    if spec.input_channels > spec.channels:  # gpr.frequency_plane
        plane = np.full((*unit.shape[:2], 1), frequency_plane_value(meta), dtype=np.float32)
        unit = np.concatenate([unit, plane], axis=-1)
    if spec.invert:
        unit = np.float32(1.0) - unit
    if spec.scale == "minus_one_one":
        return (unit * np.float32(2.0) - np.float32(1.0)).astype(np.float32)
    if spec.scale == "raw":
        return (unit * np.float32(255.0)).astype(np.float32)
    return unit.astype(np.float32)


def _as_hwc(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    if array.size == 0:
        raise InputError("input array is empty")
    if array.ndim == 3 and array.shape[-1] in {1, 3, 4}:  # noqa: PLR2004 - HxWxC
        hwc = array
    elif array.ndim == 2:  # noqa: PLR2004 - HxW
        hwc = array[:, :, np.newaxis]
    else:
        raise InputError(
            f"input has shape {array.shape}; expected HxW (grayscale) or HxWxC with C = 1, 3 or 4"
        )
    if array.dtype.kind == "f" and not np.isfinite(hwc).all():
        raise InputError("input contains NaN or infinite values")
    return hwc


def _gpr_to_unit(
    array: npt.NDArray[np.generic], spec: PreprocessSpec, meta: gpr.ScanMetadata | None
) -> FloatArray:
    return _conditioned_to_unit(
        gpr.condition(array, spec.gpr or GprOptions(), meta, (spec.height, spec.width))
    )


def _conditioned_to_unit(conditioned: FloatArray) -> FloatArray:
    bscan = np.asarray(conditioned, dtype=np.float32)
    if bscan.ndim == 3:  # noqa: PLR2004 - stacked views, each already on its own [-1, 1] scale
        return (bscan * np.float32(0.5) + np.float32(0.5)).astype(np.float32)
    bscan = _as_hwc(bscan)[:, :, :1].astype(np.float32)
    peak = float(np.abs(bscan).max())
    if peak == 0.0:
        return np.full(bscan.shape, 0.5, dtype=np.float32)
    return (bscan / np.float32(2.0 * peak) + np.float32(0.5)).astype(np.float32)


def _match_channels(hwc: FloatArray, channels: int) -> FloatArray:
    have = hwc.shape[-1]
    if have == 4:  # noqa: PLR2004 - drop alpha
        hwc, have = hwc[:, :, :3], 3
    if have == channels:
        return hwc
    if channels == 1:
        return (hwc @ _RGB_TO_GRAY)[:, :, np.newaxis].astype(np.float32)
    return np.repeat(hwc, channels, axis=2)


def _resize(hwc: FloatArray, height: int, width: int) -> FloatArray:
    if hwc.shape[:2] == (height, width):
        return hwc
    # Float ('F') images keep full precision; the same bilinear filter runs on host and device.
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(hwc[:, :, c]), mode="F").resize(
                (width, height), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        for c in range(hwc.shape[-1])
    ]
    return np.stack(planes, axis=-1)


def to_input_tensor(x: FloatArray, spec: TensorSpec) -> npt.NDArray[np.generic]:
    """Add the batch dimension and convert to the input tensor's dtype (quantizing if needed).

    Raises:
        InputError: ``x`` does not have the tensor's shape (without or with batch).
    """
    batched = x[np.newaxis] if x.ndim == len(spec.shape) - 1 else x
    if tuple(batched.shape) != tuple(spec.shape):
        raise InputError(
            f"preprocessed input has shape {tuple(x.shape)}, model input {spec.name!r} "
            f"expects {tuple(spec.shape)}; check the preprocessing spec"
        )
    if spec.dtype in _INT_RANGES:
        if not spec.quantized:
            raise InputError(f"integer input {spec.name!r} has no quantization scale")
        low, high = _INT_RANGES[spec.dtype]
        q = np.round(batched / np.float32(spec.scale)) + np.float32(spec.zero_point)
        clipped: npt.NDArray[np.float32] = np.clip(q, low, high)
        return clipped.astype(_NP_DTYPES[spec.dtype])
    if spec.dtype == "float16":
        return batched.astype(np.float16)
    return batched.astype(np.float32)


def dequantize_output(y: npt.NDArray[np.generic], spec: TensorSpec) -> FloatArray:
    """Output tensor values as float32 (``scale * (q - zero_point)`` for quantized outputs)."""
    values = np.asarray(y).astype(np.float32)
    if spec.quantized:
        return ((values - np.float32(spec.zero_point)) * np.float32(spec.scale)).astype(np.float32)
    return values
