"""`edgefleet quantize MODEL`: every TFLite mode of a Keras model, measured, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

MODE_HELP = "float16, dynamic, int8, 16x8, qat or all (repeatable); float32 is always made."


def quantize(  # noqa: PLR0917 - typer maps each parameter to a CLI option
    model: Annotated[Path, typer.Argument(help="Keras model: .keras, .h5 or SavedModel dir.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("quantized"),
    mode: Annotated[list[str] | None, typer.Option("--mode", "-m", help=MODE_HELP)] = None,
    calibration: Annotated[
        str, typer.Option(help="Calibration data: mnist, gpr, DIR/<label>/*, or .npz.")
    ] = "mnist",
    eval_data: Annotated[
        str, typer.Option("--eval", help="Evaluation data (same forms as --calibration).")
    ] = "mnist",
    train: Annotated[
        str | None, typer.Option(help="QAT fine-tuning data; default: --calibration.")
    ] = None,
    qat_epochs: Annotated[int, typer.Option(min=1, help="QAT fine-tuning epochs.")] = 1,
    edgetpu: Annotated[bool, typer.Option("--edgetpu", help="Run edgetpu_compiler.")] = False,
    runs: Annotated[int, typer.Option(min=1, help="Timed invokes per model.")] = 200,
) -> None:
    """Convert MODEL to every requested TFLite mode and measure size, accuracy, latency."""
    from edgefleet.host.errors import HostError, ModelLoadError
    from edgefleet.host.quantize import _report as report
    from edgefleet.host.quantize import _run as q

    modes = mode or ["all"]
    try:
        inputs = q.load_inputs(
            model, modes=modes, calibration=calibration, evaluation=eval_data, train=train
        )
        result = q.quantize(
            inputs,
            modes=modes,
            out_dir=out,
            qat_epochs=qat_epochs,
            latency_runs=runs,
            run_edgetpu=edgetpu,
        )
        json_path, png_path = report.write(result, out)
    except (HostError, ModelLoadError) as exc:
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    print(report.table(result))
    print(f"wrote {json_path} and {png_path}")
    if result.edgetpu is not None and not result.edgetpu["ok"]:
        raise typer.Exit(code=0 if result.edgetpu.get("missing") else 1)
