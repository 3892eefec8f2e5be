"""Benchmark: the seed ConvNet on 2,000 held-out MNIST digits, float32 vs full int8 on LiteRT.

Checks the issue's targets (int8 size <= 0.26x, accuracy within 0.3 pp, median latency
<= 0.40x of float32, 1 thread) and measures what makes int8 fastest: XNNPACK on/off,
per-channel vs per-tensor weights, 1 vs 2 threads.

    .venv/bin/python bench/bench_quantize.py [--model example-mnist/mnist_convnet.keras]
"""

import argparse
import tempfile
from pathlib import Path

from edgefleet.host import convert, measure
from edgefleet.host.datasets.registry import prepare
from edgefleet.host.example import MNIST_SPEC, train_mnist_convnet
from edgefleet.host.modelinfo import describe
from edgefleet.shared.spec import ModelInfo

LABELS = tuple(str(d) for d in range(10))


def _write(work: Path, name: str, blob: bytes, mode: str) -> tuple[Path, ModelInfo]:
    path = work / f"{name}.tflite"
    path.write_bytes(blob)
    return path, describe(blob, name=name, mode=mode, labels=LABELS, preprocess=MNIST_SPEC)


def main() -> None:
    """Run every variant and print the table and the targets."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    model_path = args.model or train_mnist_convnet(work, epochs=10)
    model = convert.load_model(model_path)
    calib = prepare("mnist", split="train", spec=MNIST_SPEC)
    ev = prepare("mnist", split="eval", spec=MNIST_SPEC)
    rep = calib.x[:500]
    variants = {
        "float32": convert.convert(model, "float32"),
        "int8 per-channel": convert.convert(model, "int8", representative=rep),
        "int8 per-tensor": convert.convert(model, "int8", representative=rep, per_channel=False),
    }
    rows = {}
    for name, blob in variants.items():
        path, info = _write(work, name.replace(" ", "_"), blob, name.split()[0])
        acc = measure.top1_accuracy(measure.predict_all(path, ev.x, info), ev.y)
        for xnn in (True, False):
            for threads in (1, 2):
                ms = measure.latency_ms(
                    path, ev.x[0], info, runs=args.runs, threads=threads, xnnpack=xnn
                )
                rows[name, xnn, threads] = (len(blob), acc, ms)
                print(
                    f"{name:<17} xnnpack={xnn!s:<5} threads={threads} size={len(blob):>8} "
                    f"acc={acc * 100:.2f}% median={ms * 1000:.1f}us"
                )
    f32 = rows["float32", True, 1]
    i8 = rows["int8 per-channel", True, 1]
    print(
        f"\nint8/float32 (XNNPACK, 1 thread): size {i8[0] / f32[0]:.3f}x (target <= 0.26), "
        f"accuracy {100 * (i8[1] - f32[1]):+.2f} pp (target within 0.3), "
        f"latency {i8[2] / f32[2]:.3f}x (target <= 0.40)"
    )


if __name__ == "__main__":
    main()
