"""`edgefleet gpr ...`: simulate labelled GPR B-scans with gprMax."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Simulated GPR B-scans (gprMax).", no_args_is_help=True)


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="Data set folder (gets <class>/<seed>.npy).")],
    n: Annotated[int, typer.Option(help="Number of scans.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the first scan; scan i uses seed + i.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel gprMax processes.")] = 1,
) -> None:
    """Simulate N labelled B-scans; rerun the same command to resume after an interruption."""
    from edgefleet.host.datasets import gpr  # noqa: PLC0415 - keep CLI start fast
    from edgefleet.host.errors import HostError  # noqa: PLC0415

    def progress(done: int, total: int) -> None:
        print(f"{done}/{total} scans", flush=True)

    try:
        paths = gpr.generate(out, n=n, seed=seed, workers=workers, progress=progress)
    except ImportError as exc:
        print(f"error: gprMax is not installed ({exc}); pip install 'edgefleet[gpr]'")
        raise typer.Exit(code=1) from exc
    except HostError as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(f"{len(paths)} scans in {out} (manifest: {out / gpr.MANIFEST})")
