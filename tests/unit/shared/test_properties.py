"""Property tests: reassembly under reordering, duplicates and restarts; tamper detection."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import NOW, make_manifest
from edgefleet.shared.chunks import MemoryChunkStore, Reassembler, split_model
from edgefleet.shared.errors import (
    ChunkError,
    DecodeError,
    IntegrityError,
    ManifestError,
    TopicError,
)
from edgefleet.shared.manifest import sign_manifest, verify_manifest
from edgefleet.shared.messages import ChunkRequest, PredictionRecord, Status, encode
from edgefleet.shared.topics import (
    CHUNK,
    CHUNK_REQUEST,
    DESIRED_DEVICE,
    DESIRED_GROUP,
    IMAGES,
    PREDICTIONS,
    PREDICTIONS_ACK,
    REPORTED,
    STATUS,
    ParsedTopic,
    Topics,
)
from edgefleet.shared.wire import decode_payload

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = [
    STATUS, REPORTED, DESIRED_DEVICE, DESIRED_GROUP, CHUNK,
    CHUNK_REQUEST, PREDICTIONS, PREDICTIONS_ACK, IMAGES,
]  # fmt: skip


@st.composite
def transfers(draw):
    """Model bytes, a chunk size, and an arrival order: every chunk, any order, duplicates."""
    data = draw(st.binary(min_size=1, max_size=3000))
    chunk_size = draw(st.integers(min_value=1, max_value=700))
    chunks = split_model(data, chunk_size=chunk_size)
    order = draw(st.permutations(range(len(chunks))))
    extra = draw(st.lists(st.sampled_from(range(len(chunks))), max_size=len(chunks)))
    arrivals = list(order)
    for i, index in enumerate(extra):
        arrivals.insert(draw(st.integers(0, len(arrivals))) if i < 20 else 0, index)
    return data, chunk_size, chunks, arrivals


def _new(data: bytes, chunk_size: int, store: MemoryChunkStore | None = None) -> Reassembler:
    return Reassembler(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk_size,
        store=store or MemoryChunkStore(),
    )


@PROPS
@given(transfers())
def test_any_order_with_duplicates_reassembles_exactly(transfer):
    data, chunk_size, chunks, arrivals = transfer
    r = _new(data, chunk_size)
    new = [r.add(chunks[i]) for i in arrivals]
    assert sum(new) == len(chunks)
    assert r.complete
    assert r.assemble() == data


@PROPS
@given(transfers(), st.data())
def test_save_and_restore_at_any_point_changes_nothing(transfer, draw):
    data, chunk_size, chunks, arrivals = transfer
    cuts = set(draw.draw(st.lists(st.integers(0, len(arrivals)), max_size=4)))
    reference = _new(data, chunk_size)
    store = MemoryChunkStore()
    r = _new(data, chunk_size, store)
    for step, index in enumerate(arrivals):
        if step in cuts:
            r = Reassembler.restore(r.state(), store)  # a restart: only state + store survive
        assert r.add(chunks[index]) == reference.add(chunks[index])
        assert r.missing() == reference.missing()
    r = Reassembler.restore(r.state(), store)
    assert r.state() == reference.state()
    assert r.assemble() == data


@PROPS
@given(transfers(), st.data())
def test_any_flipped_byte_in_any_chunk_is_rejected(transfer, draw):
    data, chunk_size, chunks, _ = transfer
    index = draw.draw(st.integers(0, len(chunks) - 1))
    raw = bytearray(chunks[index])
    pos = draw.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= draw.draw(st.integers(1, 255))
    r = _new(data, chunk_size)
    with pytest.raises(ChunkError):
        r.add(bytes(raw))
    assert r.received == 0


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.integers(1, 300), st.data())
def test_forged_chunks_never_yield_wrong_bytes(data, chunk_size, draw):
    # A forger can make self-consistent chunks under our sha256; assemble must refuse them.
    other = draw.draw(st.binary(min_size=len(data), max_size=len(data)))
    assume(other != data)
    sha = hashlib.sha256(data).hexdigest()
    r = _new(data, chunk_size)
    for raw in split_model(other, chunk_size=chunk_size):
        forged = bytearray(raw)
        forged[8:40] = bytes.fromhex(sha)
        body = bytes(forged[:56]) + bytes(forged[88:])
        forged[56:88] = hashlib.sha256(body).digest()
        r.add(bytes(forged))
    with pytest.raises(IntegrityError):
        r.assemble()
    assert r.received == 0


@pytest.fixture(scope="module")
def envelope(signing_key):
    return sign_manifest(make_manifest(), signing_key)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_flipped_byte_in_the_manifest_envelope_is_refused(envelope, trusted, draw):
    pos = draw.draw(st.integers(0, len(envelope) - 1))
    raw = bytearray(envelope)
    raw[pos] ^= draw.draw(st.integers(1, 255))
    with pytest.raises(ManifestError):
        verify_manifest(
            bytes(raw),
            trusted_keys=trusted,
            device_id="pi-01",
            groups=[],
            current_version=0,
            now=NOW,
        )


def test_every_single_bit_flip_in_the_envelope_is_refused(envelope, trusted):
    # Exhaustive over positions (one bit each), complementing the random property above.
    for pos in range(len(envelope)):
        raw = bytearray(envelope)
        raw[pos] ^= 1 << (pos % 8)
        with pytest.raises(ManifestError):
            verify_manifest(
                bytes(raw), trusted_keys=trusted, device_id="pi-01", groups=[],
                current_version=0, now=NOW,
            )  # fmt: skip


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
VALID = [
    encode(Status(device_id="d", online=True)),
    encode(ChunkRequest(device_id="d", sha256="a" * 64, indexes=[1])),
    encode(
        PredictionRecord(
            device_id="d",
            boot_id="b",
            seq=1,
            label="7",
            score=0.5,
            latency_ms=1.0,
            model_name="m",
            model_version=1,
            ts=1.0,
        )
    ),
    *split_model(b"model bytes", chunk_size=4),
]


@st.composite
def hostile_bytes(draw):
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=400))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    base = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        if base:
            base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
    if kind == 3:
        base = base[: draw(st.integers(0, len(base)))]
    return bytes(base)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KINDS), hostile_bytes())
def test_decoding_arbitrary_bytes_raises_only_decode_error(kind, data):
    with contextlib.suppress(DecodeError):
        decode_payload(kind, data)


def test_decode_payload_accepts_valid_payloads(envelope):
    assert decode_payload(STATUS, VALID[0]) == Status(device_id="d", online=True)
    assert decode_payload(CHUNK, VALID[3]).payload == b"mode"
    assert decode_payload(DESIRED_GROUP, envelope).key_id
    with pytest.raises(DecodeError):
        decode_payload("nonsense", b"{}")


ids = st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z")


@settings(max_examples=100, deadline=None)
@given(ids, ids, st.from_regex(r"\A[0-9a-f]{64}\Z"), st.integers(0, 2**32 - 1))
def test_every_built_topic_parses_back(device_id, group, sha, index):
    t = Topics("fleet/x")
    assert t.parse(t.predictions_ack(device_id)) == ParsedTopic(
        "predictions_ack", device_id=device_id
    )
    assert t.parse(t.desired_group(group)) == ParsedTopic("desired_group", group=group)
    assert t.parse(t.chunk(sha, index)) == ParsedTopic("chunk", sha256=sha, index=index)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120) | st.lists(st.sampled_from(["fleet", "x", "devices", "models",
       "groups", "chunks", "status", "ack", "predictions", "+", "#", "", "0", "01", "a" * 64]),
       max_size=7).map("/".join))  # fmt: skip
def test_parsing_arbitrary_topics_raises_only_topic_error(topic):
    with contextlib.suppress(TopicError):
        parsed = Topics("fleet/x").parse(topic)
        assert topic.startswith("fleet/x/")
        assert parsed.kind
