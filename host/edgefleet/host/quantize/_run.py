"""``edgefleet quantize``: every TFLite mode of one Keras model, measured on the user's data."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.host.datasets import BUNDLED, Prepared, prepare
from edgefleet.host.errors import DatasetError, EdgeTPUError, QuantizationError
from edgefleet.host.quantize import _convert as convert
from edgefleet.host.quantize import _edgetpu as edgetpu
from edgefleet.host.quantize import _measure as measure
from edgefleet.host.quantize._modelinfo import describe, embed_model_info
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.spec import PreprocessSpec
from edgefleet.shared.tflite_model import read_flat_model

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np
    import numpy.typing as npt

    from edgefleet.shared.spec import ModelInfo

QUANTIZED_MODES = ("float16", "dynamic", "int8", "16x8", "qat")
# QAT more than this many points below float32 gets a note in the report.
QAT_LOSS_NOTE_PP = 2.0


@dataclass
class ModeResult:
    """One converted model and what it measured."""

    mode: str
    path: str
    size_bytes: int
    accuracy: float
    latency_ms: float
    input_dtype: str
    output_dtype: str
    ops: list[str]
    edgetpu_precheck: dict[str, Any] | None = None


@dataclass
class Report:
    """Everything ``report.json`` holds."""

    model: str
    created: str
    machine: str
    eval_source: str
    eval_count: int
    threads: int
    preprocess: dict[str, Any]
    labels: list[str]
    results: list[ModeResult] = field(default_factory=list)
    edgetpu: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def resolve_modes(modes: Sequence[str]) -> list[str]:
    """float32 first, then the requested modes in canonical order; ``all`` means every one.

    Raises:
        QuantizationError: an unknown mode name.
    """
    wanted = set(QUANTIZED_MODES) if "all" in modes else set(modes)
    unknown = wanted - set(convert.MODES)
    if unknown:
        raise QuantizationError(
            f"unknown mode(s) {sorted(unknown)}; use {', '.join(convert.MODES)} or all"
        )
    return ["float32", *[m for m in QUANTIZED_MODES if m in wanted]]


def machine() -> str:
    """A short description of this machine for the report."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


@dataclass(frozen=True)
class Inputs:
    """Everything validated before a single file is written."""

    model: Any
    name: str
    spec: PreprocessSpec
    calibration: Prepared
    evaluation: Prepared
    train: Prepared | None
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def load_inputs(
    model_path: Path,
    *,
    modes: Sequence[str],
    calibration: str,
    evaluation: str,
    train: str | None = None,
    preprocess: PreprocessSpec | None = None,
) -> Inputs:
    """Load and check the model and every data set (nothing is written here).

    QAT fine-tunes the model, so it needs training data. Without ``train``, the bundled sets
    use their training split; user data is not used for it silently: ``all`` skips qat
    (with a note), an explicit ``qat`` fine-tunes on the calibration data with a warning
    (see ``Inputs.notes``).

    Raises:
        ModelLoadError: the model is missing, not a model, or has no static input shape.
        DatasetError: empty or mismatched data, or labels that do not match the model's
            number of classes.
    """
    model = convert.load_model(model_path)
    height, width, channels = convert.static_input_shape(model)
    if preprocess is None and channels not in {1, 3}:
        raise DatasetError(f"the model's input has {channels} channels; edgefleet needs 1 or 3")
    spec = preprocess or PreprocessSpec(
        kind="gpr" if calibration == "gpr" else "image",
        height=height,
        width=width,
        channels=1 if channels == 1 else 3,
    )
    wanted = (spec.height, spec.width, spec.input_channels)
    if wanted != (height, width, channels):
        raise DatasetError(
            f"preprocessing spec {spec} gives inputs of {wanted};"
            f" the model's input is {(height, width, channels)}"
        )
    calib = prepare(calibration, split="train", spec=spec)
    labels = calib.labels
    _check_classes(model, labels, calibration)
    evaluated = prepare(evaluation, split="eval", spec=spec, labels=labels)
    trained: Prepared | None = None
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    if "qat" in modes or "all" in modes:
        if train is not None or calibration in BUNDLED:
            trained = prepare(train or calibration, split="train", spec=spec, labels=labels)
        elif "qat" in modes:
            trained = calib
            warning = (
                f"WARNING: qat is fine-tuned on the {len(calib)} calibration inputs of "
                f"{calibration} because no --train data was given; QAT retrains the model, "
                "and a small or unrepresentative set can cost it accuracy. Give --train with "
                "the model's training data."
            )
            notes = (warning,)
        else:
            skipped = ("qat",)
            skip = (
                "qat skipped: QAT retrains the model and needs its training data; give "
                "--train DATA (or --mode qat to fine-tune on the calibration data)"
            )
            notes = (skip,)
    name = model_path.stem if model_path.is_file() else model_path.name
    return Inputs(model, name, spec, calib, evaluated, trained, skipped, notes)


def _check_classes(model: Any, labels: Sequence[str], source: str) -> None:  # noqa: ANN401
    outputs = getattr(model, "outputs", None) or []
    shape = tuple(outputs[0].shape) if len(outputs) == 1 else ()
    classes = shape[-1] if shape else None
    if isinstance(classes, int) and classes != len(labels):
        raise DatasetError(
            f"the model outputs {classes} classes but data set {source!r} has "
            f"{len(labels)} labels ({', '.join(labels[:12])}); give --calibration and --eval "
            "data with the model's own classes (a folder DIR/<label>/*.png, or an .npz with "
            "x, y and labels)"
        )


def quantize(
    inputs: Inputs,
    *,
    modes: Sequence[str],
    out_dir: Path,
    qat_epochs: int = 1,
    calibration_samples: int = 500,
    latency_runs: int = 200,
    threads: int = 1,
    run_edgetpu: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Convert, embed ModelInfo, measure, and write ``<name>_<mode>.tflite`` + report.

    ``progress`` receives one line as each mode is done (and before the slow steps: QAT
    fine-tuning and the interleaved timing).

    Raises:
        QuantizationError: a conversion failed (files of earlier modes stay valid).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(
        model=inputs.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine(),
        eval_source=inputs.evaluation.source,
        eval_count=len(inputs.evaluation),
        threads=threads,
        preprocess=inputs.spec.model_dump(),
        labels=list(inputs.calibration.labels),
        notes=list(inputs.notes),
    )
    say = progress or (lambda _line: None)
    rep = inputs.calibration.x[:calibration_samples]
    timed: dict[str, measure.Candidate] = {}
    todo = [m for m in resolve_modes(modes) if m not in inputs.skipped]
    for number, mode in enumerate(todo, start=1):
        started = time.monotonic()
        if mode == "qat":
            train = inputs.train or inputs.calibration
            say(
                f"[{number}/{len(todo)}] qat: fine-tuning {qat_epochs} epoch(s) on "
                f"{len(train)} inputs of {train.source}"
            )
        path, info = _write_mode(inputs, mode, rep=rep, out_dir=out_dir, qat_epochs=qat_epochs)
        result = _measure(path, mode, info, data=inputs.evaluation)
        report.results.append(result)
        timed[mode] = measure.Candidate(path, inputs.evaluation.x[0], info)
        say(
            f"[{number}/{len(todo)}] {mode:<8} {result.size_bytes / 1024:8.1f} KiB  accuracy "
            f"{result.accuracy * 100:6.2f}%  ({time.monotonic() - started:.1f} s)"
        )
    say(f"timing {len(todo)} model(s): {latency_runs} invokes each, interleaved")
    # Timed together, interleaved, so load from other processes skews no ratio.
    latencies = measure.interleaved_latency_ms(timed, runs=latency_runs, threads=threads)
    for result in report.results:
        result.latency_ms = latencies[result.mode]
    report.notes.extend(_qat_loss_note(report))
    if run_edgetpu:
        report.edgetpu = _compile(out_dir / f"{inputs.name}_int8.tflite", out_dir, report)
    return report


def _qat_loss_note(report: Report) -> list[str]:
    by_mode = {r.mode: r for r in report.results}
    if "qat" not in by_mode or "float32" not in by_mode:
        return []
    loss = (by_mode["float32"].accuracy - by_mode["qat"].accuracy) * 100.0
    if loss <= QAT_LOSS_NOTE_PP:
        return []
    note = (
        f"qat is {loss:.2f} pp below float32: its fine-tuning hurt; give --train with more of "
        "the model's training data or more --qat-epochs, or deploy int8"
    )
    return [note]


def _write_mode(
    inputs: Inputs, mode: str, *, rep: npt.NDArray[np.float32], out_dir: Path, qat_epochs: int
) -> tuple[Path, ModelInfo]:
    """Convert (QAT: fine-tune first), embed ModelInfo, write ``<name>_<mode>.tflite``."""
    source = inputs.model
    if mode == "qat":
        train = inputs.train or inputs.calibration
        source = convert.qat_fine_tune(inputs.model, train.x, train.y, epochs=qat_epochs)
    data = convert.convert(source, mode, representative=rep)
    labels = inputs.calibration.labels
    info = describe(data, name=inputs.name, mode=mode, labels=labels, preprocess=inputs.spec)
    path = out_dir / f"{inputs.name}_{mode}.tflite"
    write_atomic(path, embed_model_info(data, info))
    return path, info


def _measure(path: Path, mode: str, info: ModelInfo, *, data: Prepared) -> ModeResult:
    """Size, accuracy and ops of one written model; latency is filled in later."""
    blob = path.read_bytes()
    scores = measure.predict_all(path, data.x, info)
    graph = read_flat_model(blob).main
    check = edgetpu.precheck(blob).to_dict() if mode in {"int8", "qat"} else None
    return ModeResult(
        mode=mode,
        path=path.name,
        size_bytes=len(blob),
        accuracy=measure.top1_accuracy(scores, data.y),
        latency_ms=0.0,
        input_dtype=info.input.dtype,
        output_dtype=info.output.dtype,
        ops=[op.name for op in graph.operators],
        edgetpu_precheck=check,
    )


def _compile(model: Path, out_dir: Path, report: Report) -> dict[str, Any]:
    if not model.is_file():
        return {"ok": False, "error": "no int8 model to compile (add --mode int8)"}
    missing = edgetpu.find_compiler() is None
    try:
        result = edgetpu.compile_model(model, out_dir)
    except EdgeTPUError as exc:
        report.notes.append(f"Edge TPU: {exc}")
        return {"ok": False, "missing": missing, "error": str(exc)}
    return {
        "ok": True,
        "path": result.model.name,
        "log": result.log.name,
        "mapped_ops": result.mapped_ops,
        "total_ops": result.total_ops,
    }
