"""The exception root shared by every edgefleet package, and the protocol's error branch.

Tree (each package adds its own branch under ``EdgefleetError``)::

    EdgefleetError
    ├── ProtocolError                 (edgefleet.shared) wire protocol violations
    │   ├── DecodeError               untrusted bytes could not be decoded or validated
    │   ├── TopicError                a bad device id, group name, prefix or topic
    │   ├── KeyFormatError            a PEM file is not an Ed25519 key
    │   ├── ChunkError                a chunk does not belong to the transfer (.reason)
    │   │   ├── MalformedChunkError   not a self-consistent chunk (also a DecodeError)
    │   │   └── IntegrityError        the whole file (or a stored chunk) fails its sha256
    │   └── ManifestError             a manifest is refused (.reason, one code per subclass)
    │       ├── MalformedManifestError    "malformed" (also a DecodeError)
    │       ├── UnknownKeyError           "unknown_key"
    │       ├── BadSignatureError         "bad_signature"
    │       ├── NotTargetedError          "not_targeted"
    │       ├── ExpiredError              "expired"
    │       ├── RollbackError             "rollback"
    │       ├── AcceleratorError          "accelerator"
    │       ├── TooLargeError             "too_large"
    │       ├── TooManyChunksError        "too_many_chunks"
    │       └── TooManyOutputsError       "too_many_outputs"
    ├── BrokerUrlError                a broker URL is not mqtt(s)://HOST[:PORT] (also a ValueError)
    ├── InputError                    an input image cannot be shaped into the model's input
    ├── ModelFormatError              a .tflite file or its metadata is unreadable
    ├── HostError                     (edgefleet.host.errors)
    └── DeviceError                   (edgefleet.device.errors)

The ``reason`` codes are part of the wire contract: a device reports them verbatim in its
``reported`` state (see docs/protocol.md).
"""

from __future__ import annotations

from typing import ClassVar


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose."""


class ProtocolError(EdgefleetError):
    """A message, topic, manifest or chunk breaks the wire protocol."""


class DecodeError(ProtocolError):
    """Untrusted bytes could not be decoded into the expected message."""


class TopicError(ProtocolError):
    """A device id, group name, prefix or topic is not valid in the topic scheme."""


class KeyFormatError(ProtocolError):
    """A PEM blob is not an (unencrypted) Ed25519 private or public key."""


class ChunkError(ProtocolError):
    """A chunk does not belong to the transfer being reassembled.

    Attributes:
        reason: Machine-readable code, e.g. ``"wrong_model"``, ``"bad_hash"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class MalformedChunkError(ChunkError, DecodeError):
    """The bytes are not an edgefleet chunk (short, bad magic, unknown format version)."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message, reason=reason)


class IntegrityError(ChunkError):
    """The reassembled file, or a chunk read back from the store, fails its sha256.

    Attributes:
        indexes: Chunk indexes that were discarded and must be fetched again.
    """

    def __init__(self, message: str, *, indexes: tuple[int, ...] = ()) -> None:
        super().__init__(message, reason="integrity")
        self.indexes = indexes


class ManifestError(ProtocolError):
    """A manifest was refused; ``reason`` is the code a device reports."""

    reason: ClassVar[str] = "malformed"


class MalformedManifestError(ManifestError, DecodeError):
    """The envelope or the signed manifest is not well-formed."""

    reason = "malformed"


class UnknownKeyError(ManifestError):
    """The manifest names a signing key the device does not trust."""

    reason = "unknown_key"


class BadSignatureError(ManifestError):
    """The Ed25519 signature does not match the signed bytes."""

    reason = "bad_signature"


class NotTargetedError(ManifestError):
    """The manifest targets neither this device nor any of its groups."""

    reason = "not_targeted"


class ExpiredError(ManifestError):
    """The manifest's expiry lies in the device's (effective) past."""

    reason = "expired"


class RollbackError(ManifestError):
    """The manifest's version is not greater than the device's current version."""

    reason = "rollback"


class AcceleratorError(ManifestError):
    """No model variant in the manifest runs on the device's accelerators."""

    reason = "accelerator"


class TooLargeError(ManifestError):
    """The model is larger than the device accepts."""

    reason = "too_large"


class TooManyChunksError(ManifestError):
    """The model is cut into more chunks, or smaller ones, than the device accepts."""

    reason = "too_many_chunks"


class TooManyOutputsError(ManifestError):
    """The model has more outputs, or the manifest more labels, than the device accepts."""

    reason = "too_many_outputs"


class BrokerUrlError(EdgefleetError, ValueError):
    """A broker URL is not ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``.

    Also a ValueError, so a pydantic validator that parses a URL turns it into an ordinary
    validation error naming the setting.
    """


class InputError(EdgefleetError):
    """An input image or array cannot be read, decoded or shaped into the model's input."""


class ModelFormatError(EdgefleetError):
    """A ``.tflite`` file is not a readable TFLite flatbuffer, or its metadata is invalid."""
