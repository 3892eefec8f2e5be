"""Classify sensor inputs with the active model: preprocess, invoke, dequantize, top-k."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgefleet.device.errors import InferenceError, ModelLoadError
from edgefleet.device.runtime import Backend, Model, open_model
from edgefleet.shared import gpr, gpr_windows
from edgefleet.shared.errors import ModelFormatError
from edgefleet.shared.preprocess import dequantize_output, preprocess_windows, to_input_tensor
from edgefleet.shared.spec import PreprocessSpec
from edgefleet.shared.tflite_model import read_model_info

log = logging.getLogger(__name__)
NOTE_LOG_INTERVAL_S = 60.0  # a GPR metadata note is logged at most this often

if TYPE_CHECKING:
    from collections.abc import Sequence

_NHWC = 4
DEFAULT_MAX_OUTPUTS = 100_000  # output values a classifier accepts (``[safety] max_outputs``)
NON_FINITE = "non_finite"  # Prediction.error: NaN or infinity among the scores


@dataclass(frozen=True)
class Prediction:
    """One classification: best label, its score, the top-k, and the time it took.

    ``error`` is set (``"non_finite"``) when the model gave NaN or infinite scores: there
    is no usable class then (``label`` is empty, ``score`` 0, ``topk`` empty).
    """

    label: str
    score: float
    topk: list[tuple[str, float]]
    latency_ms: float
    error: str | None = None
    preprocess_ms: float = 0.0  # the part of latency_ms spent preparing the input tensor
    note: str | None = None  # what a GPR scan's conditioning had to estimate (no metadata)


class Classifier:
    """A loaded model plus what it needs to turn a sensor array into a named class."""

    def __init__(
        self,
        model: Model,
        *,
        name: str,
        version: int,
        labels: Sequence[str],
        preprocess_spec: PreprocessSpec,
        top_k: int = 3,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
    ) -> None:
        self.model = model
        self.name = name
        self.version = version
        self.preprocess_spec = preprocess_spec
        self._note_logged_at = -NOTE_LOG_INTERVAL_S
        self.top_k = top_k
        classes = 1
        for dim in model.output_spec.shape:
            classes *= max(int(dim), 0)
        if classes > max_outputs:
            raise ModelLoadError(
                f"model {name} v{version} has {classes} output values; this agent accepts at "
                f"most {max_outputs} ([safety] max_outputs)"
            )
        self.classes = classes
        # Only the names given; an output without one is named by its index when reported
        # (never millions of strings built up front).
        self.labels = list(labels[:classes])

    def label(self, index: int) -> str:
        """The name of output ``index`` (its number if the manifest names none)."""
        return self.labels[index] if index < len(self.labels) else str(index)

    def classify(
        self, array: npt.NDArray[np.generic], meta: gpr.ScanMetadata | None = None
    ) -> Prediction:
        """Classify one decoded input (image array or GPR B-scan with its ``meta``).

        For a GPR model that resamples to a physical scale, a scan without (full) metadata
        gets a ``note`` saying what was estimated; it is logged as a warning at most once a
        minute (the agent's log goes to the host at WARNING).

        For a GPR model with ``gpr.line_windows``, a line longer than the model's window is
        run window by window (at most ``edgefleet.shared.gpr_windows.MAX_WINDOWS``) and the
        Prediction is the window :func:`choose_window` picks; the note then also says how
        many windows and where the reported one lies. ``latency_ms`` covers every window;
        NaN or infinite scores in any window give the ``error`` Prediction.

        A model whose scores are NaN or infinite gives a Prediction with ``error`` set
        (never an exception: the caller counts it against the model).

        Raises:
            InputError: the input cannot be preprocessed into the model's input.
            InferenceError: the interpreter failed on this input.
        """
        start = time.perf_counter()
        spec = self.preprocess_spec
        windows = [
            (centre, to_input_tensor(x, self.model.input_spec))
            for centre, x in preprocess_windows(array, spec, meta)
        ]
        note = self._metadata_note(meta)
        prep_ms = (time.perf_counter() - start) * 1000.0
        runs: list[npt.NDArray[np.float32]] = []
        for _, x in windows:
            try:
                y = self.model.run(x)
            except ModelLoadError as exc:
                raise InferenceError(f"model {self.name} v{self.version}: {exc}") from exc
            scores = np.asarray(dequantize_output(y, self.model.output_spec)).reshape(-1)
            if scores.size == 0 or not np.all(np.isfinite(scores)):
                latency_ms = (time.perf_counter() - start) * 1000.0
                return Prediction(
                    "", 0.0, [], latency_ms, error=NON_FINITE, preprocess_ms=prep_ms, note=note
                )
            runs.append(scores)
        latency_ms = (time.perf_counter() - start) * 1000.0
        chosen = 0
        if len(runs) > 1:
            chosen = choose_window(runs, self._empty_index())
            where = _window_note(
                len(runs), windows[chosen][0], gpr_windows.trace_count(array), meta
            )
            note = f"{note}; {where}" if note else where
        scores = runs[chosen]
        k = min(self.top_k, scores.size)
        if scores.size > 4 * k:  # a partial sort: large outputs stay cheap
            best = np.argpartition(-scores, k - 1)[:k]
            order = best[np.argsort(-scores[best], kind="stable")]
        else:
            order = np.argsort(-scores, kind="stable")[:k]
        topk = [(self.label(int(i)), float(scores[i])) for i in order]
        return Prediction(
            topk[0][0], topk[0][1], topk, latency_ms, preprocess_ms=prep_ms, note=note
        )

    def _empty_index(self) -> int | None:
        options = self.preprocess_spec.gpr
        if options is None or options.empty_label not in self.labels:
            return None  # no output means "nothing here": every window is a target window
        return self.labels.index(options.empty_label)

    def _metadata_note(self, meta: gpr.ScanMetadata | None) -> str | None:
        options = self.preprocess_spec.gpr
        if self.preprocess_spec.kind != "gpr" or options is None:
            return None
        note = gpr.metadata_note(options, meta)
        now = time.monotonic()
        if note is not None and now - self._note_logged_at >= NOTE_LOG_INTERVAL_S:
            self._note_logged_at = now
            log.warning("model %s: %s", self.name, note)
        return note


def choose_window(window_scores: Sequence[npt.NDArray[np.float32]], empty_index: int | None) -> int:
    """The window a line's prediction reports (``GprOptions.line_windows``): its index.

    A window's top class is its highest score (the first output on a tie). Among the windows
    whose top class is not ``empty_index`` (the "nothing here" output), the one with the
    highest top score; if every window's top class is ``empty_index``, the one with the
    lowest score for it (the least sure that there is nothing). Ties go to the window first
    along the line. ``empty_index`` None: every window counts as a target window.

    Raises:
        ValueError: no windows.
    """
    if not window_scores:
        raise ValueError("no windows to choose from")
    tops = [int(np.argmax(scores)) for scores in window_scores]
    targets = [i for i, top in enumerate(tops) if top != empty_index]
    if targets:
        return max(targets, key=lambda i: (float(window_scores[i][tops[i]]), -i))
    assert empty_index is not None  # noqa: S101 - every top is empty_index
    return min(range(len(tops)), key=lambda i: (float(window_scores[i][empty_index]), i))


def _window_note(
    count: int, centre: float | None, n_traces: int, meta: gpr.ScanMetadata | None
) -> str:
    where = f"line of {n_traces} traces classified in {count} windows"
    if centre is None:
        return where
    spacing = meta.trace_spacing_m if meta is not None else None
    metres = f" ({centre * spacing:.2f} m from the first trace)" if spacing is not None else ""
    return f"{where}; the reported one is centred on trace {centre:.0f}{metres}"


def spec_from_model(model: Model) -> PreprocessSpec:
    """A plain-image recipe guessed from an NHWC input (for models without edgefleet info)."""
    shape = model.input_spec.shape
    channels = shape[3] if len(shape) == _NHWC else 1
    if len(shape) not in {3, _NHWC} or channels not in {1, 3}:
        raise ModelLoadError(
            f"model input shape {list(shape)} is not an image (N, H, W, C) and the model "
            "carries no edgefleet metadata: re-export it with `edgefleet quantize`"
        )
    return PreprocessSpec(height=shape[1], width=shape[2], channels=1 if channels == 1 else 3)


def classifier_from_file(
    path: Path,
    *,
    backend: Backend,
    num_threads: int = 1,
    top_k: int = 3,
    delegate: object = None,
) -> Classifier:
    """Open a .tflite for one-shot use, reading its embedded edgefleet model info.

    Raises:
        ModelLoadError: the file cannot be read, parsed or loaded.
    """
    try:
        info = read_model_info(path.read_bytes())
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {path}: {exc.strerror or exc}") from exc
    except ModelFormatError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    model = open_model(path, backend=backend, num_threads=num_threads, delegate=delegate)
    if info is None:
        return Classifier(
            model,
            name=path.stem,
            version=0,
            labels=[],
            preprocess_spec=spec_from_model(model),
            top_k=top_k,
        )
    return Classifier(
        model,
        name=info.name,
        version=0,
        labels=info.labels,
        preprocess_spec=info.preprocess,
        top_k=top_k,
    )


class LatencyStats:
    """Inference count and latency percentiles over a recent window."""

    def __init__(self, window: int = 1000) -> None:
        self.count = 0
        self._recent: deque[float] = deque(maxlen=window)

    def add(self, latency_ms: float) -> None:
        """Record one inference."""
        self.count += 1
        self._recent.append(latency_ms)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) of recent latencies, or None before any inference."""
        if not self._recent:
            return None
        return float(np.percentile(np.fromiter(self._recent, dtype=np.float64), q))
