"""The field agent: wires the updater, inference sources and outbox to the broker link.

The broker link is :mod:`._mqtt`, the records in flight :mod:`._inflight`, metrics and
published logs :mod:`.metrics`; this module routes events between them, the updater and
the classifier. Threads: the network thread does all socket I/O (publish() elsewhere only
queues, see ``_mqtt.make_client``); a short-lived worker waits for each health-check child;
everything else (updates, inference, outbox, heartbeat, the switch to a checked model) runs
on the main thread, fed by a queue, so the interpreter and the state machine are never
shared between threads (the metrics endpoint and the log publisher only read and queue).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import uuid
from typing import TYPE_CHECKING

from edgefleet.device import stackdump
from edgefleet.device._inflight import InFlight
from edgefleet.device._mqtt import CONNECTED, MqttLink
from edgefleet.device.bounded import EventQueue
from edgefleet.device.errors import DeviceError, ModelLoadError
from edgefleet.device.faults import fault
from edgefleet.device.health import run_health_check, stop_running_checks, warm_up
from edgefleet.device.inference import Classifier, LatencyStats
from edgefleet.device.intake import Intake
from edgefleet.device.metrics import Telemetry
from edgefleet.device.outbox import Outbox
from edgefleet.device.runtime import (
    Backend,
    accelerator_note,
    choose_accelerator,
    discover_backend,
    open_model,
)
from edgefleet.device.safety import Guard
from edgefleet.device.shadow import SHADOW_KINDS, Shadow
from edgefleet.device.sources import FolderWatcher
from edgefleet.device.status import Freshness, build_status, status_moved
from edgefleet.device.store import Pointer, StateStore
from edgefleet.device.thumbnails import ThumbnailSender
from edgefleet.device.trust import load_trusted_keys
from edgefleet.device.updater import Action, Publish, Subscribe, Updater, UpdaterSettings
from edgefleet.shared.errors import TopicError
from edgefleet.shared.manifest import Manifest, select_variant
from edgefleet.shared.messages import PredictionRecord, Status, TopK, encode
from edgefleet.shared.signals import StopSignals
from edgefleet.shared.topics import DESIRED_DEVICE, DESIRED_GROUP, Topics

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np
    import numpy.typing as npt

    from edgefleet.device.config import AgentConfig
    from edgefleet.shared.gpr import ScanMetadata

log = logging.getLogger(__name__)

FOLDER_BATCH = 256  # records per outbox transaction (one fsync) at most
HEALTH_DONE = "_health_done"  # internal event: a health-check worker has finished


class Agent:
    """One running agent (see the module docstring)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.prefix)
        self.boot_id = uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.store = StateStore(config.state_dir)
        # Counts this start if the last run did not stop in order (safe mode: docs/agent.md).
        self.guard = Guard(self.store.root, config.safety)
        self.outbox = Outbox(
            self.store.outbox_path,
            max_records=config.outbox.max_records,
            when_full=config.outbox.when_full,
        )
        self.backend: Backend = discover_backend(config.runtime.backend)
        self.accel = choose_accelerator(self.backend, config.runtime.edgetpu)
        self.accelerator_note = self.accel.note
        self.stats = LatencyStats()
        self.freshness = Freshness()  # status sent early when the model or outbox moved
        self.classifier: Classifier | None = None
        self.watcher = (
            FolderWatcher(
                config.inference.watch_dir,
                after=config.inference.after,
                settle_s=config.inference.settle_s,
                incomplete_timeout_s=config.inference.incomplete_timeout_s,
                max_bytes=config.limits.max_input_bytes,
            )
            if config.inference.watch_dir
            else None
        )
        self.updater = Updater(
            settings=UpdaterSettings(
                device_id=config.device_id,
                groups=config.groups,
                topics=self.topics,
                trusted_keys=load_trusted_keys(config.trust.signing_keys),
                accelerators=self.accel.accelerators,
                max_model_bytes=config.trust.max_model_bytes,
                chunk_timeout_s=config.update.chunk_timeout_s,
                max_chunks=config.safety.max_chunks,
                min_chunk_size=config.safety.min_chunk_size,
                max_outputs=config.safety.max_outputs,
                max_labels=config.safety.max_labels,
            ),
            store=self.store,
            health_check=self._health_check,
            on_activate=self._load_classifier,
            spawn=self._spawn,
            prepare_check=lambda: warm_up(self.backend.name, self.store.root / "models"),
        )
        self.events = EventQueue()
        self.stopping = threading.Event()
        self.signals = StopSignals()  # SIGTERM/SIGINT received; the main loop polls it
        self.link = MqttLink(config, self.events, self.stopping)
        self.inflight = InFlight(
            self.outbox,
            config.outbox,
            topic=self.topics.predictions(config.device_id),
            link=self.link,
        )
        self.thumbs = ThumbnailSender.of(self)  # best effort, QoS 0, beside the records
        self.telemetry = Telemetry(self)  # metrics, published logs: started by run()
        self.shadow = Shadow(self)  # a candidate beside the active model (docs/fleet.md)
        self._images: list[Callable[[int], bytes]] = []  # classified, not yet committed
        self.inference_failures = 0  # unexpected errors while classifying (model's side)
        self.intake = Intake(
            config.limits,
            lambda array, *, source, meta=None: self._predict(array, source=source, meta=meta),
            lambda exc: self.on_inference_failure(exc),  # noqa: PLW0108 - late-bound
            self.watcher,
        )
        if self.guard.safe_mode:
            self.guard.enter_safe_mode(self.store, self.updater, self.watcher)
        self._load_active()

    # -- model --------------------------------------------------------------------------

    def _variant_accelerator(self, path: Path, manifest: Manifest) -> str:
        return next((v.accelerator for v in manifest.variants if v.sha256 == path.stem), "cpu")

    def _health_check(self, path: Path, manifest: Manifest) -> None:
        edgetpu = self._variant_accelerator(path, manifest) == "edgetpu"
        run_health_check(
            path,
            input_spec=manifest.input,
            output_spec=manifest.output,
            backend=self.backend.name,
            num_threads=self.config.runtime.num_threads,
            edgetpu=self.config.runtime.edgetpu if edgetpu else "",
            timeout_s=self.config.update.health_timeout_s,
        )

    def _spawn(self, job: Callable[[], None]) -> None:
        """Run a health check on a worker; the main loop finishes the update when it ends."""

        def run() -> None:
            try:
                job()
            finally:
                self.events.put(HEALTH_DONE)

        threading.Thread(target=run, name="health-check", daemon=True).start()

    def _load_classifier(self, path: Path, manifest: Manifest) -> None:
        edgetpu = self._variant_accelerator(path, manifest) == "edgetpu"
        model = open_model(
            path,
            backend=self.backend,
            num_threads=self.config.runtime.num_threads,
            delegate=self.accel.delegate if edgetpu else None,
        )
        self.classifier = Classifier(
            model,
            name=manifest.name,
            version=manifest.version,
            labels=manifest.labels,
            preprocess_spec=manifest.preprocess,
            top_k=self.config.inference.top_k,
            max_outputs=self.config.safety.max_outputs,
        )
        self.guard.model.reset()  # a new model: its own record of failures
        self.accelerator_note = self._note_for(manifest)

    def _note_for(self, manifest: Manifest) -> str:
        return accelerator_note(
            self.accel,
            offered={v.accelerator for v in manifest.variants},
            chosen=select_variant(manifest, self.accel.accelerators).accelerator,
        )

    def _load_active(self) -> None:
        for pointer in (self.store.active(), self.store.previous()):
            if pointer is None:
                continue
            try:
                self._load_pointer(pointer)
            except (DeviceError, ValueError) as exc:
                log.error(  # noqa: TRY400 - the message says it all; no traceback in quiet logs
                    "cannot load stored model %s v%s: %s", pointer.name, pointer.version, exc
                )
                continue
            return

    def _load_pointer(self, pointer: Pointer) -> None:
        document = {k: v for k, v in pointer.manifest.items() if not k.startswith("_")}
        manifest = Manifest.model_validate(document)
        self._load_classifier(self.store.model_path(pointer.sha256), manifest)

    # -- safety (docs/agent.md, "Never crash-loop") ---------------------------------------

    def _model_outcome(self, failure: str | None) -> None:
        """Count one input against the active model; revert once it has failed too often."""
        summary = self.guard.model_result(failure)
        if summary is None:
            return
        self._apply(self.updater.serving_failed("failed_on_inputs", summary))
        self.classifier = None
        self._load_active()  # the model now active (the previous one), if any

    # -- MQTT ---------------------------------------------------------------------------

    def _network_loop(self) -> None:
        """The network thread's body (``run`` starts it; so does tests/support/agent_pool)."""
        self.link.network_loop()

    def _apply(self, actions: list[Action]) -> None:
        self.telemetry.actions(actions)
        for action in actions:
            if isinstance(action, Publish):
                self.link.publish(
                    action.topic, action.payload, qos=action.qos, retain=action.retain
                )
            elif isinstance(action, Subscribe):
                self.link.subscribe(action.topic_filter, qos=1)
            else:
                self.link.unsubscribe(action.topic_filter)

    # -- events -------------------------------------------------------------------------

    def _on_connected(self) -> None:
        device = self.config.device_id
        self._apply(self.updater.subscriptions() + self.shadow.subscriptions())
        self.link.subscribe(self.topics.predictions_ack(device), qos=1)
        self.link.subscribe(self.topics.images(device), qos=1)
        self.publish_status()
        if self.updater.last_report is not None:
            report = self.updater.last_report
            self.link.publish(self.topics.reported(device), encode(report), retain=True)
        self.inflight.reset()  # resend everything unacknowledged, in order
        self.inflight.drain()

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic == CONNECTED:
            self._on_connected()
            return
        if topic == HEALTH_DONE:
            self._apply(self.updater.poll_health())  # activation happens here, on this thread
            return
        try:
            parsed = self.topics.parse(topic)
        except TopicError:
            log.info("ignoring a message on unexpected topic %s", topic)
            return
        if parsed.kind in {DESIRED_DEVICE, DESIRED_GROUP}:
            self._apply(self.updater.on_desired(payload))
        elif parsed.kind == "chunk":
            self._apply(self.updater.on_chunk(payload) + self.shadow.on_chunk(payload))
        elif parsed.kind in SHADOW_KINDS:
            self._apply(self.shadow.on_manifest(topic, payload))
        elif parsed.kind == "predictions_ack":
            # Applied in batches (one transaction) when the queue runs dry, see _idle.
            self.inflight.on_ack(payload, device_id=self.config.device_id)
        elif parsed.kind == "images":
            self._on_image(payload)

    def _on_image(self, payload: bytes) -> None:
        # Contained per message, like a folder file (docs/agent.md, "Per-input containment").
        try:
            build = self.intake.image_message(payload)
        except ModelLoadError as exc:
            log.warning("cannot classify an image message: %s", exc)
            return
        if build is None:
            return
        # Committed per drained batch (see _idle), like the folder's; before any publish.
        self._images.append(build)
        if len(self._images) >= FOLDER_BATCH:
            self._flush_images()

    def _flush_images(self) -> None:
        if self._images:
            builds, self._images = self._images, []
            self._commit(builds)

    def _idle(self) -> None:
        """The event queue ran dry: commit what was batched (acks, image-topic records)."""
        self._flush_images()
        self.inflight.flush_acks()

    # -- inference and outbox -----------------------------------------------------------

    def classify(
        self, array: npt.NDArray[np.generic], *, source: str, meta: ScanMetadata | None = None
    ) -> int | None:
        """Classify one input and commit its record to the outbox; return its seq."""
        (seq,) = self._commit([self._predict(array, source=source, meta=meta)])
        return seq

    def _commit(self, builds: list[Callable[[int], bytes]]) -> list[int | None]:
        with self.thumbs.committing():  # a failed commit drops its records' pictures
            seqs = self.outbox.append_many(self.boot_id, builds)
        fault("after_outbox_commit")
        self.thumbs.flush()  # the committed records' thumbnails, on their own topic
        self.inflight.drain()
        return seqs

    def _predict(
        self, array: npt.NDArray[np.generic], *, source: str, meta: ScanMetadata | None = None
    ) -> Callable[[int], bytes]:
        """Classify; return the record builder that the outbox calls with the seq."""
        classifier = self.classifier
        if classifier is None:
            raise ModelLoadError("no model is active yet")
        prediction = classifier.classify(array, meta)  # an InferenceError: on_inference_failure
        self.telemetry.prediction(prediction)  # latency stats and metrics
        self.shadow.offer(array, prediction, source, meta)  # never waits (docs/fleet.md)
        # NaN / infinite scores: the record says so (error), and it counts against the model.
        self._model_outcome(f"non-finite scores for {source[:200]}" if prediction.error else None)
        ts = time.time()
        picture = self.thumbs.draw(array, classifier)  # None unless [inference] thumbnails

        def build(seq: int) -> bytes:
            self.thumbs.note(seq, picture)
            return encode(
                PredictionRecord(
                    device_id=self.config.device_id,
                    boot_id=self.boot_id,
                    seq=seq,
                    source=source[:4096],
                    label=prediction.label,
                    score=prediction.score,
                    topk=[TopK(label=lbl, score=s) for lbl, s in prediction.topk],
                    latency_ms=prediction.latency_ms,
                    model_name=classifier.name,
                    model_version=classifier.version,
                    ts=ts,
                    error=prediction.error,
                )
            )

        return build

    def _poll_folder(self) -> None:
        if self.watcher is None or self.classifier is None:
            return
        ready = self.watcher.poll()
        for start in range(0, len(ready), FOLDER_BATCH):
            if self._stop_requested():
                return  # the rest stay in the folder for the next run
            if start:
                self._pump()  # acks free room in flight: the next records go out meanwhile
            self._classify_files(ready[start : start + FOLDER_BATCH])

    def _pump(self) -> None:
        """Handle the events already waiting (without blocking), then what they batched."""
        while True:
            try:
                topic, payload = self.events.get(timeout=0)
            except queue.Empty:
                break
            self._dispatch(topic, payload)
        self._idle()

    def _classify_files(self, paths: list[Path]) -> None:
        # One outbox transaction per batch; files leave the folder only once committed.
        assert self.watcher is not None  # noqa: S101 - checked by the caller
        builds, done = [], []
        for path in paths:
            self.guard.journal.add(path.name)  # quarantined in safe mode if the agent dies now
            build = self._classify_file(path)
            if build is not None:
                builds.append(build)
                done.append(path)
        self._commit(builds)
        for path in done:
            self.watcher.done(path)
        self.guard.journal.clear()

    def _classify_file(self, path: Path) -> Callable[[int], bytes] | None:
        try:  # contained per file (docs/agent.md, "Per-input containment")
            return self.intake.folder_file(path)
        except ModelLoadError:
            return None  # no model (yet): the file stays for the next poll

    def on_inference_failure(self, exc: BaseException) -> None:
        """One input failed in the model's part (already contained): count it against the model."""
        self.inference_failures += 1
        log.warning("inference failed (%d this boot): %r", self.inference_failures, exc)
        self._model_outcome(f"{type(exc).__name__}: {exc}")

    def status(self) -> Status:
        """The current status / heartbeat (built by :mod:`.status`)."""
        return build_status(self)

    def publish_status(self) -> None:
        """Publish the retained status (also the heartbeat)."""
        status = self.status()
        self.link.publish(self.topics.status(self.config.device_id), encode(status), retain=True)
        self.freshness.sent(status, time.monotonic())

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        # No lock in the handler: a second SIGTERM inside Event.set() deadlocked the agent.
        self.signals.install()
        # `kill -USR2 PID`: every thread's stack to stderr (docs/agent.md, "Troubleshooting")
        stackdump.install(signal.SIGUSR2)
        self.updater.start()  # sets last_report, which every (re)connect publishes
        net = threading.Thread(target=self._network_loop, name="mqtt-network", daemon=True)
        net.start()
        self.telemetry.start()
        try:
            self._serve()
        finally:
            self._shutdown(net)
        return 0

    def _stop_requested(self) -> bool:
        return bool(self.signals.received) or self.stopping.is_set()

    def _serve(self) -> None:
        poll_s = self.config.inference.poll_s
        now = time.monotonic()
        next_poll, next_beat = now, now + self.config.status.heartbeat_s
        while not self._stop_requested():
            try:
                topic, payload = self.events.get(timeout=max(0.0, next_poll - now))
                self._dispatch(topic, payload)
            except queue.Empty:
                pass
            if self.events.empty():
                self._idle()
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + poll_s
                self._poll_folder()
                self._apply(self.updater.tick() + self.shadow.tick())
                if status_moved(self):
                    self.publish_status()
            if now >= next_beat:
                next_beat = now + self.config.status.heartbeat_s
                self.guard.beat(self.store)
                if self.link.connected.is_set():
                    self.publish_status()
                    self.inflight.drain()
            now = time.monotonic()
        self.stopping.set()  # every thread stops; a signal only flagged it (self.signals)
        self.guard.served = True  # stopped in order (an exception never gets here)

    def _shutdown(self, net: threading.Thread) -> None:
        started = time.monotonic()
        log.info("stopping")
        self._flush_images()  # their MQTT messages are acknowledged already
        # A check under way is abandoned; the same manifest is checked again after a restart.
        if stop_running_checks():
            log.info("stopped a health check under way")
        if self.link.connected.is_set():
            offline = Status(device_id=self.config.device_id, online=False, ts=time.time())
            info = self.link.publish(
                self.topics.status(self.config.device_id), encode(offline), retain=True
            )
            # 2 s for the offline status, 3 s in all (with the DISCONNECT) before stopping.
            deadline = time.monotonic() + 3.0
            self.link.wait_published([info], timeout=2.0)
            self.link.disconnect(timeout=deadline - time.monotonic())
        self.telemetry.stop()
        self.shadow.close()
        self.stopping.set()
        net.join(timeout=5)
        self.outbox.close()
        self.guard.stopped(self.store)  # the clean-exit marker, if stopped in order
        log.info("stopped in %.1f s", time.monotonic() - started)
