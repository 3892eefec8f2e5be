"""The dashboard's live side: one MQTT connection watching the fleet, and the event hub.

:class:`LiveFleet` opens the fleet like ``edgefleet fleet status`` does (retained status and
reported topics, the push registry), then a thread takes every live message in, at most every
:data:`REFRESH_S` rebuilds the device rows and rollouts, and publishes the ones that changed
as server-sent events (rendered once, sent to every open page). It polls the prediction store
for new rows every :data:`POLL_S`, so it works beside ``edgefleet predictions listen`` as well
as with its own ingestor (``--ingest``, a second connection running the same
:class:`~edgefleet.host.fleet.Ingestor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.host.dashboard._queries import Search, latest, open_readonly
from edgefleet.host.dashboard._views import fleet_rows, rollout_views
from edgefleet.host.fleet import (
    DEFAULT_STATE_DIR,
    Ingestor,
    IngestStats,
    SqliteStore,
    close_fleet,
    open_fleet,
    random_client_id,
    stable_client_id,
)
from edgefleet.shared.errors import DecodeError, EdgefleetError, TopicError
from edgefleet.shared.messages import Reported, Status, decode
from edgefleet.shared.topics import REPORTED, STATUS

if TYPE_CHECKING:
    import sqlite3

    from edgefleet.host.fleet import Fleet, PredictionStore
    from edgefleet.shared.connection import Message

log = logging.getLogger(__name__)

REFRESH_S = 0.4  # rows change within this (plus render time) of a status message
POLL_S = 0.5
HISTORY = 100
QUEUE_SIZE = 2000


@dataclass(frozen=True)
class Settings:
    """Where the fleet is and what the dashboard may do."""

    fleet_dir: Path | None = None
    broker: str | None = None
    prefix: str | None = None
    state_dir: Path | None = None
    db: Path | None = None
    ingest: bool = False
    key_file: Path | None = None

    @property
    def state(self) -> Path:
        """The host state directory (push registry)."""
        return self.state_dir or DEFAULT_STATE_DIR

    @property
    def db_path(self) -> Path:
        """The prediction store."""
        return self.db or self.state / "predictions.sqlite"

    def open(self, **kwargs: Any) -> Fleet:  # noqa: ANN401 - open_fleet's keyword options
        """A new connection to the fleet (the caller closes it)."""
        return open_fleet(
            broker=self.broker,
            fleet_dir=self.fleet_dir,
            prefix=self.prefix,
            state_dir=self.state_dir,
            key_file=self.key_file,
            **kwargs,
        )


class Hub:
    """Fan-out of events to every open server-sent-events stream."""

    def __init__(self) -> None:
        self._subs: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = set()
        self._lock = threading.Lock()

    def subscribe(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]:
        """A queue for one stream; call from the event loop."""
        sub = (asyncio.get_running_loop(), asyncio.Queue[str](QUEUE_SIZE))
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]) -> None:
        """Forget a stream."""
        with self._lock:
            self._subs.discard(sub)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Send one event to every stream (from any thread); a full queue misses it."""
        text = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        with self._lock:
            subs = list(self._subs)
        for loop, queue in subs:
            with contextlib.suppress(RuntimeError):  # its loop is closed
                loop.call_soon_threadsafe(_offer, queue, text)

    def __len__(self) -> int:
        with self._lock:
            return len(self._subs)


def _offer(queue: asyncio.Queue[str], text: str) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(text)


Render = Callable[[str, dict[str, Any]], str]


@dataclass
class LiveFleet:
    """A watched fleet: state under ``lock``, a thread that keeps it current, an event hub."""

    settings: Settings
    render: Render
    hub: Hub = field(default_factory=Hub)
    lock: threading.RLock = field(default_factory=threading.RLock)
    history: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    fleet: Fleet | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    # --ingest: the store records go into (None: a SqliteStore of settings.db_path per
    # connection) and counters that live as long as the dashboard (--metrics reads them)
    ingest_store: PredictionStore | None = None
    ingest_stats: IngestStats = field(default_factory=IngestStats)
    _rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    _html: dict[str, str] = field(default_factory=dict)
    _rollouts: dict[int, dict[str, Any]] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)
    _max_id: int = 0

    def start(self) -> None:
        """Connect, take in the retained state and start the threads.

        Raises:
            EdgefleetError: The broker, fleet directory or registry cannot be opened.
        """
        self.fleet = self.settings.open(client_id=random_client_id("dashboard"))
        with self.lock:
            self.fleet.observe()
            self._rows = {r["id"]: r for r in fleet_rows(self.fleet)}
            self._html = {k: self._row_html(r) for k, r in self._rows.items()}
            self._rollouts = {r["id"]: r for r in rollout_views(self.fleet)}
        db = open_readonly(self.settings.db_path)
        if db is not None:
            self._max_id = int(
                db.execute("SELECT COALESCE(MAX(id), 0) FROM predictions").fetchone()[0]
            )
            db.close()
        self._spawn(self._watch, "dashboard-watch")
        self._spawn(self._poll_predictions, "dashboard-predictions")
        if self.settings.ingest:
            self._spawn(self._ingest, "dashboard-ingest")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop the threads and disconnect."""
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.fleet is not None:
            close_fleet(self.fleet)

    # -- state for the pages ----------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """The device rows as last built."""
        with self.lock:
            return sorted(self._rows.values(), key=lambda r: r["id"])

    def rows_html(self, ids: list[str]) -> str:
        """The rendered rows of ``ids`` (rendered once per change, shared by every page)."""
        with self.lock:
            return "".join(self._html.get(i, "") for i in ids)

    def _row_html(self, row: dict[str, Any]) -> str:
        return self.render("_device_row.html", {"r": row})

    def rollouts(self) -> list[dict[str, Any]]:
        """The latest push of every target, newest first, as last built."""
        with self.lock:
            return sorted(self._rollouts.values(), key=lambda r: -r["id"])

    # -- the threads ------------------------------------------------------------------

    def _watch(self) -> None:
        assert self.fleet is not None  # noqa: S101 - set by start()
        dirty, last = False, time.monotonic()
        while not self.stop.is_set():
            try:
                msg = self.fleet.conn.next_message(REFRESH_S)
                if msg is not None:
                    with self.lock:
                        self.fleet.handle(msg)
                        self._remember(msg)
                    dirty = True
                if dirty and time.monotonic() - last >= REFRESH_S:
                    self.refresh()
                    dirty, last = False, time.monotonic()
            except EdgefleetError as exc:
                log.warning("dashboard: watching the fleet: %s", exc)
                self.stop.wait(1.0)
            except Exception:
                log.exception("dashboard: unexpected error while watching the fleet")
                self.stop.wait(1.0)

    def _remember(self, msg: Message) -> None:
        """Keep a short per-device history of live status and update messages."""
        assert self.fleet is not None  # noqa: S101
        try:
            parsed = self.fleet.topics.parse(msg.topic)
            if not msg.payload or parsed.device_id is None:
                return
            if parsed.kind == STATUS:
                s = decode(Status, msg.payload)
                entry = {
                    "ts": s.ts or msg.received_at,
                    "kind": "status",
                    "text": _status_text(s),
                }
            elif parsed.kind == REPORTED:
                r = decode(Reported, msg.payload)
                text = f"update {r.state.value}"
                if r.model_name:
                    text += f" {r.model_name} v{r.version}"
                if r.reason:
                    text += f": {r.reason}"
                entry = {"ts": r.ts or msg.received_at, "kind": "update", "text": text}
            else:
                return
        except (DecodeError, TopicError):
            return
        self.history.setdefault(parsed.device_id, deque(maxlen=HISTORY)).appendleft(entry)

    def refresh(self) -> None:
        """Rebuild rows and rollouts; publish what changed."""
        assert self.fleet is not None  # noqa: S101
        with self.lock:
            rows = {r["id"]: r for r in fleet_rows(self.fleet)}
            rollouts = {r["id"]: r for r in rollout_views(self.fleet)}
            changed = [r for k, r in rows.items() if self._rows.get(k) != r]
            moved = [r for k, r in rollouts.items() if self._rollouts.get(k) != r]
            html_of = {r["id"]: self._row_html(r) for r in changed}
            self._html.update(html_of)
            self._rows, self._rollouts = rows, rollouts
        for row in changed:
            html = html_of[row["id"]]
            self.hub.publish(
                "device",
                {"id": row["id"], "html": html, "state": row["state"], "groups": row["groups"]},
            )
        for rollout in moved:
            html = self.render("_rollout_body.html", {"p": rollout})
            self.hub.publish("rollout", {"id": rollout["id"], "html": html})

    def _poll_predictions(self) -> None:
        db: sqlite3.Connection | None = None
        while not self.stop.wait(POLL_S):
            try:
                db = db or open_readonly(self.settings.db_path)
                if db is None:
                    continue
                new = latest(db, Search(), after_id=self._max_id)
                for row in reversed(new):
                    self._max_id = max(self._max_id, row["id"])
                    html = self.render("_prediction_row.html", {"x": row})
                    self.hub.publish(
                        "prediction",
                        {
                            "id": row["id"],
                            "html": html,
                            "device": row["device_id"],
                            "label": row["label"],
                            "score": row["score"],
                        },
                    )
            except Exception:
                log.exception("dashboard: reading new predictions")
                if db is not None:
                    db.close()
                db = None

    def _ingest(self) -> None:
        """Store predictions and ack them, like ``edgefleet predictions listen``."""
        state = self.settings.state
        while not self.stop.is_set():
            try:
                store = self.ingest_store or SqliteStore(self.settings.db_path)
                client_id = stable_client_id(
                    "ingest", f"{self.settings.prefix or 'fleet'}/dashboard", state_dir=state
                )
                try:
                    fl = self.settings.open(client_id=client_id, persistent=True)
                    try:
                        ingestor = Ingestor(fl.conn, fl, store, stats=self.ingest_stats)
                        ingestor.subscribe(shared=True)
                        ingestor.run(stop=self.stop)
                    finally:
                        close_fleet(fl)
                finally:
                    if store is not self.ingest_store:
                        store.close()
            except EdgefleetError as exc:
                log.warning("dashboard: ingestor: %s; retrying in 5 s", exc)
                self.stop.wait(5.0)


def _status_text(s: Status) -> str:
    if not s.online:
        return "offline"
    parts = ["online"]
    if s.model_name:
        parts.append(f"{s.model_name} v{s.model_version}")
    if s.inference_count is not None:
        parts.append(f"{s.inference_count} inferences")
    if s.latency_p95_ms is not None:
        parts.append(f"p95 {s.latency_p95_ms:.2f} ms")
    if s.outbox_depth is not None:
        parts.append(f"outbox {s.outbox_depth}")
    return ", ".join(parts)
