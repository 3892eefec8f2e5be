"""The `edgefleet` command: a thin typer app; each command group lives in `commands/`."""

from __future__ import annotations

import typer

from edgefleet.host.cli import datasets as datasets_cmd
from edgefleet.host.cli import fleet as fleet_cmd
from edgefleet.host.cli import gpr as gpr_cmd
from edgefleet.host.cli import predictions as predictions_cmd
from edgefleet.host.cli import provision as provision_cmd
from edgefleet.host.cli import push as push_cmd
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
from edgefleet.host.cli import quantize as quantize_cmd  # noqa: E402

app.command("quantize")(quantize_cmd.quantize)
app.add_typer(example_cmd.app, name="example")
app.add_typer(gpr_cmd.app, name="gpr")
provision_cmd.register(app)  # init, provision, revoke, keys
app.add_typer(push_cmd.app)  # push, rollback, rollout status
app.add_typer(fleet_cmd.app)  # fleet status, send-image
app.add_typer(predictions_cmd.app, name="predictions")
app.command("demo")(demo_cmd.demo)


@app.command()
def version() -> None:
    """Print the edgefleet version."""
    print(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
