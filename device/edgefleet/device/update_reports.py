"""The retained reports of an update: what the device tells the host at every step.

Each report is a :class:`~edgefleet.shared.messages.Reported` on the device's ``reported``
topic, retained, so the host (and a host that connects later) sees where the device
stands. :class:`Reporter` builds them and remembers the update state and the last report,
which the agent publishes again on every reconnect; the
:class:`~edgefleet.device.updater.Updater` decides when to report what.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.device.actions import Publish
from edgefleet.device.delta import held_models
from edgefleet.device.errors import DeviceError
from edgefleet.shared.errors import ManifestError
from edgefleet.shared.manifest import Manifest, select_variant
from edgefleet.shared.messages import Reported, UpdateState, encode

if TYPE_CHECKING:
    from edgefleet.device.store import Pointer, StateStore
    from edgefleet.shared.manifest import ModelVariant

log = logging.getLogger(__name__)

MAX_MESSAGE = 4000  # characters of an error message in a report
MAX_BAD_MESSAGE = 1000  # characters of it kept in the bad-model record
# docs/protocol.md 4.2: ``progress`` is 1.0 in every report made once the whole file is
# on the device (these states, and ``failed`` at these steps); 0 before a download (idle,
# rejected) and after one failed; the share of chunks received while downloading.
WHOLE_FILE_STATES = frozenset(
    {UpdateState.VERIFYING, UpdateState.HEALTH_CHECK, UpdateState.ACTIVATING, UpdateState.ACTIVE}
)
WHOLE_FILE_STEPS = frozenset({"verifying", "health_check", "activating", "serving"})


@dataclass
class Reporter:
    """Builds one device's update reports (see the module docstring)."""

    device_id: str
    topic: str  # the device's ``reported`` topic
    store: StateStore  # the active model, named in every report
    clock: Callable[[], float]
    accelerators: tuple[str, ...]
    state: UpdateState = UpdateState.IDLE
    last: Reported | None = None

    def report(
        self,
        state: UpdateState,
        manifest: Manifest | None = None,
        variant: ModelVariant | None = None,
        **extra: Any,  # noqa: ANN401 - Reported's optional fields
    ) -> Publish:
        """Enter ``state`` and report it, naming the model it is about, if any."""
        return self._publish(self._build(state, manifest, variant, **extra))

    def active(self, pointer: Pointer) -> Publish:
        """Enter ``active`` and report the model serving now."""
        named = {"model_name": pointer.name, "version": pointer.version, "sha256": pointer.sha256}
        return self._publish(self._build(UpdateState.ACTIVE).model_copy(update=named))

    def rejected(self, exc: ManifestError, manifest: Manifest | None = None) -> Publish:
        """Report a refused manifest; ``manifest`` only if its signature verified."""
        log.warning("manifest rejected (%s): %s", exc.reason, exc)
        message = str(exc)[:MAX_MESSAGE]
        variant = None
        if manifest is not None:
            try:
                variant = select_variant(manifest, self.accelerators)
            except ManifestError:
                variant = None  # refused for its accelerator: no variant to name
        return self.report(
            UpdateState.REJECTED,
            manifest,
            variant,
            step="verifying",
            reason=exc.reason,
            message=message,
        )

    def known_bad(
        self, manifest: Manifest, variant: ModelVariant, bad: Mapping[str, Any]
    ) -> Publish:
        """Report a model that failed before without downloading or checking it again."""
        message = (
            f"this model failed at {bad['step']} before (as v{bad['version']}: "
            f"{bad['message']}); not tried again - publish it with a higher version to retry"
        )
        log.warning("update to %s v%s refused: %s", manifest.name, manifest.version, message)
        return self.report(
            UpdateState.FAILED,
            manifest,
            variant,
            step=str(bad["step"]),
            reason=str(bad["reason"]),
            message=message[:MAX_MESSAGE],
        )

    def failed(
        self, manifest: Manifest, variant: ModelVariant, step: str, reason: str, exc: Exception
    ) -> Publish:
        """Report an update that failed at ``step`` (the previous model keeps serving)."""
        log.warning("update to %s v%s failed at %s: %s", manifest.name, manifest.version, step, exc)
        return self.report(
            UpdateState.FAILED,
            manifest,
            variant,
            step=step,
            reason=reason,
            message=str(exc)[:MAX_MESSAGE],
        )

    def not_news(self, manifest: Manifest) -> bool:
        """True for a signed manifest no newer than the active model: change nothing.

        No refusal is reported for it (protocol section 8.1): a group copy of the canary's
        manifest, or an old one replayed or left retained on a desired topic, must not
        overwrite ``active`` with ``rejected``/``rollback``. An older one is counted.
        """
        active = self.store.active()
        if active is None or manifest.version > active.version:
            return False
        shas = {v.sha256 for v in manifest.variants}
        if manifest.version == active.version and active.sha256 in shas:
            log.debug("manifest %s v%s is the model serving now", manifest.name, manifest.version)
            return True
        log.warning(
            "ignoring manifest %s v%s: not newer than the active %s v%s (replayed, or a stale "
            "retained desired topic)",
            manifest.name,
            manifest.version,
            active.name,
            active.version,
        )
        last = {
            "name": manifest.name,
            "version": manifest.version,
            "active_version": active.version,
            "ts": self.clock(),
        }
        try:
            self.store.note_ignored(last)
        except OSError as exc:
            log.warning("cannot count the ignored manifest: %s", exc)
        return True

    def serving_failed(self, reason: str, message: str) -> Publish | None:
        """The active model failed while serving (``failed_on_inputs``, ``crash_loop``).

        It is remembered as bad (its retained manifest is not installed again), the
        previous model serves again (``StateStore.revert``; none left: nothing is active)
        and the failure is reported: state ``failed``, step ``serving``. The caller loads
        the model now active. None if nothing was active.
        """
        active = self.store.active()
        if active is None:
            return None
        document = {k: v for k, v in active.manifest.items() if not k.startswith("_")}
        try:
            manifest = Manifest.model_validate(document)
            variant = next(v for v in manifest.variants if v.sha256 == active.sha256)
        except (ValueError, StopIteration):
            manifest, variant = None, None
        try:
            previous = self.store.revert()
        except OSError as err:
            log.error("cannot switch away from the failed model: %s", err)  # noqa: TRY400
            previous = None
        now = f"v{previous.version} serves again" if previous else "no model is active now"
        exc = DeviceError(f"{active.name} v{active.version}: {message}; {now}")
        if manifest is None or variant is None:  # a pointer the agent did not write
            log.error("stored model %s failed while serving: %s", active.sha256, exc)
            return None
        self.remember_bad(manifest, variant, "serving", reason, exc)
        return self.failed(manifest, variant, "serving", reason, exc)

    def remember_bad(
        self, manifest: Manifest, variant: ModelVariant, step: str, reason: str, exc: Exception
    ) -> None:
        """Record a model that failed its check or activation, so it is not tried again."""
        record = {
            "version": manifest.version,
            "name": manifest.name,
            "step": step,
            "reason": reason,
            "message": str(exc)[:MAX_BAD_MESSAGE],
        }
        try:
            self.store.remember_bad_model(variant.sha256, record)
        except OSError as err:
            log.warning("cannot remember the failed model %s: %s", variant.sha256, err)

    def _build(
        self,
        state: UpdateState,
        manifest: Manifest | None = None,
        variant: ModelVariant | None = None,
        **extra: Any,  # noqa: ANN401 - Reported's optional fields
    ) -> Reported:
        self.state = state
        active = self.store.active()
        fields: dict[str, Any] = {
            "device_id": self.device_id,
            "state": state,
            "active_version": active.version if active else None,
            "held": held_models(self.store),  # also [] : says "I take v2 manifests"
            "ts": self.clock(),
        }
        if manifest is not None:
            fields |= {"model_name": manifest.name, "version": manifest.version}
        if variant is not None:
            fields["sha256"] = variant.sha256
        if "progress" not in extra:
            whole = state in WHOLE_FILE_STATES or (
                state is UpdateState.FAILED and extra.get("step") in WHOLE_FILE_STEPS
            )
            fields["progress"] = 1.0 if whole else 0.0
        return Reported.model_validate(fields | extra)

    def _publish(self, report: Reported) -> Publish:
        self.last = report
        return Publish(self.topic, encode(report), retain=True)
