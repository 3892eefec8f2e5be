"""Every MQTT topic edgefleet uses, built and parsed in one place under a configurable prefix.

The scheme (``{p}`` is the prefix, one or more levels)::

    {p}/devices/{id}/status             device -> all   retained, QoS 1, last will
    {p}/devices/{id}/reported           device -> host  retained, QoS 1
    {p}/devices/{id}/desired            host -> device  retained signed manifest, QoS 1
    {p}/groups/{group}/desired          host -> group   retained signed manifest, QoS 1
    {p}/models/{sha256}/chunks/{n}      host -> devices chunk n of a model, QoS 1
    {p}/devices/{id}/chunk-requests     device -> host  QoS 1
    {p}/devices/{id}/predictions        device -> host  QoS 1
    {p}/devices/{id}/predictions/ack    host -> device  QoS 1
    {p}/devices/{id}/images             anyone -> device QoS 1
    {p}/devices/{id}/logs               device -> host  QoS 0, not retained
    {p}/devices/{id}/thumbnails         device -> host  QoS 0, not retained (input pictures)
    {p}/devices/{id}/shadow             host -> device  retained signed shadow manifest, QoS 1
    {p}/groups/{group}/shadow           host -> group   retained signed shadow manifest, QoS 1
    {p}/devices/{id}/shadow/report      device -> host  retained shadow summary, QoS 1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from edgefleet.shared.errors import TopicError

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
SHA256_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
_INDEX_PATTERN: Final = re.compile(r"0|[1-9][0-9]{0,9}")
_PREFIX_LEVEL: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_CHUNK_INDEX: Final = 2**32 - 1

# kind names returned by Topics.parse (part of the documented contract)
STATUS: Final = "status"
REPORTED: Final = "reported"
DESIRED_DEVICE: Final = "desired_device"
DESIRED_GROUP: Final = "desired_group"
CHUNK: Final = "chunk"
CHUNK_REQUEST: Final = "chunk_request"
PREDICTIONS: Final = "predictions"
PREDICTIONS_ACK: Final = "predictions_ack"
IMAGES: Final = "images"
LOGS: Final = "logs"
THUMBNAILS: Final = "thumbnails"
SHADOW_DEVICE: Final = "shadow_device"
SHADOW_GROUP: Final = "shadow_group"
SHADOW_REPORT: Final = "shadow_report"

_DEVICE_SUFFIXES: Final = {
    ("status",): STATUS,
    ("reported",): REPORTED,
    ("desired",): DESIRED_DEVICE,
    ("chunk-requests",): CHUNK_REQUEST,
    ("predictions",): PREDICTIONS,
    ("predictions", "ack"): PREDICTIONS_ACK,
    ("images",): IMAGES,
    ("logs",): LOGS,
    ("thumbnails",): THUMBNAILS,
    ("shadow",): SHADOW_DEVICE,
    ("shadow", "report"): SHADOW_REPORT,
}


def validate_id(value: str, *, what: str = "device id") -> str:
    """Check a device id or group name and return it unchanged.

    Args:
        value: The candidate id.
        what: What the value is, for the error message.

    Returns:
        ``value``.

    Raises:
        TopicError: Empty, longer than 64 characters, or containing anything other than
            ASCII letters, digits, ``.``, ``_`` and ``-`` (so never ``+``, ``#`` or ``/``).
    """
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise TopicError(
            f"invalid {what} {value!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
            "(no '+', '#', '/' or empty levels)"
        )
    return value


def validate_sha256(value: str) -> str:
    """Check a lowercase hex sha256 digest (64 characters) and return it.

    Raises:
        TopicError: Not 64 lowercase hex digits.
    """
    if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
        raise TopicError(f"invalid sha256 {value!r}: expected 64 lowercase hex digits")
    return value


def _validate_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_CHUNK_INDEX:
        raise TopicError(f"invalid chunk index {index!r}: expected 0..{MAX_CHUNK_INDEX}")
    return index


def _validate_prefix(prefix: str) -> str:
    levels = prefix.split("/") if isinstance(prefix, str) else [""]
    if not all(_PREFIX_LEVEL.fullmatch(level) for level in levels):
        raise TopicError(
            f"invalid topic prefix {prefix!r}: '/'-separated levels of 1-64 characters "
            "from A-Z a-z 0-9 . _ - (no wildcards, no empty levels, no leading '$')"
        )
    return prefix


@dataclass(frozen=True)
class ParsedTopic:
    """What a topic addresses: its kind and the ids embedded in it."""

    kind: str
    device_id: str | None = None
    group: str | None = None
    sha256: str | None = None
    index: int | None = None


class Topics:
    """Builds and parses every edgefleet topic under one prefix.

    Args:
        prefix: One or more ``/``-separated levels, e.g. ``"edgefleet"`` or ``"acme/prod"``.

    Raises:
        TopicError: The prefix has an empty level, a wildcard or a character outside
            ``[A-Za-z0-9._-]``.
    """

    def __init__(self, prefix: str = "edgefleet") -> None:
        self.prefix = _validate_prefix(prefix)
        self._levels = tuple(prefix.split("/"))

    def _device(self, device_id: str, *suffix: str) -> str:
        return "/".join((self.prefix, "devices", validate_id(device_id), *suffix))

    def status(self, device_id: str) -> str:
        """Retained online/offline status; also the device's last will topic."""
        return self._device(device_id, "status")

    def reported(self, device_id: str) -> str:
        """Retained update state reported by the device."""
        return self._device(device_id, "reported")

    def desired_device(self, device_id: str) -> str:
        """Retained signed manifest for one device."""
        return self._device(device_id, "desired")

    def desired_group(self, group: str) -> str:
        """Retained signed manifest for every device in a group."""
        return f"{self.prefix}/groups/{validate_id(group, what='group name')}/desired"

    def chunk(self, sha256: str, index: int) -> str:
        """Chunk ``index`` of the model whose bytes hash to ``sha256``."""
        return f"{self.prefix}/models/{validate_sha256(sha256)}/chunks/{_validate_index(index)}"

    def chunks_filter(self, sha256: str) -> str:
        """Subscription filter for every chunk of one model."""
        return f"{self.prefix}/models/{validate_sha256(sha256)}/chunks/+"

    def chunk_request(self, device_id: str) -> str:
        """Where a device asks for missing chunks to be sent again."""
        return self._device(device_id, "chunk-requests")

    def predictions(self, device_id: str) -> str:
        """Prediction records from one device."""
        return self._device(device_id, "predictions")

    def predictions_ack(self, device_id: str) -> str:
        """Acknowledgements of stored prediction records, host to device."""
        return self._device(device_id, "predictions", "ack")

    def images(self, device_id: str) -> str:
        """Images sent to a device for inference."""
        return self._device(device_id, "images")

    def logs(self, device_id: str) -> str:
        """Log lines published by one device."""
        return self._device(device_id, "logs")

    def thumbnails(self, device_id: str) -> str:
        """Small pictures of the inputs of one device's prediction records (best effort)."""
        return self._device(device_id, "thumbnails")

    def shadow_device(self, device_id: str) -> str:
        """Retained signed shadow manifest (a candidate run beside the active model)."""
        return self._device(device_id, "shadow")

    def shadow_group(self, group: str) -> str:
        """Retained signed shadow manifest for every device in a group."""
        return f"{self.prefix}/groups/{validate_id(group, what='group name')}/shadow"

    def shadow_report(self, device_id: str) -> str:
        """Retained summary of one device's shadow comparison."""
        return self._device(device_id, "shadow", "report")

    def all_shadow_reports(self) -> str:
        """Filter for every device's shadow summary."""
        return f"{self.prefix}/devices/+/shadow/report"

    def all_shadow_manifests(self) -> tuple[str, str]:
        """Filters for every retained shadow manifest (per device, per group)."""
        return f"{self.prefix}/devices/+/shadow", f"{self.prefix}/groups/+/shadow"

    def all_logs(self) -> str:
        """Filter for every device's log lines."""
        return f"{self.prefix}/devices/+/logs"

    def all_thumbnails(self) -> str:
        """Filter for every device's input thumbnails."""
        return f"{self.prefix}/devices/+/thumbnails"

    def all_status(self) -> str:
        """Filter for every device's status."""
        return f"{self.prefix}/devices/+/status"

    def all_reported(self) -> str:
        """Filter for every device's reported update state."""
        return f"{self.prefix}/devices/+/reported"

    def all_predictions(self) -> str:
        """Filter for every device's prediction records."""
        return f"{self.prefix}/devices/+/predictions"

    def all_chunk_requests(self) -> str:
        """Filter for every device's chunk re-requests."""
        return f"{self.prefix}/devices/+/chunk-requests"

    def shared(self, topic_filter: str, *, group: str = "edgefleet") -> str:
        """The MQTT shared-subscription form of a filter, for load-balanced host workers."""
        return f"$share/{validate_id(group, what='share group')}/{topic_filter}"

    def parse(self, topic: str) -> ParsedTopic:
        """Tell what a concrete topic (no wildcards) addresses.

        Raises:
            TopicError: The topic is not under this prefix or not in the scheme.
        """
        if not isinstance(topic, str):
            raise TopicError(f"topic must be a string, not {type(topic).__name__}")
        levels = topic.split("/")
        n = len(self._levels)
        if tuple(levels[:n]) != self._levels:
            raise TopicError(f"topic {topic!r} is not under prefix {self.prefix!r}")
        parsed = _parse_rest(levels[n:])
        if parsed is None:
            raise TopicError(f"topic {topic!r} is not an edgefleet topic")
        return parsed


def _parse_rest(rest: list[str]) -> ParsedTopic | None:
    if len(rest) >= 3 and rest[0] == "devices":  # noqa: PLR2004 - devices/{id}/kind...
        kind = _DEVICE_SUFFIXES.get(tuple(rest[2:]))
        return None if kind is None else ParsedTopic(kind, device_id=validate_id(rest[1]))
    if len(rest) == 3 and rest[0] == "groups" and rest[2] in {"desired", "shadow"}:  # noqa: PLR2004
        kind = DESIRED_GROUP if rest[2] == "desired" else SHADOW_GROUP
        return ParsedTopic(kind, group=validate_id(rest[1], what="group name"))
    if len(rest) == 4 and rest[0] == "models" and rest[2] == "chunks":  # noqa: PLR2004
        if not _INDEX_PATTERN.fullmatch(rest[3]):
            raise TopicError(f"invalid chunk index {rest[3]!r}: expected a decimal number")
        index = _validate_index(int(rest[3]))
        return ParsedTopic(CHUNK, sha256=validate_sha256(rest[1]), index=index)
    return None
