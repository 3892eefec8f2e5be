"""`edgefleet gpr ...`: simulate labelled GPR B-scans with gprMax."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.host.cli._options import example

app = typer.Typer(help="Simulated GPR B-scans (gprMax).", no_args_is_help=True)


@app.command(
    "generate",
    epilog=example(
        "edgefleet gpr generate --out scans/train --n 600 --seed 20000 --split train --workers 2",
        "edgefleet gpr generate --out gpr-scans --n 400 --set first --workers 2",
    ),
)
def generate(  # noqa: PLR0917 - typer options
    out: Annotated[Path, typer.Option(help="Data set folder (gets <class>/<seed>.npy).")],
    n: Annotated[int, typer.Option(help="Number of scans.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the first scan; scan i uses seed + i.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel gprMax processes.")] = 1,
    scan_set: Annotated[
        str,
        typer.Option(
            "--set",
            help="radars: the radar set (many antennas, with sidecars); first: the first one.",
        ),
    ] = "radars",
    split: Annotated[
        str,
        typer.Option(help="Radar set only: train, heldout, ood (held-out settings) or native."),
    ] = "train",
) -> None:
    """Simulate N labelled B-scans; rerun the same command to resume after an interruption."""
    from edgefleet.host.errors import HostError

    _check_set(scan_set)

    def progress(done: int, total: int) -> None:
        print(f"{done}/{total} scans", flush=True)

    try:
        from edgefleet.host.datasets import _gprmax
    except ImportError as exc:
        print(f"error: gprMax is not installed ({exc}); pip install 'edgefleet-host[gpr]'")
        raise typer.Exit(code=1) from exc
    try:
        if scan_set == "radars":
            paths = _gprmax.generate_radar(
                out, split=split, n=n, seed=seed, workers=workers, progress=progress
            )
        else:
            paths = _gprmax.generate(out, n=n, seed=seed, workers=workers, progress=progress)
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(f"{len(paths)} scans in {out} (manifest: {out / 'manifest.jsonl'})")


# --data of train and evaluate: a data set other than the bundled one.
DataOption = Annotated[
    Path | None,
    typer.Option(
        help="Data set root holding train/ and heldout/ (and ood/ for --set radars); "
        "default: the bundled set."
    ),
]
SetOption = Annotated[
    str,
    typer.Option(
        "--set",
        help="radars: the radar set (250 MHz-1.6 GHz, in- and out-of-distribution splits); "
        "first: the first generator's scans (300-600 MHz, the demo's).",
    ),
]


@app.command("train", epilog=example("edgefleet gpr train --out gpr_radars.keras --data gpr-scans"))
def train(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    out: Annotated[Path, typer.Option(help="Where to save the Keras model (.keras).")],
    epochs: Annotated[int, typer.Option(help="Training epochs (0: the recipe's own number).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed for weights and shuffling.")] = 0,
    data: DataOption = None,
    scan_set: SetOption = "radars",
    members: Annotated[
        int,
        typer.Option(
            help="Radars: ConvNets trained from seeds seed, seed+1, ... and averaged into one "
            "model (0: the recipe's own number)."
        ),
    ] = 0,
) -> None:
    """Train the GPR ConvNet on the GPR scans (bundled, or --data); --set picks which."""
    from edgefleet.host.errors import HostError
    from edgefleet.host.training import train_gpr_convnet, train_radar_convnet
    from edgefleet.host.training._gpr import EPOCHS as FIRST_SET_EPOCHS
    from edgefleet.host.training._radar import EPOCHS, MEMBERS

    _check_set(scan_set)
    try:
        if scan_set == "radars":
            path = train_radar_convnet(
                out, epochs=epochs or EPOCHS, seed=seed, directory=data, members=members or MEMBERS
            )
        else:
            path = train_gpr_convnet(
                out, epochs=epochs or FIRST_SET_EPOCHS, seed=seed, directory=data
            )
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(f"saved {path}")


@app.command(
    "evaluate",
    epilog=example(
        "edgefleet gpr evaluate gpr_radars.keras --out gpr-eval",
        "edgefleet gpr evaluate gpr_convnet.keras --out gpr-eval --set first",
    ),
)
def evaluate(
    model: Annotated[Path, typer.Argument(help="A Keras model trained on GPR scans.")],
    out: Annotated[Path, typer.Option(help="Folder for the .tflite files and the JSON.")],
    data: DataOption = None,
    scan_set: SetOption = "radars",
) -> None:
    """Convert to float32 and full int8; print held-out accuracy (radars: in and out of set)."""
    from edgefleet.host.errors import HostError, ModelLoadError
    from edgefleet.host.training import evaluate as run_evaluation
    from edgefleet.host.training import evaluate_radars

    _check_set(scan_set)
    try:
        if scan_set == "radars":
            radar = evaluate_radars(model, out, directory=data)
        else:
            result = run_evaluation(model, out, directory=data)
    except (HostError, ModelLoadError) as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    if scan_set == "radars":
        print(radar.table())
        print()
        print(radar.settings_table())
        print(
            f"int8 {radar.size_bytes['int8']:,} B; {radar.ms_per_scan['int8']:.2f} ms per scan "
            f"(invoke), conditioning {radar.conditioning_ms:.1f} ms per scan"
        )
        print(f"Edge TPU pre-check (int8): compatible={radar.edgetpu_precheck_compatible}")
        return
    print(f"held-out scans: {result.count} {result.class_counts}")
    print(result.table())
    print(f"Edge TPU pre-check (int8): compatible={result.edgetpu_precheck_compatible}")


def _check_set(scan_set: str) -> None:
    if scan_set not in {"radars", "first"}:
        print(f"error: unknown --set {scan_set!r}; use radars or first")
        raise typer.Exit(code=2)
