"""Message models: round trips, validation, and a decode that only raises DecodeError."""

from __future__ import annotations

import json

import pytest

from edgefleet.shared.errors import DecodeError
from edgefleet.shared.messages import (
    MAX_BATCH_RECORDS,
    Ack,
    ChunkRequest,
    ImageMessage,
    PredictionBatch,
    PredictionRecord,
    Reported,
    Status,
    TopK,
    UpdateState,
    batch_payload,
    decode,
    decode_prediction_message,
    decode_predictions,
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


def _rec(seq: int, device: str = "pi-01") -> PredictionRecord:
    return PredictionRecord(
        device_id=device, boot_id="b1", seq=seq, source=f"s{seq}.png", label="7",
        score=0.5, latency_ms=0.3, model_name="m", model_version=1, ts=1.7e9,
    )  # fmt: skip


def test_batch_payload_is_the_encoded_prediction_batch():
    records = [_rec(1), _rec(2), _rec(3)]
    raw = batch_payload([encode(r) for r in records])
    assert raw == encode(PredictionBatch(records=records))
    assert decode_predictions(raw) == records
    assert isinstance(decode_prediction_message(raw), PredictionBatch)


def test_one_record_is_sent_and_read_as_a_plain_record():
    raw = batch_payload([encode(_rec(5))])
    assert raw == encode(_rec(5))
    assert decode(PredictionRecord, raw) == _rec(5)  # what an older host reads
    assert decode_predictions(raw) == [_rec(5)]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":1,"records":[]}',
        b'{"v":2,"records":[' + encode(_rec(1)) + b"]}",
        b'{"v":1,"records":[' + encode(_rec(1)) + b',{"v":1,"seq":2}]}',
        b'{"v":1,"records":[' + encode(_rec(1)) + b'],"extra":1}',
        b'{"v":1,"records":' + encode(_rec(1)) + b"}",
        b'{"v":1,"records":[' + b",".join([encode(_rec(1))] * (MAX_BATCH_RECORDS + 1)) + b"]}",
        b"[" + encode(_rec(1)) + b"]",
        b"\xff",
        b"[" * 100_000,
        b"",
    ],
)
def test_bad_prediction_payloads_are_refused_whole(payload):
    with pytest.raises(DecodeError):
        decode_predictions(payload)


def test_prediction_payload_size_cap_applies_before_parsing():
    with pytest.raises(DecodeError, match="exceeds"):
        decode_predictions(b" " * (1_048_576 + 1))
