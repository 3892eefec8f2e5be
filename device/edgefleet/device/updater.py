"""The over-the-air update state machine, separate from MQTT: feed it events, it returns actions.

States (``edgefleet.shared.messages.UpdateState``), each reported (docs/protocol.md 4.2)::

    idle/active --desired, manifest checks (not a reported state)--> downloading
        --complete--> verifying (progress 1.0; sha256) --> health_check --> activating
        --> active    (a model file already here starts at verifying)
    any step fails: the previous model keeps serving; state rejected (manifest refused:
    reason = ManifestError code) or failed (step + reason), reported retained.

The machine does its own file I/O through :class:`StateStore` and a
:class:`~edgefleet.device.download.Download` (chunks and the reassembler state saved as
they arrive, so a restart resumes) and runs the injected health check and activation hook;
everything that touches the network comes back as :class:`Publish` / :class:`Subscribe`
/ :class:`Unsubscribe` actions (:mod:`edgefleet.device.actions`) for the driver in
``agent.py``, the reports among them built by
:class:`~edgefleet.device.update_reports.Reporter`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.device.actions import Action, Publish, Subscribe, Unsubscribe
from edgefleet.device.bounded import RecentSet
from edgefleet.device.delta import DeltaDownload, Job, chunk_filters
from edgefleet.device.download import CHECKPOINT_S, Download
from edgefleet.device.errors import DeviceError, HealthCheckError
from edgefleet.device.faults import fault
from edgefleet.device.store import Pointer, StateStore
from edgefleet.device.update_reports import Reporter
from edgefleet.shared.chunks import MAX_CHUNKS
from edgefleet.shared.errors import IntegrityError, ManifestError, TooManyChunksError
from edgefleet.shared.manifest import (
    Manifest,
    ModelVariant,
    open_envelope,
    select_variant,
    verify_manifest,
)
from edgefleet.shared.messages import Reported, UpdateState, encode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edgefleet.shared.topics import Topics

__all__ = [
    "CHECKPOINT_S",
    "Action",
    "Activate",
    "HealthCheck",
    "Publish",
    "Spawn",
    "Subscribe",
    "Unsubscribe",
    "Updater",
    "UpdaterSettings",
    "run_inline",
]

log = logging.getLogger(__name__)

SEEN_ENVELOPES = 256

HealthCheck = Callable[[Path, Manifest], Any]
Activate = Callable[[Path, Manifest], None]
# Runs a job, here or elsewhere: the agent hands health checks to a worker thread so that
# inference goes on meanwhile; ``poll_health`` picks up the outcome on the main thread.
Spawn = Callable[[Callable[[], None]], None]


def run_inline(job: Callable[[], None]) -> None:
    """The default ``Spawn``: run the job now (the outcome is ready for ``poll_health``)."""
    job()


@dataclass(frozen=True)
class UpdaterSettings:
    """What the updater needs to know about this device."""

    device_id: str
    groups: Sequence[str]
    topics: Topics
    trusted_keys: Mapping[str, Ed25519PublicKey]
    accelerators: tuple[str, ...] = ("cpu",)
    max_model_bytes: int = 64 * 2**20
    chunk_timeout_s: float = 5.0
    max_chunks: int = MAX_CHUNKS  # [safety]: bounds a manifest asks the device to track
    min_chunk_size: int = 1
    max_outputs: int | None = 100_000
    max_labels: int | None = 10_000


@dataclass
class _Check:
    """A health check under way; only ``outcome`` is touched by the worker."""

    manifest: Manifest
    variant: ModelVariant
    envelope_sha: str
    path: Path
    outcome: Future[Any] = field(default_factory=Future)


@dataclass
class Updater:
    """The update state machine for one device (see the module docstring)."""

    settings: UpdaterSettings
    store: StateStore
    health_check: HealthCheck
    on_activate: Activate
    clock: Callable[[], float] = time.time
    spawn: Spawn = run_inline
    # Called when a download begins: a health check will follow (the agent warms its worker).
    prepare_check: Callable[[], None] = lambda: None
    _job: Job | None = None
    _check: _Check | None = None
    # Envelopes handled in this run; an LRU, so a flood of distinct ones cannot grow it.
    _seen: RecentSet = field(default_factory=lambda: RecentSet(SEEN_ENVELOPES))
    _reports: Reporter = field(init=False, repr=False)
    # A model replaced at start-up (safe mode): start() reports that instead of "active".
    _held: Publish | None = None

    def __post_init__(self) -> None:
        device_id = self.settings.device_id
        self._reports = Reporter(
            device_id=device_id,
            topic=self.settings.topics.reported(device_id),
            store=self.store,
            clock=self.clock,
            accelerators=self.settings.accelerators,
        )

    @property
    def state(self) -> UpdateState:
        """Where the update stands (the state of the last report, or a step under way)."""
        return self._reports.state

    @state.setter
    def state(self, state: UpdateState) -> None:
        self._reports.state = state

    @property
    def last_report(self) -> Reported | None:
        """The last report made; the driver publishes it again on every (re)connect."""
        return self._reports.last

    # -- events -----------------------------------------------------------------------

    def subscriptions(self) -> list[Action]:
        """What to subscribe to on every (re)connect."""
        topics = self.settings.topics
        filters = [topics.desired_device(self.settings.device_id)]
        filters += [topics.desired_group(g) for g in self.settings.groups]
        if self._job is not None:
            filters += chunk_filters(self._job, topics)
        return [Subscribe(f) for f in filters]

    def start(self) -> list[Action]:
        """Report where the device stands after a (re)start."""
        if self._held is not None:
            return [self._held]
        active = self.store.active()
        if active is None:
            return [self._reports.report(UpdateState.IDLE)]
        self._seen.add(str(active.manifest.get("_envelope_sha256", "")))
        return [self._reports.active(active)]

    def on_desired(self, data: bytes) -> list[Action]:
        """A (retained) signed manifest arrived on a desired topic."""
        if not data:
            return []  # a cleared retained message
        envelope_sha = hashlib.sha256(data).hexdigest()
        if envelope_sha in self._seen:
            return []
        self._seen.add(envelope_sha)
        try:
            # Only fields under a valid signature may be reported back (name, version).
            manifest = open_envelope(data, trusted_keys=self.settings.trusted_keys)
        except ManifestError as exc:
            return [self._reports.rejected(exc)]
        skip = self._skip(manifest)
        if skip is not None:
            return skip
        try:  # the manifest's checks (section 6): not a reported state
            variant = self._verify(data)
        except ManifestError as exc:
            return [self._reports.rejected(exc, manifest)]
        fault("after_verify")
        return self._begin(manifest, variant, data, envelope_sha)

    def on_chunk(self, raw: bytes) -> list[Action]:
        """A chunk arrived on the current download's chunk topic."""
        job = self._job
        if job is None:
            return []
        try:
            new = job.add(raw, self.clock())
        except OSError as exc:
            return self._storage_failed(job, exc)
        if not new:
            return []
        fault("after_chunk_write")
        job.last_activity = self.clock()
        if job.complete:
            return self._finish_download(job)
        if job.progress_due():
            return [self._report_progress(job)]
        return []

    def tick(self) -> list[Action]:
        """Periodic: a finished health check; ask again for missing chunks after a pause."""
        job = self._job
        now = self.clock()
        if job is None or now - job.last_activity < self.settings.chunk_timeout_s:
            return self.poll_health()
        request = job.request_missing(self.settings.device_id, now)
        topic = self.settings.topics.chunk_request(self.settings.device_id)
        return [Publish(topic, encode(request))]

    # -- steps ------------------------------------------------------------------------

    def _skip(self, manifest: Manifest) -> list[Action] | None:
        """Instead of checking ``manifest``: not news, a known-bad report, None (check).

        Known-bad models come before the anti-rollback check: a model reverted after it
        failed while serving is below the floor, yet is reported as failed, not rollback.
        """
        if self._reports.not_news(manifest):
            return self._current()
        try:
            variant = select_variant(manifest, self.settings.accelerators)
        except ManifestError:
            return None  # refused by _verify, with its reason
        bad = self.store.bad_models().get(variant.sha256)
        if bad is not None and manifest.version <= bad["version"]:
            return [self._reports.known_bad(manifest, variant, bad)]
        return None

    def _current(self) -> list[Action]:
        """Report what the device does now, unless the last report says so already.

        After a manifest that is not news the retained ``reported`` must say what the
        device does (protocol section 8.1), not an earlier refusal or failure: the update
        under way, else the active model.
        """
        job, check, active = self._job, self._check, self.store.active()
        last = self.last_report.state if self.last_report is not None else None
        if job is not None:
            return [] if last is UpdateState.DOWNLOADING else [self._report_progress(job)]
        if check is not None:
            if last is UpdateState.HEALTH_CHECK:
                return []
            return [self._reports.report(UpdateState.HEALTH_CHECK, check.manifest, check.variant)]
        if active is None or last is UpdateState.ACTIVE:
            return []
        return [self._reports.active(active)]

    def serving_failed(self, reason: str, message: str, *, hold: bool = False) -> list[Action]:
        """The active model failed while serving: revert and report (``Reporter.serving_failed``).

        ``hold``: report it from ``start`` too (safe mode, before the agent runs).
        """
        report = self._reports.serving_failed(reason, message)
        if report is None:
            return []
        if hold:
            self._held = report
        return [report]

    def _verify(self, data: bytes) -> ModelVariant:
        """The device's policy checks (signature again, then section 6 in order)."""
        version, time_floor = self.store.floor()
        manifest = verify_manifest(
            data,
            trusted_keys=self.settings.trusted_keys,
            device_id=self.settings.device_id,
            groups=self.settings.groups,
            current_version=version,
            now=self.clock(),
            accelerators=self.settings.accelerators,
            max_model_bytes=self.settings.max_model_bytes,
            time_floor=time_floor,
            max_chunks=self.settings.max_chunks,
            min_chunk_size=self.settings.min_chunk_size,
            max_outputs=self.settings.max_outputs,
            max_labels=self.settings.max_labels,
        )
        return select_variant(manifest, self.settings.accelerators)

    def _begin(
        self, manifest: Manifest, variant: ModelVariant, data: bytes, envelope_sha: str
    ) -> list[Action]:
        check = self._check
        if check and (check.variant.sha256, check.manifest.version) == (
            variant.sha256,
            manifest.version,
        ):
            return []  # that model is being checked already (e.g. its group copy arrived)
        actions = self._abandon_job()
        if self.store.has_model(variant.sha256):
            # Already here (e.g. a rollback to the previous model): no download needed.
            # A crash after staging leaves the chunks behind: drop them now. Reported as
            # verifying all the same: every accepted update goes through the same states.
            self.store.drop_download(variant.sha256)
            actions.append(self._reports.report(UpdateState.VERIFYING, manifest, variant))
            return actions + self._install(manifest, variant, envelope_sha)
        directory = self.store.download_dir(variant.sha256)
        job: Job
        try:
            if manifest.v == 2:  # noqa: PLR2004 - delta: copy what is here, fetch the rest
                job = DeltaDownload.start(
                    manifest, variant, data, envelope_sha, directory=directory,
                    now=self.clock(), store=self.store,
                )  # fmt: skip
            else:
                job = Download.start(
                    manifest,
                    variant,
                    data,
                    envelope_sha,
                    directory=directory,
                    now=self.clock(),
                    max_chunks=self.settings.max_chunks,
                )
        except OSError as exc:
            failed = self._reports.failed(manifest, variant, "downloading", "io_error", exc)
            return [*actions, failed]
        except ValueError as exc:  # the reassembler refuses the transfer (a bound)
            self.store.drop_download(variant.sha256)
            return [*actions, self._reports.rejected(TooManyChunksError(str(exc)), manifest)]
        self._job = job
        self.state = UpdateState.DOWNLOADING
        if job.complete:
            return actions + self._finish_download(job)
        self.prepare_check()
        # Subscribe first: once the host sees "downloading", chunks it sends will arrive.
        actions += [Subscribe(f) for f in chunk_filters(job, self.settings.topics)]
        actions.append(self._report_progress(job))
        return actions

    def _abandon_job(self) -> list[Action]:
        # A check under way is for a model this newer manifest replaces: its outcome is
        # dropped (the child still ends by itself, bounded by the health-check timeout).
        self._check = None
        job, self._job = self._job, None
        if job is None:
            return []
        return [Unsubscribe(f) for f in chunk_filters(job, self.settings.topics)]

    def _finish_download(self, job: Job) -> list[Action]:
        actions = self._abandon_job()
        # Every chunk is in: reported (progress 1.0) before the whole file is checked.
        actions.append(self._reports.report(UpdateState.VERIFYING, job.manifest, job.variant))
        try:
            job.verify()
        except OSError as exc:
            return [*actions, *self._storage_failed(job, exc)]
        except IntegrityError as exc:
            # Chunks were damaged: start over, and let the next delivery of the same
            # manifest (e.g. after a reconnect) try again.
            self.store.drop_download(job.variant.sha256)
            self._seen.discard(job.envelope_sha)
            return [
                *actions,
                self._reports.failed(job.manifest, job.variant, "verifying", "integrity", exc),
            ]
        try:
            self.store.stage_part(job.variant.sha256, job.part, job.variant.size)
        except OSError as exc:
            return [*actions, *self._storage_failed(job, exc)]
        fault("after_stage")
        self.store.drop_download(job.variant.sha256)
        return actions + self._install(job.manifest, job.variant, job.envelope_sha)

    def _storage_failed(self, job: Job, exc: OSError) -> list[Action]:
        # Disk full or an I/O error: free what the download took (the old model keeps
        # serving); the same manifest is tried again on its next delivery.
        actions = self._abandon_job()
        self.store.drop_download(job.variant.sha256)
        self._seen.discard(job.envelope_sha)
        full = exc.errno in {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
        reason = "disk_full" if full else "io_error"
        return [
            *actions,
            self._reports.failed(job.manifest, job.variant, "downloading", reason, exc),
        ]

    def _install(
        self, manifest: Manifest, variant: ModelVariant, envelope_sha: str
    ) -> list[Action]:
        check = _Check(manifest, variant, envelope_sha, self.store.model_path(variant.sha256))
        self._check = check
        actions = [self._reports.report(UpdateState.HEALTH_CHECK, manifest, variant)]
        self.spawn(lambda: self._run_check(check))
        return actions + self.poll_health()

    def _run_check(self, check: _Check) -> None:
        # On the worker: run the (blocking) check; nothing else is touched here.
        try:
            check.outcome.set_result(self.health_check(check.path, check.manifest))
        except Exception as exc:  # noqa: BLE001 - every error is the check's verdict
            check.outcome.set_exception(exc)

    def poll_health(self) -> list[Action]:
        """If the health check under way has finished: activate the model, or report why not.

        Called on the driver's thread when the worker says it is done (and on every tick).
        """
        check = self._check
        if check is None or not check.outcome.done():
            return []
        self._check = None
        manifest, variant = check.manifest, check.variant
        exc = check.outcome.exception()
        if exc is not None:
            if not isinstance(exc, HealthCheckError):
                exc = HealthCheckError(f"the health check itself failed: {exc}", reason="error")
            if not exc.verdict:
                return [self._no_verdict(check, exc)]
            self.store.prune_models()
            self._reports.remember_bad(manifest, variant, "health_check", "health_check", exc)
            return [self._reports.failed(manifest, variant, "health_check", "health_check", exc)]
        return self._switch(manifest, variant, check.envelope_sha, check.path)

    def _no_verdict(self, check: _Check, exc: HealthCheckError) -> Publish:
        """A timeout or a kill (e.g. OOM under load) says nothing about the model: retry.

        Not remembered as bad; the staged file is kept, so the next delivery of the same
        envelope (reconnect) or the restart checks it again without a download.
        """
        self._seen.discard(check.envelope_sha)
        reason = "timeout" if exc.reason == "timeout" else "health_check"
        exc = HealthCheckError(
            f"{exc}; no verdict, checked again on the next delivery", reason=reason
        )
        return self._reports.failed(check.manifest, check.variant, "health_check", reason, exc)

    def _switch(
        self, manifest: Manifest, variant: ModelVariant, envelope_sha: str, path: Path
    ) -> list[Action]:
        actions: list[Action] = []
        self.state = UpdateState.ACTIVATING
        actions.append(self._reports.report(UpdateState.ACTIVATING, manifest, variant))
        try:
            pointer = self._activate(manifest, variant, envelope_sha, path)
        except (DeviceError, OSError) as exc:
            if isinstance(exc, DeviceError):  # the model itself would not load: remember it
                self._reports.remember_bad(manifest, variant, "activating", "io_error", exc)
            return [
                *actions,
                self._reports.failed(manifest, variant, "activating", "io_error", exc),
            ]
        fault("after_activate_before_report")
        return [*actions, self._reports.active(pointer)]

    def _activate(
        self, manifest: Manifest, variant: ModelVariant, envelope_sha: str, path: Path
    ) -> Pointer:
        previous = self.store.active()
        document = manifest.model_dump(mode="json")
        document["_envelope_sha256"] = envelope_sha
        pointer = Pointer(variant.sha256, manifest.name, manifest.version, document)
        self.store.activate(pointer)
        try:
            self.on_activate(path, manifest)
        except DeviceError:
            if previous is not None:
                self.store.activate(previous)  # the old model keeps serving, also after reboot
            raise
        self.store.raise_floor(manifest.version, float(manifest.created_at))
        return pointer

    def _report_progress(self, job: Job) -> Publish:
        progress = round(job.progress, 4)
        return self._reports.report(
            UpdateState.DOWNLOADING, job.manifest, job.variant, progress=progress
        )
