"""Chunked model transfer: split model bytes into self-describing chunks and reassemble them.

Sans-IO: the chunk bytes live in a caller-supplied ``ChunkStore`` (the device keeps them in
files), and the ``Reassembler`` keeps only indexes and chunk hashes in memory, so its state
is small, can be saved after every chunk, and restored after a restart.

Chunk layout (big-endian; offsets in bytes; docs/protocol.md is the reference)::

    0   4   magic b"EFCK"
    4   1   format version (1)
    5   3   reserved, zero
    8  32   sha256 of the whole model (variant) file
   40   4   index (u32), 0-based
   44   4   count (u32), chunks in the file
   48   8   total size (u64) of the file in bytes
   56  32   sha256 of bytes 0..55 followed by the payload (binds every header field)
   88   -   payload
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.shared.errors import ChunkError, DecodeError, IntegrityError, MalformedChunkError

MAGIC: Final = b"EFCK"
FORMAT_VERSION: Final = 1
_PREFIX: Final = struct.Struct(">4sB3s32sIIQ")  # the 56 bytes the chunk digest covers
DIGEST_SIZE: Final = 32
HEADER_SIZE: Final = _PREFIX.size + DIGEST_SIZE  # 88
MAX_MESSAGE_BYTES: Final = 128 * 1024
DEFAULT_CHUNK_SIZE: Final = MAX_MESSAGE_BYTES - HEADER_SIZE  # 130984: header + payload = 128 KiB
MAX_CHUNKS: Final = 1 << 16  # chunks per file a reassembler (and a device) accepts at most
# Smallest chunk_size a device accepts by default for a file of several chunks: the header
# alone is 88 bytes, and MAX_CHUNKS chunks of it still carry a 64 MiB model.
DEFAULT_MIN_CHUNK_SIZE: Final = 1024
_U32: Final = 2**32


@dataclass(frozen=True)
class Chunk:
    """One decoded chunk; ``decode_chunk`` has checked that the payload matches its hash."""

    model_sha256: str
    index: int
    count: int
    total_size: int
    payload: bytes


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks a file of ``size`` bytes splits into (the last one may be short)."""
    if size < 0 or chunk_size < 1:
        raise ValueError(f"need size >= 0 and chunk_size >= 1, got {size}, {chunk_size}")
    return -(-size // chunk_size)


def encode_chunk(
    *, model_sha256: str, index: int, count: int, total_size: int, payload: bytes
) -> bytes:
    """Prefix ``payload`` with the binary chunk header."""
    prefix = _PREFIX.pack(
        MAGIC, FORMAT_VERSION, b"\0\0\0", bytes.fromhex(model_sha256), index, count, total_size
    )
    return prefix + hashlib.sha256(prefix + payload).digest() + payload


def chunk_at(
    data: bytes,
    index: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    model_sha256: str | None = None,
) -> bytes:
    """Encode chunk ``index`` of ``data`` alone (answering a re-request needs no full split).

    Args:
        data: The whole model file.
        index: Which chunk.
        chunk_size: Payload bytes per chunk.
        model_sha256: sha256 of ``data`` if the caller already has it (saves hashing).
    """
    count = chunk_count(len(data), chunk_size)
    if not 0 <= index < count:
        raise ValueError(f"chunk index {index} outside 0..{count - 1}")
    sha = model_sha256 or hashlib.sha256(data).hexdigest()
    payload = data[index * chunk_size : (index + 1) * chunk_size]
    return encode_chunk(
        model_sha256=sha, index=index, count=count, total_size=len(data), payload=payload
    )


def split_model(data: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """Split a model file into encoded chunks, in index order.

    Raises:
        ValueError: ``data`` is empty, ``chunk_size`` < 1, or more than 2**32 - 1 chunks.
    """
    if not data:
        raise ValueError("cannot split an empty model")
    count = chunk_count(len(data), chunk_size)
    if count >= _U32:
        raise ValueError(f"{count} chunks do not fit the u32 index; use a larger chunk_size")
    sha = hashlib.sha256(data).hexdigest()
    return [chunk_at(data, i, chunk_size=chunk_size, model_sha256=sha) for i in range(count)]


def decode_chunk(raw: bytes) -> Chunk:
    """Parse and self-check one chunk message.

    Raises:
        MalformedChunkError: Too short, wrong magic or version, nonzero reserved bytes,
            payload longer than the total size (reason ``"malformed"``), index not below
            count (``"index_out_of_range"``), or header + payload not matching the chunk
            digest (``"bad_hash"``).
            It is both a ``ChunkError`` and a ``DecodeError``.
    """
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) < HEADER_SIZE:
        raise MalformedChunkError(f"a chunk needs at least {HEADER_SIZE} header bytes")
    raw = bytes(raw)
    magic, version, reserved, model_sha, index, count, total = _PREFIX.unpack_from(raw)
    if magic != MAGIC or version != FORMAT_VERSION or reserved != b"\0\0\0":
        raise MalformedChunkError(f"not an edgefleet v{FORMAT_VERSION} chunk (magic/version)")
    payload = raw[HEADER_SIZE:]
    digest = hashlib.sha256(raw[: _PREFIX.size])
    digest.update(payload)
    if digest.digest() != raw[_PREFIX.size : HEADER_SIZE]:
        raise MalformedChunkError(
            f"chunk {index}: header or payload does not match the chunk sha256", reason="bad_hash"
        )
    if index >= count:
        raise MalformedChunkError(
            f"chunk index {index} not below count {count}", reason="index_out_of_range"
        )
    if len(payload) > total:
        raise MalformedChunkError(f"payload of {len(payload)} bytes exceeds total size {total}")
    return Chunk(model_sha.hex(), index, count, total, payload)


class ChunkStore(Protocol):
    """Where a Reassembler keeps chunk payloads (the device uses files, tests memory)."""

    def put(self, index: int, data: bytes) -> None:
        """Store (or overwrite) the payload of chunk ``index``; durable on return."""

    def get(self, index: int) -> bytes:
        """Return the payload of chunk ``index``; raise ``KeyError`` if it is not there."""

    def clear(self) -> None:
        """Forget every stored payload."""


class MemoryChunkStore:
    """A ChunkStore in a dict, for tests and for hosts that hold the model anyway."""

    def __init__(self) -> None:
        self.chunks: dict[int, bytes] = {}

    def put(self, index: int, data: bytes) -> None:
        """Store a payload."""
        self.chunks[index] = bytes(data)

    def get(self, index: int) -> bytes:
        """Return a payload or raise KeyError."""
        return self.chunks[index]

    def clear(self) -> None:
        """Forget everything."""
        self.chunks.clear()


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    v: int = Field(default=1, ge=1, le=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1)
    chunk_size: int = Field(ge=1)
    received: list[tuple[int, str]] = Field(max_length=MAX_CHUNKS)


class Reassembler:
    """Collects the chunks of one model file in any order and yields it once it is whole.

    Args:
        sha256: Expected sha256 (hex) of the whole file, from the verified manifest.
        size: Expected size in bytes.
        chunk_size: Payload bytes per chunk (the last chunk may be shorter).
        store: Where payloads go; memory holds only indexes and 32-byte hashes.
        max_chunks: Refuse transfers with more chunks than this (bounds memory and state).

    Raises:
        ValueError: Inconsistent arguments, or more than ``max_chunks`` chunks.
    """

    def __init__(
        self,
        *,
        sha256: str,
        size: int,
        chunk_size: int,
        store: ChunkStore,
        max_chunks: int = MAX_CHUNKS,
    ) -> None:
        self.sha256 = sha256.lower()
        bytes.fromhex(self.sha256)  # ValueError on non-hex
        if len(self.sha256) != 64 or size < 1:  # noqa: PLR2004 - hex sha256 length
            raise ValueError(f"need a 64-hex-digit sha256 and size >= 1, got {sha256!r}, {size}")
        self.size = size
        self.chunk_size = chunk_size
        self.count = chunk_count(size, chunk_size)
        if self.count > max_chunks:
            raise ValueError(f"{self.count} chunks exceed the limit of {max_chunks}")
        self._store = store
        self._received: dict[int, bytes] = {}

    def expected_length(self, index: int) -> int:
        """Payload length of chunk ``index`` (all full except possibly the last)."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def add(self, raw_chunk: bytes) -> bool:
        """Check one chunk message and store it.

        Returns:
            True if the chunk was new, False for a duplicate (which is ignored).

        Raises:
            ChunkError: It does not belong; ``reason`` is one of ``malformed``, ``bad_hash``,
                ``index_out_of_range``, ``wrong_model``, ``wrong_count``, ``wrong_size``,
                ``beyond_size``, ``bad_length``. Nothing is stored then.
        """
        chunk = decode_chunk(raw_chunk)
        self._check_belongs(chunk)
        if chunk.index in self._received:
            return False
        self._store.put(chunk.index, chunk.payload)
        self._received[chunk.index] = hashlib.sha256(chunk.payload).digest()
        return True

    def _check_belongs(self, chunk: Chunk) -> None:
        where = f"chunk {chunk.index}"
        if chunk.model_sha256 != self.sha256:
            raise ChunkError(
                f"{where} belongs to model {chunk.model_sha256[:12]}", reason="wrong_model"
            )
        if chunk.index >= self.count:
            raise ChunkError(
                f"{where} is beyond the last index {self.count - 1}", reason="index_out_of_range"
            )
        if chunk.count != self.count:
            raise ChunkError(
                f"{where} says {chunk.count} chunks, expected {self.count}", reason="wrong_count"
            )
        if chunk.total_size != self.size:
            raise ChunkError(
                f"{where} says {chunk.total_size} bytes, expected {self.size}", reason="wrong_size"
            )
        expected = self.expected_length(chunk.index)
        if len(chunk.payload) != expected:
            reason = "beyond_size" if len(chunk.payload) > expected else "bad_length"
            raise ChunkError(
                f"{where} has {len(chunk.payload)} bytes, expected {expected}", reason=reason
            )

    def missing(self, limit: int | None = None) -> list[int]:
        """Indexes not yet received, ascending; at most ``limit`` of them."""
        out: list[int] = []
        for i in range(self.count):
            if limit is not None and len(out) >= limit:
                break
            if i not in self._received:
                out.append(i)
        return out

    @property
    def received(self) -> int:
        """How many distinct chunks are stored."""
        return len(self._received)

    @property
    def complete(self) -> bool:
        """Every chunk is stored (the whole-file hash is checked by ``assemble``)."""
        return len(self._received) == self.count

    @property
    def progress(self) -> float:
        """Fraction of chunks stored, 0..1."""
        return len(self._received) / self.count

    def state(self) -> bytes:
        """A compact JSON snapshot to persist; pair it with the same store in ``restore``."""
        received = [(i, self._received[i].hex()) for i in sorted(self._received)]
        snapshot = _State(
            sha256=self.sha256, size=self.size, chunk_size=self.chunk_size, received=received
        )
        return snapshot.model_dump_json().encode()

    @classmethod
    def restore(
        cls, state: bytes, store: ChunkStore, *, max_chunks: int = MAX_CHUNKS
    ) -> Reassembler:
        """Rebuild a Reassembler from ``state()`` output and the store it was using.

        Raises:
            DecodeError: The state is corrupt or inconsistent.
        """
        try:
            snap = _State.model_validate_json(state)
            self = cls(
                sha256=snap.sha256,
                size=snap.size,
                chunk_size=snap.chunk_size,
                store=store,
                max_chunks=max_chunks,
            )
            self._received = _received_from(snap.received, self.count)
        except (ValidationError, ValueError, TypeError, RecursionError) as exc:
            raise DecodeError(f"reassembler state is unusable: {exc}") from exc
        return self

    def reset(self) -> None:
        """Forget every chunk (in memory and in the store) to start the transfer over."""
        self._received.clear()
        self._store.clear()

    def _payloads(self) -> Iterator[bytes]:
        """Yield stored payloads in order, dropping (and raising for) any that went bad."""
        if not self.complete:
            raise ChunkError(
                f"{len(self.missing())} of {self.count} chunks still missing", reason="incomplete"
            )
        bad: list[int] = []
        for i in range(self.count):
            try:
                data = self._store.get(i)
            except KeyError:
                data = b""
            if hashlib.sha256(data).digest() != self._received[i]:
                bad.append(i)
            elif not bad:
                yield data
        if bad:
            for i in bad:
                del self._received[i]
            raise IntegrityError(
                f"stored chunks {bad[:10]} are damaged; fetch them again", indexes=tuple(bad)
            )

    def _hash_all(self, sink: Callable[[bytes], object] | None) -> None:
        digest = hashlib.sha256()
        for data in self._payloads():
            digest.update(data)
            if sink is not None:
                sink(data)
        if digest.hexdigest() != self.sha256:
            indexes = tuple(range(self.count))
            self.reset()
            raise IntegrityError(
                f"reassembled file hashes to {digest.hexdigest()[:12]}, manifest says "
                f"{self.sha256[:12]}; all chunks discarded",
                indexes=indexes,
            )

    def verify(self) -> None:
        """Check the stored file against the manifest's sha256 without holding it in memory.

        Raises:
            ChunkError: Not complete (reason ``incomplete``).
            IntegrityError: A stored chunk changed (those indexes are forgotten), or the whole
                file does not match (everything is forgotten; the transfer starts over).
        """
        self._hash_all(None)

    def write_to(self, sink: Callable[[bytes], object]) -> None:
        """Verify, then stream the payloads in order to ``sink`` (e.g. a temp file's write).

        Raises:
            ChunkError: As ``verify``; nothing is written unless the whole file matches.
        """
        self.verify()
        for data in self._payloads():
            sink(data)

    def assemble(self) -> bytes:
        """Return the whole file, only if it matches the manifest's sha256.

        Raises:
            ChunkError: As ``verify``.
        """
        parts: list[bytes] = []
        self._hash_all(parts.append)
        return b"".join(parts)


def _received_from(entries: list[tuple[int, str]], count: int) -> dict[int, bytes]:
    received: dict[int, bytes] = {}
    for index, digest in entries:
        raw = bytes.fromhex(digest)
        if not 0 <= index < count or len(raw) != hashlib.sha256().digest_size:
            raise ValueError(f"bad entry for chunk {index}")
        if index in received:
            raise ValueError(f"chunk {index} listed twice")
        received[index] = raw
    return received
