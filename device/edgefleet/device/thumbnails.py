"""Input thumbnails: a small picture of each input, attached to its prediction record.

Opt-in (``[inference] thumbnails = true`` in agent.toml). A GPR B-scan (a 2-D ``.npy``, or its
16/8-bit PNG rendering) is drawn as a radargram: time down the rows, one column per trace, the
mean trace removed (the direct wave and ringing that hide everything else), amplitudes scaled
to the 99th percentile and coloured blue (negative) - white (zero) - red (positive). Any other
3-D image (a camera frame) is drawn as it is. The result is a PNG with a 256-colour palette
(lossless for a radargram), or a JPEG if only that fits, of at most
:data:`MAX_THUMBNAIL_BYTES` (8 KiB), at most :data:`MAX_SIDE` pixels long; the size is halved
until it fits. Pillow and numpy only; a failure never costs the prediction (the record
goes out without a thumbnail).
"""

from __future__ import annotations

import base64
import io
import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from edgefleet.shared.errors import InputError
from edgefleet.shared.gpr import as_traces
from edgefleet.shared.messages import MAX_THUMBNAIL_BYTES, Thumbnail

if TYPE_CHECKING:
    from edgefleet.device.config import InferenceConfig
    from edgefleet.shared.spec import PreprocessSpec

__all__ = ["MAX_SIDE", "encode_thumbnail", "radargram_palette", "render", "thumbnail_for"]

log = logging.getLogger(__name__)

MAX_SIDE = 128  # the longer side of a thumbnail, pixels (halved until it fits the byte limit)
MIN_SIDE = 8
_PERCENTILE = 99.0


def radargram_palette() -> bytes:
    """The 256-entry RGB palette: index 0 dark blue, 128 white, 255 dark red."""
    x = np.linspace(-1.0, 1.0, 256)
    neg = np.clip(-x, 0, 1)
    pos = np.clip(x, 0, 1)
    # Towards white in the middle, through full blue / red, to a darker end.
    r = np.where(x < 0, 1 - neg, 1 - 0.5 * np.clip(pos * 2 - 1, 0, 1))
    g = 1 - np.abs(x)
    b = np.where(x > 0, 1 - pos, 1 - 0.5 * np.clip(neg * 2 - 1, 0, 1))
    rgb = np.stack([r, g, b], axis=1)
    return bytes(np.round(rgb * 255).astype(np.uint8).ravel())


_PALETTE = radargram_palette()


def _is_bscan(array: npt.NDArray[np.generic]) -> bool:
    # 2-D numeric arrays of a GPR model are B-scans (a .npy, or the PNG rendering of one).
    return array.ndim == 2 and array.dtype.kind in "uif"  # noqa: PLR2004


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    factor = min(1.0, side / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def render(
    array: npt.NDArray[np.generic], *, side: int = MAX_SIDE, gpr: bool = True
) -> Image.Image:
    """The input as a picture at most ``side`` pixels long: a radargram for a B-scan, else grey/RGB.

    Raises:
        InputError: Not something that can be drawn (wrong rank, empty, not finite).
    """
    if gpr and _is_bscan(array):
        traces = as_traces(array)  # (traces, samples), PNG renderings expanded
        bscan = traces.T - traces.mean(axis=0)[:, None]  # time down the rows; mean trace removed
        scale = float(np.percentile(np.abs(bscan), _PERCENTILE)) or 1.0
        field = Image.fromarray(np.clip(bscan / scale, -1, 1).astype(np.float32), mode="F")
        field = field.resize(_fit(field.width, field.height, side), Image.Resampling.BOX)
        values = np.asarray(field, dtype=np.float64)
        index = np.round((np.clip(values, -1, 1) + 1) * 127.5).astype(np.uint8)
        image = Image.fromarray(index, mode="P")
        image.putpalette(_PALETTE)
        return image
    if array.ndim == 2 and array.size:  # noqa: PLR2004 - a grey image
        array = array[:, :, None]
    if array.ndim == 3 and array.shape[2] in (1, 3, 4) and array.size:  # noqa: PLR2004
        pixels = np.asarray(array, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise InputError("the image contains NaN or infinite values")
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / ((high - low) or 1.0) * 255
        channels = scaled[:, :, :3] if array.shape[2] >= 3 else scaled[:, :, 0]  # noqa: PLR2004
        image = Image.fromarray(np.round(channels).astype(np.uint8))
        return image.resize(_fit(image.width, image.height, side), Image.Resampling.BOX)
    raise InputError(f"cannot draw an input of shape {array.shape} and type {array.dtype}")


def _encodings(image: Image.Image) -> list[tuple[str, bytes]]:
    """PNG (palette, lossless for a radargram) first, then JPEG."""
    png = io.BytesIO()
    paletted = image if image.mode == "P" else image.convert("RGB").quantize(colors=256)
    paletted.save(png, format="PNG", optimize=True)
    jpeg = io.BytesIO()
    image.convert("RGB").save(jpeg, format="JPEG", quality=80)
    return [("png", png.getvalue()), ("jpeg", jpeg.getvalue())]


def encode_thumbnail(
    array: npt.NDArray[np.generic],
    *,
    max_side: int = MAX_SIDE,
    max_bytes: int = MAX_THUMBNAIL_BYTES,
    gpr: bool = True,
) -> tuple[str, bytes]:
    """Draw and encode ``array`` in at most ``max_bytes``: (format, image bytes).

    Raises:
        InputError: It cannot be drawn, or does not fit even at the smallest size.
    """
    side = max_side
    while side >= MIN_SIDE:
        for fmt, data in _encodings(render(array, side=side, gpr=gpr)):
            if len(data) <= max_bytes:
                return fmt, data
        side //= 2
    raise InputError(f"no thumbnail of {array.shape} fits in {max_bytes} bytes")


class _Model(Protocol):
    preprocess_spec: PreprocessSpec


def thumbnail_for(
    array: npt.NDArray[np.generic], model: _Model, config: InferenceConfig
) -> Thumbnail | None:
    """The record's ``thumbnail`` for this input, or None (setting off, or it cannot be drawn).

    A 2-D input of a GPR model is drawn as a radargram, any other input as a picture.
    """
    if not config.thumbnails:
        return None
    try:
        fmt, data = encode_thumbnail(array, gpr=model.preprocess_spec.kind == "gpr")
    except (InputError, ValueError, OSError) as exc:
        log.warning("no thumbnail for an input of shape %s: %s", array.shape, exc)
        return None
    return Thumbnail(format=fmt, data_b64=base64.b64encode(data).decode())  # type: ignore[arg-type]
