"""docs/protocol.md stays true: its test vectors and JSON examples match the implementation."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from edgefleet.shared.chunks import HEADER_SIZE, split_model
from edgefleet.shared.errors import DecodeError, ExpiredError, RollbackError
from edgefleet.shared.manifest import (
    Manifest,
    ModelVariant,
    Targets,
    canonical_bytes,
    key_id_for,
    load_public_key,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.messages import (
    Ack,
    ChunkRequest,
    DeviceLog,
    ImageMessage,
    InputThumbnail,
    PredictionBatch,
    PredictionRecord,
    Reported,
    Status,
    decode,
    encode,
)
from edgefleet.shared.spec import PreprocessSpec, TensorSpec

DOC = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
MODEL = b"edgefleet test vector model bytes\n" * 3
MANIFEST = Manifest(
    name="mnist_convnet",
    version=7,
    created_at=1_800_000_000,
    expires_at=1_802_592_000,
    targets=Targets(groups=["field"]),
    variants=[ModelVariant.for_bytes(MODEL, accelerator="cpu", chunk_size=64)],
    mode="int8",
    input=TensorSpec(
        name="input",
        shape=(1, 28, 28, 1),
        dtype="int8",
        scale=0.003921568859368563,
        zero_point=-128,
    ),
    output=TensorSpec(
        name="output", shape=(1, 10), dtype="int8", scale=0.00390625, zero_point=-128
    ),
    preprocess=PreprocessSpec(height=28, width=28),
    labels=[str(i) for i in range(10)],
)


def vector(name: str) -> str:
    match = re.search(rf"<!-- vector:{name} -->\s*(?:```\n(.*?)```|`([^`]*)`)", DOC, re.DOTALL)
    assert match, f"vector {name} missing from docs/protocol.md"
    return (match.group(1) or match.group(2)).strip()


def test_key_vectors():
    pub = load_public_key(vector("public-key").encode() + b"\n")
    assert key_id_for(pub) == key_id_for(KEY.public_key()) == vector("key-id")


def test_manifest_and_envelope_vectors_are_reproduced():
    signed = MANIFEST.model_copy(update={"key_id": vector("key-id")})
    assert canonical_bytes(signed).decode() == vector("manifest")
    assert sign_manifest(MANIFEST, KEY).decode() == vector("envelope")


def test_envelope_vector_decisions_are_as_documented():
    data = vector("envelope").encode()
    trusted = {key_id_for(KEY.public_key()): KEY.public_key()}
    kwargs = {"trusted_keys": trusted, "device_id": "pi-07", "groups": ["field"]}
    assert verify_manifest(data, current_version=6, now=1_800_000_100, **kwargs).version == 7
    with pytest.raises(ExpiredError):
        verify_manifest(data, current_version=6, now=1_802_592_000, **kwargs)
    with pytest.raises(RollbackError):
        verify_manifest(data, current_version=7, now=1_800_000_100, **kwargs)


def test_chunk_header_vectors():
    headers = [c[:HEADER_SIZE].hex() for c in split_model(MODEL, chunk_size=64)]
    assert headers == vector("chunks").split()


MESSAGE_TYPES = [
    Status,
    Reported,
    PredictionRecord,
    PredictionBatch,
    Ack,
    ChunkRequest,
    ImageMessage,
    DeviceLog,
    InputThumbnail,
]


def test_every_json_example_is_a_valid_message():
    examples = re.findall(r"```json\n(.*?)\n```", DOC, re.DOTALL)
    concrete = [e for e in examples if "<" not in e]
    assert len(concrete) >= 9
    for example in concrete:
        kinds = []
        for model in MESSAGE_TYPES:
            try:
                decode(model, example.encode())
            except DecodeError:
                continue
            kinds.append(model)
        assert len(kinds) == 1, (example, kinds)


def test_input_thumbnail_vector_is_what_the_reference_encodes():
    text = vector("input-thumbnail")
    thumb = decode(InputThumbnail, text.encode())
    assert encode(thumb).decode() == text  # byte for byte: compact, documented key order
    assert (thumb.device_id, thumb.boot_id, thumb.seq) == ("pi-07", "5f2c9a0e41d84b7a", 42)
    image = Image.open(io.BytesIO(base64.b64decode(thumb.data_b64))).convert("RGB")
    assert image.size == (thumb.width, thumb.height) == (2, 2)
    assert [image.getpixel(xy) for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [
        (255, 0, 0),
        (255, 255, 255),
        (255, 255, 255),
        (0, 0, 255),
    ]
    # Never inside a record: a record that carries one is refused, like any unknown field.
    record = {
        "device_id": "pi-07",
        "boot_id": "5f2c9a0e41d84b7a",
        "seq": 42,
        "label": "metal",
        "score": 0.96875,
        "latency_ms": 3.1,
        "model_name": "gpr_convnet",
        "model_version": 8,
        "ts": 1800003602.0,
    }
    decode(PredictionRecord, json.dumps(record).encode())
    old = {**record, "thumbnail": {"format": "png", "data_b64": thumb.data_b64}}
    with pytest.raises(DecodeError, match="thumbnail"):
        decode(PredictionRecord, json.dumps(old).encode())
