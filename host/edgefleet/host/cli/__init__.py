"""The `edgefleet` command: a thin typer app; each command group lives in `commands/`."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.host.cli import datasets as datasets_cmd
from edgefleet.host.cli import fleet as fleet_cmd
from edgefleet.host.cli import gpr as gpr_cmd
from edgefleet.host.cli import predictions as predictions_cmd
from edgefleet.host.cli import provision as provision_cmd
from edgefleet.host.cli import push as push_cmd
from edgefleet.host.cli._options import example as examples
from edgefleet.shared import __version__

app = typer.Typer(
    name="edgefleet",
    help="Quantize Keras models, sign them, push them to field devices and collect predictions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(datasets_cmd.app, name="datasets")
from edgefleet.host.cli import demo as demo_cmd  # noqa: E402
from edgefleet.host.cli import example as example_cmd  # noqa: E402
from edgefleet.host.cli import logs as logs_cmd  # noqa: E402
from edgefleet.host.cli import quantize as quantize_cmd  # noqa: E402

app.command(
    "quantize",
    epilog=examples(
        "edgefleet quantize model.keras --calibration data.npz --eval heldout.npz",
        "edgefleet quantize model.keras -m int8 -m dynamic --calibration scans/ --eval scans/",
    ),
)(quantize_cmd.quantize)
app.add_typer(example_cmd.app, name="example")
app.add_typer(gpr_cmd.app, name="gpr")
provision_cmd.register(app)  # init, provision, revoke, keys
app.add_typer(push_cmd.app)  # push, rollback, rollout status
from edgefleet.host.cli import shadow as shadow_cmd  # noqa: E402

app.add_typer(shadow_cmd.app, name="shadow")  # shadow report, promote, stop
app.add_typer(fleet_cmd.app)  # fleet status, send-image
app.add_typer(predictions_cmd.app, name="predictions")
app.command(
    "demo",
    epilog=examples(
        "edgefleet demo",
        "edgefleet demo --dataset mnist --devices 3 --keep",
        "edgefleet demo --shadow",
    ),
)(demo_cmd.demo)
from edgefleet.host.cli import dashboard as dashboard_cmd  # noqa: E402

app.command(
    "dashboard",
    epilog=examples(
        "edgefleet dashboard --fleet fleet", "edgefleet dashboard --fleet fleet --ingest"
    ),
)(dashboard_cmd.dashboard)
app.command(
    "logs", epilog=examples("edgefleet logs pi-001 --fleet fleet", "edgefleet logs pi-001 -f")
)(logs_cmd.logs)


@app.command(epilog=examples("edgefleet version"))
def version() -> None:
    """Print the edgefleet version."""
    print(__version__)


def _print_version(value: bool) -> None:
    if value:
        print(f"edgefleet {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Quantize Keras models, sign them, push them to field devices and collect predictions."""


def main() -> None:
    """Console-script entry point."""
    app()
