"""`edgefleet gpr ...`: simulate labelled GPR B-scans with gprMax."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.host.cli._options import example

app = typer.Typer(help="Simulated GPR B-scans (gprMax).", no_args_is_help=True)


@app.command(
    "generate", epilog=example("edgefleet gpr generate --out gpr-scans --n 400 --workers 2")
)
def generate(
    out: Annotated[Path, typer.Option(help="Data set folder (gets <class>/<seed>.npy).")],
    n: Annotated[int, typer.Option(help="Number of scans.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the first scan; scan i uses seed + i.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel gprMax processes.")] = 1,
) -> None:
    """Simulate N labelled B-scans; rerun the same command to resume after an interruption."""
    from edgefleet.host.datasets import _gpr as gpr
    from edgefleet.host.errors import HostError

    def progress(done: int, total: int) -> None:
        print(f"{done}/{total} scans", flush=True)

    try:
        from edgefleet.host.datasets import _gprmax
    except ImportError as exc:
        print(f"error: gprMax is not installed ({exc}); pip install 'edgefleet-host[gpr]'")
        raise typer.Exit(code=1) from exc
    try:
        paths = _gprmax.generate(out, n=n, seed=seed, workers=workers, progress=progress)
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(f"{len(paths)} scans in {out} (manifest: {out / gpr.MANIFEST})")


# --data of train and evaluate: a data set other than the bundled one.
DataOption = Annotated[
    Path | None,
    typer.Option(help="Data set root holding train/ and heldout/ (default: the bundled set)."),
]


@app.command(
    "train", epilog=example("edgefleet gpr train --out gpr_convnet.keras --data gpr-scans")
)
def train(
    out: Annotated[Path, typer.Option(help="Where to save the Keras model (.keras).")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 25,
    seed: Annotated[int, typer.Option(help="Random seed for weights and shuffling.")] = 0,
    data: DataOption = None,
) -> None:
    """Train the GPR ConvNet (the seed ConvNet adapted) on the GPR scans (bundled, or --data)."""
    from edgefleet.host.errors import HostError
    from edgefleet.host.training import train_gpr_convnet

    try:
        path = train_gpr_convnet(out, epochs=epochs, seed=seed, directory=data)
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(f"saved {path}")


@app.command("evaluate", epilog=example("edgefleet gpr evaluate quantized/gpr_convnet_int8.tflite"))
def evaluate(
    model: Annotated[Path, typer.Argument(help="A Keras model trained on GPR scans.")],
    out: Annotated[Path, typer.Option(help="Folder for the .tflite files and the JSON.")],
    data: DataOption = None,
) -> None:
    """Convert to float32 and full int8; print held-out accuracy per class for both."""
    from edgefleet.host.errors import HostError, ModelLoadError
    from edgefleet.host.training import evaluate as run_evaluation

    try:
        result = run_evaluation(model, out, directory=data)
    except (HostError, ModelLoadError) as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(f"held-out scans: {result.count} {result.class_counts}")
    print(result.table())
    print(f"Edge TPU pre-check (int8): compatible={result.edgetpu_precheck_compatible}")
