"""The over-the-air update state machine, separate from MQTT: feed it events, it returns actions.

States (``edgefleet.shared.messages.UpdateState``)::

    idle/active --desired--> verifying --ok--> downloading --complete--> verifying (sha256)
        --> health_check --> activating --> active
    any step fails: the previous model keeps serving; state rejected (manifest refused:
    reason = ManifestError code) or failed (step + reason), reported retained.

The machine does its own file I/O through :class:`StateStore` (chunks and the reassembler
state saved as they arrive, so a restart resumes) and runs the injected health check and
activation hook;
everything that touches the network comes back as :class:`Publish` / :class:`Subscribe`
/ :class:`Unsubscribe` actions for the driver in ``agent.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.device.bounded import RecentSet
from edgefleet.device.errors import DeviceError, HealthCheckError
from edgefleet.device.faults import fault
from edgefleet.device.store import (
    PartFileChunkStore,
    Pointer,
    StateStore,
    atomic_write,
    grow_in_place,
    sha256_file,
)
from edgefleet.shared.chunks import Reassembler
from edgefleet.shared.errors import ChunkError, DecodeError, IntegrityError, ManifestError
from edgefleet.shared.manifest import (
    Manifest,
    ModelVariant,
    open_envelope,
    select_variant,
    verify_manifest,
)
from edgefleet.shared.messages import ChunkRequest, Reported, UpdateState, encode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edgefleet.shared.topics import Topics

log = logging.getLogger(__name__)

MAX_REQUEST_INDEXES = 4096
SEEN_ENVELOPES = 256
STATE_FILE = "reassembler.state"
PART_FILE = "model.part"  # the chunks at their places; renamed into models/ when verified
MANIFEST_FILE = "manifest.signed"
# The reassembler state is saved after every new chunk (exact if the process dies) and
# fsynced every this many seconds of a download (100 agents downloading at once on one
# disk spent more time in these fsyncs than in anything else): a checkpoint is a whole
# new file (temp, fsync, rename), the saves in between grow it in place (one pwrite: the
# state only gets longer). Chunks are never fsynced. After a power cut the resumed
# download checks each chunk the state lists against its sha256 and fetches again what
# did not reach the disk; a state that does not parse starts the download over. The
# finished file is fsynced when it is staged.
CHECKPOINT_S = 5.0


@dataclass(frozen=True)
class Publish:
    """Publish ``payload`` on ``topic``."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Subscribe:
    """Subscribe to ``topic_filter`` at QoS 1."""

    topic_filter: str


@dataclass(frozen=True)
class Unsubscribe:
    """Unsubscribe from ``topic_filter``."""

    topic_filter: str


Action = Publish | Subscribe | Unsubscribe
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


@dataclass
class _Job:
    manifest: Manifest
    envelope_sha: str
    variant: ModelVariant
    reassembler: Reassembler
    directory: Path
    last_activity: float
    reported_progress: float = 0.0
    requests: int = 0
    synced_at: float = 0.0  # when the state was last saved with an fsync
    saved_size: int = 0  # bytes of the saved state (0: write a new file)


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
    state: UpdateState = UpdateState.IDLE
    last_report: Reported | None = None
    _job: _Job | None = None
    _check: _Check | None = None
    # Envelopes handled in this run; an LRU, so a flood of distinct ones cannot grow it.
    _seen: RecentSet = field(default_factory=lambda: RecentSet(SEEN_ENVELOPES))

    # -- events -----------------------------------------------------------------------

    def subscriptions(self) -> list[Action]:
        """What to subscribe to on every (re)connect."""
        topics = self.settings.topics
        filters = [topics.desired_device(self.settings.device_id)]
        filters += [topics.desired_group(g) for g in self.settings.groups]
        if self._job is not None:
            filters.append(topics.chunks_filter(self._job.variant.sha256))
        return [Subscribe(f) for f in filters]

    def start(self) -> list[Action]:
        """Report where the device stands after a (re)start."""
        active = self.store.active()
        if active is None:
            return [self._report(UpdateState.IDLE)]
        self._seen.add(str(active.manifest.get("_envelope_sha256", "")))
        return [self._report_active(active)]

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
            return [self._rejected(exc)]
        if self._not_news(manifest):
            return []
        self.state = UpdateState.VERIFYING
        try:
            variant = self._verify(data)
        except ManifestError as exc:
            return [self._rejected(exc, manifest)]
        fault("after_verify")
        return self._begin(manifest, variant, data, envelope_sha)

    def on_chunk(self, raw: bytes) -> list[Action]:
        """A chunk arrived on the current download's chunk topic."""
        job = self._job
        if job is None:
            return []
        try:
            new = job.reassembler.add(raw)
            if new:
                self._save_state(job)
        except ChunkError as exc:
            log.info("ignoring a chunk that does not belong: %s", exc)
            new = False
        except OSError as exc:
            return self._storage_failed(job, exc)
        if not new:
            return []
        fault("after_chunk_write")
        job.last_activity = self.clock()
        if job.reassembler.complete:
            return self._finish_download(job)
        if job.reassembler.progress - job.reported_progress >= 0.1:  # noqa: PLR2004
            job.reported_progress = job.reassembler.progress
            return [self._report(UpdateState.DOWNLOADING, job.manifest, job.variant)]
        return []

    def tick(self) -> list[Action]:
        """Periodic: a finished health check; ask again for missing chunks after a pause."""
        job = self._job
        now = self.clock()
        if job is None or now - job.last_activity < self.settings.chunk_timeout_s:
            return self.poll_health()
        job.last_activity = now
        job.requests += 1
        missing = job.reassembler.missing()[:MAX_REQUEST_INDEXES]
        request = ChunkRequest(
            device_id=self.settings.device_id, sha256=job.variant.sha256, indexes=missing
        )
        topic = self.settings.topics.chunk_request(self.settings.device_id)
        return [Publish(topic, encode(request))]

    # -- steps ------------------------------------------------------------------------

    def _not_news(self, manifest: Manifest) -> bool:
        """True for a signed manifest no newer than the active model: change nothing.

        The retained report keeps saying what the device does (protocol section 8.1): a
        group copy of the canary's manifest, or an old one replayed or left retained on a
        desired topic, must not overwrite ``active`` with ``rejected``/``rollback``.
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
        )
        return select_variant(manifest, self.settings.accelerators)

    def _begin(
        self, manifest: Manifest, variant: ModelVariant, data: bytes, envelope_sha: str
    ) -> list[Action]:
        bad = self.store.bad_models().get(variant.sha256)
        if bad is not None and manifest.version <= bad["version"]:
            return [self._known_bad(manifest, variant, bad)]
        check = self._check
        if check and (check.variant.sha256, check.manifest.version) == (
            variant.sha256,
            manifest.version,
        ):
            return []  # that model is being checked already (e.g. its group copy arrived)
        actions = self._abandon_job()
        if self.store.has_model(variant.sha256):
            # Already here (e.g. a rollback to the previous model): no download needed.
            # A crash after staging leaves the chunks behind: drop them now.
            self.store.drop_download(variant.sha256)
            return actions + self._install(manifest, variant, envelope_sha)
        directory = self.store.download_dir(variant.sha256)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / MANIFEST_FILE, data)
        job = _Job(
            manifest,
            envelope_sha,
            variant,
            self._reassembler(variant, directory),
            directory,
            self.clock(),
            synced_at=self.clock(),
        )
        self._job = job
        self.state = UpdateState.DOWNLOADING
        if job.reassembler.complete:
            return actions + self._finish_download(job)
        self.prepare_check()
        # Subscribe first: once the host sees "downloading", chunks it sends will arrive.
        actions.append(Subscribe(self.settings.topics.chunks_filter(variant.sha256)))
        actions.append(self._report(UpdateState.DOWNLOADING, manifest, variant))
        return actions

    def _save_state(self, job: _Job) -> None:
        now = self.clock()
        state = job.reassembler.state()
        path = job.directory / STATE_FILE
        # A complete download is staged (fsynced) next: no checkpoint for it.
        checkpoint = not job.reassembler.complete and now - job.synced_at >= CHECKPOINT_S
        if checkpoint or not 0 < job.saved_size <= len(state):
            atomic_write(path, state, durable=checkpoint)
            job.synced_at = now if checkpoint else job.synced_at
        else:
            grow_in_place(path, state)
        job.saved_size = len(state)

    def _reassembler(self, variant: ModelVariant, directory: Path) -> Reassembler:
        chunk_store = PartFileChunkStore(
            directory / PART_FILE, size=variant.size, chunk_size=variant.chunk_size
        )
        saved = directory / STATE_FILE
        if saved.exists():
            try:
                restored = Reassembler.restore(
                    _stored_chunks(saved.read_bytes(), chunk_store), chunk_store
                )
            except (DecodeError, ChunkError) as exc:
                log.warning("partial download state unusable, starting over: %s", exc)
            else:
                wanted = (variant.sha256, variant.size, variant.chunk_size)
                if (restored.sha256, restored.size, restored.chunk_size) == wanted:
                    return restored
                log.warning("partial download state is for another file, starting over")
            chunk_store.clear()
        return Reassembler(
            sha256=variant.sha256,
            size=variant.size,
            chunk_size=variant.chunk_size,
            store=chunk_store,
        )

    def _abandon_job(self) -> list[Action]:
        # A check under way is for a model this newer manifest replaces: its outcome is
        # dropped (the child still ends by itself, bounded by the health-check timeout).
        self._check = None
        job, self._job = self._job, None
        if job is None:
            return []
        return [Unsubscribe(self.settings.topics.chunks_filter(job.variant.sha256))]

    def _finish_download(self, job: _Job) -> list[Action]:
        actions = self._abandon_job()
        self.state = UpdateState.VERIFYING
        try:
            self._verify_part(job)
        except OSError as exc:
            return [*actions, *self._storage_failed(job, exc)]
        except IntegrityError as exc:
            # Chunks were damaged: start over, and let the next delivery of the same
            # manifest (e.g. after a reconnect) try again.
            self.store.drop_download(job.variant.sha256)
            self._seen.discard(job.envelope_sha)
            return [
                *actions,
                self._failed(job.manifest, job.variant, "verifying", "integrity", exc),
            ]
        try:
            self.store.stage_part(job.variant.sha256, job.directory / PART_FILE, job.variant.size)
        except OSError as exc:
            return [*actions, *self._storage_failed(job, exc)]
        fault("after_stage")
        self.store.drop_download(job.variant.sha256)
        return actions + self._install(job.manifest, job.variant, job.envelope_sha)

    def _verify_part(self, job: _Job) -> None:
        """Check the whole downloaded file against the manifest's sha256, in one pass.

        That file, cut to its size, is what ``stage_part`` renames into ``models/``. If it
        does not match, the chunk-by-chunk check says which chunks are damaged.

        Raises:
            IntegrityError: it does not match (the damaged chunks, or all, are forgotten).
            OSError: it cannot be read.
        """
        part = job.directory / PART_FILE
        size = job.variant.size
        if part.stat().st_size == size and sha256_file(part) == job.variant.sha256:
            return
        job.reassembler.verify()  # raises, naming the damaged chunks (or all of them)
        job.reassembler.reset()
        msg = f"{part.name} is not the manifest's {size} bytes; all chunks discarded"
        raise IntegrityError(msg, indexes=tuple(range(job.reassembler.count)))

    def _storage_failed(self, job: _Job, exc: OSError) -> list[Action]:
        # Disk full or an I/O error: free what the download took (the old model keeps
        # serving); the same manifest is tried again on its next delivery.
        actions = self._abandon_job()
        self.store.drop_download(job.variant.sha256)
        self._seen.discard(job.envelope_sha)
        full = exc.errno in {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
        reason = "disk_full" if full else "io_error"
        return [*actions, self._failed(job.manifest, job.variant, "downloading", reason, exc)]

    def _install(
        self, manifest: Manifest, variant: ModelVariant, envelope_sha: str
    ) -> list[Action]:
        check = _Check(manifest, variant, envelope_sha, self.store.model_path(variant.sha256))
        self._check = check
        actions = [self._report(UpdateState.HEALTH_CHECK, manifest, variant)]
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
            self._remember_bad(manifest, variant, "health_check", "health_check", exc)
            return [self._failed(manifest, variant, "health_check", "health_check", exc)]
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
        return self._failed(check.manifest, check.variant, "health_check", reason, exc)

    def _switch(
        self, manifest: Manifest, variant: ModelVariant, envelope_sha: str, path: Path
    ) -> list[Action]:
        actions: list[Action] = []
        self.state = UpdateState.ACTIVATING
        actions.append(self._report(UpdateState.ACTIVATING, manifest, variant))
        try:
            pointer = self._activate(manifest, variant, envelope_sha, path)
        except (DeviceError, OSError) as exc:
            if isinstance(exc, DeviceError):  # the model itself would not load: remember it
                self._remember_bad(manifest, variant, "activating", "io_error", exc)
            return [*actions, self._failed(manifest, variant, "activating", "io_error", exc)]
        fault("after_activate_before_report")
        return [*actions, self._report_active(pointer)]

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

    # -- reports ----------------------------------------------------------------------

    def _report(
        self,
        state: UpdateState,
        manifest: Manifest | None = None,
        variant: ModelVariant | None = None,
        **extra: Any,  # noqa: ANN401 - Reported's optional fields
    ) -> Publish:
        self.state = state
        active = self.store.active()
        fields: dict[str, Any] = {
            "device_id": self.settings.device_id,
            "state": state,
            "active_version": active.version if active else None,
            "ts": self.clock(),
        }
        if manifest is not None:
            fields |= {"model_name": manifest.name, "version": manifest.version}
        if variant is not None:
            fields["sha256"] = variant.sha256
        if self._job is not None and state == UpdateState.DOWNLOADING:
            fields["progress"] = round(self._job.reassembler.progress, 4)
        report = Reported.model_validate(fields | extra)
        self.last_report = report
        topic = self.settings.topics.reported(self.settings.device_id)
        return Publish(topic, encode(report), retain=True)

    def _report_active(self, pointer: Pointer) -> Publish:
        self.state = UpdateState.ACTIVE
        report = self._report(UpdateState.ACTIVE)
        extra = {"model_name": pointer.name, "version": pointer.version, "sha256": pointer.sha256}
        return self._with(report, extra)

    def _with(self, publish: Publish, extra: dict[str, Any]) -> Publish:
        assert self.last_report is not None  # noqa: S101 - set by _report just before
        report = self.last_report.model_copy(update=extra)
        self.last_report = report
        return Publish(publish.topic, encode(report), retain=True)

    def _rejected(self, exc: ManifestError, manifest: Manifest | None = None) -> Publish:
        """Report a refused manifest; ``manifest`` only if its signature verified."""
        log.warning("manifest rejected (%s): %s", exc.reason, exc)
        message = str(exc)[:4000]
        variant = None
        if manifest is not None:
            try:
                variant = select_variant(manifest, self.settings.accelerators)
            except ManifestError:
                variant = None  # refused for its accelerator: no variant to name
        return self._report(
            UpdateState.REJECTED,
            manifest,
            variant,
            step="verifying",
            reason=exc.reason,
            message=message,
        )

    def _remember_bad(
        self, manifest: Manifest, variant: ModelVariant, step: str, reason: str, exc: Exception
    ) -> None:
        record = {
            "version": manifest.version,
            "name": manifest.name,
            "step": step,
            "reason": reason,
            "message": str(exc)[:1000],
        }
        try:
            self.store.remember_bad_model(variant.sha256, record)
        except OSError as err:
            log.warning("cannot remember the failed model %s: %s", variant.sha256, err)

    def _known_bad(
        self, manifest: Manifest, variant: ModelVariant, bad: Mapping[str, Any]
    ) -> Publish:
        """Report a model that failed before without downloading or checking it again."""
        message = (
            f"this model failed at {bad['step']} before (as v{bad['version']}: "
            f"{bad['message']}); not tried again - publish it with a higher version to retry"
        )
        log.warning("update to %s v%s refused: %s", manifest.name, manifest.version, message)
        return self._report(
            UpdateState.FAILED,
            manifest,
            variant,
            step=str(bad["step"]),
            reason=str(bad["reason"]),
            message=message[:4000],
        )

    def _failed(
        self, manifest: Manifest, variant: ModelVariant, step: str, reason: str, exc: Exception
    ) -> Publish:
        log.warning("update to %s v%s failed at %s: %s", manifest.name, manifest.version, step, exc)
        return self._report(
            UpdateState.FAILED, manifest, variant, step=step, reason=reason, message=str(exc)[:4000]
        )


def _stored_chunks(state: bytes, chunks: PartFileChunkStore) -> bytes:
    """The saved reassembler state without the chunks that are not on disk as it says.

    Chunks are not fsynced: after a power cut a chunk the state lists may be missing,
    empty or stale. Those are dropped here (and fetched again), never used. A state that
    is not even shaped right is returned as it is, for ``Reassembler.restore`` to refuse.
    """
    try:
        raw = json.loads(state)
        entries = raw["received"]
        kept = [e for e in entries if chunks.matches(int(e[0]), bytes.fromhex(e[1]))]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return state
    if len(kept) == len(entries):
        return state
    log.warning(
        "%d of %d saved chunks are missing or damaged on disk (power cut?): fetching them again",
        len(entries) - len(kept),
        len(entries),
    )
    raw["received"] = kept
    return json.dumps(raw).encode()
