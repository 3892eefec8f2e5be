"""Input thumbnails: a small picture of each input, sent beside its prediction record.

Opt-in (``[inference] thumbnails = true`` in agent.toml). A GPR B-scan (a 2-D ``.npy``, or its
16/8-bit PNG rendering) is drawn as a radargram: time down the rows, one column per trace, the
mean trace removed (the direct wave and ringing that hide everything else), amplitudes scaled
to the 99th percentile and coloured blue (negative) - white (zero) - red (positive). Any other
3-D image (a camera frame) is drawn as it is. The result is a PNG with a 256-colour palette
(lossless for a radargram), or a JPEG if only that fits, of at most
:data:`MAX_THUMBNAIL_BYTES` (8 KiB), at most :data:`MAX_SIDE` pixels long; the size is halved
until it fits. Pillow and numpy only; a failure never costs the prediction (the record
goes out without a thumbnail).

The picture travels on its own topic, ``{p}/devices/{id}/thumbnails``, as an
:class:`~edgefleet.shared.messages.InputThumbnail` naming the record (device, boot id, seq),
never inside the record: a host that does not know thumbnails never subscribes to it, and
the record stays what every host accepts (docs/protocol.md 4.3.2). :class:`ThumbnailSender`
publishes it at QoS 0 once the record is committed to the outbox, outside the outbox/ack
path: a lost or refused thumbnail is logged, never retried, and never holds a record up.
"""

from __future__ import annotations

import base64
import io
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from edgefleet.shared.errors import InputError
from edgefleet.shared.gpr import as_traces
from edgefleet.shared.messages import MAX_THUMBNAIL_BYTES, InputThumbnail, encode

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from edgefleet.device.agent import Agent
    from edgefleet.device.config import InferenceConfig
    from edgefleet.shared.spec import PreprocessSpec

__all__ = [
    "MAX_SIDE",
    "Picture",
    "ThumbnailSender",
    "encode_thumbnail",
    "radargram_palette",
    "render",
    "thumbnail_for",
]

log = logging.getLogger(__name__)

MAX_SIDE = 128  # the longer side of a thumbnail, pixels (halved until it fits the byte limit)
MIN_SIDE = 8
_PERCENTILE = 99.0


def radargram_palette() -> bytes:
    """The 256-entry RGB palette: index 0 dark blue, 128 white, 255 dark red."""
    x = np.linspace(-1.0, 1.0, 256)
    neg = np.clip(-x, 0, 1)
    pos = np.clip(x, 0, 1)
    # Towards white in the middle, through full blue / red, to a darker end.
    r = np.where(x < 0, 1 - neg, 1 - 0.5 * np.clip(pos * 2 - 1, 0, 1))
    g = 1 - np.abs(x)
    b = np.where(x > 0, 1 - pos, 1 - 0.5 * np.clip(neg * 2 - 1, 0, 1))
    rgb = np.stack([r, g, b], axis=1)
    return bytes(np.round(rgb * 255).astype(np.uint8).ravel())


_PALETTE = radargram_palette()


def _is_bscan(array: npt.NDArray[np.generic]) -> bool:
    # 2-D numeric arrays of a GPR model are B-scans (a .npy, or the PNG rendering of one).
    return array.ndim == 2 and array.dtype.kind in "uif"  # noqa: PLR2004


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    factor = min(1.0, side / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def render(
    array: npt.NDArray[np.generic], *, side: int = MAX_SIDE, gpr: bool = True
) -> Image.Image:
    """The input as a picture at most ``side`` pixels long: a radargram for a B-scan, else grey/RGB.

    Raises:
        InputError: Not something that can be drawn (wrong rank, empty, not finite).
    """
    if gpr and _is_bscan(array):
        traces = as_traces(array)  # (traces, samples), PNG renderings expanded
        bscan = traces.T - traces.mean(axis=0)[:, None]  # time down the rows; mean trace removed
        scale = float(np.percentile(np.abs(bscan), _PERCENTILE)) or 1.0
        field = Image.fromarray(np.clip(bscan / scale, -1, 1).astype(np.float32), mode="F")
        field = field.resize(_fit(field.width, field.height, side), Image.Resampling.BOX)
        values = np.asarray(field, dtype=np.float64)
        index = np.round((np.clip(values, -1, 1) + 1) * 127.5).astype(np.uint8)
        image = Image.fromarray(index, mode="P")
        image.putpalette(_PALETTE)
        return image
    if array.ndim == 2 and array.size:  # noqa: PLR2004 - a grey image
        array = array[:, :, None]
    if array.ndim == 3 and array.shape[2] in (1, 3, 4) and array.size:  # noqa: PLR2004
        pixels = np.asarray(array, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise InputError("the image contains NaN or infinite values")
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / ((high - low) or 1.0) * 255
        channels = scaled[:, :, :3] if array.shape[2] >= 3 else scaled[:, :, 0]  # noqa: PLR2004
        image = Image.fromarray(np.round(channels).astype(np.uint8))
        return image.resize(_fit(image.width, image.height, side), Image.Resampling.BOX)
    raise InputError(f"cannot draw an input of shape {array.shape} and type {array.dtype}")


def _encodings(image: Image.Image) -> list[tuple[str, bytes]]:
    """PNG (palette, lossless for a radargram) first, then JPEG."""
    png = io.BytesIO()
    paletted = image if image.mode == "P" else image.convert("RGB").quantize(colors=256)
    paletted.save(png, format="PNG", optimize=True)
    jpeg = io.BytesIO()
    image.convert("RGB").save(jpeg, format="JPEG", quality=80)
    return [("png", png.getvalue()), ("jpeg", jpeg.getvalue())]


@dataclass(frozen=True)
class Picture:
    """An encoded thumbnail: format, image bytes and size in pixels."""

    format: str
    data: bytes
    width: int
    height: int

    def message(self, *, device_id: str, boot_id: str, seq: int) -> InputThumbnail:
        """The wire message of this picture for the record (device_id, boot_id, seq)."""
        return InputThumbnail.model_validate(
            {
                "device_id": device_id,
                "boot_id": boot_id,
                "seq": seq,
                "format": self.format,
                "data_b64": base64.b64encode(self.data).decode(),
                "width": self.width,
                "height": self.height,
            }
        )


def draw(
    array: npt.NDArray[np.generic],
    *,
    max_side: int = MAX_SIDE,
    max_bytes: int = MAX_THUMBNAIL_BYTES,
    gpr: bool = True,
) -> Picture:
    """Draw and encode ``array`` in at most ``max_bytes`` (see :func:`encode_thumbnail`).

    Raises:
        InputError: It cannot be drawn, or does not fit even at the smallest size.
    """
    side = max_side
    while side >= MIN_SIDE:
        image = render(array, side=side, gpr=gpr)
        for fmt, data in _encodings(image):
            if len(data) <= max_bytes:
                return Picture(fmt, data, image.width, image.height)
        side //= 2
    raise InputError(f"no thumbnail of {array.shape} fits in {max_bytes} bytes")


def encode_thumbnail(
    array: npt.NDArray[np.generic],
    *,
    max_side: int = MAX_SIDE,
    max_bytes: int = MAX_THUMBNAIL_BYTES,
    gpr: bool = True,
) -> tuple[str, bytes]:
    """Draw and encode ``array`` in at most ``max_bytes``: (format, image bytes).

    Raises:
        InputError: It cannot be drawn, or does not fit even at the smallest size.
    """
    picture = draw(array, max_side=max_side, max_bytes=max_bytes, gpr=gpr)
    return picture.format, picture.data


class _Model(Protocol):
    preprocess_spec: PreprocessSpec


def thumbnail_for(
    array: npt.NDArray[np.generic], model: _Model, config: InferenceConfig
) -> Picture | None:
    """The thumbnail of this input, or None (setting off, or it cannot be drawn).

    A 2-D input of a GPR model is drawn as a radargram, any other input as a picture.
    """
    if not config.thumbnails:
        return None
    try:
        return draw(array, gpr=model.preprocess_spec.kind == "gpr")
    except (InputError, ValueError, OSError) as exc:
        log.warning("no thumbnail for an input of shape %s: %s", array.shape, exc)
        return None


class ThumbnailSender:
    """Publishes the thumbnails of committed records, best effort (see the module docstring).

    The agent draws a picture with :meth:`draw` before the outbox transaction, notes it with
    :meth:`note` when the record gets its seq (inside the transaction), and calls
    :meth:`flush` once the transaction committed (:meth:`committing` discards them if it
    did not).

    Args:
        publish: ``publish(topic, payload)`` at QoS 0, not retained (queues; never waits).
        topic: The device's thumbnails topic.
        device_id: The device's id.
        boot_id: This agent run.
        config: The ``[inference]`` settings (``thumbnails`` turns it on).
    """

    def __init__(
        self,
        publish: Callable[[str, bytes], object],
        *,
        topic: str,
        device_id: str,
        boot_id: str,
        config: InferenceConfig,
    ) -> None:
        self._publish = publish
        self.topic = topic
        self.device_id = device_id
        self.boot_id = boot_id
        self.config = config
        self._pending: list[tuple[int, Picture]] = []
        self.sent = 0
        self.failed = 0

    @classmethod
    def of(cls, agent: Agent) -> ThumbnailSender:
        """The sender of an agent: its link (late-bound), topic, ids and settings."""
        return cls(
            lambda topic, payload: agent.link.publish(topic, payload, qos=0),
            topic=agent.topics.thumbnails(agent.config.device_id),
            device_id=agent.config.device_id,
            boot_id=agent.boot_id,
            config=agent.config.inference,
        )

    def draw(self, array: npt.NDArray[np.generic], model: _Model) -> Picture | None:
        """The input's picture if thumbnails are on and it can be drawn; never raises."""
        try:
            return thumbnail_for(array, model, self.config)
        except Exception as exc:  # noqa: BLE001 - a thumbnail never costs the prediction
            log.warning("no thumbnail for an input: %r", exc)
            return None

    def note(self, seq: int, picture: Picture | None) -> None:
        """The record ``seq`` is being committed with this picture (None: nothing to send)."""
        if picture is not None:
            self._pending.append((seq, picture))

    def discard(self) -> None:
        """The outbox transaction failed: its records (and their pictures) do not exist."""
        self._pending.clear()

    @contextmanager
    def committing(self) -> Iterator[None]:
        """Around the outbox transaction: :meth:`discard` if it raises."""
        try:
            yield
        except BaseException:
            self.discard()
            raise

    def flush(self) -> None:
        """Publish the pictures of the records just committed; a failure is logged only."""
        pending, self._pending = self._pending, []
        for seq, picture in pending:
            try:
                message = picture.message(device_id=self.device_id, boot_id=self.boot_id, seq=seq)
                info = self._publish(self.topic, encode(message))
                rc = getattr(info, "rc", 0)  # paho: not connected (QoS 0 is not queued)
            except Exception as exc:  # noqa: BLE001 - best effort, never fails the prediction
                rc = exc
            if rc:
                self.failed += 1
                log.info("thumbnail of record %s not sent: %s", seq, rc)
            else:
                self.sent += 1
