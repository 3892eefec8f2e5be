"""The seed ConvNet adapted to GPR B-scans: train, quantize to full int8, compare per class."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import keras
import numpy as np

from edgefleet.host.datasets import CLASSES, load_gpr
from edgefleet.host.quantize import _convert as convert
from edgefleet.host.quantize import _edgetpu as edgetpu
from edgefleet.host.quantize import _measure as measure
from edgefleet.host.quantize import describe, embed_model_info
from edgefleet.host.training._models import build_gpr_convnet, train
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.preprocess import preprocess
from edgefleet.shared.spec import GprOptions, PreprocessSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy.typing as npt

    from edgefleet.host.datasets._gpr import Split

INPUT_HEIGHT = 64  # time (rows): scans hold 64-128 samples, fewer after time zero
INPUT_WIDTH = 32  # traces (columns): scans hold 10-17 traces
INPUT_CHANNELS: Literal[3] = 3  # the stacked views of edgefleet.shared.gpr.stacked
MODEL_NAME = "gpr_convnet"
BATCH_SIZE = 32
EPOCHS = 25  # the first set's recipe (train_gpr_convnet)
SHIFTED_COPIES = 2  # extra copies of each (mirrored) scan, moved along the line and in time
MAX_TRACE_SHIFT = 4  # columns of INPUT_WIDTH: the target up to 12 % further along the line
MAX_TIME_SHIFT = 3  # rows of INPUT_HEIGHT: a first-break pick a few samples late
LEARNING_RATE = 1e-3  # Adam's default, decayed along a cosine to 5 % by the last epoch


# Three views of each scan (GprOptions.stack): echoes relative to the direct wave (echo
# strength tells an air-filled pipe from a concrete duct in wet soil), the scan with its
# direct wave, and the echoes alone; a steep gain lifts the late echoes. Compared with
# single-view recipes in docs/gpr.md.
GPR_OPTIONS = GprOptions(time_zero=True, stack=True, gain="exponential", gain_factor=1.5)


def gpr_spec() -> PreprocessSpec:
    """The preprocessing recipe every GPR model here is trained and deployed with."""
    return PreprocessSpec(
        kind="gpr",
        height=INPUT_HEIGHT,
        width=INPUT_WIDTH,
        channels=INPUT_CHANNELS,
        gpr=GPR_OPTIONS,
    )


def prepared(
    split: Split, *, directory: Path | None = None, limit: int | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """One split of the bundled scans through ``shared.preprocess``: ``(n, H, W, 1)``, labels."""
    ds = load_gpr(split, directory)
    spec = gpr_spec()
    picked = np.arange(len(ds)) if limit is None else _balanced(ds.y, limit)
    x = np.stack([preprocess(ds.x[i], spec) for i in picked]).astype(np.float32)
    return x, ds.y[picked]


def _balanced(y: npt.NDArray[np.int64], limit: int) -> npt.NDArray[np.int64]:
    # Round-robin over classes so a small limit still sees every class.
    per_class = [np.flatnonzero(y == c) for c in range(len(CLASSES))]
    order = [idx for group in zip(*per_class, strict=False) for idx in group]
    return np.array(order[:limit], dtype=np.int64)


def shifted_copies(
    x: npt.NDArray[np.float32], copies: int, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """``x`` (n, H, W, C) followed by ``copies`` randomly shifted copies of it.

    Each copy moves a scan by up to :data:`MAX_TRACE_SHIFT` columns along the survey line
    (the same target met a little earlier or later; the edge trace fills the gap) and up by
    up to :data:`MAX_TIME_SHIFT` rows (time zero picked a few samples late; the last row
    fills the gap). Shapes and values are kept: a copy only rearranges a scan's pixels.
    """
    out = [x]
    for _ in range(copies):
        moved = np.empty_like(x)
        for i, scan in enumerate(x):
            cols = np.clip(
                np.arange(x.shape[2]) - rng.integers(-MAX_TRACE_SHIFT, MAX_TRACE_SHIFT + 1),
                0,
                x.shape[2] - 1,
            )
            rows = np.clip(
                np.arange(x.shape[1]) + rng.integers(0, MAX_TIME_SHIFT + 1), 0, x.shape[1] - 1
            )
            moved[i] = scan[rows][:, cols]
        out.append(moved)
    return np.concatenate(out)


def train_gpr_convnet(
    out_path: Path,
    *,
    epochs: int = EPOCHS,
    seed: int = 0,
    directory: Path | None = None,
    limit: int | None = None,
) -> Path:
    """Train the GPR ConvNet on the train split, its mirror and shifted copies; save it.

    Mirroring a B-scan is the same survey walked the other way, and a shifted copy is the
    same target a little further along the line (:func:`shifted_copies`), so both are
    honest data. Adam's learning rate decays along a cosine: without it, validation
    accuracy peaked around epoch 15-20 and then fell back by 3-5 points (docs/gpr.md).
    """
    x, y = prepared("train", directory=directory, limit=limit)
    x_aug = shifted_copies(
        np.concatenate([x, x[:, :, ::-1, :]]), SHIFTED_COPIES, np.random.default_rng(seed)
    )
    y_aug = np.tile(y, 2 * (1 + SHIFTED_COPIES))
    model = fit_gpr_convnet(x_aug, y_aug, epochs=epochs, seed=seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _save_without_optimizer(model, out_path)
    return out_path


def fit_gpr_convnet(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int,
    seed: int,
    build: Callable[[tuple[int, int, int], int], Any] = build_gpr_convnet,
) -> Any:  # noqa: ANN401 - keras.Model is untyped
    """A new ConvNet from ``build`` fitted on ``x``, ``y``: Adam, learning rate cosine to 5 %."""
    keras.utils.set_random_seed(seed)  # the initial weights too, not only the shuffles
    model = build(x.shape[1:], len(CLASSES))  # (height, width, channels)
    steps = max(1, epochs * -(-len(x) // BATCH_SIZE))
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train(model, x, y, epochs=epochs, batch_size=BATCH_SIZE, seed=seed)
    return model


def _save_without_optimizer(model: Any, out_path: Path) -> None:  # noqa: ANN401
    # Adam's moments would triple the file; a deployable model needs only the weights.
    bare = type(model).from_config(model.get_config())  # rebuilt, never compiled
    bare.set_weights(model.get_weights())
    bare.save(out_path)


@dataclass
class GprEvaluation:
    """Held-out accuracy of each converted model, overall and per class."""

    count: int
    class_counts: dict[str, int]
    accuracy: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    size_bytes: dict[str, int] = field(default_factory=dict)
    edgetpu_precheck_compatible: bool | None = None
    edgetpu_cpu_ops: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Markdown table: one row per mode, overall then per-class accuracy (%)."""
        head = "| mode | size | all | " + " | ".join(CLASSES) + " |"
        rows = [head, "|" + "---|" * (3 + len(CLASSES))]
        for mode, acc in self.accuracy.items():
            cells = " | ".join(f"{100 * self.per_class[mode][c]:.1f}" for c in CLASSES)
            rows.append(f"| {mode} | {self.size_bytes[mode]} B | {100 * acc:.1f} | {cells} |")
        return "\n".join(rows)


def evaluate(
    model_path: Path,
    out_dir: Path,
    *,
    directory: Path | None = None,
    calibration_samples: int = 300,
) -> GprEvaluation:
    """Convert to float32 and full int8, embed ModelInfo, and score both on held-out scans."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = convert.load_model(model_path)
    x_cal, _ = prepared("train", directory=directory, limit=calibration_samples)
    x, y = prepared("heldout", directory=directory)
    counts = {c: int((y == i).sum()) for i, c in enumerate(CLASSES)}
    result = GprEvaluation(count=len(y), class_counts=counts)
    for mode in ("float32", "int8"):
        data = convert.convert(model, mode, representative=x_cal)
        info = describe(data, name=MODEL_NAME, mode=mode, labels=CLASSES, preprocess=gpr_spec())
        path = out_dir / f"{MODEL_NAME}_{mode}.tflite"
        blob = embed_model_info(data, info)
        write_atomic(path, blob)
        predicted = np.argmax(measure.predict_all(path, x, info), axis=1)
        result.accuracy[mode] = float(np.mean(predicted == y))
        result.per_class[mode] = _per_class(predicted, y)
        result.size_bytes[mode] = len(blob)
        if mode == "int8":
            check = edgetpu.precheck(blob)
            result.edgetpu_precheck_compatible = check.compatible
            result.edgetpu_cpu_ops = list(check.cpu_ops)
    (out_dir / "gpr_evaluation.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _per_class(predicted: npt.NDArray[Any], y: npt.NDArray[np.int64]) -> dict[str, float]:
    return {
        c: float(np.mean(predicted[y == i] == i)) if (y == i).any() else float("nan")
        for i, c in enumerate(CLASSES)
    }
