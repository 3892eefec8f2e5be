"""`edgefleet quantize MODEL`: every TFLite mode of a Keras model, measured, with a report."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

if TYPE_CHECKING:
    from collections.abc import Iterator

MODE_HELP = "float16, dynamic, int8, 16x8, qat or all (repeatable); float32 is always made."
DATA_FORMS = "mnist, gpr, DIR/<label>/*.png|jpg|npy, or an .npz with x (0-255 pixels), y"
# Models made by `edgefleet example mnist` / `edgefleet gpr train`: their data is known.
EXAMPLE_DATA = {"mnist_convnet": "mnist", "gpr_convnet": "gpr"}
TF_LOG = "tensorflow.log"


def example_data(model: Path, calibration: str | None, evaluation: str | None) -> tuple[str, str]:
    """The data sets to use: as given, or the bundled set of an example model.

    Raises:
        LookupError: a model that is not an edgefleet example, and a data set is missing.
    """
    bundled = EXAMPLE_DATA.get(model.stem if model.suffix else model.name)
    if calibration is not None and evaluation is not None:
        return calibration, evaluation
    if bundled is not None:
        return calibration or bundled, evaluation or bundled
    missing = " and ".join(
        flag
        for flag, value in (("--calibration", calibration), ("--eval", evaluation))
        if value is None
    )
    msg = (
        f"{missing} required: {model} is not one of edgefleet's example models, so its data "
        f"cannot be guessed. Give the data the model was made for ({DATA_FORMS}); e.g. "
        f"--calibration train.npz --eval test.npz"
    )
    raise LookupError(msg)


@contextlib.contextmanager
def tensorflow_output(log: Path, *, show: bool) -> Iterator[TextIO]:
    """Send what TensorFlow writes to fds 1 and 2 (oneDNN, cuInit, converter chatter) to ``log``.

    Yields a stream for the command's own lines, which still reach the terminal.
    """
    if show:
        yield sys.stdout
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    own = _writes_to_fd(sys.stdout, 1)
    # sys.stdout writes to fd 1, which now goes to the log: the user's lines need a copy of
    # the terminal. (Under a test runner sys.stdout is a buffer of its own: keep using it.)
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8") if own else sys.stdout
    with log.open("ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if own:
            console.close()
        for target, fd in zip((1, 2), saved, strict=True):
            os.dup2(fd, target)
            os.close(fd)


def _writes_to_fd(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (OSError, ValueError, AttributeError):
        return False


def quantize(  # noqa: PLR0917 - typer maps each parameter to a CLI option
    model: Annotated[Path, typer.Argument(help="Keras model: .keras, .h5 or SavedModel dir.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("quantized"),
    mode: Annotated[list[str] | None, typer.Option("--mode", "-m", help=MODE_HELP)] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help=f"Calibration data: {DATA_FORMS}. Required unless MODEL is an edgefleet "
            "example (mnist_convnet, gpr_convnet)."
        ),
    ] = None,
    eval_data: Annotated[
        str | None,
        typer.Option(
            "--eval", help="Evaluation data (same forms as --calibration); required likewise."
        ),
    ] = None,
    train: Annotated[
        str | None,
        typer.Option(
            help="QAT fine-tuning data (the model's training data). Without it, `all` skips "
            "qat for your own data; bundled sets use their training split."
        ),
    ] = None,
    qat_epochs: Annotated[int, typer.Option(min=1, help="QAT fine-tuning epochs.")] = 1,
    edgetpu: Annotated[bool, typer.Option("--edgetpu", help="Run edgetpu_compiler.")] = False,
    runs: Annotated[int, typer.Option(min=1, help="Timed invokes per model.")] = 200,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help=f"Show TensorFlow's own output (else it goes to OUT/{TF_LOG})."
        ),
    ] = False,
) -> None:
    """Convert MODEL to every requested TFLite mode and measure size, accuracy, latency."""
    if not model.exists():
        typer.echo(f"error: model {model} does not exist", err=True)
        raise typer.Exit(code=1)
    try:
        calibration, eval_data = example_data(model, calibration, eval_data)
    except LookupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    modes = mode or ["all"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="edgefleet-quantize-") as tmp:
        log = Path(tmp) / TF_LOG
        with tensorflow_output(log, show=verbose) as console:
            code, error = _run(
                model,
                out=out,
                modes=modes,
                data=(calibration, eval_data, train),
                options={"qat_epochs": qat_epochs, "latency_runs": runs, "run_edgetpu": edgetpu},
                console=console,
            )
        if error:
            typer.echo(f"error: {error}", err=True)
        if log.is_file() and out.is_dir():
            (out / TF_LOG).write_bytes(log.read_bytes())
            if code:
                typer.echo(f"TensorFlow's own output is in {out / TF_LOG}", err=True)
    if code:
        raise typer.Exit(code=code)


def _run(
    model: Path,
    *,
    out: Path,
    modes: list[str],
    data: tuple[str, str, str | None],
    options: dict[str, int | bool],
    console: TextIO,
) -> tuple[int, str]:
    """Quantize and report; every line for the user goes to ``console``.

    Returns:
        The exit code, and the error message to print (once TensorFlow's fds are restored).
    """
    from edgefleet.host.errors import HostError, ModelLoadError
    from edgefleet.host.quantize import _report as report
    from edgefleet.host.quantize import _run as q
    from edgefleet.host.training import gpr_spec

    def say(line: str) -> None:
        print(line, file=console, flush=True)

    calibration, evaluation, train = data
    example = model.stem == "gpr_convnet" and calibration == "gpr"
    try:
        inputs = q.load_inputs(
            model,
            modes=modes,
            calibration=calibration,
            evaluation=evaluation,
            train=train,
            preprocess=gpr_spec() if example else None,
        )
        for note in inputs.notes:
            say(f"note: {note}")
        say(f"{inputs.name}: quantizing on {len(inputs.calibration)} {calibration} inputs")
        result = q.quantize(
            inputs,
            modes=modes,
            out_dir=out,
            qat_epochs=int(options["qat_epochs"]),
            latency_runs=int(options["latency_runs"]),
            run_edgetpu=bool(options["run_edgetpu"]),
            progress=lambda line: say(f"  {line}"),
        )
        json_path, png_path = report.write(result, out)
    except (HostError, ModelLoadError) as exc:
        return 1, str(exc)
    say(report.table(result))
    say(f"wrote {json_path} and {png_path} (TensorFlow's output: {out / TF_LOG})")
    if result.edgetpu is not None and not result.edgetpu["ok"]:
        return (0 if result.edgetpu.get("missing") else 1), ""
    return 0, ""
