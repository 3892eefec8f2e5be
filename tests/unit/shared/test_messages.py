"""Message models: round trips, validation, and a decode that only raises DecodeError."""

from __future__ import annotations

import json

import pytest

from edgefleet.shared.errors import DecodeError
from edgefleet.shared.messages import (
    Ack,
    ChunkRequest,
    ImageMessage,
    PredictionRecord,
    Reported,
    Status,
    TopK,
    UpdateState,
    decode,
    encode,
)

SHA = "0f" * 32

EXAMPLES = [
    Status(device_id="pi-01", online=False),
    Status(
        device_id="pi-01",
        online=True,
        agent_version="0.1.0",
        boot_id="b0",
        groups=["field", "north"],
        runtime="ai_edge_litert",
        runtime_version="2.3.0",
        accelerator="cpu",
        accelerator_note="no libedgetpu",
        model_name="mnist",
        model_version=3,
        inference_count=10,
        latency_p50_ms=0.5,
        latency_p95_ms=1.5,
        outbox_depth=0,
        dropped=0,
        uptime_s=12.5,
        rss_bytes=10_000_000,
        cpu_temp_c=48.2,
        ts=1.7e9,
    ),
    Reported(device_id="pi-01", state=UpdateState.DOWNLOADING, version=4, progress=0.4, sha256=SHA),
    Reported(
        device_id="pi-01",
        state=UpdateState.FAILED,
        step="health_check",
        reason="health_check",
        message="interpreter crashed with signal 11",
        active_version=3,
    ),
    PredictionRecord(
        device_id="pi-01",
        boot_id="abc123",
        seq=0,
        source="/scans/a.png",
        label="7",
        score=0.93,
        topk=[TopK(label="7", score=0.93), TopK(label="1", score=0.04)],
        latency_ms=0.8,
        model_name="mnist",
        model_version=3,
        ts=1.7e9,
    ),
    Reported(device_id="pi-01", state=UpdateState.REJECTED, reason="rollback", version=2),
    Reported(device_id="pi-01", state=UpdateState.REJECTED, step="verifying", reason="expired"),
    Ack(device_id="pi-01", boot_id="abc123", seqs=[0, 1, 2]),
    ChunkRequest(device_id="pi-01", sha256=SHA, indexes=[3, 9]),
    ImageMessage.from_bytes(name="a.png", format="png", data=b"\x89PNG..."),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    raw = encode(msg)
    assert decode(type(msg), raw) == msg
    assert json.loads(raw)["v"] == 1


def test_encode_is_compact_and_omits_none():
    raw = encode(Status(device_id="d", online=False))
    assert raw == b'{"v":1,"device_id":"d","online":false}'


def test_image_data_round_trips():
    msg = ImageMessage.from_bytes(name="x", format="npy", data=bytes(range(256)))
    assert decode(ImageMessage, encode(msg)).data() == bytes(range(256))


def test_image_bad_base64_is_decode_error():
    msg = ImageMessage(name="x", format="png", data_b64="***")
    with pytest.raises(DecodeError):
        msg.data()


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (Status, b'{"device_id":"d","online":true,"extra":1}'),
        (Status, b'{"device_id":"a/b","online":true}'),
        (Status, b'{"device_id":"d","online":"yes"}'),
        (Status, b'{"v":2,"device_id":"d","online":true}'),
        (Reported, b'{"device_id":"d","state":"sleeping"}'),
        (Reported, b'{"device_id":"d","state":"idle","progress":1.5}'),
        (Reported, b'{"device_id":"d","state":"rejected"}'),
        (Reported, b'{"device_id":"d","state":"rejected","reason":"integrity"}'),
        (Reported, b'{"device_id":"d","state":"rejected","reason":"expired","step":"activating"}'),
        (Reported, b'{"device_id":"d","state":"failed","reason":"integrity"}'),
        (Reported, b'{"device_id":"d","state":"failed","step":"verifying","reason":"expired"}'),
        (Reported, b'{"device_id":"d","state":"active","reason":"rollback"}'),
        (PredictionRecord, b'{"device_id":"d"}'),
        (ChunkRequest, b'{"device_id":"d","sha256":"' + SHA.encode() + b'","indexes":[]}'),
        (ChunkRequest, b'{"device_id":"d","sha256":"' + SHA.encode() + b'","indexes":[-1]}'),
        (Ack, b'{"device_id":"d","boot_id":"b","seqs":[NaN]}'),
        (TopK, b'{"label":"x","score":Infinity}'),
        (Status, b"\xff\xfe"),
        (Status, b"[" * 100_000),
        (Status, b""),
        (Status, b"null"),
    ],
)
def test_invalid_payloads_raise_decode_error(model, payload):
    with pytest.raises(DecodeError):
        decode(model, payload)


def test_size_cap_applies_before_parsing():
    raw = encode(Status(device_id="d", online=True))
    with pytest.raises(DecodeError, match="exceeds"):
        decode(Status, raw, max_bytes=len(raw) - 1)
    assert decode(Status, raw, max_bytes=len(raw)).online


def test_non_bytes_is_decode_error():
    with pytest.raises(DecodeError):
        decode(Status, "{}")  # type: ignore[arg-type]


def test_update_state_values_are_the_documented_codes():
    assert [s.value for s in UpdateState] == [
        "idle", "downloading", "verifying", "health_check",
        "activating", "active", "rejected", "failed",
    ]  # fmt: skip
