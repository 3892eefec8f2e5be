"""Small manifests (not signed) for unit tests that need one without building a model."""

from __future__ import annotations

from edgefleet.shared.manifest import Manifest, ModelVariant, Targets
from edgefleet.shared.shadow import ShadowSpec
from edgefleet.shared.spec import PreprocessSpec, TensorSpec


def shadow_manifest(*, version: int, sample: float) -> Manifest:
    """A 4x4 int8, two-label manifest named ``cand`` for group ``g``, run as a shadow."""
    return Manifest(
        name="cand",
        version=version,
        created_at=1,
        expires_at=2,
        targets=Targets(groups=["g"]),
        variants=[ModelVariant.for_bytes(b"x" * 10, accelerator="cpu")],
        mode="int8",
        input=TensorSpec(shape=(1, 4, 4, 1), dtype="int8"),
        output=TensorSpec(shape=(1, 2), dtype="int8"),
        preprocess=PreprocessSpec(height=4, width=4),
        labels=["a", "b"],
        shadow=ShadowSpec(sample=sample),
    )


def manifest(version: int, data: bytes) -> Manifest:
    """A two-label int8 manifest named ``m`` for ``data``, no targets: for registry/store tests."""
    spec = TensorSpec(shape=(1, 2), dtype="int8")
    return Manifest(
        name="m",
        version=version,
        created_at=1,
        expires_at=2,
        targets=Targets(),
        variants=[ModelVariant.for_bytes(data, accelerator="cpu")],
        mode="int8",
        input=spec,
        output=spec,
        preprocess=PreprocessSpec(height=1, width=1),
        labels=["a", "b"],
    )
