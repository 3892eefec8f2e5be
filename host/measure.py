"""Measure a ``.tflite`` on the LiteRT interpreter: top-1 accuracy and single-image latency."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.shared.preprocess import dequantize_output, to_input_tensor

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

    from edgefleet.shared.spec import ModelInfo


def interpreter(path: Path, *, threads: int = 1, xnnpack: bool = True) -> Any:  # noqa: ANN401
    """A LiteRT interpreter with tensors allocated.

    Args:
        path: the ``.tflite`` file.
        threads: CPU threads for the kernels.
        xnnpack: False selects the builtin kernels without the default XNNPACK delegate.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(
        model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver
    )
    interp.allocate_tensors()
    return interp


def predict_all(path: Path, x: npt.NDArray[np.float32], info: ModelInfo) -> npt.NDArray[np.float32]:
    """Class scores (dequantized) for every preprocessed input, one invoke per image."""
    interp = interpreter(path)
    in_index = interp.get_input_details()[0]["index"]
    out_index = interp.get_output_details()[0]["index"]
    scores = np.empty((len(x), info.output.shape[-1]), dtype=np.float32)
    for i, item in enumerate(x):
        interp.set_tensor(in_index, to_input_tensor(item, info.input))
        interp.invoke()
        scores[i] = dequantize_output(interp.get_tensor(out_index), info.output)[0]
    return scores


def top1_accuracy(scores: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    """Fraction of rows whose highest score is the true class."""
    return float(np.mean(np.argmax(scores, axis=1) == y))


def latency_ms(
    path: Path,
    sample: npt.NDArray[np.float32],
    info: ModelInfo,
    *,
    runs: int = 200,
    warmup: int = 20,
    threads: int = 1,
    xnnpack: bool = True,
) -> float:
    """Median wall time of one ``invoke()`` in milliseconds, after ``warmup`` invokes."""
    interp = interpreter(path, threads=threads, xnnpack=xnnpack)
    interp.set_tensor(interp.get_input_details()[0]["index"], to_input_tensor(sample, info.input))
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        interp.invoke()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6
