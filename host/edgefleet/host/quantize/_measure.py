"""Measure a ``.tflite`` on the LiteRT interpreter: top-1 accuracy and single-image latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from edgefleet.shared.preprocess import dequantize_output, to_input_tensor

if TYPE_CHECKING:
    from collections.abc import Mapping
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


@dataclass(frozen=True)
class Candidate:
    """One model to time: its file, one preprocessed input, and its ModelInfo."""

    path: Path
    sample: npt.NDArray[np.float32]
    info: ModelInfo
    threads: int | None = None  # None: the call's ``threads``
    xnnpack: bool | None = None  # None: the call's ``xnnpack``


def interleaved_latency_ms(
    candidates: Mapping[str, Candidate],
    *,
    runs: int = 200,
    rounds: int = 10,
    warmup: int = 20,
    threads: int = 1,
    xnnpack: bool = True,
) -> dict[str, float]:
    """Median single-image ``invoke()`` time (ms) of several models, timed interleaved.

    Every interpreter is created once and warmed up; then ``rounds`` times each model runs
    ``runs // rounds`` timed invokes in turn. A burst of load from other processes thus
    hits every model alike, so the ratios between them hold on a shared machine. The
    result is the median over all timed invokes of a model.
    """
    per_round = max(1, runs // max(1, rounds))
    interps = {
        name: _warm(
            c,
            threads=threads if c.threads is None else c.threads,
            xnnpack=xnnpack if c.xnnpack is None else c.xnnpack,
            warmup=warmup,
        )
        for name, c in candidates.items()
    }
    times: dict[str, list[int]] = {name: [] for name in interps}
    for _ in range(max(1, rounds)):
        for name, interp in interps.items():
            times[name].extend(_timed_invokes(interp, per_round))
    return {name: statistics.median(t) / 1e6 for name, t in times.items()}


def _warm(c: Candidate, *, threads: int, xnnpack: bool, warmup: int) -> Any:  # noqa: ANN401
    interp = interpreter(c.path, threads=threads, xnnpack=xnnpack)
    interp.set_tensor(
        interp.get_input_details()[0]["index"], to_input_tensor(c.sample, c.info.input)
    )
    for _ in range(warmup):
        interp.invoke()
    return interp


def _timed_invokes(interp: Any, count: int) -> list[int]:  # noqa: ANN401
    out = []
    for _ in range(count):
        start = time.perf_counter_ns()
        interp.invoke()
        out.append(time.perf_counter_ns() - start)
    return out


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
    one = {"model": Candidate(path, sample, info)}
    timed = interleaved_latency_ms(
        one, runs=runs, rounds=1, warmup=warmup, threads=threads, xnnpack=xnnpack
    )
    return timed["model"]
