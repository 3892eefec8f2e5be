"""`edgefleet logs DEVICE [--follow] [--since]`: a device's published log lines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.host.cli._options import (
    Broker,
    FleetDir,
    Prefix,
    StateDir,
    fail,
    open_or_fail,
)
from edgefleet.host.cli.predictions import StoreAt, store_location
from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.shared.messages import DeviceLog


def logs(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device: Annotated[str, typer.Argument(help="The device id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing lines as the device sends them.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only lines from this time on: a duration back from now (90s, 15m, 2h, 7d) "
            "or ISO 8601 (2026-11-28T09:30, UTC unless it has an offset)."
        ),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            envvar="EDGEFLEET_DB",
            help="Store written by `predictions listen --logs` (default "
            "STATE_DIR/predictions.sqlite).",
        ),
    ] = None,
    store_at: StoreAt = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Print a device's log lines: stored ones, then (--follow) live ones from the broker.

    Devices publish lines at or above their [logs] level (WARNING by default); the host
    keeps them when `edgefleet predictions listen --logs` runs, in its store: the SQLite
    file (--db) or the PostgreSQL database (--store / EDGEFLEET_STORE).
    """
    from edgefleet.host.fleet._logs import format_line, parse_since
    from edgefleet.host.fleet._pgstore import is_postgres_url, open_log_store
    from edgefleet.shared.topics import validate_id

    try:
        validate_id(device)
        start = parse_since(since, now=time.time()) if since else 0.0
    except EdgefleetError as exc:
        raise fail(exc) from exc
    location = store_location(store_at, db, state_dir)
    seen: set[tuple[str, int]] = set()
    if is_postgres_url(location) or Path(location).is_file():
        try:
            store = open_log_store(location)
            try:
                for row in store.lines(device, since=start):
                    seen.add((row.line.boot_id, row.line.seq))
                    typer.echo(format_line(row.line))
            finally:
                store.close()
        except EdgefleetError as exc:
            raise fail(exc) from exc
    elif not follow:
        raise fail(
            f"no log store at {location}: run `edgefleet predictions listen --logs` to keep device "
            "logs, or watch them live with --follow"
        )
    if follow:
        _follow(device, seen, start, broker=broker, fleet=fleet, prefix=prefix, state_dir=state_dir)


def _follow(
    device: str,
    seen: set[tuple[str, int]],
    start: float,
    *,
    broker: str | None,
    fleet: Path | None,
    prefix: str | None,
    state_dir: Path | None,
) -> None:
    from edgefleet.host.fleet import close_fleet, random_client_id
    from edgefleet.host.fleet._logs import follow, format_line

    fl = open_or_fail(
        broker=broker,
        fleet=fleet,
        prefix=prefix,
        state_dir=state_dir,
        client_id=random_client_id("logs"),
    )
    typer.echo(f"following {device}'s logs on {fl.conn.url} (Ctrl-C to stop)", err=True)
    try:
        for line in follow(fl.conn, fl.topics, device):
            if _new(line, seen) and line.ts >= start:
                typer.echo(format_line(line))
    except KeyboardInterrupt:
        return
    except EdgefleetError as exc:
        raise fail(exc) from exc
    finally:
        close_fleet(fl)


def _new(line: DeviceLog, seen: set[tuple[str, int]]) -> bool:
    key = (line.boot_id, line.seq)
    if key in seen:
        return False
    seen.add(key)
    return True
