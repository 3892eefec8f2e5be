"""Fixtures for the protocol tests: a real Ed25519 key pair and a valid manifest."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, key_id_for
from edgefleet.shared.spec import PreprocessSpec, TensorSpec

NOW = 1_800_000_000
MODEL = bytes(range(256)) * 1000  # 256000 bytes: 2 default-size chunks


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def trusted(signing_key):
    pub = signing_key.public_key()
    return {key_id_for(pub): pub}


def make_manifest(**changes) -> Manifest:
    fields = {
        "name": "mnist_convnet",
        "version": 5,
        "created_at": NOW - 60,
        "expires_at": NOW + 86_400,
        "targets": Targets(devices=["pi-01"], groups=["field"]),
        "variants": [ModelVariant.for_bytes(MODEL, accelerator="cpu")],
        "mode": "int8",
        "input": TensorSpec(shape=(1, 28, 28, 1), dtype="int8", scale=0.0039, zero_point=-128),
        "output": TensorSpec(shape=(1, 10), dtype="int8", scale=0.00390625, zero_point=-128),
        "preprocess": PreprocessSpec(height=28, width=28),
        "labels": [str(i) for i in range(10)],
    }
    fields.update(changes)
    return Manifest(**fields)
