"""`edgefleet example mnist`: the seed article's ConvNet, trained and quantized every way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Reproduce the seed article's example end to end.", no_args_is_help=True)


@app.command("mnist")
def mnist(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("example-mnist"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (batch 250).")] = 10,
    qat_epochs: Annotated[int, typer.Option(min=1, help="QAT fine-tuning epochs.")] = 1,
) -> None:
    """Train the seed ConvNet on bundled MNIST (8,000 digits), quantize all modes, report."""
    from edgefleet.host.errors import HostError, ModelLoadError
    from edgefleet.host.quantize import _report as report
    from edgefleet.host.training import run_mnist_example

    print(f"training the seed ConvNet ({epochs} epochs, 8,000 digits), then every mode...")
    try:
        result = run_mnist_example(out, epochs=epochs, qat_epochs=qat_epochs)
        json_path, png_path = report.write(result, out)
    except (HostError, ModelLoadError) as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(report.table(result))
    print(f"wrote {json_path} and {png_path}")
