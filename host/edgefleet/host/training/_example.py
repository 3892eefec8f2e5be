"""The seed article's example, reproduced: train its MNIST ConvNet, then quantize every mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.host.datasets import prepare
from edgefleet.host.quantize import _run as quantize
from edgefleet.host.training import _models as models
from edgefleet.shared.spec import PreprocessSpec

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MNIST_SPEC = PreprocessSpec(height=28, width=28, channels=1, scale="unit")


def train_mnist_convnet(out_dir: Path, *, epochs: int = 10, limit: int | None = None) -> Path:
    """Train the seed ConvNet on the bundled MNIST training split; save ``.keras``.

    Args:
        out_dir: where ``mnist_convnet.keras`` goes.
        epochs: training epochs (batch 250, Adam, as in the seed).
        limit: use only the first ``limit`` training images (tests).
    """
    train = prepare("mnist", split="train", spec=MNIST_SPEC)
    x, y = train.x[:limit], train.y[:limit]
    model = models.build_seed_convnet((28, 28, 1), len(train.labels))
    models.train(model, x, y, epochs=epochs)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "mnist_convnet.keras"
    tmp = out_dir / ".mnist_convnet.tmp.keras"
    model.save(tmp)
    tmp.replace(path)
    return path


def run_mnist_example(
    out_dir: Path,
    *,
    epochs: int = 10,
    qat_epochs: int = 1,
    runs: int = 200,
    progress: Callable[[str], None] | None = None,
) -> quantize.Report:
    """Train the seed ConvNet and run ``quantize --mode all`` on it with the eval split.

    ``progress`` gets a line when training ends and one per quantization mode.
    """
    model_path = train_mnist_convnet(out_dir, epochs=epochs)
    if progress is not None:
        progress(f"trained {model_path}")
    inputs = quantize.load_inputs(
        model_path, modes=["all"], calibration="mnist", evaluation="mnist"
    )
    return quantize.quantize(
        inputs,
        modes=["all"],
        out_dir=out_dir,
        qat_epochs=qat_epochs,
        latency_runs=runs,
        progress=progress,
    )
