"""`edgefleet example mnist`: the seed article's ConvNet, trained and quantized every way."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, TextIO

import typer

from edgefleet.host.cli._options import example
from edgefleet.host.cli.quantize import TF_LOG, tensorflow_output

app = typer.Typer(help="Reproduce the seed article's example end to end.", no_args_is_help=True)


@app.command("mnist", epilog=example("edgefleet example mnist --out mnist-example --epochs 3"))
def mnist(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("example-mnist"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (batch 250).")] = 10,
    qat_epochs: Annotated[int, typer.Option(min=1, help="QAT fine-tuning epochs.")] = 1,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help=f"Show TensorFlow's own output (else it goes to OUT/{TF_LOG})."
        ),
    ] = False,
) -> None:
    """Train the seed ConvNet on bundled MNIST (8,000 digits), quantize all modes, report."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="edgefleet-example-") as tmp:
        log = Path(tmp) / TF_LOG
        with tensorflow_output(log, show=verbose) as console:
            code, error = _run(out, epochs=epochs, qat_epochs=qat_epochs, console=console)
        if error:
            typer.echo(f"error: {error}", err=True)
        if log.is_file() and out.is_dir():
            (out / TF_LOG).write_bytes(log.read_bytes())
    if code:
        raise typer.Exit(code=code)


def _run(out: Path, *, epochs: int, qat_epochs: int, console: TextIO) -> tuple[int, str]:
    from edgefleet.host.errors import HostError, ModelLoadError
    from edgefleet.host.quantize import _report as report
    from edgefleet.host.training import run_mnist_example

    def say(line: str) -> None:
        print(line, file=console, flush=True)

    say(f"training the seed ConvNet ({epochs} epochs, 8,000 digits), then every mode...")
    try:
        result = run_mnist_example(
            out, epochs=epochs, qat_epochs=qat_epochs, progress=lambda line: say(f"  {line}")
        )
        json_path, png_path = report.write(result, out)
    except (HostError, ModelLoadError) as exc:
        return 1, str(exc)
    say(report.table(result))
    say(f"wrote {json_path} and {png_path} (TensorFlow's output: {out / TF_LOG})")
    return 0, ""
