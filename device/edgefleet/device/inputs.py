"""Reading inputs on the device: a PNG/JPEG/``.npy`` file, or such bytes that came over MQTT.

The decoded array goes to :func:`edgefleet.shared.preprocess.preprocess`, the recipe the
host calibrated with. Reading stays here, out of ``edgefleet.shared``, which holds only
pure code both sides compute alike; the host's data-set folders read their files with
these same functions, so host and device decode an image the same way.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from edgefleet.shared.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
INPUT_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
_SIXTEEN_BIT_GRAY = {"I;16", "I;16B", "I;16L"}


def load_input(path: Path) -> npt.NDArray[np.generic]:
    """Read a PNG/JPEG (uint8 ``HxW`` or ``HxWxC``) or a ``.npy`` (the array as stored).

    Raises:
        InputError: the file is missing, has an unsupported suffix or cannot be decoded.
    """
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise InputError(f"{path}: unsupported input type {suffix!r}; use .png, .jpg or .npy")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read input file: {exc.strerror or exc}") from exc
    try:
        return decode_input(data, suffix.lstrip("."))
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def decode_input(data: bytes, fmt: str) -> npt.NDArray[np.generic]:
    """Decode an input that arrived as bytes (e.g. over MQTT); ``fmt`` is png, jpg or npy.

    Raises:
        InputError: unknown format, or bytes that do not decode as that format.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt == "npy":
        return _decode_npy(data)
    if fmt not in {"png", "jpg", "jpeg"}:
        raise InputError(f"unsupported input format {fmt!r}; use png, jpg or npy")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in _SIXTEEN_BIT_GRAY:  # kept whole: a GPR rendering needs all 16 bits
                return np.asarray(img).astype(np.uint16)
            converted = img if img.mode in {"L", "RGB"} else img.convert(_target_mode(img))
            return np.asarray(converted, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot decode {fmt} image ({len(data)} bytes): {exc}") from exc


def _target_mode(img: Image.Image) -> str:
    # Palette, 16-bit and alpha images become plain 8-bit gray or RGB.
    return "L" if img.mode in {"1", "I", "I;16", "F", "LA"} else "RGB"


def _decode_npy(data: bytes) -> npt.NDArray[np.generic]:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot decode .npy data ({len(data)} bytes): {exc}") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "uif":
        raise InputError("a .npy input must hold a numeric array")
    return array
