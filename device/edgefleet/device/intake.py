"""Per-input containment: one input becomes a record builder, or a refusal - never a crash.

Both input paths of the agent (a watched-folder file, an image-topic message) go through
:class:`Intake`. Whatever goes wrong with one input - over a ``[limits]`` setting,
undecodable, an exception anywhere in decoding, preprocessing, classifying or building its
record, ``MemoryError`` included - is contained to that input:

* a folder file is moved to ``rejected/`` with ``<name>.error.txt`` saying why, before the
  next file is looked at (so a restart cannot meet it again); a file that fails to decode
  the way a half-written file does is left to the watcher, which tries it again once it
  changes and rejects it once it has stopped changing (``inference.incomplete_timeout_s``);
* an image-topic message is dropped with a warning in the log and counted (the status'
  ``rejected_inputs``);
* an exception in the model's part (after decoding) is also passed to ``on_failure``, the
  hook the model-failure policy uses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from edgefleet.device.errors import InputLimitError, ModelLoadError
from edgefleet.device.inputs import decode_input, load_input, load_metadata
from edgefleet.device.limits import check_message_bytes
from edgefleet.shared.errors import DecodeError, InputError
from edgefleet.shared.messages import ImageMessage, decode

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np
    import numpy.typing as npt

    from edgefleet.device.config import LimitsConfig
    from edgefleet.device.sources import FolderWatcher
    from edgefleet.shared.gpr import ScanMetadata

log = logging.getLogger(__name__)


class Predict(Protocol):
    """The agent's classifier step: an array in, the record builder (seq -> bytes) out."""

    def __call__(
        self, array: npt.NDArray[np.generic], *, source: str, meta: ScanMetadata | None = None
    ) -> Callable[[int], bytes]:
        """Classify ``array`` (``meta``: a GPR scan's sidecar); the builder makes the record."""


def unexpected(step: str, exc: BaseException) -> InputError:
    """An unexpected exception while handling one input, as that input's refusal."""
    kind = "out of memory" if isinstance(exc, MemoryError) else type(exc).__name__
    return InputError(f"unexpected error while {step} it ({kind}: {exc}); the agent goes on")


class Intake:
    """Turns inputs into record builders, containing every failure to its input.

    Attributes:
        rejected: Image-topic messages refused this boot (folder refusals are counted by
            the watcher, which moves them).
    """

    def __init__(
        self,
        limits: LimitsConfig,
        predict: Predict,
        on_failure: Callable[[BaseException], None],
        watcher: FolderWatcher | None = None,
    ) -> None:
        self.limits = limits
        self.predict = predict
        self.on_failure = on_failure
        self.watcher = watcher
        self.rejected = 0

    @property
    def rejected_total(self) -> int:
        """Every input refused this boot: image messages and folder entries."""
        return self.rejected + (self.watcher.rejected if self.watcher else 0)

    def _classify(
        self,
        array: npt.NDArray[np.generic],
        source: str,
        refuse: Callable[[str], None],
        meta: ScanMetadata | None = None,
    ) -> Callable[[int], bytes] | None:
        try:
            build = self.predict(array, source=source, meta=meta)
            build(0)  # the record validates now, for this input, not in the batch's commit
        except ModelLoadError:
            raise  # no model (yet): not the input's fault
        except InputError as exc:  # the input does not fit the model (preprocess)
            refuse(str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - contained; the model may be at fault
            refuse(str(unexpected("classifying", exc)))
            self.on_failure(exc)
            return None
        return build

    def folder_file(self, path: Path) -> Callable[[int], bytes] | None:
        """One watched-folder file; None when it was refused (moved) or must wait.

        Raises:
            ModelLoadError: no model is active (the file stays for a later poll).
        """
        watcher = self.watcher
        assert watcher is not None  # noqa: S101 - only called with a watcher

        def refuse(reason: str) -> None:
            watcher.done(path, error=reason if path.name in reason else f"{path.name}: {reason}")

        try:
            array = load_input(path, self.limits, follow_symlinks=False)
            meta = load_metadata(path)  # a GPR scan's sidecar or PNG text chunk, if any
        except InputLimitError as exc:
            refuse(str(exc))
            return None
        except InputError as exc:  # maybe half-written: tried again once it changes
            log.info("cannot decode %s (yet): %s", path.name, exc)
            watcher.retry(path, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - MemoryError too: this input only
            refuse(str(unexpected("loading", exc)))
            return None
        return self._classify(array, path.name, refuse, meta)

    def image_message(self, payload: bytes) -> Callable[[int], bytes] | None:
        """One image-topic message; None when it was refused (logged and counted).

        Raises:
            ModelLoadError: no model is active.
        """
        name = "an image message"

        def refuse(reason: str) -> None:
            self.rejected += 1
            log.warning("rejected %s: %s", name, reason)

        try:
            check_message_bytes(len(payload), self.limits)
            image = decode(ImageMessage, payload, max_bytes=self.limits.max_image_message_bytes)
            name = f"image message {image.name!r}"
            array = decode_input(image.data(), image.format, self.limits)
        except (DecodeError, InputError) as exc:
            refuse(str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - MemoryError too: this input only
            refuse(str(unexpected("loading", exc)))
            return None
        return self._classify(array, f"mqtt:{image.name}", refuse)
