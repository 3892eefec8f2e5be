"""Shadow deployments on the device: a candidate model beside the active one, never activated.

The host publishes a signed shadow manifest (``shadow`` field set) on the retained
``{p}/devices/{id}/shadow`` or ``{p}/groups/{group}/shadow`` topic. This module checks it
like an update manifest (signature, target, expiry, newer than the active model, bounds),
downloads the candidate from the same retained chunk topics, checks the file's sha256 and
runs the usual health check, then loads the candidate on its own thread. The active model
keeps serving: :meth:`Shadow.offer` is called on the hot path for every classified input
and only draws a random number and, for the sampled share, appends the input to a bounded
deque: no lock, no wake-up of the candidate thread, never a wait (when the deque is full
the input is dropped and counted). The candidate thread polls the deque every
``POLL_S`` (or sooner) and takes an input only once the active path has been quiet (no
prediction) for ``[shadow] quiet_ms``: it runs in the gaps between inputs, so at most one
candidate inference (the one under way when an input arrives) overlaps an active one; that
is the bound on what a shadow adds to an active prediction. The queue holds ``[shadow]
queue`` inputs; ``[shadow] max_cpu_share`` makes the thread rest after each inference
(:class:`~edgefleet.device.config.ShadowConfig`). A candidate that finds no such gaps lets
its queue fill, and the dropped inputs say so. A summary
(:class:`~edgefleet.shared.shadow.ShadowReport`, trimmed to ``MAX_REPORT_BYTES`` by
:func:`~edgefleet.shared.shadow.fit_report`) is published, retained, on
``{p}/devices/{id}/shadow/report`` when it changes (at most every ``REPORT_S``).

Nothing here touches the updater, the active pointer or the anti-rollback floor: a
shadow candidate is never activated; promotion is an ordinary signed rollout from the host.
Comparisons live in memory: after a restart the shadow starts again from zero.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.device.actions import Action, Publish, Subscribe, Unsubscribe
from edgefleet.device.config import ShadowConfig
from edgefleet.device.download import Download
from edgefleet.device.inference import Classifier, LatencyStats
from edgefleet.device.runtime import open_model
from edgefleet.shared.errors import EdgefleetError, IntegrityError, ManifestError
from edgefleet.shared.manifest import open_envelope, select_variant, verify_manifest
from edgefleet.shared.shadow import (
    MAX_CONFUSION_LABELS,
    MAX_SAMPLES,
    LatencySummary,
    ShadowReport,
    ShadowState,
    fit_report,
)
from edgefleet.shared.topics import SHADOW_DEVICE, SHADOW_GROUP

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

    from edgefleet.device.agent import Agent
    from edgefleet.device.inference import Prediction
    from edgefleet.shared.gpr import ScanMetadata
    from edgefleet.shared.manifest import Manifest, ModelVariant

__all__ = ["FAIL_LIMIT", "REPORT_S", "SHADOW_KINDS", "Shadow"]

log = logging.getLogger(__name__)

POLL_S = 0.005  # the candidate thread looks for queued inputs this often when idle
REPORT_S = 2.0  # the retained summary is republished at most this often while it changes
FAIL_LIMIT = 20  # candidate failures (errors, NaN scores) after which the shadow ends
SHADOW_KINDS = frozenset({SHADOW_DEVICE, SHADOW_GROUP})


@dataclass
class _Item:
    array: npt.NDArray[np.generic]
    source: str
    label: str
    score: float
    latency_ms: float
    meta: ScanMetadata | None = None  # a GPR scan's metadata: the candidate sees it too


@dataclass
class _Stats:
    """What the candidate thread measures; read by the main thread under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    offered: int = 0  # offered and dropped: written by the main thread only
    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    failures: int = 0
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    diffs: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    diff_sum: float = 0.0
    active: LatencyStats = field(default_factory=LatencyStats)
    candidate: LatencyStats = field(default_factory=LatencyStats)
    samples: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))

    def add(self, item: _Item, prediction: Prediction) -> None:
        with self.lock:
            self.compared += 1
            self.agreed += prediction.label == item.label
            row = self.confusion.get(item.label)
            if row is None and len(self.confusion) < MAX_CONFUSION_LABELS:
                row = self.confusion[item.label] = {}
            if row is not None and (prediction.label in row or len(row) < MAX_CONFUSION_LABELS):
                row[prediction.label] = row.get(prediction.label, 0) + 1
            diff = prediction.score - item.score
            self.diff_sum += diff
            self.diffs.append(abs(diff))
            self.active.add(item.latency_ms)
            self.candidate.add(prediction.latency_ms)
            self.samples.append((item.source[:256], item.label[:256], prediction.label[:256]))


def _latency(stats: LatencyStats) -> LatencySummary:
    p50, p95 = stats.percentile(50), stats.percentile(95)
    return LatencySummary(
        p50_ms=None if p50 is None else round(p50, 3),
        p95_ms=None if p95 is None else round(p95, 3),
    )


class _Run:
    """One shadow candidate: its download, then its thread, queue and statistics."""

    def __init__(
        self,
        manifest: Manifest,
        variant: ModelVariant,
        envelope_sha: str,
        settings: ShadowConfig | None = None,
    ) -> None:
        settings = settings or ShadowConfig()
        self.manifest = manifest
        self.variant = variant
        self.envelope_sha = envelope_sha
        self.spec = manifest.shadow
        self.state: ShadowState = "downloading"
        self.reason: str | None = None
        self.download: Download | None = None
        self.queue: deque[_Item] = deque()  # appended by offer, popped by the thread
        self.capacity = settings.queue
        self.quiet_s = settings.quiet_ms / 1000.0  # the candidate waits this long after an input
        self.rest = 1.0 / settings.max_cpu_share - 1.0  # ... and this much of each inference
        self.last_active = 0.0  # monotonic time of the latest active prediction
        self.stats = _Stats()
        self.thread: threading.Thread | None = None
        self.rng = random.Random(os.urandom(8))  # noqa: S311 - sampling, not security
        self.stop = threading.Event()

    def finish(self, state: ShadowState, reason: str | None) -> None:
        """End the comparison (the thread, if any, drops its interpreter and exits)."""
        if self.state in {"done", "failed", "stopped"}:
            return
        self.state, self.reason = state, reason
        self.stop.set()  # the thread sees it after its current input


class Shadow:
    """The agent's shadow runner (see the module docstring); main-thread API plus one thread."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.device_id = agent.config.device_id
        self.settings = agent.config.shadow
        self.topics = agent.topics
        self.root = agent.store.root / "shadow"
        self.run: _Run | None = None
        self.source: str | None = None  # the topic the running shadow came on
        self.last: bytes | None = None  # the last report published
        self.last_body: bytes | None = None  # ... without its time: unchanged, not republished
        self.reported_at = 0.0

    # -- main thread: MQTT ----------------------------------------------------------------

    def subscriptions(self) -> list[Action]:
        """On every (re)connect: the shadow topics (and chunks of a download under way)."""
        filters = [self.topics.shadow_device(self.device_id)]
        filters += [self.topics.shadow_group(g) for g in self.agent.config.groups]
        run = self.run
        if run is not None and run.download is not None:
            filters.append(self.topics.chunks_filter(run.variant.sha256))
        actions: list[Action] = [Subscribe(f) for f in filters]
        if self.last is not None:
            actions.append(self._publish(self.last))
        return actions

    def on_manifest(self, topic: str, payload: bytes) -> list[Action]:
        """A retained shadow manifest (or an empty payload: that shadow ended)."""
        if not payload:
            if self.run is None or topic != self.source:
                return []
            return self._end("stopped", "the host ended the shadow")
        envelope_sha = hashlib.sha256(payload).hexdigest()
        if self.run is not None and self.run.envelope_sha == envelope_sha:
            return []
        try:
            manifest = self._verify(payload)
        except ManifestError as exc:
            return self._refused(payload, exc)
        actions = self._end("stopped", "replaced by a newer shadow") if self.run else []
        variant = select_variant(manifest, self.agent.accel.accelerators)
        self.run, self.source = _Run(manifest, variant, envelope_sha, self.settings), topic
        self.reported_at = 0.0
        try:
            self._forget_others(variant.sha256)
            self.run.download = Download.start(
                manifest,
                variant,
                payload,
                envelope_sha,
                directory=self.root / "download" / variant.sha256,
                now=time.time(),
                max_chunks=self.agent.config.safety.max_chunks,
            )
        except (OSError, ValueError) as exc:
            return actions + self._end("failed", f"cannot download the candidate: {exc}")
        log.info("shadow: %s v%s, sample %s", manifest.name, manifest.version, run_sample(manifest))
        filt = self.topics.chunks_filter(variant.sha256)
        return [*actions, Subscribe(filt), *self._report(force=True), *self._maybe_done()]

    def on_chunk(self, raw: bytes) -> list[Action]:
        """A chunk (any model's): taken if it belongs to the candidate being downloaded."""
        run = self.run
        if run is None or run.download is None:
            return []
        try:
            new = run.download.add(raw, time.time())
        except OSError as exc:
            return self._end("failed", f"cannot store the candidate: {exc}")
        if new:
            run.download.last_activity = time.time()
        return self._maybe_done() if new else []

    def tick(self) -> list[Action]:
        """Periodic: a stalled download asks again, the ``until`` time, the summary."""
        run = self.run
        if run is None:
            return []
        actions: list[Action] = []
        job = run.download
        timeout = self.agent.config.update.chunk_timeout_s
        if job is not None and time.time() - job.last_activity >= max(timeout, 1.0):
            job.last_activity = time.time()  # re-subscribing delivers the retained chunks again
            filt = self.topics.chunks_filter(run.variant.sha256)
            actions += [Unsubscribe(filt), Subscribe(filt)]
        spec = run.spec
        if run.state == "running" and spec is not None and spec.until and time.time() >= spec.until:
            run.finish("done", "the shadow's end time was reached")
        return actions + self._report()

    # -- hot path ------------------------------------------------------------------------

    def offer(
        self,
        array: npt.NDArray[np.generic],
        prediction: Prediction,
        source: str,
        meta: ScanMetadata | None = None,
    ) -> None:
        """Called for every active prediction (and its scan's meta): queue a share, never wait."""
        run = self.run
        if run is None or run.state != "running":
            return
        run.last_active = time.monotonic()  # the candidate waits for a quiet moment
        if prediction.error:
            return
        spec = run.spec
        if spec is None or run.rng.random() >= spec.sample:
            return
        if len(run.queue) >= run.capacity:
            run.stats.dropped += 1
            return
        run.queue.append(
            _Item(array, source, prediction.label, prediction.score, prediction.latency_ms, meta)
        )
        run.stats.offered += 1

    def close(self) -> None:
        """Stop the candidate thread (the agent is stopping)."""
        if self.run is not None:
            self.run.finish("stopped", "the agent stopped")

    # -- steps -------------------------------------------------------------------------

    def _verify(self, payload: bytes) -> Manifest:
        settings = self.agent.updater.settings
        version, time_floor = self.agent.store.floor()
        return verify_manifest(
            payload,
            trusted_keys=settings.trusted_keys,
            device_id=self.device_id,
            groups=settings.groups,
            current_version=version,
            now=time.time(),
            accelerators=settings.accelerators,
            max_model_bytes=settings.max_model_bytes,
            time_floor=time_floor,
            max_chunks=settings.max_chunks,
            min_chunk_size=settings.min_chunk_size,
            max_outputs=settings.max_outputs,
            max_labels=settings.max_labels,
            shadow=True,
        )

    def _refused(self, payload: bytes, exc: ManifestError) -> list[Action]:
        try:  # only fields under a valid signature are reported back
            manifest = open_envelope(payload, trusted_keys=self.agent.updater.settings.trusted_keys)
            name, version = manifest.name, manifest.version
        except ManifestError:
            name, version = "", 0
        report = ShadowReport(
            device_id=self.device_id,
            name=name,
            version=version,
            state="failed",
            reason=f"refused ({exc.reason}): {exc}"[:1024],
            sample=0.0,
            ts=time.time(),
        )
        log.warning("shadow manifest refused: %s", exc)
        return [self._publish(report.model_dump_json().encode())]

    def _forget_others(self, sha256: str) -> None:
        """Remove earlier candidates' files and downloads (one shadow at a time)."""
        for path in (self.root / "download").glob("*"):
            if path.name != sha256:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.root.glob("*.tflite"):
            if path.stem != sha256:
                path.unlink(missing_ok=True)

    def _maybe_done(self) -> list[Action]:
        """The download is complete: verify, then health-check and load on the thread."""
        run = self.run
        if run is None or run.download is None or not run.download.complete:
            return []
        job, run.download = run.download, None
        actions: list[Action] = [Unsubscribe(self.topics.chunks_filter(run.variant.sha256))]
        try:
            job.verify()
            path = self.root / f"{run.variant.sha256}.tflite"
            os.truncate(job.part, run.variant.size)
            job.part.replace(path)
            shutil.rmtree(job.directory, ignore_errors=True)
        except (IntegrityError, OSError) as exc:
            return actions + self._end("failed", f"the candidate file is damaged: {exc}")
        run.state = "health_check"
        run.thread = threading.Thread(
            target=self._candidate_thread, args=(run, path), name="shadow-candidate", daemon=True
        )
        run.thread.start()
        return actions + self._report(force=True)

    def _end(self, state: ShadowState, reason: str) -> list[Action]:
        run = self.run
        if run is None:
            return []
        actions: list[Action] = []
        if run.download is not None:
            actions.append(Unsubscribe(self.topics.chunks_filter(run.variant.sha256)))
            run.download = None
        run.finish(state, reason)
        actions += self._report(force=True)
        if state == "stopped":
            self.run, self.source = None, None
            self._forget_others("")  # its files (the thread holds its interpreter until done)
        return actions

    # -- the candidate thread ---------------------------------------------------------------

    def _candidate_thread(self, run: _Run, path: Path) -> None:
        try:
            self.agent._health_check(path, run.manifest)  # noqa: SLF001 - the agent's own check
            classifier = self._load(run, path)
        except Exception as exc:  # noqa: BLE001 - every error is the candidate's verdict
            run.finish("failed", f"health check: {exc}"[:1024])
            return
        if run.stop.is_set():
            return
        run.state = "running"
        log.info("shadow: candidate %s v%s running", run.manifest.name, run.manifest.version)
        self._serve(run, classifier)

    def _load(self, run: _Run, path: Path) -> Classifier:
        agent = self.agent
        return Classifier(
            open_model(path, backend=agent.backend, num_threads=1),
            name=run.manifest.name,
            version=run.manifest.version,
            labels=run.manifest.labels,
            preprocess_spec=run.manifest.preprocess,
            top_k=1,
            max_outputs=agent.config.safety.max_outputs,
        )

    def _serve(self, run: _Run, classifier: Classifier) -> None:
        limit = run.spec.max_inputs if run.spec is not None else None
        while not run.stop.is_set():
            quiet_for = time.monotonic() - run.last_active
            if not run.queue or quiet_for < run.quiet_s:
                run.stop.wait(min(POLL_S, max(run.quiet_s - quiet_for, 0.0)) or POLL_S)
                continue
            item = run.queue.popleft()
            started = time.monotonic()
            try:
                prediction = classifier.classify(item.array, item.meta)
            except (EdgefleetError, ValueError) as exc:
                self._failure(run, f"{type(exc).__name__}: {exc}")
                continue
            finally:
                if run.rest:  # [shadow] max_cpu_share: rest in proportion to the work
                    run.stop.wait((time.monotonic() - started) * run.rest)
            if prediction.error:
                self._failure(run, f"non-finite scores for {item.source[:200]}")
                continue
            run.stats.add(item, prediction)
            if limit is not None and run.stats.compared >= limit:
                run.finish("done", f"compared {limit} inputs")

    def _failure(self, run: _Run, what: str) -> None:
        with run.stats.lock:
            run.stats.failures += 1
            failures = run.stats.failures
        log.warning("shadow candidate failed on an input (%d): %s", failures, what)
        if failures >= FAIL_LIMIT:
            run.finish("failed", f"the candidate failed on {failures} inputs; last: {what}"[:1024])

    # -- reports -------------------------------------------------------------------------

    def _report(self, *, force: bool = False) -> list[Action]:
        run = self.run
        if run is None:
            return []
        now = time.monotonic()
        if not force and now - self.reported_at < REPORT_S:
            return []
        report = self.summary(run)
        payload = report.model_dump_json(exclude={"ts"}).encode()
        if payload == self.last_body:
            return []
        self.last_body, self.reported_at = payload, now
        self.last = report.model_dump_json().encode()
        return [self._publish(self.last)]

    def summary(self, run: _Run) -> ShadowReport:
        """The report of ``run`` now, at most ``MAX_REPORT_BYTES`` encoded (``fit_report``)."""
        active = self.agent.classifier
        stats = run.stats
        with stats.lock:
            diffs = np.fromiter(stats.diffs, dtype=np.float64)
            reason = run.reason
            if reason is None and stats.dropped:
                reason = f"{stats.dropped} sampled input(s) dropped: the candidate was busy"
            report = ShadowReport(
                device_id=self.device_id,
                name=run.manifest.name,
                version=run.manifest.version,
                sha256=run.variant.sha256,
                active_name=active.name if active else None,
                active_version=active.version if active else None,
                state=run.state,
                reason=reason,
                sample=run.spec.sample if run.spec else 0.0,
                offered=stats.offered,
                compared=stats.compared,
                agreed=stats.agreed,
                dropped=stats.dropped,
                failures=stats.failures,
                confusion={k: dict(v) for k, v in stats.confusion.items()},
                score_diff_mean=round(stats.diff_sum / stats.compared, 6)
                if stats.compared
                else None,
                score_diff_abs_p95=round(float(np.percentile(diffs, 95)), 6)
                if diffs.size
                else None,
                active_latency=_latency(stats.active),
                candidate_latency=_latency(stats.candidate),
                samples=list(stats.samples),
                ts=time.time(),
            )
        return fit_report(report)

    def _publish(self, payload: bytes) -> Publish:
        return Publish(self.topics.shadow_report(self.device_id), payload, retain=True)


def run_sample(manifest: Manifest) -> float:
    """The sampled share a shadow manifest asks for (0 if it is not one)."""
    return manifest.shadow.sample if manifest.shadow is not None else 0.0
