"""Reading inputs on the device: a PNG/JPEG/``.npy`` file, or such bytes that came over MQTT.

The decoded array goes to :func:`edgefleet.shared.preprocess.preprocess`, the recipe the
host calibrated with. Reading stays here, out of ``edgefleet.shared``, which holds only
pure code both sides compute alike; the host's data-set folders read their files with
these same functions, so host and device decode an image the same way.

Hostile inputs cost nothing to refuse (see :mod:`edgefleet.device.limits`): a file is
opened without blocking and checked to be a regular file (symbolic links too, on the
watched folder's path) before a byte is read; its size is checked before reading; an
image's width and height are read from its header and checked before the pixels are
decoded (Pillow's own process-wide decompression-bomb limit is not used: the limit is
per call, from ``[limits]``); a ``.npy`` header's shape and dtype are checked before the
data is touched, and the data must be exactly as long as the header says.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image, JpegImagePlugin, PngImagePlugin

from edgefleet.device.errors import InputLimitError
from edgefleet.device.limits import (
    DEFAULT_LIMITS,
    check_array,
    check_input_bytes,
    check_pixels,
)
from edgefleet.shared.errors import InputError
from edgefleet.shared.gpr import METADATA_MAX_BYTES, ScanMetadata, parse_metadata

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.device.config import LimitsConfig

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
INPUT_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
_SIXTEEN_BIT_GRAY = {"I;16", "I;16B", "I;16L"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_NPY_HEADER_MAX = 10_000  # numpy's own default cap on a .npy header's length
SIDECAR_SUFFIX = ".json"  # a GPR scan's metadata beside it: scan.npy -> scan.json
PNG_METADATA_KEY = "edgefleet-gpr"  # ... or inside a PNG, as a text chunk of that keyword


def load_input(
    path: Path, limits: LimitsConfig | None = None, *, follow_symlinks: bool = True
) -> npt.NDArray[np.generic]:
    """Read a PNG/JPEG (uint8 ``HxW`` or ``HxWxC``) or a ``.npy`` (the array as stored).

    Args:
        path: The file.
        limits: The agent's ``[limits]`` (defaults when None).
        follow_symlinks: False refuses a symbolic link without opening what it points to
            (the watched folder); a command-line argument may be a link.

    Raises:
        InputError: the file is missing, not a regular file, has an unsupported suffix or
            cannot be decoded; ``InputLimitError`` (a subclass) when it is over a limit.
    """
    limits = limits or DEFAULT_LIMITS
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise InputError(f"{path}: unsupported input type {suffix!r}; use .png, .jpg or .npy")
    data = read_input_file(path, limits, follow_symlinks=follow_symlinks)
    try:
        return decode_input(data, suffix.lstrip("."), limits)
    except InputLimitError as exc:
        raise InputLimitError(f"{path}: {exc}", key=exc.key) from exc
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def describe_file_type(mode: int) -> str:
    """What a non-regular file is, in words (for refusals)."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (fifo)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_input_file(path: Path, limits: LimitsConfig, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file no larger than ``limits.max_input_bytes``.

    The file is opened non-blocking (a fifo cannot hang the agent), without following a
    symbolic link unless ``follow_symlinks``; its type and size come from ``fstat`` of
    that very descriptor, before anything is read.

    Raises:
        InputError: missing, unreadable, a link (when not followed) or not a regular file;
            ``InputLimitError`` when larger than ``limits.max_input_bytes``.
    """
    if not follow_symlinks:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read input file: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise InputError(_not_regular(path, st.st_mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(_not_regular(path, stat.S_IFLNK)) from exc
        raise InputError(f"{path}: cannot read input file: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(_not_regular(path, st.st_mode))
        check_input_bytes(st.st_size, limits, what=f"{path} ({st.st_size:,} bytes)")
        try:
            data = fh.read(limits.max_input_bytes + 1)
        except OSError as exc:
            raise InputError(f"{path}: cannot read input file: {exc.strerror or exc}") from exc
    check_input_bytes(len(data), limits, what=f"{path} (grew while read)")
    return data


def _not_regular(path: Path, mode: int) -> str:
    return (
        f"{path}: refused without opening it: {describe_file_type(mode)}, not a regular file; "
        "deliver inputs as regular files (write a temporary name, then rename it into place)"
    )


def decode_input(
    data: bytes, fmt: str, limits: LimitsConfig | None = None
) -> npt.NDArray[np.generic]:
    """Decode an input that arrived as bytes (e.g. over MQTT); ``fmt`` is png, jpg or npy.

    Raises:
        InputError: unknown format, or bytes that do not decode as that format;
            ``InputLimitError`` (a subclass) when the input is over one of ``limits``.
    """
    limits = limits or DEFAULT_LIMITS
    fmt = fmt.lower().lstrip(".")
    if fmt not in {"png", "jpg", "jpeg", "npy"}:
        raise InputError(f"unsupported input format {fmt!r}; use png, jpg or npy")
    check_input_bytes(len(data), limits)
    if fmt == "npy":
        return _decode_npy(data, limits)
    return _decode_image(data, fmt, limits)


def _open_image(data: bytes) -> Image.Image:
    # The format's own class reads only the header, and without Image.open's process-wide
    # MAX_IMAGE_PIXELS check: the pixel limit is ours, per call (check_pixels below).
    if data.startswith(_PNG_MAGIC):
        return PngImagePlugin.PngImageFile(io.BytesIO(data))
    if data.startswith(_JPEG_MAGIC):
        return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    raise InputError("not a PNG or JPEG file (unknown signature)")


def _decode_image(data: bytes, fmt: str, limits: LimitsConfig) -> npt.NDArray[np.generic]:
    try:
        with _open_image(data) as img:
            width, height = img.size
            check_pixels(width, height, limits)
            img.load()
            if img.mode in _SIXTEEN_BIT_GRAY:  # kept whole: a GPR rendering needs all 16 bits
                return np.asarray(img).astype(np.uint16)
            converted = img if img.mode in {"L", "RGB"} else img.convert(_target_mode(img))
            return np.asarray(converted, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode {fmt} image ({len(data)} bytes): {exc}") from exc


def _target_mode(img: Image.Image) -> str:
    # Palette, 16-bit and alpha images become plain 8-bit gray or RGB.
    return "L" if img.mode in {"1", "I", "I;16", "F", "LA"} else "RGB"


def _read_npy_header(buf: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype[np.generic]]:
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(buf, max_header_size=_NPY_HEADER_MAX)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(buf, max_header_size=_NPY_HEADER_MAX)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")


def _decode_npy(data: bytes, limits: LimitsConfig) -> npt.NDArray[np.generic]:
    buf = io.BytesIO(data)
    try:
        shape, fortran, dtype = _read_npy_header(buf)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise InputError(f"cannot decode .npy data ({len(data)} bytes): {exc}") from exc
    if dtype.hasobject or dtype.kind not in "uif" or dtype.subdtype is not None:
        raise InputError(f"a .npy input must hold a numeric array, not {dtype}")
    nbytes = check_array(shape, dtype, limits)  # before a byte of data is read
    if nbytes == 0:
        raise InputError(f"the .npy array (shape {shape}) holds no elements")
    offset = buf.tell()
    available = len(data) - offset
    if available != nbytes:
        raise InputError(
            f"the .npy header announces {nbytes:,} bytes of data (shape {shape}, {dtype}) "
            f"but the file holds {available:,}: truncated or not a .npy file"
        )
    flat = np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def load_metadata(path: Path) -> ScanMetadata | None:
    """A GPR scan's physical metadata: its sidecar ``<stem>.json``, else a PNG's text chunk.

    None when the scan has neither (the model then estimates; see docs/gpr.md). The sidecar
    is read like an input: a regular file only (no link is followed), at most 4 KiB.

    Raises:
        InputError: the sidecar or the text chunk is there but not valid metadata (the
            message names the file and the key).
    """
    sidecar = path.with_suffix(SIDECAR_SUFFIX)
    if os.path.lexists(sidecar):
        meta_limits = DEFAULT_LIMITS.model_copy(update={"max_input_bytes": METADATA_MAX_BYTES})
        raw = read_input_file(sidecar, meta_limits, follow_symlinks=False)
        try:
            return parse_metadata(raw)
        except InputError as exc:
            raise InputError(f"{sidecar}: {exc}") from exc
    if path.suffix.lower() != ".png":
        return None
    try:
        with PngImagePlugin.PngImageFile(str(path)) as img:
            text = img.text.get(PNG_METADATA_KEY)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"{path}: cannot read its PNG text chunks: {exc}") from exc
    if text is None:
        return None
    try:
        return parse_metadata(str(text))
    except InputError as exc:
        raise InputError(f"{path} ({PNG_METADATA_KEY} text chunk): {exc}") from exc
