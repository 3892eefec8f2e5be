"""Manifest v2 (delta transfer): docs/protocol.md's vector, versions old and new agents take."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_protocol_doc import KEY, MANIFEST, MODEL, vector

from edgefleet.shared.chunklist import bytes_to_send, check_chunk_list
from edgefleet.shared.errors import MalformedManifestError
from edgefleet.shared.manifest import (
    SIGNING_DOMAIN,
    Manifest,
    SignedEnvelope,
    canonical_bytes,
    key_id_for,
    open_envelope,
    sign_manifest,
)

SPANS = ((0, 40), (40, 40), (80, 22))


def v2_manifest() -> Manifest:
    chunks = [(hashlib.sha256(MODEL[o : o + n]).hexdigest(), o, n) for o, n in SPANS]
    variant = MANIFEST.variants[0].model_copy(
        update={"chunks": chunks, "chunk_size": 40, "chunk_count": 3}
    )
    data = MANIFEST.model_copy(update={"v": 2, "variants": [variant]}).model_dump()
    return Manifest.model_validate(data)


def _keys() -> dict:
    return {key_id_for(KEY.public_key()): KEY.public_key()}


def _sign_raw(obj: dict, key: Ed25519PrivateKey = KEY) -> bytes:
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    sig = key.sign(SIGNING_DOMAIN + payload)
    import base64  # noqa: PLC0415

    env = SignedEnvelope(
        key_id=key_id_for(key.public_key()),
        payload=base64.b64encode(payload).decode(),
        signature=base64.b64encode(sig).decode(),
    )
    return env.model_dump_json().encode()


def test_the_v2_vector_is_reproduced_and_opens():
    signed = v2_manifest().model_copy(update={"key_id": vector("key-id")})
    assert canonical_bytes(signed).decode() == vector("manifest-v2")
    opened = open_envelope(sign_manifest(v2_manifest(), KEY), trusted_keys=_keys())
    assert opened.v == 2
    assert opened.variants[0].chunks == [tuple(c) for c in v2_manifest().variants[0].chunks]


def test_a_v1_manifest_keeps_its_bytes_and_is_still_taken():
    # no "chunks" key appears in v1 canonical bytes: v1 signatures stay what they were
    assert b"chunks" not in canonical_bytes(MANIFEST).replace(b"chunk_count", b"").replace(
        b"chunk_size", b""
    )
    assert open_envelope(sign_manifest(MANIFEST, KEY), trusted_keys=_keys()).v == 1


def test_a_newer_schema_is_refused_saying_to_upgrade_the_agent():
    obj = json.loads(canonical_bytes(v2_manifest().model_copy(update={"key_id": _kid()})))
    obj["v"] = 3
    with pytest.raises(MalformedManifestError, match=r"schema v3 .* upgrade the agent"):
        open_envelope(_sign_raw(obj), trusted_keys=_keys())


def _kid() -> str:
    return key_id_for(KEY.public_key())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.update(v=1), "v1 manifest none"),  # v1 with a chunk list
        (lambda m: m["variants"][0]["chunks"].pop(), "cover"),  # gap at the end
        (lambda m: m["variants"][0]["chunks"][1].__setitem__(1, 41), "expected offset 40"),
        (lambda m: m["variants"][0].update(chunk_count=2), "number of chunks"),
    ],
)
def test_inconsistent_chunk_lists_are_malformed(change, why):
    obj = json.loads(canonical_bytes(v2_manifest().model_copy(update={"key_id": _kid()})))
    change(obj)
    with pytest.raises(MalformedManifestError, match=why):
        open_envelope(_sign_raw(obj), trusted_keys=_keys())


def test_v2_without_chunk_lists_is_malformed():
    obj = json.loads(canonical_bytes(MANIFEST.model_copy(update={"key_id": _kid()})))
    obj["v"] = 2
    with pytest.raises(MalformedManifestError, match="lists every variant's chunks"):
        open_envelope(_sign_raw(obj), trusted_keys=_keys())


def test_check_chunk_list_and_bytes_to_send():
    chunks = v2_manifest().variants[0].chunks or []
    check_chunk_list(chunks, 102, 40, 3)
    with pytest.raises(ValueError, match="longest"):
        check_chunk_list(chunks, 102, 64, 3)
    assert bytes_to_send(chunks, [chunks[0][0]]) == 62
    assert bytes_to_send(chunks, []) == 102
    # a chunk listed twice is sent once
    assert bytes_to_send([*chunks, chunks[2]], []) == 102
