"""The field agent: wires the updater, inference sources and outbox to a paho MQTT 5 client.

Threads: a network thread runs ``client.loop()`` and reconnects with jittered, capped
backoff, and does all socket I/O (publish() elsewhere only queues, see ``make_client``);
a short-lived worker waits for each health-check child, so inference goes on meanwhile;
everything else (updates, inference, outbox, heartbeat, the switch to a checked model)
runs on the main thread, fed by a queue, so the interpreter and the state machine are
never shared between threads.
"""

from __future__ import annotations

import logging
import queue
import random
import signal
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.device.bounded import EventQueue
from edgefleet.device.errors import DeviceError, ModelLoadError
from edgefleet.device.faults import fault
from edgefleet.device.health import run_health_check, stop_running_checks, warm_up
from edgefleet.device.inference import Classifier, LatencyStats
from edgefleet.device.outbox import Outbox, Pending
from edgefleet.device.runtime import (
    Backend,
    accelerator_note,
    choose_accelerator,
    discover_backend,
    open_model,
)
from edgefleet.device.sources import FolderWatcher
from edgefleet.device.store import Pointer, StateStore
from edgefleet.device.system import cpu_temp_c, rss_bytes
from edgefleet.device.trust import load_trusted_keys
from edgefleet.device.updater import Action, Publish, Subscribe, Updater, UpdaterSettings
from edgefleet.shared import __version__
from edgefleet.shared.errors import DecodeError, InputError, TopicError
from edgefleet.shared.manifest import Manifest, select_variant
from edgefleet.shared.messages import (
    Ack,
    ImageMessage,
    PredictionRecord,
    Status,
    TopK,
    batch_payload,
    decode,
    encode,
)
from edgefleet.shared.preprocess import decode_input, load_input
from edgefleet.shared.topics import DESIRED_DEVICE, DESIRED_GROUP, Topics

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np
    import numpy.typing as npt

    from edgefleet.device.config import AgentConfig

log = logging.getLogger(__name__)

MAX_IMAGE_MESSAGE = 24 * 2**20
ACK_BATCH = 256
BATCH_BYTES = 256 * 1024  # a PredictionBatch stays well under MAX_MESSAGE_BYTES (1 MiB)
FOLDER_BATCH = 256  # records per outbox transaction (one fsync) at most
HEALTH_DONE = "_health_done"  # internal event: a health-check worker has finished


def backoff_delay(attempt: int, cap: float) -> float:
    """Jittered, capped reconnect delay: uniform(0, 1.5 ** min(10, attempt)), at most cap."""
    return min(cap, random.uniform(0, 1.5 ** min(10, attempt)))  # noqa: S311 - jitter


def _keep_writes_on_the_loop_thread(_c: Any, _u: Any, _sock: Any) -> None:  # noqa: ANN401
    """Paho's write hook: a no-op whose presence keeps publish() off the socket.

    paho 2.2 ``_packet_queue`` (behind publish/subscribe/unsubscribe/disconnect) appends the
    packet to ``_out_packet``, wakes ``select`` through its socket pair and then, when no
    ``loop_start`` thread and no ``on_socket_register_write`` hook exist, calls
    ``loop_write()`` itself: on the *calling* thread, concurrently with our network thread
    in ``loop()`` - two threads on one SSL socket. With this hook set it only calls the
    hook; the woken ``loop()`` writes the queued packet on the network thread.
    """


def make_client(config: AgentConfig) -> mqtt.Client:
    """The agent's paho client: protocol, last will, credentials, TLS; not connected.

    All socket I/O happens in ``client.loop()`` on one thread (see
    :func:`_keep_writes_on_the_loop_thread`); publish() from other threads only queues.
    """
    cfg = config.mqtt
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.device_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        # 3.1.1 has no session expiry: a persistent session keeps QoS 1 messages
        # (acks, chunks) queued while the device is offline.
        clean_session=None if v5 else False,
    )
    client.max_queued_messages_set(0)
    offline = Status(device_id=config.device_id, online=False)
    topics = Topics(cfg.prefix)
    client.will_set(topics.status(config.device_id), encode(offline), 1, retain=True)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        client.tls_set(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            certfile=str(cfg.cert_file) if cfg.cert_file else None,
            keyfile=str(cfg.key_file) if cfg.key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.on_socket_register_write = _keep_writes_on_the_loop_thread
    return client


@dataclass
class _Flight:
    """Prediction records published and waiting for the host's ack."""

    sent: dict[int, float]
    cursor: int = 0


class Agent:
    """One running agent (see the module docstring)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.prefix)
        self.boot_id = uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.store = StateStore(config.state_dir)
        self.outbox = Outbox(
            self.store.outbox_path,
            max_records=config.outbox.max_records,
            when_full=config.outbox.when_full,
        )
        self.backend: Backend = discover_backend(config.runtime.backend)
        self.accel = choose_accelerator(self.backend, config.runtime.edgetpu)
        self.accelerator_note = self.accel.note
        self.stats = LatencyStats()
        self.classifier: Classifier | None = None
        self.watcher = (
            FolderWatcher(
                config.inference.watch_dir,
                after=config.inference.after,
                settle_s=config.inference.poll_s,
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
            ),
            store=self.store,
            health_check=self._health_check,
            on_activate=self._load_classifier,
            spawn=self._spawn,
            prepare_check=lambda: warm_up(self.backend.name, self.store.root / "models"),
        )
        self.events = EventQueue()
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.flight = _Flight(sent={})
        self._acks: list[tuple[str, int]] = []
        self._images: list[Callable[[int], bytes]] = []  # classified, not yet committed
        self.client = self._make_client()
        self._load_active()

    # -- model --------------------------------------------------------------------------

    def _variant_accelerator(self, path: Path, manifest: Manifest) -> str:
        for variant in manifest.variants:
            if variant.sha256 == path.stem:
                return variant.accelerator
        return "cpu"

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
        )
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

    # -- MQTT ---------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = make_client(self.config)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.mqtt.session_expiry_s
        return props

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:  # noqa: ANN401
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self.connected.set()
        self.events.put("_connected")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:  # noqa: ANN401
        self.connected.clear()
        log.info("disconnected from the broker: %s", reason)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN401
        # On the network thread: never block it; a full queue drops and counts by kind.
        try:
            kind = self.topics.parse(msg.topic).kind
        except TopicError:
            kind = "other"
        self.events.offer(msg.topic, bytes(msg.payload), kind=kind)

    def _connect(self) -> None:
        cfg = self.config.mqtt
        if cfg.protocol == "5":
            self.client.connect(
                cfg.host,
                cfg.port,
                cfg.keepalive_s,
                clean_start=False,
                properties=self._connect_properties(),
            )
        else:  # clean_session=False was given to the Client
            self.client.connect(cfg.host, cfg.port, cfg.keepalive_s)

    def _network_loop(self) -> None:
        cfg = self.config.mqtt
        attempt, first, sock_open = 0, True, False
        while not self.stopping.is_set():
            if not sock_open:
                try:
                    if first:
                        self._connect()
                    else:
                        self.client.reconnect()
                    first, sock_open = False, True
                except (OSError, ssl.SSLError, ValueError) as exc:
                    delay = backoff_delay(attempt, cfg.reconnect_max_s)
                    attempt += 1
                    log.info("cannot reach the broker (%s); retrying in %.1f s", exc, delay)
                    self.stopping.wait(delay)
                    continue
            if self.client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                sock_open = False
                self.stopping.wait(backoff_delay(attempt, cfg.reconnect_max_s))
                attempt += 1
            elif self.connected.is_set():
                attempt = 0

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.client.publish(action.topic, action.payload, action.qos, action.retain)
            elif isinstance(action, Subscribe):
                self.client.subscribe(action.topic_filter, qos=1)
            else:
                self.client.unsubscribe(action.topic_filter)

    # -- events -------------------------------------------------------------------------

    def _on_connected(self) -> None:
        device = self.config.device_id
        self._apply(self.updater.subscriptions())
        self.client.subscribe(self.topics.predictions_ack(device), qos=1)
        self.client.subscribe(self.topics.images(device), qos=1)
        self.publish_status()
        if self.updater.last_report is not None:
            report = self.updater.last_report
            self.client.publish(self.topics.reported(device), encode(report), 1, retain=True)
        self.flight = _Flight(sent={})  # resend everything unacknowledged, in order
        self._drain()

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic == "_connected":
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
            self._apply(self.updater.on_chunk(payload))
        elif parsed.kind == "predictions_ack":
            self._on_ack(payload)
        elif parsed.kind == "images":
            self._on_image(payload)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = decode(Ack, payload) if payload else None
        except DecodeError as exc:
            log.warning("ignoring an unreadable ack: %s", exc)
            return
        if ack is None or ack.device_id != self.config.device_id:
            return
        # Acks are applied in batches (one transaction) when the queue runs dry.
        self._acks.extend((ack.boot_id, seq) for seq in ack.seqs)
        if len(self._acks) >= ACK_BATCH:
            self._flush_acks()

    def _flush_acks(self) -> None:
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        self.outbox.ack_many(acks)
        for _boot, seq in acks:
            self.flight.sent.pop(seq, None)
        self._drain()

    def _on_image(self, payload: bytes) -> None:
        try:
            image = decode(ImageMessage, payload, max_bytes=MAX_IMAGE_MESSAGE)
            array = decode_input(image.data(), image.format)
        except (DecodeError, InputError) as exc:
            log.warning("ignoring an unreadable image message: %s", exc)
            return
        try:
            build = self._predict(array, source=f"mqtt:{image.name}")
        except DeviceError as exc:
            log.warning("cannot classify image message %s: %s", image.name, exc)
            return
        # Committed in one transaction per drained batch (see _idle), like the folder's;
        # still committed before anything is published.
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
        self._flush_acks()

    # -- inference and outbox -----------------------------------------------------------

    def classify(self, array: npt.NDArray[np.generic], *, source: str) -> int | None:
        """Classify one input and commit its record to the outbox; return its seq."""
        (seq,) = self._commit([self._predict(array, source=source)])
        return seq

    def _commit(self, builds: list[Callable[[int], bytes]]) -> list[int | None]:
        seqs = self.outbox.append_many(self.boot_id, builds)
        fault("after_outbox_commit")
        self._drain()
        return seqs

    def _predict(self, array: npt.NDArray[np.generic], *, source: str) -> Callable[[int], bytes]:
        """Classify; return the record builder that the outbox calls with the seq."""
        classifier = self.classifier
        if classifier is None:
            raise ModelLoadError("no model is active yet")
        prediction = classifier.classify(array)
        self.stats.add(prediction.latency_ms)
        ts = time.time()

        def build(seq: int) -> bytes:
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
                )
            )

        return build

    def _drain(self) -> None:
        """Publish what the outbox holds beyond what is in flight, and re-send stale records."""
        if not self.connected.is_set():
            return
        cfg = self.config.outbox
        now = time.monotonic()
        sent = self.flight.sent
        stale = {s for s, t in sent.items() if now - t > cfg.resend_after_s}
        if stale:
            records = self.outbox.pending(after_seq=0, limit=cfg.max_in_flight)
            self._publish_records([r for r in records if r.seq in stale], now)
        room = cfg.max_in_flight - len(sent)
        if room <= 0:
            return
        fresh = self.outbox.pending(after_seq=self.flight.cursor, limit=room)
        if fresh:
            self._publish_records(fresh, now)
            self.flight.cursor = fresh[-1].seq

    def _publish_records(self, records: list[Pending], now: float) -> None:
        """Publish records in order, up to ``batch_records`` (and BATCH_BYTES) per message."""
        topic = self.topics.predictions(self.config.device_id)
        cap = self.config.outbox.batch_records
        batch: list[bytes] = []
        size = 0
        for record in records:
            if batch and (len(batch) >= cap or size + len(record.payload) > BATCH_BYTES):
                self.client.publish(topic, batch_payload(batch), 1)
                batch, size = [], 0
            batch.append(record.payload)
            size += len(record.payload) + 1
            self.flight.sent[record.seq] = now
        if batch:
            self.client.publish(topic, batch_payload(batch), 1)

    def _poll_folder(self) -> None:
        if self.watcher is None or self.classifier is None:
            return
        ready = self.watcher.poll()
        for start in range(0, len(ready), FOLDER_BATCH):
            if self.stopping.is_set():
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
            try:
                builds.append(self._predict(load_input(path), source=path.name))
                done.append(path)
            except InputError as exc:
                log.warning("cannot classify %s: %s", path.name, exc)
                self.watcher.done(path, error=str(exc))
        self._commit(builds)
        for path in done:
            self.watcher.done(path)

    def status(self) -> Status:
        """The current status / heartbeat."""
        c = self.classifier
        p50, p95 = self.stats.percentile(50), self.stats.percentile(95)
        return Status(
            device_id=self.config.device_id,
            online=True,
            agent_version=__version__,
            boot_id=self.boot_id,
            groups=list(self.config.groups),
            runtime=self.backend.name,
            runtime_version=self.backend.version,
            accelerator=c.model.accelerator if c else self.accel.accelerators[0],
            accelerator_note=self.accelerator_note[:4096] or None,
            model_name=c.name if c else None,
            model_version=c.version if c else None,
            inference_count=self.stats.count,
            latency_p50_ms=round(p50, 3) if p50 is not None else None,
            latency_p95_ms=round(p95, 3) if p95 is not None else None,
            outbox_depth=self.outbox.depth(),
            dropped=self.outbox.dropped(),
            ignored_manifests=int(self.store.ignored()["count"]),
            uptime_s=round(time.monotonic() - self.started, 1),
            rss_bytes=rss_bytes(),
            cpu_temp_c=cpu_temp_c(),
            ts=time.time(),
        )

    def publish_status(self) -> None:
        """Publish the retained status (also the heartbeat)."""
        topic = self.topics.status(self.config.device_id)
        self.client.publish(topic, encode(self.status()), 1, retain=True)

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self.updater.start()  # sets last_report, which every (re)connect publishes
        net = threading.Thread(target=self._network_loop, name="mqtt-network", daemon=True)
        net.start()
        try:
            self._serve()
        finally:
            self._shutdown(net)
        return 0

    def _serve(self) -> None:
        poll_s = self.config.inference.poll_s
        now = time.monotonic()
        next_poll, next_beat = now, now + self.config.status.heartbeat_s
        while not self.stopping.is_set():
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
                self._apply(self.updater.tick())
            if now >= next_beat:
                next_beat = now + self.config.status.heartbeat_s
                if self.connected.is_set():
                    self.publish_status()
                    self._drain()
            now = time.monotonic()

    def _shutdown(self, net: threading.Thread) -> None:
        self._flush_images()  # their MQTT messages are acknowledged already
        # A check under way is abandoned (its outcome is never used): the same manifest is
        # checked again after the restart.
        if stop_running_checks():
            log.info("stopped a health check under way")
        if self.connected.is_set():
            offline = Status(device_id=self.config.device_id, online=False, ts=time.time())
            info = self.client.publish(
                self.topics.status(self.config.device_id), encode(offline), 1, retain=True
            )
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.client.disconnect()
            # The DISCONNECT is written by the network thread: let it go before stopping it
            # (else the broker sees a lost connection).
            while self.connected.is_set() and time.monotonic() < deadline + 1.0:
                time.sleep(0.02)
        self.stopping.set()
        net.join(timeout=5)
        self.outbox.close()
