"""Remote input: send image files to a device's image topic."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.shared.messages import (
    ImageMessage,
    encode,
)

if TYPE_CHECKING:
    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.shared.connection import Connection


IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".npy": "npy"}


def image_message(path: Path) -> ImageMessage:
    """Wrap an image file for a device's image topic.

    Raises:
        FleetError: Unreadable file or unsupported suffix.
    """
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FleetError(f"{path}: send .png, .jpg/.jpeg or .npy files")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FleetError(f"cannot read {path}: {exc}") from exc
    return ImageMessage.from_bytes(name=image_name(path, data), format=fmt, data=data)


def image_name(path: Path, data: bytes) -> str:
    """``PATH#SHA8``: the path as given (its last 200 characters) and the content's hash.

    Two different files of the same name (``a/0010.png``, ``b/0010.png``, or one file sent
    again after it changed) get different names, so their predictions stay apart.
    """
    return f"{str(path)[-200:]}#{hashlib.sha256(data).hexdigest()[:8]}"


def send_images(conn: Connection, fleet: Fleet, device_id: str, paths: list[Path]) -> int:
    """Publish images to ``device_id``'s image topic (QoS 1) and wait for the broker's acks."""
    messages = [image_message(p) for p in paths]
    topic = fleet.topics.images(device_id)
    conn.wait_published([conn.publish(topic, encode(m)) for m in messages])
    return len(messages)
