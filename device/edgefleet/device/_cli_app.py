"""The `edgefleet-agent` commands as a Typer app (loaded by ``edgefleet.device.cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.device.errors import DeviceError
from edgefleet.device.tools import local_status, predict_files, run_agent
from edgefleet.shared import __version__

app = typer.Typer(
    name="edgefleet-agent",
    help="The edgefleet field agent: verified over-the-air model updates and on-device inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The agent's TOML configuration file.")
]


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


@app.command()
def version() -> None:
    """Print the agent version."""
    print(__version__)


@app.command()
def run(config: ConfigOption) -> None:
    """Run the agent: updates, inference, outbox, status (stops cleanly on SIGTERM)."""
    try:
        code = run_agent(config)
    except DeviceError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code=code)


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="PNG, JPEG or .npy inputs.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="A .tflite model.")],
    backend: Annotated[str, typer.Option(help="auto, ai_edge_litert, tflite_runtime.")] = "auto",
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads.")] = 1,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes per line.")] = 3,
) -> None:
    """Classify files with a local model and print one JSON line per file (no broker)."""
    failed = False
    try:
        for line in predict_files(model, files, backend=backend, num_threads=threads, top_k=top_k):
            failed = failed or "error" in line
            print(json.dumps(line), flush=True)
    except DeviceError as exc:
        raise _fail(exc) from exc
    if failed:
        raise typer.Exit(code=1)


@app.command()
def status(config: ConfigOption) -> None:
    """Print what the state directory holds: active model, anti-rollback floor, outbox depth."""
    try:
        print(json.dumps(local_status(config), indent=2))
    except DeviceError as exc:
        raise _fail(exc) from exc
