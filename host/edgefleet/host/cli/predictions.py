"""`edgefleet predictions listen | tail | export`."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.host.cli._options import Broker, FleetDir, Prefix, StateDir, fail
from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.host.fleet import Fleet, ReassertReport

app = typer.Typer(help="Collect and read prediction records.", no_args_is_help=True)

Db = Annotated[
    Path | None,
    typer.Option(
        "--db", envvar="EDGEFLEET_DB", help="SQLite store (default STATE_DIR/predictions.sqlite)."
    ),
]


def _db_path(db: Path | None, state_dir: Path | None) -> Path:
    from edgefleet.host.fleet import DEFAULT_STATE_DIR

    return db or (state_dir or DEFAULT_STATE_DIR) / "predictions.sqlite"


@app.command()
def listen(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    db: Db = None,
    worker: Annotated[str, typer.Option(help="Worker name; run each worker with its own.")] = "1",
    shared: Annotated[
        bool, typer.Option(help="Use the $share/edgefleet/ shared subscription.")
    ] = True,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
    reassert_every: Annotated[
        float,
        typer.Option(
            help="Seconds between re-asserts of the desired state a broker crash may have "
            "lost (also done on start; see `edgefleet fleet reassert`).",
            min=10.0,
        ),
    ] = 300.0,
) -> None:
    """Store every prediction record exactly once, then ack it; also serve chunk re-requests."""
    from edgefleet.host.fleet import (
        DEFAULT_STATE_DIR,
        Ingestor,
        SqliteStore,
        close_fleet,
        open_fleet,
        stable_client_id,
    )

    try:
        store = SqliteStore(_db_path(db, state_dir))
        # Stable per worker (its persistent session survives a restart), unguessable by a
        # device: an HMAC under a secret in the state dir (docs/fleet.md, "Client ids").
        client_id = stable_client_id(
            "ingest", f"{prefix or 'fleet'}/{worker}", state_dir=state_dir or DEFAULT_STATE_DIR
        )
        fl = open_fleet(
            broker=broker,
            fleet_dir=fleet,
            prefix=prefix,
            state_dir=state_dir,
            client_id=client_id,
            persistent=True,
        )
    except EdgefleetError as exc:
        raise fail(exc) from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ingestor = Ingestor(fl.conn, fl, store)
    try:
        ingestor.subscribe(shared=shared)
        _start_reassert(fl, state_dir, stop, reassert_every)
        typer.echo(
            f"listening on {fl.conn.url} (worker {worker}), storing into {store.path}",
            err=True,
        )
        stats = ingestor.run(stop=stop)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    finally:
        close_fleet(fl)
        store.close()
    typer.echo(
        f"stored {stats.stored} new, {stats.duplicates} duplicates, {stats.malformed} malformed",
        err=True,
    )


def _start_reassert(fl: Fleet, state_dir: Path | None, stop: threading.Event, every: float) -> None:
    """Re-assert desired state on start and every ``every`` s, on a connection of its own."""
    from edgefleet.host.fleet import PahoConnection
    from edgefleet.host.fleet._reassert import start_periodic

    if not isinstance(fl.conn, PahoConnection):
        return

    def report(result: ReassertReport | Exception) -> None:
        if isinstance(result, Exception):
            typer.echo(f"reassert: failed, retrying in {every:.0f} s: {result}", err=True)
        elif result.changed or result.newer_elsewhere or result.missing_models:
            typer.echo(f"reassert: {result.summary()}", err=True)

    start_periodic(
        fl.conn.settings, fl.topics, state_dir, stop=stop, interval_s=every, on_report=report
    )


@app.command()
def tail(
    db: Db = None,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records.")
    ] = False,
    last: Annotated[int, typer.Option("-n", help="Show the last N records first.")] = 20,
    state_dir: StateDir = None,
) -> None:
    """Print the latest prediction records."""
    from edgefleet.host.fleet import SqliteStore

    try:
        store = SqliteStore(_db_path(db, state_dir))
    except EdgefleetError as exc:
        raise fail(exc) from exc
    rows = list(store.iter_records(device_id=device))[-last:] if last else []
    after = rows[-1][0] if rows else max(0, store.count())
    try:
        while True:
            for row_id, rec in rows:
                after = row_id
                typer.echo(
                    f"{time.strftime('%H:%M:%S', time.localtime(rec.ts))} {rec.device_id} "
                    f"#{rec.seq} {rec.label} {rec.score:.3f} {rec.model_name} "
                    f"v{rec.model_version} {rec.latency_ms:.1f}ms {rec.source}"
                )
            if not follow:
                return
            time.sleep(0.5)
            rows = list(store.iter_records(device_id=device, after_id=after))
    except KeyboardInterrupt:
        return
    finally:
        store.close()


@app.command("export")
def export_cmd(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    db: Db = None,
    csv_format: Annotated[bool, typer.Option("--csv", help="CSV (flat columns).")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="JSON lines (full records).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File (default stdout).")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Export every stored record as CSV or JSON lines."""
    from edgefleet.host.fleet import SqliteStore, export

    if csv_format == jsonl:
        raise fail("choose one of --csv or --jsonl")
    try:
        store = SqliteStore(_db_path(db, state_dir))
        try:
            if out is None:
                n = export(
                    store, sys.stdout, fmt="csv" if csv_format else "jsonl", device_id=device
                )
            else:
                with out.open("w", newline="", encoding="utf-8") as f:
                    n = export(store, f, fmt="csv" if csv_format else "jsonl", device_id=device)
        finally:
            store.close()
    except (EdgefleetError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"exported {n} records", err=True)
