"""`edgefleet push`, `edgefleet rollback` and `edgefleet rollout status`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TextIO

import typer

from edgefleet.host.cli._options import Broker, FleetDir, KeyFile, Prefix, StateDir, fail
from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgefleet.host.fleet import Fleet, Progress, RolloutResult

app = typer.Typer()
rollout_app = typer.Typer(help="Follow rollouts.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")

Devices = Annotated[list[str] | None, typer.Option("--device", help="Target device (repeatable).")]
Group = Annotated[str | None, typer.Option("--group", help="Target group.")]
Wait = Annotated[
    float | None,
    typer.Option(
        "--wait", help="Watch progress up to SECONDS (per wave); exit 0 only if all active."
    ),
]


class ProgressPrinter:
    """Live per-device progress: redrawn in place on a terminal, one line per change otherwise."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.tty = out.isatty()
        self.shown: dict[str, str] = {}
        self.lines = 0

    def __call__(self, progress: list[Progress]) -> None:
        """Show the latest progress of every target."""
        from edgefleet.host.fleet._rollout import bar

        lines = {
            p.device_id: f"{p.device_id:<20} {bar(p.fraction if not p.phase.done else 1.0)}"
            f" {p.describe()}"
            for p in progress
        }
        if self.tty:
            if self.lines:
                self.out.write(f"\x1b[{self.lines}F\x1b[J")
            self.out.write("\n".join(lines.values()) + "\n")
            self.lines = len(lines)
        else:
            for device, line in lines.items():
                if self.shown.get(device) != line:
                    self.out.write(line + "\n")
        self.shown = lines
        self.out.flush()


def print_result(result: RolloutResult) -> None:
    """The per-device summary after a push or rollback."""
    if result.aborted:
        typer.echo(
            f"rollout of {result.name} v{result.version} ABORTED: {result.aborted}", err=True
        )
    if not result.targets:
        typer.echo(
            f"{result.name} v{result.version} published; no known target device yet "
            "(group members are learned from their status messages)"
        )
        return
    if not result.waited:
        typer.echo(
            f"{result.name} v{result.version} published to {len(result.targets)} "
            "device(s); follow it with `edgefleet rollout status`"
        )
        return
    active = sum(1 for p in result.progress if p.phase.value == "active")
    typer.echo(f"{result.name} v{result.version}: {active}/{len(result.targets)} active")
    for p in result.progress:
        if p.phase.value != "active":
            typer.echo(f"  {p.device_id}: {p.describe()}")


def _roll_out(
    action: Callable[[Fleet], RolloutResult],
    *,
    wait: float | None,
    broker: str | None,
    fleet: Path | None,
    prefix: str | None,
    state_dir: Path | None,
    key: Path | None,
) -> NoReturn:
    """Open the fleet with its signing key, run a push or rollback, print it and exit."""
    from edgefleet.host.fleet import close_fleet, open_fleet

    try:
        fl = open_fleet(
            broker=broker,
            fleet_dir=fleet,
            prefix=prefix,
            state_dir=state_dir,
            key_file=key,
            need_key=True,
        )
    except EdgefleetError as exc:
        raise fail(exc) from exc
    fl.on_progress = ProgressPrinter() if wait is not None else None
    try:
        result = action(fl)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    finally:
        close_fleet(fl)
    print_result(result)
    raise typer.Exit(code=result.exit_code)


@app.command()
def push(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    model: Annotated[Path, typer.Argument(help=".tflite written by `edgefleet quantize`.")],
    device: Devices = None,
    group: Group = None,
    version: Annotated[
        int | None, typer.Option(help="Version (default: highest known + 1).")
    ] = None,
    wait: Wait = None,
    canary: Annotated[int, typer.Option(help="Update N group devices first.")] = 0,
    max_failures: Annotated[
        float | None, typer.Option(help="Abort once more than P percent of targets fail.")
    ] = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
    key: KeyFile = None,
) -> None:
    """Sign a model and roll it out to devices or a group over MQTT."""
    from edgefleet.host.fleet import PushPlan, load_model
    from edgefleet.host.fleet import push as do_push

    try:
        plan = PushPlan(
            devices=tuple(device or ()),
            group=group,
            version=version,
            wait=wait,
            canary=canary,
            max_failures=max_failures,
        )
        plan.check()
        files = load_model(model)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    _roll_out(
        lambda fl: do_push(fl, files, plan),
        wait=wait,
        broker=broker,
        fleet=fleet,
        prefix=prefix,
        state_dir=state_dir,
        key=key,
    )


@app.command()
def rollback(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device: Devices = None,
    group: Group = None,
    wait: Wait = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
    key: KeyFile = None,
) -> None:
    """Return a device or group to its previous model, signed as a new, higher version."""
    from edgefleet.host.fleet import PushPlan
    from edgefleet.host.fleet import rollback as do_rollback

    try:
        plan = PushPlan(devices=tuple(device or ())[:1], group=group, wait=wait)
        plan.check()
    except EdgefleetError as exc:
        raise fail(exc) from exc
    _roll_out(
        lambda fl: do_rollback(fl, plan),
        wait=wait,
        broker=broker,
        fleet=fleet,
        prefix=prefix,
        state_dir=state_dir,
        key=key,
    )


@rollout_app.command("status")
def rollout_status(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device: Annotated[str | None, typer.Option("--device")] = None,
    group: Group = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Where each target of the latest push stands (from the devices' retained reports)."""
    from edgefleet.host.fleet import close_fleet, device_target, group_target, open_fleet
    from edgefleet.host.fleet import rollout_status as status

    target = group_target(group) if group else device_target(device) if device else None
    try:
        fl = open_fleet(broker=broker, fleet_dir=fleet, prefix=prefix, state_dir=state_dir)
        try:
            rows = status(fl, target=target)
        finally:
            close_fleet(fl)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    if not rows:
        typer.echo("no rollouts recorded in this host's state dir")
    for record, progress in rows:
        active = sum(1 for p in progress if p.phase.value == "active")
        typer.echo(
            f"{record.target}: {record.name} v{record.version} ({record.kind}) "
            f"{active}/{len(progress)} active"
        )
        for p in progress:
            typer.echo(f"  {p.device_id:<20} {p.describe()}")
