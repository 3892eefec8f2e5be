r"""The signed model manifest: what it says, how it is signed (Ed25519), and what a device accepts.

A manifest travels in an envelope::

    {"v":1,"key_id":"<16 hex>","payload":"<base64 of canonical manifest JSON>",
     "signature":"<base64 of Ed25519(b'edgefleet-manifest-v1\\n' + payload bytes)>"}

The verifier checks the signature over the exact payload bytes before it parses them, so a
verifier never re-serializes anything; ``canonical_bytes`` only fixes what a signer emits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from edgefleet.shared.chunklist import MAX_LISTED_CHUNKS, check_chunk_list, check_schema_version
from edgefleet.shared.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNKS, chunk_count
from edgefleet.shared.errors import (
    AcceleratorError,
    BadSignatureError,
    ExpiredError,
    KeyFormatError,
    MalformedManifestError,
    NotTargetedError,
    RollbackError,
    TooLargeError,
    TooManyChunksError,
    TooManyOutputsError,
    UnknownKeyError,
)
from edgefleet.shared.messages import DeviceId, GroupName, Sha256Hex
from edgefleet.shared.shadow import ShadowSpec
from edgefleet.shared.spec import PreprocessSpec, TensorSpec

SIGNING_DOMAIN: Final = b"edgefleet-manifest-v1\n"
MAX_ENVELOPE_BYTES: Final = 256 * 1024
MAX_CHUNK_SIZE: Final = 16 * 2**20
DEFAULT_MAX_MODEL_BYTES: Final = 64 * 2**20
# When a device has several accelerators, the first listed here that has a variant wins.
ACCELERATOR_PREFERENCE: Final = ("edgetpu", "cpu")

Accelerator = Literal["cpu", "edgetpu"]
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Targets(_Strict):
    """Who should install the model: listed devices, members of listed groups, or everyone."""

    devices: list[DeviceId] = Field(default_factory=list, max_length=10_000, description="Ids.")
    groups: list[GroupName] = Field(default_factory=list, max_length=1_000, description="Groups.")
    all_devices: bool = Field(default=False, description="Every device that sees it.")

    def matches(self, device_id: str, groups: Sequence[str]) -> bool:
        """True if the device or one of its groups is targeted."""
        return self.all_devices or device_id in self.devices or bool(set(groups) & set(self.groups))


class ModelVariant(_Strict):
    """One build of the model (CPU int8, or compiled for the Edge TPU) and how it is chunked."""

    accelerator: Accelerator = Field(description="What the device needs to run this variant.")
    sha256: Sha256Hex = Field(description="sha256 of the variant's file, lowercase hex.")
    size: int = Field(ge=1, lt=2**63, description="File size in bytes.")
    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE, ge=1, le=MAX_CHUNK_SIZE, description="Payload bytes per chunk."
    )
    chunk_count: int = Field(ge=1, lt=2**32, description="ceil(size / chunk_size).")
    # Manifest v2 (delta updates, docs/protocol.md 7.5): every content-defined chunk as
    # [sha256, offset, length]; chunk_count is then their number, chunk_size the longest.
    chunks: list[tuple[Sha256Hex, int, int]] | None = Field(
        default=None, max_length=MAX_LISTED_CHUNKS, description="v2: the file's chunks."
    )

    @model_validator(mode="after")
    def _count_matches(self) -> ModelVariant:
        if self.chunks is not None:
            check_chunk_list(self.chunks, self.size, self.chunk_size, self.chunk_count)
        elif self.chunk_count != chunk_count(self.size, self.chunk_size):
            raise ValueError(
                f"chunk_count {self.chunk_count} != ceil({self.size} / {self.chunk_size})"
            )
        return self

    @classmethod
    def for_bytes(
        cls, data: bytes, *, accelerator: Accelerator, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> ModelVariant:
        """Describe a model file: its hash, size and chunking."""
        return cls(
            accelerator=accelerator,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            chunk_size=chunk_size,
            chunk_count=chunk_count(len(data), chunk_size),
        )


class Manifest(_Strict):
    """Everything a device needs to decide whether to install a model and how to run it."""

    v: Literal[1, 2] = Field(default=1, description="Manifest schema version.")
    name: Name = Field(description="Model name, e.g. 'mnist_convnet'.")
    version: int = Field(ge=1, lt=2**63, description="Monotonic per fleet; anti-rollback.")
    created_at: int = Field(ge=0, lt=2**63, description="Unix seconds when signed.")
    expires_at: int = Field(ge=0, lt=2**63, description="Unix seconds after which it is refused.")
    targets: Targets = Field(description="Devices and groups that should install it.")
    variants: list[ModelVariant] = Field(min_length=1, max_length=4, description="Builds.")
    mode: Annotated[str, StringConstraints(max_length=32)] = Field(description="Quantization mode.")
    input: TensorSpec = Field(description="The model's input tensor.")
    output: TensorSpec = Field(description="The model's output tensor.")
    preprocess: PreprocessSpec = Field(description="Image -> input tensor recipe.")
    labels: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        max_length=10_000, description="Class names."
    )
    key_id: KeyId | Literal[""] = Field(
        default="", description="Signer's key id; set by sign_manifest."
    )
    # Set: a shadow candidate, run beside the active model and never activated (left out
    # of the signed bytes when None, so ordinary manifests stay as they were).
    shadow: ShadowSpec | None = Field(default=None, description="Shadow terms, if a shadow.")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        accelerators = [v.accelerator for v in self.variants]
        if len(set(accelerators)) != len(accelerators):
            raise ValueError(f"one variant per accelerator, got {accelerators}")
        if any((v.chunks is not None) != (self.v == 2) for v in self.variants):  # noqa: PLR2004
            raise ValueError("a v2 manifest lists every variant's chunks; a v1 manifest none")
        return self


class SignedEnvelope(_Strict):
    """The retained message on a ``desired`` topic."""

    v: Literal[1] = Field(default=1, description="Envelope schema version.")
    key_id: KeyId = Field(description="Which trusted key verifies the signature.")
    payload: str = Field(max_length=MAX_ENVELOPE_BYTES, description="base64(canonical manifest).")
    signature: str = Field(max_length=128, description="base64(64-byte Ed25519 signature).")


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def canonical_bytes(manifest: Manifest) -> bytes:
    """The exact bytes a signer signs: sorted keys, no whitespace, ASCII-only JSON."""
    obj = manifest.model_dump(mode="json")
    if obj.get("shadow") is None:
        obj.pop("shadow", None)
    for variant in obj["variants"]:
        if variant.get("chunks") is None:
            variant.pop("chunks", None)
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> bytes:
    """Sign a manifest and return the envelope (compact JSON bytes) to publish.

    The manifest's ``key_id`` is filled in from the key if empty.

    Raises:
        MalformedManifestError: ``manifest.key_id`` names a different key.
    """
    kid = key_id_for(private_key.public_key())
    if manifest.key_id not in ("", kid):
        raise MalformedManifestError(
            f"manifest.key_id {manifest.key_id} is not the signing key {kid}"
        )
    payload = canonical_bytes(manifest.model_copy(update={"key_id": kid}))
    signature = private_key.sign(SIGNING_DOMAIN + payload)
    envelope = SignedEnvelope(key_id=kid, payload=_b64(payload), signature=_b64(signature))
    return envelope.model_dump_json().encode()


def decode_envelope(data: bytes) -> SignedEnvelope:
    """Parse the envelope without checking the signature.

    Raises:
        MalformedManifestError: Too large or not an envelope (also a ``DecodeError``).
    """
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedManifestError(
            f"manifest envelope must be bytes of at most {MAX_ENVELOPE_BYTES}"
        )
    try:
        envelope = SignedEnvelope.model_validate_json(bytes(data))
    except (ValidationError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedManifestError(f"not a manifest envelope: {_first_error(exc)}") from exc
    _unb64(envelope.payload)
    _unb64(envelope.signature)
    return envelope


def open_envelope(data: bytes, *, trusted_keys: Mapping[str, Ed25519PublicKey]) -> Manifest:
    """Check the signature and parse the manifest, without any policy check.

    Raises:
        MalformedManifestError: Bad envelope or manifest.
        UnknownKeyError: ``key_id`` not in ``trusted_keys``.
        BadSignatureError: The signature does not verify.
    """
    envelope = decode_envelope(data)
    key = trusted_keys.get(envelope.key_id)
    if key is None:
        raise UnknownKeyError(
            f"manifest signed by unknown key {envelope.key_id}; trusted: {sorted(trusted_keys)}"
        )
    payload, signature = _unb64(envelope.payload), _unb64(envelope.signature)
    try:
        key.verify(signature, SIGNING_DOMAIN + payload)
    except InvalidSignature as exc:
        raise BadSignatureError(f"signature by key {envelope.key_id} does not verify") from exc
    check_schema_version(payload)
    try:
        manifest = Manifest.model_validate_json(payload, strict=True)
    except (ValidationError, ValueError, RecursionError) as exc:
        raise MalformedManifestError(f"signed manifest is invalid: {_first_error(exc)}") from exc
    if manifest.key_id != envelope.key_id:
        raise MalformedManifestError(
            f"manifest key_id {manifest.key_id!r} != envelope {envelope.key_id}"
        )
    return manifest


def verify_manifest(
    data: bytes,
    *,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    device_id: str,
    groups: Sequence[str],
    current_version: int,
    now: float,
    accelerators: Collection[str] = ("cpu",),
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    time_floor: float = 0.0,
    max_chunks: int = MAX_CHUNKS,
    min_chunk_size: int = 1,
    max_outputs: int | None = None,
    max_labels: int | None = None,
    shadow: bool = False,
) -> Manifest:
    """Decide whether a device accepts a manifest; checks run in the documented order.

    Args:
        data: The envelope bytes from a ``desired`` topic.
        trusted_keys: key id -> public key the device trusts.
        device_id: This device.
        groups: The groups it belongs to.
        current_version: Version of the model it runs now (0 if none): anti-rollback.
        now: The device clock (unix seconds).
        accelerators: What it can run: ``"cpu"`` and/or ``"edgetpu"``.
        max_model_bytes: Largest variant it will download.
        time_floor: The persisted lower bound on the true time (``advance_time_floor``);
            expiry is judged at ``max(now, time_floor)`` so a clock that is behind cannot
            revive an expired manifest.
        max_chunks: Most chunks the selected variant may be cut into (the reassembler's
            bound, ``MAX_CHUNKS``, at most).
        min_chunk_size: Smallest ``chunk_size`` of a variant of more than one chunk.
        max_outputs: Most output values (product of the output shape); None: no limit.
        max_labels: Most labels; None: only the schema's limit.
        shadow: True on a shadow topic: only a shadow manifest is accepted; False: a
            shadow manifest is refused (a device never activates a shadow candidate).

    Returns:
        The accepted manifest.

    Raises:
        ManifestError: One subclass per reason, see ``edgefleet.shared.errors``.
    """
    manifest = open_envelope(data, trusted_keys=trusted_keys)
    if (manifest.shadow is not None) != shadow:
        raise MalformedManifestError(
            f"manifest {manifest.name} v{manifest.version} is a shadow candidate: never activated"
            if manifest.shadow is not None
            else f"manifest {manifest.name} v{manifest.version} is not a shadow manifest"
        )
    if not manifest.targets.matches(device_id, groups):
        raise NotTargetedError(
            f"manifest {manifest.name} v{manifest.version} targets neither {device_id} "
            f"nor its groups {list(groups)}"
        )
    effective_now = max(now, time_floor)
    if effective_now >= manifest.expires_at:
        raise ExpiredError(
            f"manifest expired at {manifest.expires_at}; device time is {effective_now:.0f}"
        )
    if manifest.version <= current_version:
        raise RollbackError(
            f"version {manifest.version} is not newer than current {current_version}"
        )
    variant = select_variant(manifest, accelerators)
    if variant.size > max_model_bytes:
        raise TooLargeError(
            f"{variant.accelerator} variant is {variant.size} bytes; limit {max_model_bytes}"
        )
    _check_chunking(variant, max_chunks=min(max_chunks, MAX_CHUNKS), min_chunk_size=min_chunk_size)
    _check_outputs(manifest, max_outputs=max_outputs, max_labels=max_labels)
    return manifest


def _check_chunking(variant: ModelVariant, *, max_chunks: int, min_chunk_size: int) -> None:
    """Check 10: a transfer the device can track (bounded chunk count, sane chunk size)."""
    if variant.chunk_count > max_chunks:
        raise TooManyChunksError(
            f"{variant.accelerator} variant of {variant.size} bytes is cut into "
            f"{variant.chunk_count} chunks of {variant.chunk_size} bytes; the device accepts at "
            f"most {max_chunks} chunks: push it with a larger chunk_size"
        )
    if variant.chunk_count > 1 and variant.chunk_size < min_chunk_size:
        raise TooManyChunksError(
            f"{variant.accelerator} variant uses chunks of {variant.chunk_size} bytes; the device "
            f"accepts at least {min_chunk_size} bytes per chunk: push it with a larger chunk_size"
        )


def _check_outputs(manifest: Manifest, *, max_outputs: int | None, max_labels: int | None) -> None:
    """Check 11: an output the device can label without building millions of strings."""
    outputs = 1
    for dim in manifest.output.shape:
        outputs *= max(int(dim), 0)
    if max_outputs is not None and outputs > max_outputs:
        raise TooManyOutputsError(
            f"model {manifest.name} v{manifest.version} has {outputs} output values "
            f"(shape {list(manifest.output.shape)}); the device accepts at most {max_outputs}"
        )
    if max_labels is not None and len(manifest.labels) > max_labels:
        raise TooManyOutputsError(
            f"model {manifest.name} v{manifest.version} has {len(manifest.labels)} labels; the "
            f"device accepts at most {max_labels}"
        )


def select_variant(manifest: Manifest, accelerators: Collection[str]) -> ModelVariant:
    """Pick the variant to install: Edge TPU if both it and the device have one, else CPU.

    Raises:
        AcceleratorError: No variant runs on ``accelerators``.
    """
    by_accel = {v.accelerator: v for v in manifest.variants}
    for accel in ACCELERATOR_PREFERENCE:
        if accel in accelerators and accel in by_accel:
            return by_accel[accel]
    raise AcceleratorError(f"manifest offers {sorted(by_accel)}; device has {sorted(accelerators)}")


def advance_time_floor(time_floor: float, manifest: Manifest) -> float:
    """The time floor after accepting ``manifest``: its signed ``created_at`` proves the time."""
    return max(time_floor, float(manifest.created_at))


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """Load an unencrypted PEM (PKCS#8) Ed25519 private key.

    Raises:
        KeyFormatError: Not such a key.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError(f"expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) Ed25519 public key.

    Raises:
        KeyFormatError: Not such a key.
    """
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError(f"expected an Ed25519 key, got {type(key).__name__}")
    return key


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (protect the file with permissions)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedManifestError("envelope payload or signature is not valid base64") from exc
    # Only the canonical spelling: unused trailing bits must not let two strings mean one value.
    if _b64(data) != text:
        raise MalformedManifestError("envelope payload or signature is not canonical base64")
    return data


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}"
    return f"{type(exc).__name__}: {exc}"
