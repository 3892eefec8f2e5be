"""Prometheus metrics of ``predictions listen --metrics`` and ``dashboard --metrics``.

Three sources, one private registry:

- the ingest worker's counters (:class:`~edgefleet.host.fleet._ingest.IngestStats`), read at
  scrape time: records received, stored, duplicates absorbed, malformed, acked;
- :class:`MeasuredStore`, a wrapper around the prediction store that times each commit and
  the store lag (commit time minus the record's own ``ts``, the device's clock);
- :class:`FleetWatcher`, a thread with its own broker connection that follows every
  device's retained status and update report (never the shared ingest subscription), and
  every few seconds turns them and the push registry into devices online by group, model
  versions in the fleet and rollouts in progress.

The dashboard serves the same registry (docs/fleet.md): the fleet figures always, the
ingest counters and the store histograms only when it ingests (``--ingest``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._clientid import random_client_id
from edgefleet.host.fleet._fleet import Fleet, open_fleet
from edgefleet.host.fleet._push import _Rollout
from edgefleet.host.fleet._store import StoreWrapper
from edgefleet.shared.listen import split_listen

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path
    from wsgiref.simple_server import WSGIServer

    from edgefleet.host.fleet._ingest import IngestStats
    from edgefleet.host.fleet._store import PredictionStore
    from edgefleet.shared.messages import PredictionRecord

log = logging.getLogger(__name__)

NO_GROUP = "_none"  # the group label of a device in no group
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
SNAPSHOT_EVERY_S = 5.0
RETRY_S = 10.0


class MeasuredStore(StoreWrapper):
    """A PredictionStore that times its commits and the store lag (see the module docstring)."""

    def __init__(self, inner: PredictionStore, registry: CollectorRegistry) -> None:
        super().__init__(inner)
        self.lag = Histogram(
            "edgefleet_ingest_store_lag_seconds",
            "Commit time minus the record's ts (device clock): how far behind storage is.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.commit = Histogram(
            "edgefleet_ingest_commit_seconds",
            "Time per store commit (one batch of records).",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.last_commit = 0.0

    def add(self, records: Iterable[PredictionRecord]) -> int:
        """Store like the wrapped store; then observe each record's lag."""
        records = list(records)
        start = time.perf_counter()
        new = self.inner.add(records)
        self.commit.observe(time.perf_counter() - start)
        now = self.last_commit = time.time()
        for record in records:
            self.lag.observe(max(0.0, now - record.ts))
        return new

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever else the store offers
        return getattr(self.inner, name)


@dataclass
class FleetSnapshot:
    """What the fleet looked like at ``taken_at`` (gauges for the scrape)."""

    taken_at: float = 0.0
    online: dict[str, int] = field(default_factory=dict)  # group -> devices online
    known: dict[str, int] = field(default_factory=dict)  # group -> devices known
    versions: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, version)
    rollouts: dict[tuple[str, str], int] = field(default_factory=dict)  # (target, phase)
    in_progress: int = 0


def snapshot(fleet: Fleet) -> FleetSnapshot:
    """Devices by group, versions and rollouts from what ``fleet`` has seen so far."""
    view = fleet.view
    out = FleetSnapshot(taken_at=time.time())
    online = view.online()
    devices = set(view.statuses) | set(view.known_groups)
    for device in devices - view.revoked:
        groups = view.known_groups.get(device) if view.provisioned else None
        if groups is None:
            groups = view.claimed_groups.get(device, set())
        for group in groups or {NO_GROUP}:
            out.known[group] = out.known.get(group, 0) + 1
            if device in online:
                out.online[group] = out.online.get(group, 0) + 1
    tally: Tally[tuple[str, str]] = Tally()
    for device in online:
        status = view.statuses[device]
        if status.model_name:
            tally[status.model_name, str(status.model_version or 0)] += 1
    out.versions = dict(tally)
    for record in fleet.registry.latest_pushes():
        kind, _, name = record.target.partition(":")
        members = (
            [name] if kind == "device" else sorted(set(record.members) | set(view.members(name)))
        )
        progress = _Rollout(
            fleet, record.version, frozenset(record.shas), members, started_at=record.created_at
        ).progress()
        phases = Tally(str(p.phase) for p in progress)
        for phase, n in phases.items():
            out.rollouts[record.target, phase] = n
        if any(not p.phase.done and p.online is not False for p in progress):
            out.in_progress += 1
    return out


class FleetWatcher:
    """Follows status and reports on a connection of its own (see the module docstring)."""

    def __init__(
        self,
        *,
        broker: str | None,
        fleet_dir: Path | None,
        prefix: str | None,
        state_dir: Path | None,
        stop: threading.Event,
    ) -> None:
        self.broker, self.fleet_dir, self.prefix = broker, fleet_dir, prefix
        self.state_dir = state_dir
        self.stop = stop
        self.latest = FleetSnapshot()
        self.thread = threading.Thread(target=self._run, name="edgefleet-metrics", daemon=True)

    def start(self) -> None:
        """Start following the fleet (a daemon thread; it ends when ``stop`` is set)."""
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # noqa: BLE001 - broker down, registry: retried
                log.warning("fleet metrics: %s; retrying in %.0f s", exc, RETRY_S)
            self.stop.wait(RETRY_S)

    def _follow(self) -> None:
        fleet = open_fleet(
            broker=self.broker,
            fleet_dir=self.fleet_dir,
            prefix=self.prefix,
            state_dir=self.state_dir,
            client_id=random_client_id("metrics"),
        )
        try:
            topics = fleet.topics
            fleet.conn.subscribe(topics.all_status(), topics.all_reported())
            next_snapshot = 0.0
            while not self.stop.is_set():
                msg = fleet.conn.next_message(0.5)
                if msg is not None:
                    fleet.handle(msg, live=not msg.retain)
                if time.monotonic() >= next_snapshot:
                    self.latest = snapshot(fleet)
                    next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        finally:
            fleet.conn.close()
            fleet.registry.close()


class _IngestCollector:
    """The worker's counters and the fleet snapshot, read at scrape time."""

    def __init__(self, watcher: FleetWatcher | None) -> None:
        self.stats: IngestStats | None = None  # set when the endpoint starts
        self.watcher = watcher
        self.extra: list[tuple[str, str, Callable[[], float]]] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        if s is not None:
            yield from self._ingest_families(s)
        for name, text, read in self.extra:
            yield CounterMetricFamily(name, text, value=read())
        if self.watcher is not None:
            yield from _fleet_families(self.watcher.latest)

    @staticmethod
    def _ingest_families(s: IngestStats) -> Iterator[Metric]:
        for name, value, text in (
            ("received", s.received, "Prediction records received (duplicates included)."),
            ("stored", s.stored, "Records stored new (rate(): the ingest rate)."),
            ("duplicates", s.duplicates, "Records already stored, absorbed and acked again."),
            ("malformed", s.malformed, "Messages or records refused as malformed."),
            ("acked", s.acked, "Records acknowledged to their devices."),
            ("failed_batches", s.failed_batches, "Batches the database refused (retried)."),
            ("chunk_requests", s.chunk_requests, "Chunk re-requests received."),
            ("errors", s.errors, "Unexpected errors the worker survived."),
            ("thumbnails", s.thumbnails, "Input thumbnails stored (best effort, never acked)."),
            ("bad_thumbnails", s.bad_thumbnails, "Input thumbnails dropped (bad, or not stored)."),
        ):
            yield CounterMetricFamily(f"edgefleet_ingest_{name}", text, value=value)


def _fleet_families(snap: FleetSnapshot) -> Iterator[Metric]:
    online = GaugeMetricFamily(
        "edgefleet_fleet_devices_online", "Devices whose status says online.", labels=["group"]
    )
    known = GaugeMetricFamily(
        "edgefleet_fleet_devices", "Devices known (provisioned or seen).", labels=["group"]
    )
    for group, n in sorted(snap.known.items()):
        known.add_metric([group], n)
        online.add_metric([group], snap.online.get(group, 0))
    versions = GaugeMetricFamily(
        "edgefleet_fleet_model_devices",
        "Online devices by the model and version they run.",
        labels=["model", "version"],
    )
    for (model, version), n in sorted(snap.versions.items()):
        versions.add_metric([model, version], n)
    rollout = GaugeMetricFamily(
        "edgefleet_fleet_rollout_devices",
        "Target devices of each target's latest push, by phase.",
        labels=["target", "phase"],
    )
    for (target, phase), n in sorted(snap.rollouts.items()):
        rollout.add_metric([target, phase], n)
    yield from (online, known, versions, rollout)
    yield GaugeMetricFamily(
        "edgefleet_fleet_rollouts_in_progress",
        "Latest pushes with an online target device not yet active, failed or rejected.",
        value=snap.in_progress,
    )
    yield GaugeMetricFamily(
        "edgefleet_fleet_snapshot_timestamp_seconds",
        "When the fleet figures were last computed (0: not yet).",
        value=snap.taken_at,
    )


@dataclass
class IngestMetrics:
    """The registry, the measured store and the fleet watcher of one listen worker.

    ``store`` is None where nothing is ingested (``edgefleet dashboard`` without
    ``--ingest``): then only the fleet figures are served.
    """

    registry: CollectorRegistry
    store: MeasuredStore | None
    watcher: FleetWatcher | None
    collector: _IngestCollector = field(init=False)
    server: WSGIServer | None = None

    def __post_init__(self) -> None:
        self.collector = _IngestCollector(self.watcher)
        self.registry.register(self.collector)

    def serve(self, listen: str, stats: IngestStats | None) -> str:
        """Start the HTTP endpoint on ``listen`` (``HOST:PORT``, used as given); return its URL.

        ``stats`` are the ingest counters to export (None: no ingest counters).

        Raises:
            FleetError: The address is malformed or cannot be bound.
        """
        try:
            host, port = split_listen(listen)
        except ValueError as exc:
            raise FleetError(f"--metrics: {exc}") from exc
        self.collector.stats = stats
        try:
            self.server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            msg = (
                f"cannot serve metrics on {listen}: {exc.strerror or exc}; choose another --metrics"
            )
            raise FleetError(msg) from exc
        if self.watcher is not None:
            self.watcher.start()
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/metrics"

    def count(self, name: str, text: str, read: Callable[[], float]) -> None:
        """Also export ``read()`` as the counter ``name`` (e.g. the log lines stored)."""
        self.collector.extra.append((name, text, read))

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def ingest_metrics(
    store: PredictionStore | None,
    *,
    stop: threading.Event,
    watch: bool = True,
    broker: str | None = None,
    fleet_dir: Path | None = None,
    prefix: str | None = None,
    state_dir: Path | None = None,
) -> IngestMetrics:
    """Metrics for one listen worker: wrap ``store``; follow the fleet if ``watch``.

    Give the Ingestor ``.store`` (the measured wrapper), then call ``.serve``. Without a
    store (a dashboard that does not ingest) only the fleet figures are served.
    """
    registry = CollectorRegistry()
    watcher = (
        FleetWatcher(
            broker=broker, fleet_dir=fleet_dir, prefix=prefix, state_dir=state_dir, stop=stop
        )
        if watch
        else None
    )
    measured = MeasuredStore(store, registry) if store is not None else None
    return IngestMetrics(registry, measured, watcher)
