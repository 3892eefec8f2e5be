"""The `edgefleet` command: a thin typer app; each command group lives in `commands/`."""

from __future__ import annotations

import typer

from edgefleet import __version__
from edgefleet.host.commands import (
    datasets_cmd,
    fleet_cmd,
    gpr_cmd,
    predictions_cmd,
    provision_cmd,
    push_cmd,
)

app = typer.Typer(
    name="edgefleet",
    help="Quantize Keras models, sign them, push them to field devices and collect predictions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(datasets_cmd.app, name="datasets")
from edgefleet.host.commands import demo_cmd, example_cmd, quantize_cmd  # noqa: E402

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
