"""FastCDC as published (Xia et al. 2016/2020): gear hash, min/avg/max, normalized chunking."""

from __future__ import annotations

import hashlib
import itertools
import random
import statistics

import numpy as np
import pytest

from edgefleet.shared.cdc import GEAR, CdcParams, chunk_model, fastcdc, mask, tflite_buffer_spans

P = CdcParams(min_size=256, avg_size=1024, max_size=4096)


@pytest.fixture(scope="module")
def flat_model() -> bytes:
    """A real TFLite flatbuffer (no ops needed) with buffers of several sizes.

    Built with the flatbuffers schema that ai-edge-litert ships; the legacy device environment
    (tflite-runtime, tests/test_packaging.py) has neither, so the tests that need it skip there.
    """
    flatbuffers = pytest.importorskip("flatbuffers")
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    model = schema.ModelT()
    model.version = 3
    model.subgraphs = [schema.SubGraphT()]
    model.buffers = []
    for payload in (b"", _data(9000, 2), _data(40, 3), _data(3000, 4), _data(20_000, 5)):
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, np.uint8) if payload else None
        model.buffers.append(buffer)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_gear_table_is_256_distinct_64_bit_values_from_its_documented_recipe():
    assert len(GEAR) == 256
    assert len(set(GEAR)) == 256
    assert GEAR[7] == int.from_bytes(hashlib.sha256(b"edgefleet-gear\x07").digest()[:8], "big")
    assert all(0 <= g < 2**64 for g in GEAR)


def test_masks_have_the_normalized_bit_counts_in_the_upper_48_bits():
    small, large = P.masks  # avg 1024 = 2**10, level 2: 12 and 8 bits
    assert small.bit_count() == 12
    assert large.bit_count() == 8
    assert small & 0xFFFF == 0
    assert large & 0xFFFF == 0
    assert mask(1) == 1 << 63


def test_chunks_tile_the_input_and_respect_min_and_max():
    data = _data(200_000)
    chunks = fastcdc(data, P)
    assert chunks[0][0] == 0
    assert sum(n for _, n in chunks) == len(data)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(chunks))
    assert all(P.min_size < n <= P.max_size for _, n in chunks[:-1])


def test_average_size_is_near_the_target():
    sizes = [n for _, n in fastcdc(_data(400_000), P)[:-1]]
    # the expected mean with min 256, normalization level 2 and avg 1024 lies near the target
    assert 0.7 * P.avg_size < statistics.mean(sizes) < 1.5 * P.avg_size


def test_normalized_chunking_narrows_the_size_spread():
    data = _data(400_000)
    flat = CdcParams(min_size=256, avg_size=1024, max_size=4096, level=0)
    spread = statistics.pstdev(n for _, n in fastcdc(data, P)[:-1])
    spread_flat = statistics.pstdev(n for _, n in fastcdc(data, flat)[:-1])
    assert spread < 0.8 * spread_flat


def _gear(data: bytes) -> int:
    h = 0
    for b in data:
        h = ((h << 1) + GEAR[b]) & (2**64 - 1)
    return h


def test_the_gear_hash_depends_only_on_the_last_64_bytes():
    # every step shifts left once: after 64 bytes a byte no longer counts, so a cut
    # decision depends on the 64 bytes before it and boundaries resynchronise after edits
    data = _data(5000)
    assert _gear(data[-64:]) == _gear(data) == _gear(_data(300, 9) + data[-64:])
    assert _gear(data[-63:]) != _gear(data)


def test_after_an_edit_the_later_cuts_are_found_again():
    data = bytearray(_data(60_000))
    cuts = [a + n for a, n in fastcdc(bytes(data), P)]
    data[1000] ^= 0x5A
    again = {a + n for a, n in fastcdc(bytes(data), P)}
    assert set(cuts[4:]) <= again


def test_an_insertion_changes_only_the_chunks_near_it():
    data = _data(300_000)
    edited = data[:150_000] + b"inserted bytes" + data[150_000:]
    before = {hashlib.sha256(data[a : a + n]).digest() for a, n in fastcdc(data, P)}
    after = [hashlib.sha256(edited[a : a + n]).digest() for a, n in fastcdc(edited, P)]
    new = [h for h in after if h not in before]
    assert len(new) <= 3  # the chunk holding the insertion, perhaps one neighbour
    assert len(after) > 200


def test_a_fixed_size_split_would_lose_everything_after_an_insertion():
    # the reason for content-defined cuts: the same edit shifts every later fixed chunk
    data = _data(300_000)
    edited = data[:150_000] + b"x" + data[150_000:]
    fixed = {data[i : i + 1024] for i in range(0, len(data), 1024)}
    changed = sum(edited[i : i + 1024] not in fixed for i in range(0, len(edited), 1024))
    assert changed > 140


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        CdcParams(min_size=100, avg_size=1000, max_size=4000)
    with pytest.raises(ValueError, match="min <= avg <= max"):
        CdcParams(min_size=2048, avg_size=1024, max_size=4096)
    assert CdcParams.for_size(300_000).avg_size == 4096
    assert CdcParams.for_size(64 * 2**20, max_chunks=2048).avg_size == 16384


def test_aligned_chunks_start_and_end_at_every_tflite_buffer(flat_model):
    spans = tflite_buffer_spans(flat_model)
    assert [n for _, n in spans] == sorted([9000, 40, 3000, 20_000], key=lambda n: -n) or spans
    assert sorted(n for _, n in spans) == [40, 3000, 9000, 20_000]
    assert flat_model[spans[0][0] : spans[0][0] + spans[0][1]] in {
        _data(9000, 2),
        _data(40, 3),
        _data(3000, 4),
        _data(20_000, 5),
    }
    chunks = chunk_model(flat_model, P, align=True)
    starts = {a for a, _ in chunks}
    ends = {a + n for a, n in chunks}
    for offset, length in spans:
        assert offset in starts
        assert offset + length in ends
    assert sum(n for _, n in chunks) == len(flat_model)


def test_a_file_that_is_not_tflite_is_chunked_by_fastcdc_alone():
    data = _data(50_000)
    assert chunk_model(data, P, align=True) == fastcdc(data, P)
