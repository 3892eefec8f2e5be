"""One entry point for untrusted payloads: decode whatever arrived on an edgefleet topic.

``decode_payload`` maps a topic kind (``ParsedTopic.kind``) to its payload decoder; any
problem with the bytes is a ``DecodeError`` (``MalformedManifestError`` and
``MalformedChunkError`` are ``DecodeError`` subclasses). Signature and policy checks on
manifests stay in ``edgefleet.shared.manifest.verify_manifest``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Final

from pydantic import BaseModel

from edgefleet.shared import topics
from edgefleet.shared.chunks import MAX_MESSAGE_BYTES as MAX_CHUNK_MESSAGE_BYTES
from edgefleet.shared.chunks import Chunk, decode_chunk
from edgefleet.shared.errors import DecodeError, MalformedChunkError
from edgefleet.shared.manifest import decode_envelope
from edgefleet.shared.messages import (
    MAX_IMAGE_B64,
    MAX_MESSAGE_BYTES,
    Ack,
    ChunkRequest,
    DeviceLog,
    ImageMessage,
    InputThumbnail,
    Reported,
    Status,
    decode,
    decode_prediction_message,
)

# A message model (including the manifest's SignedEnvelope) or a decoded chunk.
Payload = BaseModel | Chunk

_MESSAGE_KINDS: Final[dict[str, type[BaseModel]]] = {
    topics.STATUS: Status,
    topics.REPORTED: Reported,
    topics.CHUNK_REQUEST: ChunkRequest,
    topics.PREDICTIONS_ACK: Ack,
    topics.IMAGES: ImageMessage,
    topics.LOGS: DeviceLog,
    topics.THUMBNAILS: InputThumbnail,
}


def _decode_chunk(data: bytes, *, max_bytes: int) -> Chunk:
    if len(data) > max_bytes:
        raise MalformedChunkError(f"chunk message of {len(data)} bytes exceeds {max_bytes}")
    return decode_chunk(data)


def decoder_for(
    kind: str, *, max_chunk_bytes: int = MAX_CHUNK_MESSAGE_BYTES
) -> Callable[[bytes], Payload]:
    """The decoder for one topic kind.

    Args:
        kind: A ``ParsedTopic.kind``.
        max_chunk_bytes: Largest chunk message accepted (header + payload).

    Raises:
        DecodeError: Unknown kind.
    """
    if kind in (topics.DESIRED_DEVICE, topics.DESIRED_GROUP):
        return decode_envelope
    if kind == topics.CHUNK:
        return partial(_decode_chunk, max_bytes=max_chunk_bytes)
    if kind == topics.PREDICTIONS:  # a PredictionRecord or a PredictionBatch
        return decode_prediction_message
    model = _MESSAGE_KINDS.get(kind)
    if model is None:
        raise DecodeError(f"no payload type for topic kind {kind!r}")
    max_bytes = MAX_IMAGE_B64 + 1024 if model is ImageMessage else MAX_MESSAGE_BYTES
    return partial(decode, model, max_bytes=max_bytes)


def decode_payload(kind: str, data: bytes) -> Payload:
    """Decode the payload of a message that arrived on a topic of ``kind``.

    Raises:
        DecodeError: The bytes are not a valid payload for that kind.
    """
    return decoder_for(kind)(data)
