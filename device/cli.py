"""The `edgefleet-agent` command that runs on a field device (never imports TensorFlow)."""

from __future__ import annotations

import typer

from edgefleet import __version__

app = typer.Typer(
    name="edgefleet-agent",
    help="The edgefleet field agent: verified over-the-air model updates and on-device inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the agent version."""
    print(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
