"""Benchmark: full int8 vs float32 on LiteRT - the seed ConvNet (MNIST) and MobileNetV2.

Checks issue #3's targets on the seed ConvNet and the 2,000 held-out MNIST digits (int8 size
<= 0.26x, accuracy within 0.3 pp, median latency <= 0.40x of float32, 1 thread, XNNPACK)
and shows where the time goes and which levers move int8 latency:

* main table: float32 / int8 per-channel / int8 per-tensor, XNNPACK on/off, 1 and 2 threads;
* per layer: prefix sub-models of the same trained model (cut after conv1, pool1, conv2,
  pool2, dense1, and the whole model), float32 vs int8; a layer's cost is the difference
  between two consecutive prefixes;
* levers: XNNPACK's "latest features" flag (``experimental_default_delegate_latest_features``),
  uint8 instead of int8 input/output, TensorFlow's own ``tf.lite.Interpreter``, and LiteRT's
  ``CompiledModel`` API with explicit XNNPACK flags (QS8 | QU8 | latest operators);
* ``--tflite-runtime PYTHON``: the same float32 / int8 / dynamic files on tflite-runtime
  (device-legacy), run by that Python (a venv with tflite-runtime 2.14 and numpy<2);
* ``--mobilenet``: keras.applications.MobileNetV2 (224x224x3, random weights) float32 vs
  full int8 (50 synthetic calibration images): size, and latency on 1 and 2 threads.

Every latency in a section comes from ONE interleaved run (all interpreters built and
warmed up first, then timed in turns, ``rounds`` times), the method of
``edgefleet.host.quantize._measure.interleaved_latency_ms``, so load from other processes hits every
variant alike and the ratios hold on a shared machine. Latency does not depend on the input
values, except that the ConvNet sections feed a real digit.

    .venv/bin/python bench/bench_quantize.py [--model example-mnist/mnist_convnet.keras]
        [--mobilenet] [--tflite-runtime /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.host.datasets import prepare
from edgefleet.host.quantize import _convert as convert
from edgefleet.host.quantize import _measure as measure
from edgefleet.host.quantize import describe
from edgefleet.host.training import MNIST_SPEC, train_mnist_convnet

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy.typing as npt

LABELS = tuple(str(d) for d in range(10))
SIZE_TARGET, ACC_TARGET_PP, LATENCY_TARGET = 0.26, 0.3, 0.40
# Seed ConvNet layers: conv1, pool1, dropout, conv2, pool2, dropout, flatten, dense1, dense2.
PREFIXES = {"conv1": 0, "+pool1": 1, "+conv2": 3, "+pool2": 4, "+flatten+dense1": 7}
XNNPACK_QS8_QU8_LATEST = 0x1 | 0x2 | 0x40  # TFLITE_XNNPACK_DELEGATE_FLAG_{QS8,QU8,LATEST}


# --------------------------------------------------------------------------- timing


def _set_input(interp: Any, x: npt.NDArray[np.float32]) -> Any:  # noqa: ANN401
    """Quantize ``x`` with the interpreter's own input parameters, set it, return interp."""
    detail = interp.get_input_details()[0]
    scale, zero = detail["quantization"]
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        value = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    else:
        value = x.astype(dtype)
    interp.set_tensor(detail["index"], value.reshape(detail["shape"]))
    return interp


def _litert(
    path: Path,
    x: npt.NDArray[np.float32],
    *,
    threads: int = 1,
    xnnpack: bool = True,
    latest: bool = False,
) -> Any:  # noqa: ANN401
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(
        model_path=str(path),
        num_threads=threads,
        experimental_op_resolver_type=resolver,
        experimental_default_delegate_latest_features=latest,
    )
    interp.allocate_tensors()
    return _set_input(interp, x)


def _tf_lite(path: Path, x: npt.NDArray[np.float32]) -> Any:  # noqa: ANN401
    import tensorflow as tf  # noqa: PLC0415

    interp = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    return _set_input(interp, x)


class _Compiled:
    """LiteRT's CompiledModel API on the CPU with explicit CpuOptions (invoke() like the rest)."""

    def __init__(self, path: Path, **cpu: Any) -> None:  # noqa: ANN401
        from ai_edge_litert.compiled_model import CompiledModel  # noqa: PLC0415
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator  # noqa: PLC0415
        from ai_edge_litert.options import CpuOptions, Options  # noqa: PLC0415

        options = Options(HardwareAccelerator.CPU, cpu_options=CpuOptions(**cpu))
        self.model = CompiledModel.from_file(str(path), options=options)
        self.inputs = self.model.create_input_buffers(0)
        self.outputs = self.model.create_output_buffers(0)

    def invoke(self) -> None:
        self.model.run_by_index(0, self.inputs, self.outputs)


def interleaved_us(
    builders: dict[str, Callable[[], Any]], *, runs: int, rounds: int, warmup: int = 20
) -> dict[str, float]:
    """Median ``invoke()`` time (us) of every built interpreter, timed interleaved.

    A builder that fails (a runtime that cannot load a model) is reported and left out.
    """
    interps = {}
    for name, build in builders.items():
        try:
            interps[name] = build()
        except Exception as exc:  # noqa: BLE001 - any runtime error is a result to report
            print(f"  {name}: cannot run: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    for interp in interps.values():
        for _ in range(warmup):
            interp.invoke()
    per_round = max(1, runs // max(1, rounds))
    times: dict[str, list[int]] = {name: [] for name in interps}
    for _ in range(max(1, rounds)):
        for name, interp in interps.items():
            for _ in range(per_round):
                start = time.perf_counter_ns()
                interp.invoke()
                times[name].append(time.perf_counter_ns() - start)
    return {name: statistics.median(t) / 1e3 for name, t in times.items()}


# --------------------------------------------------------------------------- models


def _uint8_io(model: Any, rep: npt.NDArray[np.float32]) -> bytes:  # noqa: ANN401
    """Full int8 with uint8 input/output (the converter adds QUANTIZE ops at both ends)."""
    import tensorflow as tf  # noqa: PLC0415

    static = convert._batch_one(model, convert.static_input_shape(model))  # noqa: SLF001
    conv = tf.lite.TFLiteConverter.from_keras_model(static)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' "Saved artifact at ..."
        return bytes(conv.convert())


def _prefix(model: Any, last: int) -> Any:  # noqa: ANN401
    """The trained model cut after layer ``last`` (same weights)."""
    import keras  # noqa: PLC0415

    inp = keras.Input(model.inputs[0].shape[1:], batch_size=1)
    out = inp
    for layer in model.layers[: last + 1]:
        out = layer(out)
    return keras.Model(inp, out)


def _write(work: Path, name: str, blob: bytes) -> Path:
    path = work / f"{name.replace(' ', '_').replace('+', 'p')}.tflite"
    path.write_bytes(blob)
    return path


# --------------------------------------------------------------------------- sections


def convnet(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Main table, targets, per-layer breakdown and levers on the seed ConvNet."""
    model = convert.load_model(args.model or train_mnist_convnet(work, epochs=10))
    ev = prepare("mnist", split="eval", spec=MNIST_SPEC)
    rep = prepare("mnist", split="train", spec=MNIST_SPEC).x[:500]
    main = {
        "float32": convert.convert(model, "float32"),
        "int8 per-channel": convert.convert(model, "int8", representative=rep),
        "int8 per-tensor": convert.convert(model, "int8", representative=rep, per_channel=False),
        "dynamic": convert.convert(model, "dynamic"),
        "int8 uint8-io": _uint8_io(model, rep),
    }
    paths = {n: _write(work, n, b) for n, b in main.items()}
    acc = {}
    for name in ("float32", "int8 per-channel", "int8 per-tensor"):
        mode = "float32" if name == "float32" else "int8"
        info = describe(main[name], name=name, mode=mode, labels=LABELS, preprocess=MNIST_SPEC)
        acc[name] = measure.top1_accuracy(measure.predict_all(paths[name], ev.x, info), ev.y)
    prefix_paths: dict[str, tuple[Path, Path]] = {}
    for name, last in PREFIXES.items():
        sub = _prefix(model, last)
        f32 = _write(work, f"prefix {name} f32", convert.convert(sub, "float32"))
        i8 = _write(work, f"prefix {name} i8", convert.convert(sub, "int8", representative=rep))
        prefix_paths[name] = (f32, i8)
    prefix_paths["whole model"] = (paths["float32"], paths["int8 per-channel"])

    us = interleaved_us(
        _builders(paths, prefix_paths, ev.x[0:1]), runs=args.runs, rounds=args.rounds
    )
    _print_main(us, paths, acc)
    _print_layers(us, prefix_paths)
    _print_levers(us)
    return paths


def _builders(
    paths: dict[str, Path], prefix_paths: dict[str, tuple[Path, Path]], x: npt.NDArray[np.float32]
) -> dict[str, Callable[[], Any]]:
    builders: dict[str, Callable[[], Any]] = {}
    for name in ("float32", "int8 per-channel", "int8 per-tensor"):
        for xnn in (True, False):
            for th in (1, 2):
                builders[f"{name}|{xnn}|{th}"] = _bind(
                    _litert, paths[name], x, threads=th, xnnpack=xnn
                )
    for name, (f32, i8) in prefix_paths.items():
        builders[f"prefix|{name}|f32"] = _bind(_litert, f32, x)
        builders[f"prefix|{name}|i8"] = _bind(_litert, i8, x)
    for name in ("float32", "int8 per-channel"):
        builders[f"lever|{name}|latest-features flag"] = _bind(_litert, paths[name], x, latest=True)
        builders[f"lever|{name}|tf.lite.Interpreter (TF)"] = _bind(_tf_lite, paths[name], x)
        builders[f"lever|{name}|CompiledModel default"] = _bind(
            _Compiled, paths[name], num_threads=1
        )
        builders[f"lever|{name}|CompiledModel flags 0x43"] = _bind(
            _Compiled, paths[name], num_threads=1, xnnpack_flags=XNNPACK_QS8_QU8_LATEST
        )
    builders["lever|int8 uint8-io|default"] = _bind(_litert, paths["int8 uint8-io"], x)
    builders["lever|dynamic|default"] = _bind(_litert, paths["dynamic"], x)
    return builders


def _print_main(us: dict[str, float], paths: dict[str, Path], acc: dict[str, float]) -> None:
    print("\n== Seed ConvNet, LiteRT Interpreter (medians, us) ==")
    print(f"{'variant':<17} {'size':>8} {'acc':>7}  XNN 1thr  XNN 2thr  bltn 1thr bltn 2thr")
    for name in ("float32", "int8 per-channel", "int8 per-tensor"):
        cells = [us.get(f"{name}|{x}|{t}", float("nan")) for x in (True, False) for t in (1, 2)]
        size = paths[name].stat().st_size
        row = " ".join(f"{c:9.1f}" for c in cells)
        print(f"{name:<17} {size:>8} {acc[name] * 100:6.2f}% {row}")
    f32_size, i8_size = paths["float32"].stat().st_size, paths["int8 per-channel"].stat().st_size
    _targets(
        i8_size / f32_size,
        100 * (acc["int8 per-channel"] - acc["float32"]),
        us["int8 per-channel|True|1"] / us["float32|True|1"],
    )


def _print_layers(us: dict[str, float], prefix_paths: dict[str, tuple[Path, Path]]) -> None:
    print("\n== Per layer: prefix sub-models, XNNPACK, 1 thread (us) ==")
    print(f"{'cut after':<17} {'f32':>7} {'int8':>7} {'i8/f32':>7} | {'layer f32':>9} {'int8':>7}")
    prev = (0.0, 0.0)
    for name in prefix_paths:
        f, i = us[f"prefix|{name}|f32"], us[f"prefix|{name}|i8"]
        print(f"{name:<17} {f:7.1f} {i:7.1f} {i / f:7.2f} | {f - prev[0]:9.1f} {i - prev[1]:7.1f}")
        prev = (f, i)


def _print_levers(us: dict[str, float]) -> None:
    print("\n== Levers, 1 thread (us; ratio to the plain XNNPACK interpreter of that model) ==")
    base = {"float32": us["float32|True|1"], "int8 per-channel": us["int8 per-channel|True|1"]}
    base["int8 uint8-io"] = base["int8 per-channel"]
    base["dynamic"] = base["float32"]
    print(f"  {'model':<17} {'lever':<28} {'median':>8}  ratio (dynamic: to float32)")
    for key, value in us.items():
        if key.startswith("lever|"):
            _, name, lever = key.split("|")
            print(f"  {name:<17} {lever:<28} {value:8.1f}  {value / base[name]:.2f}x")


def _bind(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:  # noqa: ANN401
    return lambda: fn(*args, **kwargs)


def _targets(size: float, delta_pp: float, latency: float) -> None:
    print("\nTargets, full int8 (per-channel) vs float32, XNNPACK, 1 thread:")
    for name, value, target, met in (
        ("size", size, f"<= {SIZE_TARGET}", size <= SIZE_TARGET),
        ("acc pp", delta_pp, f"+-{ACC_TARGET_PP}", abs(delta_pp) <= ACC_TARGET_PP),
        ("latency", latency, f"<= {LATENCY_TARGET}", latency <= LATENCY_TARGET),
    ):
        print(f"  {name:<9} {value:>7.3f}  target {target:<8} {'MET' if met else 'NOT MET'}")


LEGACY_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np
import tflite_runtime
from tflite_runtime.interpreter import Interpreter
runs, rounds, paths = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
out = {"version": tflite_runtime.__version__, "us": {}, "errors": {}}
interps = {}
for name, path in paths.items():
    try:
        it = Interpreter(model_path=path, num_threads=1)
        it.allocate_tensors()
    except Exception as exc:
        out["errors"][name] = str(exc).strip().splitlines()[0]
        continue
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(20):
        it.invoke()
    interps[name] = it
times = {n: [] for n in interps}
for _ in range(rounds):
    for n, it in interps.items():
        for _ in range(max(1, runs // rounds)):
            s = time.perf_counter_ns(); it.invoke(); times[n].append(time.perf_counter_ns() - s)
out["us"] = {n: statistics.median(t) / 1e3 for n, t in times.items()}
print(json.dumps(out))
"""


def legacy(python: str, paths: dict[str, Path], args: argparse.Namespace) -> None:
    """float32 / int8 / dynamic on tflite-runtime (another venv), interleaved there."""
    chosen = {n: str(paths[n]) for n in ("float32", "int8 per-channel", "dynamic")}
    proc = subprocess.run(
        [python, "-c", LEGACY_SCRIPT, str(args.runs), str(args.rounds), json.dumps(chosen)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(f"\ntflite-runtime run failed: {proc.stderr.strip().splitlines()[-1:]}")
        return
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n== tflite-runtime {out['version']} ({python}), default resolver, 1 thread (us) ==")
    f32 = out["us"].get("float32")
    for name, value in out["us"].items():
        ratio = f"  {value / f32:.2f}x float32" if f32 else ""
        print(f"  {name:<17} {value:9.1f}{ratio}")
    for name, err in out["errors"].items():
        print(f"  {name:<17} cannot load: {err}")


def mobilenet(args: argparse.Namespace, work: Path) -> None:
    """MobileNetV2 224x224x3 with random weights: float32 vs full int8, 1 and 2 threads."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    rng = np.random.default_rng(0)
    # Synthetic calibration images in MobileNetV2's input range [-1, 1]: smooth random
    # fields (a few low-frequency blobs), not white noise, so activation ranges are
    # image-like. With random weights, accuracy is meaningless; only size and speed count.
    low = rng.uniform(-1.0, 1.0, size=(50, 7, 7, 3)).astype(np.float32)
    rep = np.repeat(np.repeat(low, 32, axis=1), 32, axis=2)
    rep = np.clip(rep + rng.normal(0, 0.1, rep.shape), -1, 1).astype(np.float32)
    started = time.monotonic()
    f32 = _write(work, "mobilenetv2 f32", convert.convert(model, "float32"))
    i8 = _write(work, "mobilenetv2 i8", convert.convert(model, "int8", representative=rep))
    took = time.monotonic() - started
    print(f"\n== MobileNetV2 224x224x3, random weights (converted in {took:.0f} s) ==")
    x = rep[:1]
    builders = {
        f"{name}|{th}": _bind(_litert, path, x, threads=th)
        for name, path in (("float32", f32), ("int8", i8))
        for th in (1, 2)
    }
    us = interleaved_us(builders, runs=args.mobilenet_runs, rounds=args.mobilenet_runs // 5)
    f32_b, i8_b = f32.stat().st_size, i8.stat().st_size
    print(f"  size: float32 {f32_b:,} B, int8 {i8_b:,} B ({i8_b / f32_b:.3f}x)")
    for th in (1, 2):
        f, i = us[f"float32|{th}"] / 1e3, us[f"int8|{th}"] / 1e3
        print(f"  XNNPACK {th} thread(s): float32 {f:7.2f} ms, int8 {i:7.2f} ms, {i / f:.2f}x")
    print("  accuracy not measured: the weights are random, so it means nothing")


def main() -> None:
    """Run the sections asked for and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="the seed ConvNet (.keras); default: train one")
    parser.add_argument("--runs", type=int, default=1000, help="timed invokes per variant")
    parser.add_argument("--rounds", type=int, default=50, help="interleaving rounds")
    parser.add_argument("--mobilenet", action="store_true", help="also MobileNetV2 224x224")
    parser.add_argument("--mobilenet-runs", type=int, default=100)
    parser.add_argument("--mobilenet-only", action="store_true", help="skip the ConvNet")
    parser.add_argument("--tflite-runtime", metavar="PYTHON", help="a Python with tflite-runtime")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, work dir {work}")
    if not args.mobilenet_only:
        paths = convnet(args, work)
        if args.tflite_runtime:
            legacy(args.tflite_runtime, paths, args)
    if args.mobilenet or args.mobilenet_only:
        mobilenet(args, work)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
