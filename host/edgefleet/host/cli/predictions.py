"""`edgefleet predictions listen | tail | export`."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.host.cli._options import Broker, FleetDir, Prefix, StateDir, example, fail
from edgefleet.shared.errors import EdgefleetError
from edgefleet.shared.signals import stop_on_signals

if TYPE_CHECKING:
    from edgefleet.host.fleet import Fleet, PredictionStore, ReassertReport, Selection

app = typer.Typer(help="Collect and read prediction records.", no_args_is_help=True)

Db = Annotated[
    Path | None,
    typer.Option(
        "--db", envvar="EDGEFLEET_DB", help="SQLite store (default STATE_DIR/predictions.sqlite)."
    ),
]

StoreAt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="EDGEFLEET_STORE",
        help="Prediction store: a SQLite file, or postgresql://USER:PASSWORD@HOST:PORT/DB "
        "(shared by workers on several hosts; also holds the push registry). Overrides --db.",
    ),
]


def _db_path(db: Path | None, state_dir: Path | None) -> Path:
    from edgefleet.host.fleet import DEFAULT_STATE_DIR

    return db or (state_dir or DEFAULT_STATE_DIR) / "predictions.sqlite"


def store_location(store_at: str | None, db: Path | None, state_dir: Path | None) -> str | Path:
    """The store ``--store``/``$EDGEFLEET_STORE``, ``--db`` and ``--state-dir`` point at."""
    if db is not None and store_at == os.environ.get("EDGEFLEET_STORE"):
        return db  # --db on the command line beats $EDGEFLEET_STORE
    return store_at or _db_path(db, state_dir)


@app.command(
    epilog=example(
        "edgefleet predictions listen --fleet fleet",
        "edgefleet predictions listen --fleet fleet --worker 2   # a second worker, shared load",
    )
)
def listen(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    db: Db = None,
    store_at: StoreAt = None,
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
    metrics: Annotated[
        str | None,
        typer.Option(help="Serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9100."),
    ] = None,
    logs: Annotated[
        bool,
        typer.Option(
            "--logs",
            help="Also store device log lines in the store (see `edgefleet logs`).",
        ),
    ] = False,
) -> None:
    """Store every prediction record exactly once, then ack it; also serve chunk re-requests."""
    from edgefleet.host.cli._observe import Observe
    from edgefleet.host.fleet import (
        DEFAULT_STATE_DIR,
        Ingestor,
        close_fleet,
        describe_store,
        open_fleet,
        open_store,
        stable_client_id,
    )

    location = store_location(store_at, db, state_dir)
    try:
        store = open_store(location)
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
            store=store_at,
        )
    except EdgefleetError as exc:
        raise fail(exc) from exc
    stop = threading.Event()
    stop_on_signals(stop)  # no lock in the handler: a second SIGTERM cannot hang the listener
    observe: Observe | None = None
    try:
        observe = Observe.open(
            fl, store, location=location, metrics=metrics, logs=logs, stop=stop,
            fleet_dir=fleet, broker=broker, prefix=prefix, state_dir=state_dir,
        )  # fmt: skip
        ingestor = Ingestor(observe.conn, fl, observe.store)
        ingestor.subscribe(shared=shared)
        observe.start(ingestor.stats, shared=shared)
        _start_reassert(fl, state_dir, stop, reassert_every, store_at)
        where = describe_store(location)
        typer.echo(f"listening on {fl.conn.url} (worker {worker}), storing into {where}", err=True)
        stats = ingestor.run(stop=stop)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    finally:
        if observe is not None:
            observe.close()
        close_fleet(fl)
        store.close()
    typer.echo(
        f"stored {stats.stored} new, {stats.duplicates} duplicates, {stats.malformed} malformed",
        err=True,
    )


def _start_reassert(
    fl: Fleet, state_dir: Path | None, stop: threading.Event, every: float, store: str | None
) -> None:
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
        fl.conn.settings,
        fl.topics,
        state_dir,
        stop=stop,
        interval_s=every,
        on_report=report,
        store=store,
    )


Since = Annotated[
    str | None,
    typer.Option(
        help="Only records from this time: ISO 8601 (2026-11-28T09:30, UTC unless it has an "
        "offset) or a duration back from now (15m, 2h, 7d)."
    ),
]
Until = Annotated[str | None, typer.Option(help="Only records up to this time (as --since).")]


def _open_store(store_at: str | None, db: Path | None, state_dir: Path | None) -> PredictionStore:
    """Open an existing prediction store; a missing SQLite file is an error, never created."""
    from edgefleet.host.fleet import open_store
    from edgefleet.host.fleet._pgstore import is_postgres_url

    location = store_location(store_at, db, state_dir)
    if not is_postgres_url(location) and not Path(location).is_file():
        raise fail(
            f"no prediction store at {location}: `edgefleet predictions listen` creates and "
            "fills it; pass --db FILE, --store or --state-dir DIR if it is elsewhere"
        )
    try:
        return open_store(location)
    except EdgefleetError as exc:
        raise fail(exc) from exc


def _selection(device: str | None, since: str | None, until: str | None) -> Selection:
    from edgefleet.host.fleet import Selection, parse_time

    now = time.time()
    try:
        return Selection(
            device_id=device,
            since=parse_time(since, now=now, what="--since") if since else None,
            until=parse_time(until, now=now, what="--until") if until else None,
        )
    except EdgefleetError as exc:
        raise fail(exc) from exc


def _builds(state_dir: Path | None) -> dict[tuple[str, int], str]:
    """(model, version) -> build id from the push registry, read-only (empty if none)."""
    from edgefleet.host.fleet import open_any_registry

    try:  # in PostgreSQL when $EDGEFLEET_STORE says so
        registry = open_any_registry(state_dir, read_only=True)
    except EdgefleetError:
        return {}
    try:
        return {(r.name, r.version): r.build for r in registry.all_pushes()}
    finally:
        registry.close()


def _quiet_broken_pipe() -> typer.Exit:
    """The reader (``head``) went away: stop quietly, as ``cat`` does."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return typer.Exit(code=0)


@app.command(
    epilog=example(
        "edgefleet predictions tail",
        "edgefleet predictions tail -f --device pi-001",
        "edgefleet predictions tail -n 100 --since 2h",
    )
)
def tail(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    db: Db = None,
    store_at: StoreAt = None,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records.")
    ] = False,
    last: Annotated[int, typer.Option("-n", help="Show the last N records first.")] = 20,
    since: Since = None,
    until: Until = None,
    state_dir: StateDir = None,
) -> None:
    """Print the latest prediction records, with date and time in UTC (read-only)."""
    from edgefleet.host.fleet import describe_store
    from edgefleet.host.fleet._export import TAIL_HEADER, tail_line

    sel = _selection(device, since, until)
    store = _open_store(store_at, db, state_dir)
    builds = _builds(state_dir)
    rows = list(sel.records(store))[-last:] if last else []
    after = rows[-1][0] if rows else max(0, store.count())
    where = describe_store(store_location(store_at, db, state_dir))
    try:
        typer.echo(f"{where}: {store.count()} record(s); times in UTC")
        typer.echo(TAIL_HEADER)
        while True:
            for row_id, rec in rows:
                after = row_id
                typer.echo(tail_line(rec, builds.get((rec.model_name, rec.model_version))))
            if not follow:
                return
            time.sleep(0.5)
            rows = list(sel.records(store, after_id=after))
            if rows:
                builds = _builds(state_dir)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        raise _quiet_broken_pipe() from None
    finally:
        store.close()


@app.command(
    "export",
    epilog=example(
        "edgefleet predictions export -o predictions.csv",
        "edgefleet predictions export --format jsonl --since 2026-11-28 | head",
        "edgefleet predictions export --device pi-001 --since 24h --until 1h",
    ),
)
def export_cmd(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    db: Db = None,
    store_at: StoreAt = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv (flat columns, the default) or jsonl (full records, one per line); "
            "default from --out's suffix (.jsonl), else csv.",
        ),
    ] = None,
    csv_format: Annotated[bool, typer.Option("--csv", help="Same as --format csv.")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Same as --format jsonl.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File (default stdout).")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    since: Since = None,
    until: Until = None,
    state_dir: StateDir = None,
) -> None:
    """Export stored records as CSV or JSON lines (times in ISO 8601 UTC; read-only).

    CSV columns: time, device_id, boot_id, seq, label, score, model_name, model_version,
    build, latency_ms, source, error, then top1_label, top1_score, top2_label, ...
    """
    from edgefleet.host.fleet import export
    from edgefleet.host.fleet._export import format_for

    chosen = [f for f, on in (("csv", csv_format), ("jsonl", jsonl)) if on]
    if fmt is not None:
        chosen.append(fmt)
    if len(set(chosen)) > 1:
        raise fail(f"choose one format, not {' and '.join(sorted(set(chosen)))}")
    try:
        form = format_for(chosen[0] if chosen else None, out.name if out else None)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    sel = _selection(device, since, until)
    store = _open_store(store_at, db, state_dir)
    builds = _builds(state_dir)
    try:
        if out is None:
            n = export(store, sys.stdout, fmt=form, selection=sel, builds=builds)
            sys.stdout.flush()
        else:
            with out.open("w", newline="", encoding="utf-8") as f:
                n = export(store, f, fmt=form, selection=sel, builds=builds)
    except BrokenPipeError:
        raise _quiet_broken_pipe() from None
    except (EdgefleetError, OSError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"exported {n} records ({form})", err=True)
