"""Manifest signing and the device's acceptance rules, with a real Ed25519 key pair."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import MODEL, NOW, make_manifest
from edgefleet.shared.errors import (
    AcceleratorError,
    BadSignatureError,
    DecodeError,
    ExpiredError,
    KeyFormatError,
    MalformedManifestError,
    ManifestError,
    NotTargetedError,
    RollbackError,
    TooLargeError,
    UnknownKeyError,
)
from edgefleet.shared.manifest import (
    SIGNING_DOMAIN,
    Manifest,
    ModelVariant,
    Targets,
    advance_time_floor,
    canonical_bytes,
    key_id_for,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    select_variant,
    sign_manifest,
    verify_manifest,
)


def verify(data, trusted, **overrides):
    kwargs = {
        "trusted_keys": trusted,
        "device_id": "pi-01",
        "groups": [],
        "current_version": 4,
        "now": NOW,
    }
    kwargs.update(overrides)
    return verify_manifest(data, **kwargs)


def test_accepts_a_valid_manifest(signing_key, trusted):
    manifest = make_manifest()
    accepted = verify(sign_manifest(manifest, signing_key), trusted)
    assert accepted == manifest.model_copy(update={"key_id": key_id_for(signing_key.public_key())})
    assert accepted.variants[0].size == len(MODEL)
    assert accepted.variants[0].chunk_count == 2


def test_envelope_signs_domain_separated_canonical_bytes(signing_key):
    manifest = make_manifest()
    env = json.loads(sign_manifest(manifest, signing_key))
    payload = base64.b64decode(env["payload"])
    signed = manifest.model_copy(update={"key_id": env["key_id"]})
    assert payload == canonical_bytes(signed)
    assert (
        payload
        == json.dumps(
            json.loads(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()
    )
    signing_key.public_key().verify(base64.b64decode(env["signature"]), SIGNING_DOMAIN + payload)


def test_unknown_key(signing_key):
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(UnknownKeyError) as info:
        verify(sign_manifest(make_manifest(), signing_key), {key_id_for(other): other})
    assert info.value.reason == "unknown_key"


def test_bad_signature_from_a_key_claiming_a_trusted_id(signing_key, trusted):
    attacker = Ed25519PrivateKey.generate()
    env = json.loads(sign_manifest(make_manifest(), attacker))
    env["key_id"] = next(iter(trusted))
    with pytest.raises(BadSignatureError) as info:
        verify(json.dumps(env).encode(), trusted)
    assert info.value.reason == "bad_signature"


def test_tampered_payload_is_bad_signature(signing_key, trusted):
    env = json.loads(sign_manifest(make_manifest(), signing_key))
    payload = base64.b64decode(env["payload"]).replace(b'"version":5', b'"version":9')
    env["payload"] = base64.b64encode(payload).decode()
    with pytest.raises(BadSignatureError):
        verify(json.dumps(env).encode(), trusted)


def test_expired(signing_key, trusted):
    data = sign_manifest(make_manifest(expires_at=NOW), signing_key)
    with pytest.raises(ExpiredError) as info:
        verify(data, trusted)
    assert info.value.reason == "expired"


def test_clock_behind_still_refuses_manifest_expired_before_a_known_time(signing_key, trusted):
    # The device accepted a manifest created at NOW, so NOW is a proven lower bound on time.
    newer = make_manifest(created_at=NOW, expires_at=NOW + 100)
    floor = advance_time_floor(0.0, verify(sign_manifest(newer, signing_key), trusted))
    assert floor == NOW
    # An old (replayed) manifest that expired before that, seen with a clock a year behind.
    old = sign_manifest(make_manifest(created_at=NOW - 1000, expires_at=NOW - 10), signing_key)
    behind = NOW - 365 * 86_400
    with pytest.raises(ExpiredError):
        verify(old, trusted, now=behind, time_floor=floor)
    # Without the floor the wrong clock would have let it through.
    assert verify(old, trusted, now=behind).version == 5


def test_clock_behind_accepts_manifest_created_in_its_future(signing_key, trusted):
    future = make_manifest(created_at=NOW + 30 * 86_400, expires_at=NOW + 60 * 86_400)
    assert verify(sign_manifest(future, signing_key), trusted, now=NOW).created_at > NOW


def test_time_floor_never_goes_back():
    assert advance_time_floor(NOW + 5.0, make_manifest(created_at=NOW)) == NOW + 5.0


@pytest.mark.parametrize("current", [5, 6, 1000])
def test_rollback(signing_key, trusted, current):
    with pytest.raises(RollbackError) as info:
        verify(sign_manifest(make_manifest(), signing_key), trusted, current_version=current)
    assert info.value.reason == "rollback"


@pytest.mark.parametrize(
    ("targets", "groups", "ok"),
    [
        (Targets(devices=["pi-01"]), [], True),
        (Targets(groups=["field"]), ["lab", "field"], True),
        (Targets(all_devices=True), [], True),
        (Targets(devices=["pi-02"], groups=["lab"]), ["field"], False),
        (Targets(), ["field"], False),
    ],
)
def test_targeting(signing_key, trusted, targets, groups, ok):
    data = sign_manifest(make_manifest(targets=targets), signing_key)
    if ok:
        assert verify(data, trusted, groups=groups).targets == targets
    else:
        with pytest.raises(NotTargetedError) as info:
            verify(data, trusted, groups=groups)
        assert info.value.reason == "not_targeted"


def test_accelerator_not_available(signing_key, trusted):
    tpu = ModelVariant.for_bytes(MODEL, accelerator="edgetpu")
    data = sign_manifest(make_manifest(variants=[tpu]), signing_key)
    with pytest.raises(AcceleratorError) as info:
        verify(data, trusted, accelerators=("cpu",))
    assert info.value.reason == "accelerator"
    assert verify(data, trusted, accelerators=("cpu", "edgetpu")).variants == [tpu]


def test_select_variant_prefers_edgetpu_when_present():
    cpu = ModelVariant.for_bytes(MODEL, accelerator="cpu")
    tpu = ModelVariant.for_bytes(MODEL + b"x", accelerator="edgetpu")
    manifest = make_manifest(variants=[cpu, tpu])
    assert select_variant(manifest, ["cpu", "edgetpu"]) == tpu
    assert select_variant(manifest, ["cpu"]) == cpu


def test_too_large(signing_key, trusted):
    data = sign_manifest(make_manifest(), signing_key)
    with pytest.raises(TooLargeError) as info:
        verify(data, trusted, max_model_bytes=len(MODEL) - 1)
    assert info.value.reason == "too_large"
    assert verify(data, trusted, max_model_bytes=len(MODEL)).version == 5


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"{}",
        b'{"v":1,"key_id":"0123456789abcdef","payload":"!!","signature":"AA=="}',
        b"x" * 300_000,
        b"[" * 10_000,
    ],
)
def test_malformed_envelopes(trusted, data):
    with pytest.raises(MalformedManifestError) as info:
        verify(data, trusted)
    assert info.value.reason == "malformed"
    assert isinstance(info.value, DecodeError)


def test_signed_but_invalid_manifest_is_malformed(signing_key, trusted):
    kid = key_id_for(signing_key.public_key())
    payload = b'{"name":"x"}'
    env = {
        "v": 1,
        "key_id": kid,
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(signing_key.sign(SIGNING_DOMAIN + payload)).decode(),
    }
    with pytest.raises(MalformedManifestError):
        verify(json.dumps(env).encode(), trusted)


def test_sign_refuses_a_manifest_naming_another_key(signing_key):
    with pytest.raises(MalformedManifestError):
        sign_manifest(make_manifest(key_id="0" * 16), signing_key)


@pytest.mark.parametrize(
    "changes",
    [
        {"expires_at": NOW - 60},
        {"version": 0},
        {"variants": []},
        {"name": "a/b"},
    ],
)
def test_manifest_model_rejects_inconsistent_fields(changes):
    with pytest.raises(ValueError, match="validation error"):
        make_manifest(**changes)


def test_variant_chunk_count_must_match():
    good = ModelVariant.for_bytes(MODEL, accelerator="cpu", chunk_size=1000)
    assert good.chunk_count == 256
    with pytest.raises(ValueError, match="chunk_count"):
        ModelVariant(**{**good.model_dump(), "chunk_count": 255})


def test_every_reason_is_a_manifest_error_with_distinct_code():
    classes = [
        MalformedManifestError, UnknownKeyError, BadSignatureError, NotTargetedError,
        ExpiredError, RollbackError, AcceleratorError, TooLargeError,
    ]  # fmt: skip
    assert all(issubclass(c, ManifestError) for c in classes)
    assert len({c.reason for c in classes}) == len(classes)


def test_pem_round_trip_and_wrong_key_type(signing_key):
    assert key_id_for(load_private_key(private_key_pem(signing_key)).public_key()) == key_id_for(
        signing_key.public_key()
    )
    pub = load_public_key(public_key_pem(signing_key.public_key()))
    assert key_id_for(pub) == key_id_for(signing_key.public_key())
    with pytest.raises(KeyFormatError):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFormatError):
        load_public_key(private_key_pem(signing_key))


def test_manifest_json_round_trip():
    manifest = make_manifest()
    assert Manifest.model_validate_json(canonical_bytes(manifest)) == manifest


def test_non_canonical_base64_is_malformed(signing_key, trusted):
    # 64 signature bytes end in one byte: "XY==", where Y carries 4 bits nobody reads.
    env = json.loads(sign_manifest(make_manifest(), signing_key))
    sig = env["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(sig[-3])
    env["signature"] = sig[:-3] + alphabet[last ^ 0b0001] + "=="
    assert base64.b64decode(env["signature"]) == base64.b64decode(sig)
    with pytest.raises(MalformedManifestError, match="canonical"):
        verify(json.dumps(env).encode(), trusted)
