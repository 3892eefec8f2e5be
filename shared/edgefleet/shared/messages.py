"""Pydantic models of every JSON payload on the wire, with ``encode`` and a safe ``decode``.

Every model forbids unknown fields, rejects NaN and infinity, and carries ``v`` (the schema
version, currently 1). Every integer a peer sends (sequence numbers, versions, counters,
indexes) is bounded to 0 .. 2^63-1 (:data:`MAX_COUNT`, a signed 64-bit integer, what SQLite
and most languages store without loss): anything outside is refused at decode time with the
field's name. ``decode`` is the only way untrusted bytes become a message: it caps the size
before parsing and raises nothing but ``DecodeError``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Annotated, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from edgefleet.shared.errors import DecodeError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

SCHEMA_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 1_048_576
MAX_INDEXES: Final = 4096
MAX_SEQS: Final = 10_000
MAX_BATCH_RECORDS: Final = 1000
MAX_IMAGE_B64: Final = 16 * 2**20
MAX_COUNT: Final = 2**63 - 1  # every integer on the wire is within 0 .. MAX_COUNT

DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
GroupName = DeviceId
BootId = DeviceId
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Code = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ShortText = Annotated[str, StringConstraints(max_length=256)]
LongText = Annotated[str, StringConstraints(max_length=4096)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
NonNeg = Annotated[float, Field(ge=0)]


class UpdateState(str, Enum):
    """The device's over-the-air update state (docs/protocol.md, "Update state machine")."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    HEALTH_CHECK = "health_check"
    ACTIVATING = "activating"
    ACTIVE = "active"
    REJECTED = "rejected"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


# Reason codes a device reports with state "rejected" (the ManifestError codes) ...
REJECT_REASONS: Final = (
    "malformed",
    "unknown_key",
    "bad_signature",
    "not_targeted",
    "expired",
    "rollback",
    "accelerator",
    "too_large",
    "too_many_chunks",
    "too_many_outputs",
)
# ... and with state "failed", together with the step that failed.
FAIL_REASONS: Final = (
    "integrity",
    "health_check",
    "disk_full",
    "io_error",
    "timeout",
    "failed_on_inputs",
    "crash_loop",
)
# "serving": an active model that failed on real inputs (or crash-looped the agent) and
# was replaced by the last-known-good one (docs/protocol.md 8.2).
FAIL_STEPS: Final = ("downloading", "verifying", "health_check", "activating", "serving")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Message(_Closed):
    """Base of every payload: strict, closed, finite numbers, schema version ``v``."""

    v: Literal[1] = Field(default=SCHEMA_VERSION, description="Schema version of the payload.")


class Status(Message):
    """Retained device status; ``Status(device_id=..., online=False)`` is the last will."""

    device_id: DeviceId = Field(description="The device's id.")
    online: bool = Field(description="False in the last will and on a clean shutdown.")
    agent_version: ShortText | None = Field(default=None, description="edgefleet version.")
    boot_id: BootId | None = Field(default=None, description="Random id of this agent run.")
    groups: list[GroupName] | None = Field(default=None, max_length=64, description="Groups.")
    runtime: ShortText | None = Field(default=None, description="Interpreter backend name.")
    runtime_version: ShortText | None = Field(default=None, description="Its version.")
    accelerator: ShortText | None = Field(default=None, description="'cpu' or 'edgetpu'.")
    accelerator_note: LongText | None = Field(default=None, description="Why not Edge TPU.")
    model_name: ShortText | None = Field(default=None, description="Active model's name.")
    model_version: Count | None = Field(default=None, description="Active model's version.")
    inference_count: Count | None = Field(default=None, description="Inferences this boot.")
    latency_p50_ms: NonNeg | None = Field(default=None, description="Median latency.")
    latency_p95_ms: NonNeg | None = Field(default=None, description="95th pct latency.")
    outbox_depth: Count | None = Field(default=None, description="Unacked predictions.")
    dropped: Count | None = Field(
        default=None,
        description="Prediction records dropped by the outbox bound policy (ever, persisted).",
    )
    ignored_manifests: Count | None = Field(
        default=None,
        description="Signed manifests ignored as older than the active model (ever, persisted).",
    )
    rejected_inputs: Count | None = Field(
        default=None,
        description="Inputs refused this boot (over a limit, undecodable, or failed in the "
        "pipeline): folder files moved to rejected/, image-topic messages dropped.",
    )
    safe_mode: bool | None = Field(
        default=None,
        description="True while the agent runs in safe mode after repeated unclean exits.",
    )
    unclean_exits: Count | None = Field(
        default=None, description="Unclean exits of the agent within its crash window."
    )
    uptime_s: NonNeg | None = Field(default=None, description="Seconds since agent start.")
    rss_bytes: Count | None = Field(default=None, description="Resident memory.")
    cpu_temp_c: float | None = Field(default=None, description="SoC temperature.")
    ts: float | None = Field(default=None, description="Unix time of the report.")


class Reported(Message):
    """Retained over-the-air update state of one device."""

    device_id: DeviceId = Field(description="The device's id.")
    state: UpdateState = Field(description="Where the update state machine is.")
    model_name: ShortText | None = Field(default=None, description="Model being handled.")
    version: Count | None = Field(default=None, description="Its manifest version.")
    sha256: Sha256Hex | None = Field(default=None, description="Its variant's sha256.")
    progress: float = Field(default=0.0, ge=0.0, le=1.0, description="Download fraction.")
    step: Code | None = Field(default=None, description="Step that failed (state failed).")
    reason: Code | None = Field(default=None, description="Machine reason code.")
    message: LongText | None = Field(default=None, description="Human explanation.")
    active_version: Count | None = Field(default=None, description="Version now serving.")
    held: list[Sha256Hex] | None = Field(
        default=None, max_length=2, description="Model files held (active, previous): delta base."
    )
    ts: float | None = Field(default=None, description="Unix time of the report.")

    @model_validator(mode="after")
    def _codes_match_state(self) -> Reported:
        if self.state is UpdateState.REJECTED:
            # The manifest check is the "verifying" step of the manifest, if a step is named.
            if self.reason not in REJECT_REASONS or self.step not in (None, "verifying"):
                raise ValueError(
                    f"state rejected needs reason in {REJECT_REASONS}, step null or 'verifying'"
                )
        elif self.state is UpdateState.FAILED:
            if self.reason not in FAIL_REASONS or self.step not in FAIL_STEPS:
                raise ValueError(
                    f"state failed needs step in {FAIL_STEPS} and reason in {FAIL_REASONS}"
                )
        elif self.reason is not None or self.step is not None:
            raise ValueError(f"state {self.state.value} carries no step or reason")
        return self


class TopK(_Closed):
    """One of the best-scoring classes."""

    label: ShortText = Field(description="Class name.")
    score: float = Field(description="Dequantized score (probability for softmax).")


MAX_THUMBNAIL_BYTES: Final = 8192  # a thumbnail's encoded image, before base64
MAX_THUMBNAIL_B64: Final = 10924  # base64 of MAX_THUMBNAIL_BYTES
MAX_THUMBNAIL_SIDE: Final = 4096  # pixels, either side (the reference agent draws <= 128)


class PredictionRecord(Message):
    """One inference result; unique on (device_id, boot_id, seq)."""

    device_id: DeviceId = Field(description="The device's id.")
    boot_id: BootId = Field(description="Agent run (random per start of the agent).")
    seq: Count = Field(
        description=(
            "Record number, +1 per record; unique per (device_id, boot_id). The reference "
            "agent starts at 1 and keeps counting across runs (the counter is in its outbox)."
        )
    )
    source: LongText = Field(default="", description="Where the input came from.")
    label: ShortText = Field(description="Best class.")
    score: float = Field(description="Its score.")
    topk: list[TopK] = Field(default_factory=list, max_length=100, description="Top classes.")
    latency_ms: NonNeg = Field(description="Preprocess + invoke time.")
    model_name: ShortText = Field(description="Model that produced it.")
    model_version: Count = Field(description="Its manifest version (0: not from a manifest).")
    ts: float = Field(description="Unix time of the inference.")
    error: Code | None = Field(
        default=None,
        description=(
            "Set when the model gave no usable class: 'non_finite' (NaN or infinity in its "
            "scores); label is then empty, score 0 and topk empty."
        ),
    )


class PredictionBatch(Message):
    """Several prediction records in one message, oldest first (device -> host).

    Each record is a complete ``PredictionRecord`` (with its own ``v``) and is stored and
    acknowledged exactly as if it had come alone; the host acks what it committed.
    """

    records: list[PredictionRecord] = Field(
        min_length=1, max_length=MAX_BATCH_RECORDS, description="The records, oldest first."
    )


class Ack(Message):
    """Host -> device: these records are committed and may be deleted from the outbox."""

    device_id: DeviceId = Field(description="The device's id.")
    boot_id: BootId = Field(description="Agent run the seqs belong to.")
    seqs: list[Count] = Field(max_length=MAX_SEQS, description="Committed sequence numbers.")


class ChunkRequest(Message):
    """Device -> host: please publish these chunks of a model again."""

    device_id: DeviceId = Field(description="The device asking.")
    sha256: Sha256Hex = Field(description="sha256 of the model (variant) bytes.")
    indexes: list[Count] = Field(
        min_length=1, max_length=MAX_INDEXES, description="Missing chunk indexes."
    )


class ImageMessage(Message):
    """An image sent to a device for inference."""

    name: ShortText = Field(description="A name for the input, recorded as the source.")
    format: Literal["png", "jpeg", "npy"] = Field(description="Encoding of the data.")
    data_b64: str = Field(max_length=MAX_IMAGE_B64, description="Base64 of the file.")

    @classmethod
    def from_bytes(cls, *, name: str, format: str, data: bytes) -> ImageMessage:  # noqa: A002
        """Wrap raw file bytes (``format`` shadows the builtin to match the field name)."""
        return cls.model_validate(
            {"name": name, "format": format, "data_b64": base64.b64encode(data).decode()}
        )

    def data(self) -> bytes:
        """The decoded file bytes.

        Raises:
            DecodeError: ``data_b64`` is not valid base64.
        """
        try:
            return base64.b64decode(self.data_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"ImageMessage {self.name!r}: data_b64 is not base64") from exc


class InputThumbnail(Message):
    """Device -> host: a small picture of the input one prediction record was made on.

    Sent on its own topic ``{p}/devices/{id}/thumbnails`` (QoS 0, best effort), never inside
    the record (docs/protocol.md 4.3.2): it names the record by the record's identity
    (device_id, boot_id, seq) and may arrive before it, after it, or without it.
    """

    device_id: DeviceId = Field(description="The device's id (the record's).")
    boot_id: BootId = Field(description="The record's agent run.")
    seq: Count = Field(description="The record's sequence number.")
    format: Literal["png", "jpeg"] = Field(description="Encoding of the image.")
    data_b64: str = Field(
        max_length=MAX_THUMBNAIL_B64, description="Base64 of the image, at most 8 KiB decoded."
    )
    width: int = Field(ge=1, le=MAX_THUMBNAIL_SIDE, description="Image width, pixels.")
    height: int = Field(ge=1, le=MAX_THUMBNAIL_SIDE, description="Image height, pixels.")

    @model_validator(mode="after")
    def _is_base64(self) -> InputThumbnail:
        try:
            data = base64.b64decode(self.data_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("data_b64 is not base64") from exc
        if not data or len(data) > MAX_THUMBNAIL_BYTES:
            raise ValueError(f"the image must be 1 .. {MAX_THUMBNAIL_BYTES} bytes")
        return self

    def data(self) -> bytes:
        """The decoded image bytes (checked at validation)."""
        return base64.b64decode(self.data_b64, validate=True)


class DeviceLog(Message):
    """Device -> host: one log line the agent wrote (docs/protocol.md, "Device logs")."""

    device_id: DeviceId = Field(description="The device's id.")
    boot_id: BootId = Field(description="Agent run that wrote the line.")
    seq: Count = Field(description="Line number within the boot (gaps: lines dropped).")
    ts: float = Field(description="Unix time the line was written.")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        description="Python logging level name."
    )
    logger: ShortText = Field(description="Logger name, e.g. edgefleet.device.agent.")
    message: Annotated[str, StringConstraints(max_length=65536)] = Field(
        description="The formatted line (traceback included), cut to the agent's bound."
    )
    dropped: Count = Field(
        default=0, description="Lines dropped (rate limit, full queue) since the last sent."
    )


M = TypeVar("M", bound=BaseModel)


def encode(msg: BaseModel) -> bytes:
    """Serialize a message as compact UTF-8 JSON, leaving out fields that are ``None``."""
    return msg.model_dump_json(exclude_none=True).encode()


def decode(model: type[M], data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> M:
    """Parse and validate untrusted bytes as ``model``.

    Args:
        model: The expected message class.
        data: The raw payload.
        max_bytes: Larger payloads are refused before any parsing.

    Returns:
        The validated message.

    Raises:
        DecodeError: For any problem at all (size, encoding, JSON, schema, version).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{model.__name__}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(f"{model.__name__}: payload of {len(data)} bytes exceeds {max_bytes}")
    try:
        return model.model_validate_json(bytes(data))
    except ValidationError as exc:
        raise DecodeError(f"{model.__name__}: {_summary(exc)}") from exc
    except (ValueError, TypeError, RecursionError, ArithmeticError) as exc:
        raise DecodeError(f"{model.__name__}: {type(exc).__name__}: {exc}") from exc


def _predictions_kind(value: object) -> str:
    # A JSON object with "records" is a batch; anything else must be a single record.
    return "batch" if isinstance(value, dict) and "records" in value else "record"


@cache
def _predictions_adapter() -> TypeAdapter[PredictionRecord | PredictionBatch]:
    # Built on first use: the agent only sends predictions and never pays for it.
    return TypeAdapter[PredictionRecord | PredictionBatch](
        Annotated[
            Annotated[PredictionRecord, Tag("record")] | Annotated[PredictionBatch, Tag("batch")],
            Discriminator(_predictions_kind),
        ]
    )


def decode_prediction_message(data: bytes) -> PredictionRecord | PredictionBatch:
    """Parse a ``predictions`` payload: one ``PredictionRecord`` or a ``PredictionBatch``.

    Raises:
        DecodeError: Neither (size, encoding, JSON, schema, version); a batch with one bad
            record is refused whole.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"predictions: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"predictions: payload of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _predictions_adapter().validate_json(bytes(data))
    except ValidationError as exc:
        raise DecodeError(f"predictions: {_summary(exc)}") from exc
    except (ValueError, TypeError, RecursionError, ArithmeticError) as exc:
        raise DecodeError(f"predictions: {type(exc).__name__}: {exc}") from exc


def decode_predictions(data: bytes) -> list[PredictionRecord]:
    """The records of a ``predictions`` payload (see :func:`decode_prediction_message`).

    Raises:
        DecodeError: Not a valid record or batch.
    """
    parsed = decode_prediction_message(data)
    return list(parsed.records) if isinstance(parsed, PredictionBatch) else [parsed]


def batch_payload(records: Sequence[bytes]) -> bytes:
    """A ``PredictionBatch`` from already encoded ``PredictionRecord`` payloads (no re-encoding).

    One record is sent as itself (the single-record form every host reads).
    """
    if len(records) == 1:
        return bytes(records[0])
    return b'{"v":1,"records":[' + b",".join(records) + b"]}"


def _message(error: ErrorDetails) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "less_than_equal" and ctx.get("le") == MAX_COUNT:
        return (
            f"out of range: integers on the wire are 0 .. 2^63-1 ({MAX_COUNT}); the sender "
            "must keep its counters within a signed 64-bit integer"
        )
    return error["msg"]


def _summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {_message(e)}" for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""  # noqa: PLR2004
    return "; ".join(parts) + more
