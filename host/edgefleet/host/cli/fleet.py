"""`edgefleet fleet status`, `edgefleet fleet reassert` and `edgefleet send-image`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.host.cli._options import (
    Broker,
    FleetDir,
    Prefix,
    StateDir,
    example,
    fail,
    on_fleet,
    open_or_fail,
)
from edgefleet.shared.errors import EdgefleetError

app = typer.Typer()
fleet_app = typer.Typer(help="See the fleet's state.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")


@fleet_app.command(
    "status",
    epilog=example(
        "edgefleet fleet status --fleet fleet",
        "edgefleet fleet status --watch",
        "edgefleet fleet status --json | jq '.[] | {device_id, version, build}'",
    ),
)
def status(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep the table live (Ctrl-C ends).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Devices: online/offline, last seen, model, runtime, latency, outbox, update state.

    Groups and REVOKED come from the fleet directory's device registry (--fleet); a device
    whose status claims other groups is listed under the table as a warning. MODEL and VER
    follow the devices' update reports, so they are current right after a push; BUILD is the
    quantization mode and short sha of what this host pushed. --json adds every figure the
    devices report (RSS, uptime, p95, inference count, agent version, ...). Read-only: it
    creates no file.
    """
    from edgefleet.host.fleet import close_fleet, device_rows, format_table, format_warnings

    fl = open_or_fail(
        broker=broker, fleet=fleet, prefix=prefix, state_dir=state_dir, read_only=True
    )
    try:
        fl.observe()
        while True:
            rows = device_rows(fl)
            warnings = format_warnings(rows, verified=fl.view.provisioned)
            if as_json:
                # Each row carries its warnings, groups_verified and revoked.
                typer.echo(json.dumps([r.as_json() for r in rows], indent=None if watch else 2))
            else:
                typer.echo(("\x1b[H\x1b[J" if watch else "") + format_table(rows))
                if warnings:
                    typer.echo(warnings)
            if not watch:
                return
            fl.pump(1.0)
    except KeyboardInterrupt:
        return
    finally:
        close_fleet(fl)


@fleet_app.command("reassert", epilog=example("edgefleet fleet reassert --fleet fleet"))
def reassert_cmd(
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Put back desired manifests and chunks a broker crash lost (from the push registry).

    Compares what the broker retains with what this host's registry says is current and
    republishes only what is missing or stale; `predictions listen` does the same on start
    and every few minutes.
    """
    from edgefleet.host.fleet import reassert

    fl = open_or_fail(broker=broker, fleet=fleet, prefix=prefix, state_dir=state_dir)
    report = on_fleet(fl, lambda fl: reassert(fl.conn, fl.topics, fl.registry))
    typer.echo(report.summary())


@app.command(
    "send-image",
    epilog=example(
        "edgefleet send-image pi-001 scans/0010.png",
        "edgefleet send-image pi-001 site-a/*.npy --fleet fleet",
    ),
)
def send_image(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device: Annotated[str, typer.Argument(help="Device id.")],
    files: Annotated[list[Path], typer.Argument(help=".png/.jpg/.npy files.")],
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Send images to a device's image topic for inference (try a device from the office).

    Each input is recorded as `mqtt:PATH#SHA8` (the path as given and the start of the
    file's sha256), so two files of the same name stay apart in `predictions tail`.
    """
    from edgefleet.host.fleet import send_images
    from edgefleet.shared.topics import validate_id

    try:
        validate_id(device)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    fl = open_or_fail(
        broker=broker, fleet=fleet, prefix=prefix, state_dir=state_dir, read_only=True
    )
    n = on_fleet(fl, lambda fl: send_images(fl.conn, fl, device, files))
    typer.echo(
        f"sent {n} image(s) to {device} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())};"
        " see `edgefleet predictions tail`"
    )
