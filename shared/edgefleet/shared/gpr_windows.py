"""A long GPR survey line as overlapping windows on the common scale (``line_windows``).

A radar's native line (hundreds of traces) is many model windows long. Instead of the one
window :func:`edgefleet.shared.gpr.common_scale` centres on the strongest echo, a recipe with
``GprOptions.line_windows`` is classified window by window: :func:`window_centres` lists
where (docs/protocol.md 5.4), :func:`common_scale_windows` cuts every window from one time
resampling, and :func:`condition_windows` conditions each as ``gpr.condition`` conditions
its one window. The device picks the window it reports (``edgefleet.device.inference``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgefleet.shared.gpr import (
    _PNG_FULL_SCALE,
    FloatArray,
    ScanMetadata,
    _box_smooth,
    _conditioned,
    _on_time_scale,
    _resize_traces,
    _window,
    align_time_zero,
    as_traces,
    condition,
)

if TYPE_CHECKING:
    from edgefleet.shared.spec import GprOptions

MAX_WINDOWS = 64  # most windows along one line: a huge line costs bounded time


def condition_windows(
    bscan: npt.NDArray[np.generic],
    options: GprOptions,
    meta: ScanMetadata | None,
    shape: tuple[int, int],
    max_windows: int = MAX_WINDOWS,
) -> list[tuple[float | None, FloatArray]]:
    """``gpr.condition`` for every window along the line (``options.line_windows``).

    With ``options.resample`` each window of :func:`common_scale_windows` (centre in input
    traces) is conditioned on its own, as ``gpr.condition`` conditions the one window it
    picks; without ``resample`` the one entry is ``condition``'s whole scan (centre None).

    Raises:
        InputError: the input is not a usable B-scan.
    """
    if not options.resample:
        return [(None, condition(bscan, options, meta, shape))]
    traces = as_traces(bscan)
    if options.time_zero:
        traces = align_time_zero(traces)
    return [
        (centre, _conditioned(window, options))
        for centre, window in common_scale_windows(traces, options, meta, shape, max_windows)
    ]


def common_scale_windows(
    traces: npt.NDArray[np.float64],
    options: GprOptions,
    meta: ScanMetadata | None,
    shape: tuple[int, int],
    max_windows: int = MAX_WINDOWS,
) -> list[tuple[float, npt.NDArray[np.float64]]]:
    """Every window of a survey line on the model's scale (``GprOptions.line_windows``).

    The same time resampling and distance scale as ``gpr.common_scale``, done once for the
    line; then one ``(columns, rows)`` float64 array per centre of :func:`window_centres`,
    in line order, each with its centre in input traces. Without a usable trace spacing
    (or frequency) the one window is the whole line resized, centred on the middle trace.
    """
    columns = shape[1]
    timed, step = _on_time_scale(traces, options, meta, shape)
    n_traces = timed.shape[0]
    if step is None:
        return [((n_traces - 1) / 2.0, _resize_traces(timed, columns))]
    smoothed = _box_smooth(timed, step) if step > 1.0 else timed
    return [
        (centre, _window(smoothed, centre, step, columns))
        for centre in window_centres(n_traces, step, columns, max_windows)
    ]


def window_centres(
    n_traces: int, step: float, columns: int, max_windows: int = MAX_WINDOWS
) -> list[float]:
    """Centres, in input traces, of the windows that cover a line of ``n_traces`` traces.

    A window spans ``(columns - 1) * step`` traces (``step``: input traces per model
    column). A line no longer than that has one window, centred on the middle trace
    ``(n_traces - 1) / 2``. A longer line gets ``g + 1`` windows, ``g = ceil(span / (window
    / 2))`` where ``span = n_traces - 1 - window``: the first centred at ``window / 2``, the
    last at ``n_traces - 1 - window / 2`` (each end of the line is a window's edge), evenly
    spaced, so neighbours are at most half a window apart. At most ``max_windows``: a line
    that would need more gets ``max_windows`` windows spread evenly over the same span
    (further apart than half a window), so a huge line costs bounded time.
    """
    window = (columns - 1) * step
    half = window / 2.0
    span = (n_traces - 1) - window
    if span <= 0:
        return [(n_traces - 1) / 2.0]
    if max_windows < 2:  # noqa: PLR2004 - the two ends
        raise ValueError(f"a line longer than a window needs 2 windows or more, not {max_windows}")
    gaps = max_windows - 1
    if half > 0:
        gaps = min(gaps, math.ceil(span / half - 1e-9))  # 1e-9: float noise is not a gap
    return [half + span * k / gaps for k in range(gaps)] + [n_traces - 1 - half]


def trace_count(array: npt.NDArray[np.generic]) -> int:
    """The number of traces of an accepted input (columns of a PNG, rows of a ``.npy``)."""
    if array.dtype in _PNG_FULL_SCALE:
        return int(array.shape[1]) if array.ndim >= 2 else 0  # noqa: PLR2004
    return int(array.shape[0]) if array.ndim >= 1 else 0
