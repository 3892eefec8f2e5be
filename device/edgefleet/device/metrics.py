"""The agent's Prometheus metrics (``[metrics] listen``) and its published log lines.

:class:`Telemetry` is the agent's one hook object: it counts inferences and their latency
as they happen, follows the update reports the agent publishes (for the last OTA's
duration and size), and reads everything else (outbox, update state, model, MQTT link) when
Prometheus scrapes. Its registry is private to the agent (never the client library's global
one), so two agents in one process never mix their figures. The HTTP endpoint runs only
when ``[metrics] listen`` is set; the log publisher (:mod:`edgefleet.device.logpub`) only
when ``[logs] level`` is not ``off``. docs/agent.md lists every metric.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server

from edgefleet.device.errors import StoreError
from edgefleet.device.logpub import LogPublisher
from edgefleet.device.updater import Publish
from edgefleet.shared.errors import DecodeError
from edgefleet.shared.listen import split_listen
from edgefleet.shared.messages import Reported, UpdateState, decode

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from wsgiref.simple_server import WSGIServer

    from edgefleet.device.agent import Agent
    from edgefleet.device.inference import Prediction
    from edgefleet.device.updater import Action

log = logging.getLogger(__name__)

MAX_LABELS = 200  # distinct label values counted by name; the rest count as "_other"
OTHER_LABEL = "_other"
# Seconds: the agent's inferences range from ~1 ms (small int8 models) to seconds (16x8).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BUSY = frozenset(
    {
        UpdateState.DOWNLOADING,
        UpdateState.VERIFYING,
        UpdateState.HEALTH_CHECK,
        UpdateState.ACTIVATING,
    }
)
_DONE = frozenset({UpdateState.ACTIVE, UpdateState.FAILED, UpdateState.REJECTED})


@dataclass
class OtaTracker:
    """The last over-the-air update, from the reports the agent publishes.

    An update starts with the first busy report (downloading ... activating) and ends with
    active, failed or rejected. The bytes are the model's size when it was downloaded (0
    when the model was already on the device, e.g. a rollback).
    """

    started: float | None = None
    downloaded: bool = False
    duration_s: float | None = None
    size_bytes: int = 0
    finished_at: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)

    def report(self, report: Reported, *, model_size: int, now: float) -> None:
        """Take one published report; ``model_size`` is its model file's size (0 if none)."""
        if report.state in _BUSY:
            if self.started is None:
                self.started, self.downloaded = now, False
            self.downloaded |= report.state is UpdateState.DOWNLOADING
            return
        if report.state not in _DONE or (
            self.started is None and report.state is not UpdateState.REJECTED
        ):
            return  # idle, or "active" re-stated at start-up
        outcome = report.state.value
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if self.started is not None:
            self.duration_s = now - self.started
            self.size_bytes = model_size if self.downloaded else 0
            self.finished_at = time.time()
        self.started = None


class Telemetry:
    """Metrics and published logs of one agent (see the module docstring)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry()
        self.inferences = Counter(
            "edgefleet_agent_inferences",
            "Inputs classified, by predicted label (non-finite scores: label _error).",
            ["label"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgefleet_agent_inference_seconds",
            "Time per inference by stage: preprocess (decode to input tensor), invoke "
            "(interpreter run and output decoding), total.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._labels: set[str] = set()
        self.ota = OtaTracker()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds
        self.registry.register(_AgentCollector(self))
        cfg = agent.config
        self.logs = (
            LogPublisher(
                cfg.logs,
                device_id=cfg.device_id,
                boot_id=agent.boot_id,
                topic=agent.topics.logs(cfg.device_id),
                link=agent.link,
            )
            if cfg.logs.level != "off"
            else None
        )
        self._server: WSGIServer | None = None
        self._reported_topic = agent.topics.reported(cfg.device_id)

    # -- hooks (agent main thread) ------------------------------------------------------

    def prediction(self, prediction: Prediction) -> None:
        """Count one classified input (the agent's latency stats included)."""
        self.agent.stats.add(prediction.latency_ms)
        label = "_error" if prediction.error else prediction.label
        if label not in self._labels:
            if len(self._labels) >= MAX_LABELS:
                label = OTHER_LABEL
            else:
                self._labels.add(label)
        self.inferences.labels(label).inc()
        total = prediction.latency_ms / 1000.0
        prep = min(prediction.preprocess_ms / 1000.0, total)
        self.latency.labels("preprocess").observe(prep)
        self.latency.labels("invoke").observe(total - prep)
        self.latency.labels("total").observe(total)

    def actions(self, actions: Iterable[Action]) -> None:
        """Follow the update reports among the updater's actions (for the OTA figures)."""
        for action in actions:
            if not isinstance(action, Publish) or action.topic != self._reported_topic:
                continue
            try:
                report = decode(Reported, action.payload)
            except DecodeError:
                continue
            size = 0
            if report.sha256 and report.state is UpdateState.ACTIVE:
                try:
                    size = self.agent.store.model_path(report.sha256).stat().st_size
                except OSError:
                    size = 0
            self.ota.report(report, model_size=size, now=time.monotonic())

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the log publisher and, if configured, the /metrics endpoint.

        A metrics address that cannot be bound (in use, not local) is logged as an error;
        the agent serves on without metrics.
        """
        if self.logs is not None:
            self.logs.start()
        listen = self.agent.config.metrics.listen
        if listen is None:
            return
        host, port = split_listen(listen)
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error(  # noqa: TRY400 - the reason is the whole story
                "cannot serve metrics on %s: %s; going on without metrics (check [metrics] "
                "listen in agent.toml)",
                listen,
                exc.strerror or exc,
            )
            return
        log.info("serving Prometheus metrics on http://%s/metrics", listen)

    def stop(self) -> None:
        """Stop the endpoint and the log publisher (what is queued is not sent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.logs is not None:
            self.logs.stop()


class _AgentCollector:
    """Reads the agent's state at scrape time (on the HTTP server's thread)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.t = telemetry

    def describe(self) -> list[Metric]:
        return []  # no fixed description: families are built at each scrape

    def collect(self) -> Iterator[Metric]:
        agent = self.t.agent
        yield GaugeMetricFamily(
            "edgefleet_agent_mqtt_connected",
            "1 while the broker session is up.",
            value=1 if agent.link.connected.is_set() else 0,
        )
        yield from self._outbox()
        yield from self._update_state()
        yield from self._model()
        yield from self._ota()
        yield CounterMetricFamily(
            "edgefleet_agent_inference_failures",
            "Inputs the model failed on (preprocess or invoke errors), this boot.",
            value=agent.inference_failures,
        )
        yield CounterMetricFamily(
            "edgefleet_agent_rejected_inputs",
            "Inputs refused (over a limit, undecodable), this boot.",
            value=agent.intake.rejected_total,
        )
        yield GaugeMetricFamily(
            "edgefleet_agent_safe_mode", "1 while in safe mode.", value=int(agent.guard.safe_mode)
        )
        yield GaugeMetricFamily(
            "edgefleet_agent_uptime_seconds",
            "Seconds since the agent started.",
            value=time.monotonic() - agent.started,
        )
        logs = self.t.logs
        if logs is not None:
            yield CounterMetricFamily(
                "edgefleet_agent_log_lines_published", "Log lines published.", value=logs.sent
            )
            yield CounterMetricFamily(
                "edgefleet_agent_log_lines_dropped",
                "Log lines not published (rate limit, full queue, publish error).",
                value=logs.dropped_total,
            )

    def _outbox(self) -> Iterator[Metric]:
        outbox = self.t.agent.outbox
        try:
            depth, dropped = outbox.depth(), outbox.dropped()
            oldest = outbox.pending(after_seq=0, limit=1)
        except sqlite3.Error:  # closed while stopping
            return
        yield GaugeMetricFamily(
            "edgefleet_agent_outbox_depth", "Prediction records waiting for the host's ack.", depth
        )
        yield CounterMetricFamily(
            "edgefleet_agent_outbox_dropped",
            "Records dropped by the outbox bound policy (ever, persisted).",
            value=dropped,
        )
        age = 0.0
        if oldest:
            try:
                age = max(0.0, time.time() - float(json.loads(oldest[0].payload)["ts"]))
            except (ValueError, KeyError, TypeError):
                age = 0.0
        yield GaugeMetricFamily(
            "edgefleet_agent_oldest_unacked_age_seconds",
            "Age of the oldest record not yet acknowledged by the host (0 when none).",
            value=age,
        )

    def _update_state(self) -> Iterator[Metric]:
        state = self.t.agent.updater.state
        family = GaugeMetricFamily(
            "edgefleet_agent_update_state",
            "The over-the-air update state: 1 for the current one.",
            labels=["state"],
        )
        for s in UpdateState:
            family.add_metric([s.value], 1 if s is state else 0)
        yield family

    def _model(self) -> Iterator[Metric]:
        agent = self.t.agent
        classifier = agent.classifier
        if classifier is None:
            return
        mode, sha = "", ""
        try:
            pointers = (agent.store.active(), agent.store.previous())
        except StoreError:  # an unreadable pointer: the agent logs it; the name still shows
            pointers = (None, None)
        for pointer in pointers:
            if pointer is not None and pointer.version == classifier.version:
                mode, sha = str(pointer.manifest.get("mode", "")), pointer.sha256
                break
        family = InfoMetricFamily("edgefleet_agent_model", "The model serving inferences.")
        family.add_metric(
            [],
            {
                "name": classifier.name,
                "version": str(classifier.version),
                "mode": mode,
                "sha256": sha,
            },
        )
        yield family

    def _ota(self) -> Iterator[Metric]:
        ota = self.t.ota
        outcomes = CounterMetricFamily(
            "edgefleet_agent_updates",
            "Over-the-air updates finished this boot, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("active", "failed", "rejected"):
            outcomes.add_metric([outcome], ota.outcomes.get(outcome, 0))
        yield outcomes
        if ota.duration_s is None:
            return
        yield GaugeMetricFamily(
            "edgefleet_agent_last_update_duration_seconds",
            "Duration of the last update, first busy report to active/failed.",
            value=ota.duration_s,
        )
        yield GaugeMetricFamily(
            "edgefleet_agent_last_update_bytes",
            "Model bytes the last update downloaded (0: the model was already here).",
            value=ota.size_bytes,
        )
        yield GaugeMetricFamily(
            "edgefleet_agent_last_update_timestamp_seconds",
            "Unix time the last update finished.",
            value=ota.finished_at or 0.0,
        )
