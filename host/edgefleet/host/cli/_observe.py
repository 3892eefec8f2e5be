"""`predictions listen --metrics HOST:PORT --logs`: the metrics endpoint and the log tap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    import threading
    from pathlib import Path

    from edgefleet.host.fleet import Fleet, IngestStats, PredictionStore
    from edgefleet.host.fleet._logs import LogTap
    from edgefleet.host.fleet._metrics import IngestMetrics
    from edgefleet.shared.connection import Connection


@dataclass
class Observe:
    """What ``--metrics`` and ``--logs`` add around one ingest worker.

    ``conn`` and ``store`` are what the Ingestor gets: the log tap and the measured store
    when asked for, the plain connection and store otherwise.
    """

    conn: Connection
    store: PredictionStore
    tap: LogTap | None = None
    metrics: IngestMetrics | None = None
    listen: str | None = None

    @classmethod
    def open(
        cls,
        fl: Fleet,
        store: PredictionStore,
        *,
        location: str | Path,
        metrics: str | None,
        logs: bool,
        stop: threading.Event,
        fleet_dir: Path | None,
        broker: str | None,
        prefix: str | None,
        state_dir: Path | None,
    ) -> Observe:
        """Wrap the connection and the store as the options ask.

        ``location`` is the prediction store's (a SQLite file or a PostgreSQL URL): with
        ``logs`` the lines go into a ``logs`` table of the same store.

        Raises:
            FleetError: The log table cannot be opened.
        """
        from edgefleet.host.fleet._logs import LogTap
        from edgefleet.host.fleet._metrics import ingest_metrics
        from edgefleet.host.fleet._pgstore import open_log_store

        out = cls(conn=fl.conn, store=store, listen=metrics)
        if logs:
            out.tap = LogTap(fl.conn, fl.topics, open_log_store(location))
            out.conn = out.tap
        if metrics is not None:
            out.metrics = ingest_metrics(
                store,
                stop=stop,
                broker=broker,
                fleet_dir=fleet_dir,
                prefix=prefix,
                state_dir=state_dir,
            )
            if out.metrics.store is not None:
                out.store = out.metrics.store
        return out

    def start(self, stats: IngestStats, *, shared: bool) -> None:
        """Subscribe to the logs and serve the metrics (after the Ingestor subscribed).

        Raises:
            FleetError: The metrics address is malformed or cannot be bound.
        """
        from edgefleet.host.fleet._ingest import SHARE_GROUP

        tap = self.tap
        if tap is not None:
            tap.subscribe_logs(shared=shared, group=SHARE_GROUP)
            typer.echo(f"storing device logs in {tap.store.where}", err=True)
        if self.metrics is not None and self.listen is not None:
            url = self.metrics.serve(self.listen, stats)
            if tap is not None:
                self.metrics.count(
                    "edgefleet_ingest_log_lines_stored",
                    "Device log lines stored.",
                    lambda: tap.stored,
                )
                self.metrics.count(
                    "edgefleet_ingest_log_lines_malformed",
                    "Log messages refused (undecodable, or naming another device).",
                    lambda: tap.malformed,
                )
            typer.echo(f"serving Prometheus metrics on {url}", err=True)

    def close(self) -> None:
        """Stop the endpoint and close the log table."""
        if self.metrics is not None:
            self.metrics.close()
        if self.tap is not None:
            self.tap.store.close()
