"""Content-defined chunking of model files: FastCDC, optionally cut at the .tflite's buffers.

FastCDC (Xia et al., USENIX ATC 2016; extended in IEEE TPDS 2020) moves a 64-bit "gear"
hash over the bytes, ``h = (h << 1) + GEAR[byte]`` (mod 2**64), and cuts where ``h & mask``
is zero. Because every step shifts the hash left by one, a byte no longer influences it
64 bytes later: a cut depends only on the 64 bytes before it, so an edit moves only the
cuts near it and later boundaries fall back into step ("resynchronise"). It skips the
first ``min_size`` bytes of a chunk, cuts at ``max_size`` at the latest, and uses
*normalized chunking*: a harder mask (more bits, ``log2(avg) + level``) before the average
size and an easier one (``log2(avg) - level``) after it, which narrows the sizes around the
average. edgefleet's gear table is its own: entry ``i`` is the first 8 bytes (big-endian) of
``sha256(b"edgefleet-gear" + bytes([i]))``; the masks spread their bits evenly over the
upper 48 bits of the hash, as the paper's masks do. Host and device never have to agree on
the table: the manifest lists the chunks themselves (docs/protocol.md, section 7.5).

``chunk_model`` with ``align=True`` first cuts the file at the start and end of every
buffer of the TFLite flatbuffer (each tensor's bytes in their own chunks), then runs FastCDC
inside each piece: a retrained tensor then changes only its own chunks, even where a new
size shifts every later byte.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Final

from edgefleet.shared.errors import ModelFormatError
from edgefleet.shared.tflite_model import FILE_IDENTIFIER, _Reader

_M64: Final = (1 << 64) - 1
GEAR: Final = tuple(
    int.from_bytes(hashlib.sha256(b"edgefleet-gear" + bytes([i])).digest()[:8], "big")
    for i in range(256)
)
MAX_CHUNK_BYTES: Final = 64 * 1024  # one chunk always fits one MQTT message comfortably


def mask(bits: int) -> int:
    """A mask of ``bits`` one-bits spread evenly over bits 16..63 of the gear hash."""
    if not 1 <= bits <= 48:  # noqa: PLR2004 - the upper 48 bits
        raise ValueError(f"a mask has 1..48 bits, got {bits}")
    step = 48 / bits
    out = 0
    for i in range(bits):
        out |= 1 << (63 - int(i * step))
    return out


@dataclass(frozen=True)
class CdcParams:
    """FastCDC sizes (bytes) and normalization level (the paper's NC level, 0..3)."""

    min_size: int = 1024
    avg_size: int = 4096
    max_size: int = 16384
    level: int = 2

    def __post_init__(self) -> None:
        """Check the sizes are ordered, the average a power of two, the max bounded."""
        avg = self.avg_size
        if not 0 < self.min_size <= avg <= self.max_size <= MAX_CHUNK_BYTES:
            msg = f"need 0 < min <= avg <= max <= {MAX_CHUNK_BYTES}, got {self}"
            raise ValueError(msg)
        if avg & (avg - 1) or avg < 64:  # noqa: PLR2004
            raise ValueError(f"avg_size must be a power of two >= 64, got {avg}")
        if not 0 <= self.level <= 3:  # noqa: PLR2004
            raise ValueError(f"normalization level is 0..3, got {self.level}")

    @property
    def masks(self) -> tuple[int, int]:
        """(mask before the average size, mask after it)."""
        bits = self.avg_size.bit_length() - 1
        return mask(bits + self.level), mask(bits - self.level)

    @classmethod
    def for_size(cls, size: int, *, max_chunks: int = 1024) -> CdcParams:
        """Parameters keeping a file of ``size`` bytes to about ``max_chunks`` chunks or fewer."""
        avg = 4096
        while avg < MAX_CHUNK_BYTES // 4 and size // avg > max_chunks // 2:
            avg *= 2
        return cls(min_size=avg // 4, avg_size=avg, max_size=avg * 4)


def cut(data: bytes | memoryview, start: int, end: int, params: CdcParams) -> int:
    """The end (exclusive) of the chunk of ``data[start:end]`` that begins at ``start``."""
    remaining = end - start
    if remaining <= params.min_size:
        return end
    mask_s, mask_l = params.masks
    normal = start + min(params.avg_size, remaining)
    stop = start + min(params.max_size, remaining)
    h = 0
    gear = GEAR
    i = start + params.min_size
    while i < normal:
        h = ((h << 1) + gear[data[i]]) & _M64
        if not h & mask_s:
            return i + 1
        i += 1
    while i < stop:
        h = ((h << 1) + gear[data[i]]) & _M64
        if not h & mask_l:
            return i + 1
        i += 1
    return stop


def fastcdc(
    data: bytes, params: CdcParams | None = None, *, start: int = 0, end: int | None = None
) -> list[tuple[int, int]]:
    """Split ``data[start:end]`` into content-defined chunks: ``(offset, length)`` in order."""
    p = params or CdcParams()
    end = len(data) if end is None else end
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        nxt = cut(data, pos, end, p)
        out.append((pos, nxt - pos))
        pos = nxt
    return out


def tflite_buffer_spans(data: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` of every non-empty buffer of a TFLite flatbuffer, by offset.

    Raises:
        ModelFormatError: Not a TFLite file, or a buffer points outside it.
    """
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:  # noqa: PLR2004 - header size
        raise ModelFormatError("not a TFLite model (no 'TFL3' file identifier)")
    r = _Reader(data)
    spans = []
    for t in r.tables(r.root(), 4):
        offset = r.scalar(t, 1, "<Q")
        if offset:
            length = r.scalar(t, 2, "<Q")
        else:
            offset, length = r.vector(t, 0)
        if length and offset + length <= len(data):
            spans.append((offset, length))
    return sorted(spans)


def chunk_model(
    data: bytes, params: CdcParams | None = None, *, align: bool = True
) -> list[tuple[int, int]]:
    """Chunks of a model file: FastCDC, inside pieces cut at the TFLite buffers if ``align``.

    A file that is not a TFLite flatbuffer is chunked by FastCDC alone.
    """
    p = params or CdcParams.for_size(len(data))
    if not data:
        return []
    cuts = {0, len(data)}
    if align:
        try:
            spans = tflite_buffer_spans(data)
        except ModelFormatError:
            spans = []
        for offset, length in spans:
            cuts.update((offset, offset + length))
    bounds = sorted(cuts)
    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(bounds):
        out += fastcdc(data, p, start=a, end=b)
    return out
