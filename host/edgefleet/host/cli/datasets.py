"""`edgefleet datasets ...`: look at and export the bundled data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.host.cli._options import example

app = typer.Typer(
    help="Bundled data sets (real MNIST digits, simulated GPR scans).", no_args_is_help=True
)


@app.command("info", epilog=example("edgefleet datasets info", "edgefleet datasets info gpr"))
def info(
    name: Annotated[str, typer.Argument(help="Data set name: mnist.")] = "mnist",
) -> None:
    """Print the size and label counts of a bundled data set."""
    from edgefleet.host.datasets import load_mnist
    from edgefleet.host.errors import HostError

    if name != "mnist":
        print(f"error: unknown data set {name!r}; bundled: mnist")
        raise typer.Exit(code=1)
    try:
        for split in ("train", "eval"):
            ds = load_mnist(split)
            counts = " ".join(str(int((ds.y == i).sum())) for i in range(10))
            print(f"{name} {split}: {len(ds)} images, label counts {counts}")
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc


@app.command(
    "export", epilog=example("edgefleet datasets export gpr --split heldout --out gpr-heldout.npz")
)
def export(
    name: Annotated[str, typer.Argument(help="Data set name: mnist or gpr.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write DIR/<label>/*.png into.")],
    split: Annotated[str, typer.Option(help="train or eval.")] = "eval",
) -> None:
    """Write a bundled split as DIR/<label>/<index>.png (the Keras folder convention)."""
    from edgefleet.host.datasets import export_pngs
    from edgefleet.host.errors import HostError

    try:
        count = export_pngs(name, split=split, out_dir=out)
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(f"wrote {count} images to {out}")
