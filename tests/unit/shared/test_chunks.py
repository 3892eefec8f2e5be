"""Chunk encoding and the Reassembler: every rejection reason, resume, integrity."""

from __future__ import annotations

import hashlib
import struct

import pytest

from edgefleet.shared.chunks import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAX_MESSAGE_BYTES,
    ChunkStore,
    MemoryChunkStore,
    Reassembler,
    chunk_at,
    chunk_count,
    decode_chunk,
    encode_chunk,
    split_model,
)
from edgefleet.shared.errors import (
    ChunkError,
    DecodeError,
    IntegrityError,
    MalformedChunkError,
)

DATA = bytes((i * 7 + 3) % 251 for i in range(10_000))
SHA = hashlib.sha256(DATA).hexdigest()
SIZE = 1024


def new(store: ChunkStore | None = None, data: bytes = DATA, chunk_size: int = SIZE):
    return Reassembler(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk_size,
        store=store if store is not None else MemoryChunkStore(),
    )


def test_default_chunk_fills_exactly_128_kib():
    assert HEADER_SIZE == 88
    assert DEFAULT_CHUNK_SIZE + HEADER_SIZE == MAX_MESSAGE_BYTES == 131_072
    big = bytes(DEFAULT_CHUNK_SIZE * 2 + 5)
    sizes = [len(c) for c in split_model(big)]
    assert sizes == [MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, HEADER_SIZE + 5]


def test_header_layout_is_the_documented_one():
    raw = chunk_at(DATA, 3, chunk_size=SIZE)
    assert raw[0:4] == b"EFCK"
    assert raw[4] == 1
    assert raw[5:8] == b"\0\0\0"
    assert raw[8:40] == bytes.fromhex(SHA)
    assert struct.unpack(">IIQ", raw[40:56]) == (3, 10, len(DATA))
    payload = DATA[3 * SIZE : 4 * SIZE]
    assert raw[56:88] == hashlib.sha256(raw[:56] + payload).digest()
    assert raw[88:] == payload


def test_chunk_count():
    assert chunk_count(1, 1024) == 1
    assert chunk_count(1024, 1024) == 1
    assert chunk_count(1025, 1024) == 2
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_count(10, 0)


def test_in_order_reassembly_and_progress():
    r = new()
    chunks = split_model(DATA, chunk_size=SIZE)
    assert len(chunks) == r.count == 10
    assert r.missing() == list(range(10))
    for i, c in enumerate(chunks):
        assert r.add(c) is True
        assert r.progress == pytest.approx((i + 1) / 10)
    assert r.complete
    assert r.missing() == []
    assert r.assemble() == DATA


def test_duplicates_are_ignored_and_missing_reported():
    r = new()
    chunks = split_model(DATA, chunk_size=SIZE)
    for i in (9, 0, 4, 4, 0):
        r.add(chunks[i])
    assert r.received == 3
    assert r.missing() == [1, 2, 3, 5, 6, 7, 8]
    assert r.missing(limit=2) == [1, 2]
    assert r.add(chunks[4]) is False


def test_incomplete_assemble_raises():
    r = new()
    r.add(chunk_at(DATA, 0, chunk_size=SIZE))
    with pytest.raises(ChunkError) as info:
        r.assemble()
    assert info.value.reason == "incomplete"


def _reject(r: Reassembler, raw: bytes, reason: str):
    with pytest.raises(ChunkError) as info:
        r.add(raw)
    assert info.value.reason == reason
    assert r.received == 0


def test_wrong_model():
    other = b"other model bytes" * 100
    _reject(new(), chunk_at(other, 0, chunk_size=SIZE), "wrong_model")


def test_index_out_of_range_by_header_or_by_expected_count():
    r = new()
    raw = encode_chunk(model_sha256=SHA, index=10, count=11, total_size=len(DATA), payload=b"x")
    _reject(r, raw, "index_out_of_range")
    raw = encode_chunk(model_sha256=SHA, index=5, count=5, total_size=len(DATA), payload=b"x")
    _reject(r, raw, "index_out_of_range")


@pytest.mark.parametrize("offset", [-1, 8, 40, 43, 47, 55, 56])
def test_bad_hash_for_any_changed_payload_or_header_field(offset):
    raw = bytearray(chunk_at(DATA, 2, chunk_size=SIZE))
    raw[offset] ^= 0x01  # payload, model sha, index (2 -> 3), count, total size, digest
    _reject(new(), bytes(raw), "bad_hash")


def test_wrong_count_and_wrong_size():
    payload = DATA[:SIZE]
    r = new()
    raw = encode_chunk(model_sha256=SHA, index=0, count=11, total_size=len(DATA), payload=payload)
    _reject(r, raw, "wrong_count")
    raw = encode_chunk(
        model_sha256=SHA, index=0, count=10, total_size=len(DATA) + 1, payload=payload
    )
    _reject(r, raw, "wrong_size")


def test_beyond_size_and_short_chunks():
    r = new()
    last = len(DATA) - 9 * SIZE
    long_last = DATA[9 * SIZE :] + b"extra"
    raw = encode_chunk(model_sha256=SHA, index=9, count=10, total_size=len(DATA), payload=long_last)
    _reject(r, raw, "beyond_size")
    short = DATA[:100]
    raw = encode_chunk(model_sha256=SHA, index=0, count=10, total_size=len(DATA), payload=short)
    _reject(r, raw, "bad_length")
    assert r.expected_length(9) == last


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"EFCK",
        b"XXXX" + bytes(84),
        b"EFCK\x02" + bytes(83),
        b"EFCK\x01\x00\x00\x01" + bytes(80),
    ],
)
def test_malformed_chunks_are_decode_and_chunk_errors(raw):
    with pytest.raises(MalformedChunkError) as info:
        decode_chunk(raw)
    assert isinstance(info.value, DecodeError)
    assert isinstance(info.value, ChunkError)
    _reject(new(), raw, "malformed")


def test_restore_resumes_with_the_same_store():
    store = MemoryChunkStore()
    r = new(store)
    chunks = split_model(DATA, chunk_size=SIZE)
    for c in chunks[:6]:
        r.add(c)
    state = r.state()
    resumed = Reassembler.restore(state, store)
    assert resumed.missing() == [6, 7, 8, 9]
    for c in chunks[4:]:
        resumed.add(c)
    assert resumed.assemble() == DATA


@pytest.mark.parametrize(
    "state",
    [
        b"",
        b"{}",
        b'{"v":1,"sha256":"' + SHA.encode() + b'","size":10000,"chunk_size":1024,'
        b'"received":[[10,"' + b"00" * 32 + b'"]]}',
        b'{"v":1,"sha256":"' + SHA.encode() + b'","size":10000,"chunk_size":1024,'
        b'"received":[[1,"' + b"00" * 32 + b'"],[1,"' + b"00" * 32 + b'"]]}',
        b'{"v":1,"sha256":"' + SHA.encode() + b'","size":10000,"chunk_size":1024,'
        b'"received":[[1,"00"]]}',
    ],
)
def test_corrupt_state_is_decode_error(state):
    with pytest.raises(DecodeError):
        Reassembler.restore(state, MemoryChunkStore())


def test_damaged_stored_chunk_is_forgotten_and_refetched():
    store = MemoryChunkStore()
    r = new(store)
    chunks = split_model(DATA, chunk_size=SIZE)
    for c in chunks:
        r.add(c)
    store.chunks[3] = b"bit rot" + store.chunks[3][7:]
    del store.chunks[7]
    with pytest.raises(IntegrityError) as info:
        r.assemble()
    assert info.value.indexes == (3, 7)
    assert r.missing() == [3, 7]
    r.add(chunks[3])
    r.add(chunks[7])
    assert r.assemble() == DATA


def test_consistent_but_forged_chunks_fail_the_whole_file_hash_and_reset():
    # An attacker can build chunks whose headers name our sha256 and whose own hashes match:
    # only the whole-file hash from the signed manifest catches that.
    store = MemoryChunkStore()
    r = new(store)
    forged = bytes(len(DATA))
    for i in range(10):
        payload = forged[i * SIZE : (i + 1) * SIZE]
        r.add(
            encode_chunk(model_sha256=SHA, index=i, count=10, total_size=len(DATA), payload=payload)
        )
    with pytest.raises(IntegrityError) as info:
        r.assemble()
    assert info.value.reason == "integrity"
    assert r.missing() == list(range(10))
    assert store.chunks == {}


def test_write_to_streams_only_a_verified_file():
    r = new()
    for c in split_model(DATA, chunk_size=SIZE):
        r.add(c)
    out: list[bytes] = []
    r.write_to(out.append)
    assert b"".join(out) == DATA
    assert all(len(part) <= SIZE for part in out)


def test_memory_holds_hashes_not_payloads():
    store = MemoryChunkStore()
    r = new(store, data=bytes(200_000), chunk_size=1000)
    for c in split_model(bytes(200_000), chunk_size=1000):
        r.add(c)
    assert all(len(v) == 32 for v in r._received.values())
    assert len(r.state()) < 200 * 80


def test_too_many_chunks_is_refused():
    with pytest.raises(ValueError, match="exceed"):
        Reassembler(sha256=SHA, size=10**9, chunk_size=1, store=MemoryChunkStore())


def test_split_refuses_empty():
    with pytest.raises(ValueError, match="empty"):
        split_model(b"")
