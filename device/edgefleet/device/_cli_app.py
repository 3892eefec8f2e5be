"""The `edgefleet-agent` commands as a Typer app (loaded by ``edgefleet.device.cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperOption

from edgefleet.device.errors import DeviceError
from edgefleet.device.tools import local_status, predict_files, run_agent
from edgefleet.shared import __version__

_TYPE_OF = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx: object) -> str | None:
    """No ``<bool>`` after an on/off flag in --help (``--version``, not ``--version <bool>``)."""
    return None if self.is_flag else _TYPE_OF(self, ctx)  # type: ignore[arg-type]


TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(
    name="edgefleet-agent",
    help="The edgefleet field agent: verified over-the-air model updates and on-device inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    epilog="Example: edgefleet-agent run --config /etc/edgefleet/agent.toml\n\n"
    "docs/agent.md lists every setting and shows a trial with agents on your own machine.",
)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The agent's TOML configuration file.")
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Use this state directory instead of the config's state_dir (relative to the "
        "working directory), e.g. to try a device bundle's agent.toml on your own machine.",
    ),
]


def _examples(*lines: str) -> str:
    """An epilog for ``--help``: one example command per paragraph (Typer keeps paragraphs)."""
    head = "Example:" if len(lines) == 1 else "Examples:"
    return "\n\n".join([head, *(f"  {line}" for line in lines)])


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


def _print_version(value: bool) -> None:
    if value:
        print(f"edgefleet-agent {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The edgefleet field agent: verified over-the-air model updates and on-device inference."""


@app.command(epilog=_examples("edgefleet-agent version"))
def version() -> None:
    """Print the agent version."""
    print(__version__)


@app.command(
    epilog=_examples(
        "edgefleet-agent run --config /etc/edgefleet/agent.toml",
        "edgefleet-agent run --config edgefleet-pi-001/agent.toml --state-dir pi-001 "
        "--watch-dir pi-001/inbox",
    )
    + "\n\nThe first is what the systemd unit runs; the second tries a device bundle on your "
    "own machine (docs/agent.md, 'A trial on your own machine')."
)
def run(
    config: ConfigOption,
    state_dir: StateDirOption = None,
    watch_dir: Annotated[
        Path | None,
        typer.Option(
            "--watch-dir",
            help="Classify the files dropped in this folder instead of the config's "
            "inference.watch_dir (relative to the working directory).",
        ),
    ] = None,
) -> None:
    """Run the agent: updates, inference, outbox, status (stops cleanly on SIGTERM)."""
    try:
        code = run_agent(config, state_dir=state_dir, watch_dir=watch_dir)
    except DeviceError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code=code)


@app.command(
    epilog=_examples("edgefleet-agent predict --model model_int8.tflite scan1.png scan2.npy")
)
def predict(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="PNG, JPEG or .npy inputs. A GPR scan's metadata is read from a sidecar "
            "<name>.json beside it or a PNG's edgefleet-gpr text chunk (docs/gpr.md)."
        ),
    ],
    model: Annotated[Path, typer.Option("--model", "-m", help="A .tflite model.")],
    backend: Annotated[str, typer.Option(help="auto, ai_edge_litert, tflite_runtime.")] = "auto",
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads.")] = 1,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes per line.")] = 3,
) -> None:
    """Classify files with a local model and print one JSON line per file (no broker).

    A GPR model on the common scale classifies a scan of any size; a line gets a "note"
    when the scan had no (or partial) metadata and the scale had to be estimated.
    """
    failed = False
    try:
        for line in predict_files(model, files, backend=backend, num_threads=threads, top_k=top_k):
            failed = failed or "error" in line
            print(json.dumps(line), flush=True)
    except DeviceError as exc:
        raise _fail(exc) from exc
    if failed:
        raise typer.Exit(code=1)


@app.command(
    epilog=_examples(
        "edgefleet-agent status --config /etc/edgefleet/agent.toml",
        "edgefleet-agent status --config edgefleet-pi-001/agent.toml --state-dir pi-001",
    )
)
def status(config: ConfigOption, state_dir: StateDirOption = None) -> None:
    """Print what the state directory holds: active model, anti-rollback floor, outbox depth."""
    try:
        print(json.dumps(local_status(config, state_dir=state_dir), indent=2))
    except DeviceError as exc:
        raise _fail(exc) from exc
