"""`edgefleet push`, `edgefleet rollback` and `edgefleet rollout status`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TextIO

import typer

from edgefleet.host.cli._options import (
    EXIT_BROKER_LOST,
    Broker,
    FleetDir,
    Force,
    KeyFile,
    Prefix,
    StateDir,
    example,
    fail,
    on_fleet,
    open_or_fail,
)
from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgefleet.host.fleet import Fleet, Progress, PushRecord, RolloutResult
    from edgefleet.host.fleet._plans import Transfer, WavePlan

app = typer.Typer()
rollout_app = typer.Typer(help="Follow rollouts.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")

Devices = Annotated[list[str] | None, typer.Option("--device", help="Target device (repeatable).")]
Group = Annotated[str | None, typer.Option("--group", help="Target group.")]
OneDevice = Annotated[
    str | None, typer.Option("--device", help="Only the rollout to this device id.")
]
# A .tflite made by another tool: what edgefleet quantize would have embedded.
ForeignLabels = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="For a .tflite made by another tool: class names, one per line in output order "
        "(or a JSON sidecar with labels, input_scale, input_zero_point).",
    ),
]
InputScale = Annotated[
    float | None,
    typer.Option(
        help="Foreign model: input = (pixel - ZERO_POINT) * SCALE for 0-255 pixels; "
        "0.00392157 for [0, 1], 0.00784314 for [-1, 1], 1 for [0, 255]."
    ),
]
InputZeroPoint = Annotated[
    float | None,
    typer.Option(
        help="Foreign model: see --input-scale; 0 for [0, 1] and [0, 255], 127.5 for [-1, 1]."
    ),
]
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
    if result.returned_to:
        typer.echo(f"rolling back to {result.returned_to}")
    if result.broker_lost:
        typer.echo(f"error: {result.broker_lost}", err=True)
    if result.aborted:
        typer.echo(f"rollout of {result.label} ABORTED: {result.aborted}", err=True)
    for t in result.transfers:  # delta pushes: what each device needs sent
        typer.echo(f"  to send  {t.describe()}")
    for device, (nbytes, chunks) in sorted(result.resent.items()):
        typer.echo(
            f"  sent again  {device}  {nbytes / 1024:.1f} KiB in {chunks} "
            f"chunk{'' if chunks == 1 else 's'} (on its request)"
        )
    if not result.targets:
        typer.echo(
            f"{result.label} published; no known target device yet "
            "(group members are learned from their status messages)"
        )
        return
    if not result.waited:
        typer.echo(
            f"{result.label} published to {len(result.targets)} "
            "device(s); follow it with `edgefleet rollout status`"
        )
        return
    active = sum(1 for p in result.progress if p.phase.value == "active")
    typer.echo(f"{result.label}: {active}/{len(result.targets)} active")
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
    from edgefleet.host.fleet import close_fleet

    fl = open_or_fail(
        broker=broker, fleet=fleet, prefix=prefix, state_dir=state_dir, key_file=key, need_key=True
    )
    from edgefleet.host.fleet._checks import broker_loss

    fl.on_progress = ProgressPrinter() if wait is not None else None
    try:
        result = action(fl)
    except EdgefleetError as exc:
        lost = broker_loss(fl.conn)
        if lost is not None:
            typer.echo(f"error: {lost}", err=True)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=EXIT_BROKER_LOST) from exc
        raise fail(exc) from exc
    finally:
        close_fleet(fl)
    print_result(result)
    raise typer.Exit(code=result.exit_code)


@app.command(
    epilog=example(
        "edgefleet push quantized/model_int8.tflite --group field --wait 120",
        "edgefleet push model_int8.tflite --group field --canary 1 --max-failures 20 --wait 300",
        "edgefleet push model_int8.tflite --device pi-001 --device pi-002 --wait 60",
        "edgefleet push candidate.tflite --group field --shadow --sample 0.2 --until 500-inputs",
        "edgefleet push exported.tflite --labels labels.txt --input-scale 0.00392157 "
        "--input-zero-point 0 --group field",
    )
)
def push(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    model: Annotated[
        Path,
        typer.Argument(help=".tflite written by `edgefleet quantize` (another tool's: --labels)."),
    ],
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
    force: Force = False,
    full: Annotated[
        bool, typer.Option("--full", help="Send whole files, not only the chunks devices lack.")
    ] = False,
    labels: ForeignLabels = None,
    input_scale: InputScale = None,
    input_zero_point: InputZeroPoint = None,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Run it beside the active model; never activate.")
    ] = False,
    sample: Annotated[float, typer.Option(help="--shadow: share of inputs compared.")] = 0.2,
    until: Annotated[
        str | None, typer.Option(help="--shadow: end after 500-inputs, or 90s/30m/2h/1d.")
    ] = None,
    promote_if: Annotated[
        str | None,
        typer.Option(help='--shadow: promote when e.g. "agreement>=0.97,latency<=1.2x" holds.'),
    ] = None,
) -> None:
    """Sign a model and roll it out to devices or a group over MQTT.

    A .tflite made by another tool: add --labels, --input-scale and --input-zero-point
    (docs/quantization.md, "Models made elsewhere").

    Exit status with --wait: 0 every target active, 1 a target failed or was not active in
    time (or the rollout was aborted), 3 the connection to the broker was lost.
    """
    from edgefleet.host.fleet import PushPlan, load_model
    from edgefleet.host.fleet import push as do_push

    if not shadow and (until is not None or promote_if is not None or sample != 0.2):  # noqa: PLR2004
        raise fail("--sample, --until and --promote-if are for a shadow: add --shadow")
    try:
        plan = PushPlan(
            devices=tuple(device or ()),
            group=group,
            version=version,
            wait=wait,
            canary=canary,
            max_failures=max_failures,
            force=force,
            full=full,
        )
        plan.check()
        if labels is None and input_scale is None and input_zero_point is None:
            files = load_model(model)
        else:
            from edgefleet.host.quantize import described_copy

            foreign = {"input_scale": input_scale, "input_zero_point": input_zero_point}
            with described_copy(model, labels=labels, **foreign) as described:
                files = load_model(described)
    except EdgefleetError as exc:
        raise fail(exc) from exc
    if shadow:  # docs/fleet.md, "Shadow deployments"
        from edgefleet.host.cli.shadow import shadow_push

        args = (sample, until, promote_if, wait, canary, max_failures)
        conn = (broker, fleet, prefix, state_dir, key)
        raise typer.Exit(shadow_push(files, plan.devices, group, *args, conn, force=force))
    _roll_out(
        lambda fl: do_push(fl, files, plan),
        wait=wait,
        broker=broker,
        fleet=fleet,
        prefix=prefix,
        state_dir=state_dir,
        key=key,
    )


@app.command(
    epilog=example(
        "edgefleet rollback --group field --wait 120",
        "edgefleet rollback --device pi-001",
    )
)
def rollback(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device: Devices = None,
    group: Group = None,
    wait: Wait = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
    key: KeyFile = None,
    force: Force = False,
) -> None:
    """Return a device or group to its previous model, signed as a new, higher version.

    Says which build (model name, mode and sha) it returned to. Exit status as for push.
    """
    from edgefleet.host.fleet import PushPlan
    from edgefleet.host.fleet import rollback as do_rollback

    try:
        plan = PushPlan(devices=tuple(device or ())[:1], group=group, wait=wait, force=force)
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


@rollout_app.command(
    "status",
    epilog=example(
        "edgefleet rollout status --fleet fleet",
        "edgefleet rollout status --group field",
        "edgefleet rollout status --device pi-001",
    ),
)
def rollout_status(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device: OneDevice = None,
    group: Group = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Where each target of the latest push stands (from the devices' retained reports).

    A group rollout shows its plan (canary size, wave sizes, failure limit) and each
    device's step in it (canary, wave K, or group: the group topic after the waves); a
    delta push shows each device's bytes sent (planned, plus chunks sent again on request).
    """
    from edgefleet.host.fleet import device_target, group_target
    from edgefleet.host.fleet import rollout_status as status

    target = group_target(group) if group else device_target(device) if device else None
    fl = open_or_fail(
        broker=broker, fleet=fleet, prefix=prefix, state_dir=state_dir, read_only=True
    )
    rows = on_fleet(
        fl, lambda fl: [(*row, _extras(fl, row[0])) for row in status(fl, target=target)]
    )
    if not rows:
        typer.echo("no rollouts recorded in this host's state dir")
    for record, progress, (plan, sent) in rows:
        active = sum(1 for p in progress if p.phase.value == "active")
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(record.created_at))
        cancelled = " CANCELLED" if record.cancelled_at is not None else ""
        typer.echo(
            f"{record.target}: {record.name} v{record.version} ({record.build}) "
            f"{record.kind}{cancelled} at {when}, {active}/{len(progress)} active"
        )
        if plan is not None:
            part = "" if plan.target == record.target else f" of the rollout to {plan.target}"
            typer.echo(f"  plan{part}: {plan.describe()}")
        for p in progress:
            step = f"{plan.step_of(p.device_id):<8} " if plan is not None else ""
            line = f"  {p.device_id:<20} {step}{p.describe()}"
            if (t := sent.get(p.device_id)) is not None:
                line += f"  [{t.describe()}]"
            typer.echo(line)


def _extras(fl: Fleet, record: PushRecord) -> tuple[WavePlan | None, dict[str, Transfer]]:
    """A push's wave plan and its devices' latest recorded transfers (delta pushes)."""
    transfers = fl.registry.transfer_records(name=record.name, version=record.version)
    return fl.registry.plan_of(record), {t.device_id: t for t in transfers}


@rollout_app.command(
    "cancel",
    epilog=example(
        "edgefleet rollout cancel --group field",
        "edgefleet rollout cancel --device pi-009 --fleet fleet",
    ),
)
def rollout_cancel(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    device: OneDevice = None,
    group: Group = None,
    broker: Broker = None,
    fleet: FleetDir = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
) -> None:
    """Withdraw the latest rollout to a group or device: devices not yet on it never get it.

    Clears the retained desired manifest (and its chunks) and marks the push cancelled in
    this host's registry. Devices that already run it keep it: `edgefleet rollback` returns
    them to the previous model.
    """
    from edgefleet.host.fleet import cancel_rollout, device_target
    from edgefleet.host.fleet import group_target as to_group

    if bool(device) == bool(group):
        raise fail("give either --group NAME or --device ID")
    target = to_group(group) if group else device_target(device or "")
    fl = open_or_fail(broker=broker, fleet=fleet, prefix=prefix, state_dir=state_dir)
    result = on_fleet(fl, lambda fl: cancel_rollout(fl, target))
    typer.echo(result.summary())
