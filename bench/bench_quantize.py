"""Benchmark: the seed ConvNet on 2,000 held-out MNIST digits, float32 vs full int8 on LiteRT.

Checks the issue's targets (int8 size <= 0.26x, accuracy within 0.3 pp, median latency
<= 0.40x of float32, 1 thread, XNNPACK) and measures what makes int8 fastest: XNNPACK on/off,
per-channel vs per-tensor weights, 1 vs 2 threads, and the first convolution alone (1 input
channel), where int8 loses most. Every latency comes from ONE interleaved run (all
interpreters built first, then timed in turns), so load from other processes hits every
variant alike and the ratios hold on a shared machine.

    .venv/bin/python bench/bench_quantize.py [--model example-mnist/mnist_convnet.keras]
"""

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.host import convert, measure
from edgefleet.host.datasets.registry import prepare
from edgefleet.host.example import MNIST_SPEC, train_mnist_convnet
from edgefleet.host.modelinfo import describe

LABELS = tuple(str(d) for d in range(10))
SIZE_TARGET, ACC_TARGET_PP, LATENCY_TARGET = 0.26, 0.3, 0.40


def _write(work: Path, name: str, blob: bytes, mode: str) -> tuple[Path, Any]:
    path = work / f"{name.replace(' ', '_')}.tflite"
    path.write_bytes(blob)
    # The first conv alone "classifies" into its 32 feature maps.
    labels = tuple(str(c) for c in range(32)) if name.startswith("conv1") else LABELS
    return path, describe(blob, name=name, mode=mode, labels=labels, preprocess=MNIST_SPEC)


def _first_conv(model: Any) -> Any:  # noqa: ANN401
    """The model's first Conv2D alone (same weights), batch 1, 28x28x1 in."""
    import keras  # noqa: PLC0415

    layer = model.layers[0]
    clone = keras.layers.Conv2D.from_config(layer.get_config())
    alone = keras.Sequential([keras.Input((28, 28, 1), batch_size=1), clone])
    clone.set_weights(layer.get_weights())
    return alone


def _variants(model: Any, rep: np.ndarray) -> dict[str, tuple[bytes, str]]:  # noqa: ANN401
    conv1 = _first_conv(model)
    return {
        "float32": (convert.convert(model, "float32"), "float32"),
        "int8 per-channel": (convert.convert(model, "int8", representative=rep), "int8"),
        "int8 per-tensor": (
            convert.convert(model, "int8", representative=rep, per_channel=False),
            "int8",
        ),
        "conv1 float32": (convert.convert(conv1, "float32"), "float32"),
        "conv1 int8": (convert.convert(conv1, "int8", representative=rep), "int8"),
    }


def _check(name: str, value: float, target: str, *, met: bool) -> str:
    return f"  {name:<9} {value:>7.3f}  target {target:<8} {'MET' if met else 'NOT MET'}"


def _targets(rows: dict[tuple[str, bool, int], tuple[int, float, float]]) -> None:
    f32, i8 = rows["float32", True, 1], rows["int8 per-channel", True, 1]
    size, delta, lat = i8[0] / f32[0], 100 * (i8[1] - f32[1]), i8[2] / f32[2]
    print("\nTargets, full int8 (per-channel) vs float32, XNNPACK, 1 thread:")
    print(_check("size", size, f"<= {SIZE_TARGET}", met=size <= SIZE_TARGET))
    print(_check("acc pp", delta, f"+-{ACC_TARGET_PP}", met=abs(delta) <= ACC_TARGET_PP))
    print(_check("latency", lat, f"<= {LATENCY_TARGET}", met=lat <= LATENCY_TARGET))


def main() -> None:
    """Build every variant, time all of them interleaved, print the table and the targets."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--runs", type=int, default=1000, help="timed invokes per variant")
    parser.add_argument("--rounds", type=int, default=50, help="interleaving rounds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    model = convert.load_model(args.model or train_mnist_convnet(work, epochs=10))
    ev = prepare("mnist", split="eval", spec=MNIST_SPEC)
    rep = prepare("mnist", split="train", spec=MNIST_SPEC).x[:500]
    written = {n: _write(work, n, b, m) for n, (b, m) in _variants(model, rep).items()}
    acc = {
        n: measure.top1_accuracy(measure.predict_all(p, ev.x, i), ev.y)
        for n, (p, i) in written.items()
        if not n.startswith("conv1")
    }
    cands = {
        (n, xnn, th): measure.Candidate(p, ev.x[0], i, threads=th, xnnpack=xnn)
        for n, (p, i) in written.items()
        for xnn in (True, False)
        for th in (1, 2)
    }
    timed = measure.interleaved_latency_ms(
        {str(k): c for k, c in cands.items()}, runs=args.runs, rounds=args.rounds
    )
    rows = {}
    for key in cands:
        name, xnn, threads = key
        size = written[name][0].stat().st_size
        rows[key] = (size, acc.get(name, float("nan")), timed[str(key)])
        print(
            f"{name:<17} xnnpack={xnn!s:<5} threads={threads} size={size:>8} "
            f"acc={acc.get(name, float('nan')) * 100:6.2f}% median={timed[str(key)] * 1000:7.1f}us"
        )
    _targets(rows)


if __name__ == "__main__":
    main()
