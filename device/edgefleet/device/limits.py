"""The ``[limits]`` checks: what one input may cost, checked before it is read or decoded.

Every check runs on what is known *before* the expensive step: the file size from
``fstat`` (before reading), the width and height from the image header (before the
pixels are decoded), the shape and dtype from the ``.npy`` header (before the data is
read). A refusal raises :class:`~edgefleet.device.errors.InputLimitError`, whose message
says what was too large, the limit, and the agent.toml key that raises it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from edgefleet.device.config import LimitsConfig
from edgefleet.device.errors import InputLimitError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_LIMITS: Final = LimitsConfig()


def _refuse(what: str, value: int, limit: int, key: str, unit: str) -> InputLimitError:
    return InputLimitError(
        f"{what} is {value:,} {unit}, over the limit of {limit:,} {unit} "
        f"(raise {key} in agent.toml's [limits] to accept it)",
        key=key,
    )


def check_input_bytes(size: int, limits: LimitsConfig, *, what: str = "the input") -> None:
    """Refuse an input file (or image-topic file) larger than ``max_input_bytes``."""
    if size > limits.max_input_bytes:
        raise _refuse(what, size, limits.max_input_bytes, "limits.max_input_bytes", "bytes")


def check_message_bytes(size: int, limits: LimitsConfig) -> None:
    """Refuse an image-topic message larger than ``max_image_message_bytes``."""
    if size > limits.max_image_message_bytes:
        key = "limits.max_image_message_bytes"
        raise _refuse("the image message", size, limits.max_image_message_bytes, key, "bytes")


def check_pixels(width: int, height: int, limits: LimitsConfig) -> None:
    """Refuse an image whose header announces more than ``max_pixels`` pixels."""
    pixels = width * height
    if pixels > limits.max_pixels:
        what = f"the image ({width}x{height})"
        raise _refuse(what, pixels, limits.max_pixels, "limits.max_pixels", "pixels")


def check_array(shape: tuple[int, ...], dtype: np.dtype[np.generic], limits: LimitsConfig) -> int:
    """Refuse a ``.npy`` header announcing too many elements or bytes; return the data bytes."""
    elements = math.prod(shape)  # Python integers: a forged shape cannot overflow
    if elements > limits.max_array_elements:
        raise _refuse(
            f"the .npy array (shape {shape})",
            elements,
            limits.max_array_elements,
            "limits.max_array_elements",
            "elements",
        )
    nbytes = elements * dtype.itemsize
    if nbytes > limits.max_array_bytes:
        raise _refuse(
            f"the .npy array (shape {shape}, {dtype})",
            nbytes,
            limits.max_array_bytes,
            "limits.max_array_bytes",
            "bytes",
        )
    return nbytes
