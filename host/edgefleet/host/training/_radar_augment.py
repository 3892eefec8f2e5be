"""Radar-set scans varied before conditioning, within the training settings only.

The radar model fits its training scans far better than held-out ones (99.5 % against 77 %
with 1,200 training scans, 96.5 % against 86.2 % with 2,400; docs/gpr.md), so each training
scan is also shown in a few forms a radar could have recorded it in. Every change stays
inside what the training split already spans, so that the out-of-distribution split still
measures settings the model has never seen (its band, its depths, its finer trace spacing,
its longer traces and its louder noise):

* **a shorter line**: up to a quarter of the traces cut from either end, so the target is
  off the window's centre and the line's end is in view, as when a long survey line is cut
  into windows (the target of a training scan lies 30-70 % along its line, so it stays in);
* **coarser trace spacing**: every second trace dropped (the sidecar's spacing doubled);
* **fewer samples per trace**: every second sample dropped (the sample interval doubled),
  kept only while the centre period still spans at least 8 samples;
* **more receiver noise**: white noise added so the noise floor rises towards -30 dB below
  the direct wave, the noisiest training setting.

The sidecar follows each change, so conditioning puts the varied scan on the same common
scale as the original.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.host.datasets._radar import RadarDataset
from edgefleet.shared.gpr import ScanMetadata

if TYPE_CHECKING:
    import numpy.typing as npt

MAX_CUT = 0.25  # share of the line cut from either end at most
NOISE_DB = (-45.0, -30.0)  # added noise, below the scan's peak (the training split: -60..-30)
MIN_SAMPLES_PER_PERIOD = 8.0  # a trace is thinned in time only while this still holds
MIN_TRACES = 8


def vary_scan(
    scan: npt.NDArray[np.floating], meta: ScanMetadata, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], ScanMetadata]:
    """One varied form of ``scan`` (traces, samples) and its updated sidecar."""
    out = np.asarray(scan, dtype=np.float64)
    spacing, interval = meta.trace_spacing_m, meta.interval_ns(out.shape[1])
    if rng.random() < 0.5:  # noqa: PLR2004 - a shorter line, half the time
        n = out.shape[0]
        first = int(rng.integers(0, int(n * MAX_CUT) + 1))
        last = n - int(rng.integers(0, int(n * MAX_CUT) + 1))
        if last - first >= MIN_TRACES:
            out = out[first:last]
    if rng.random() < 0.3 and out.shape[0] >= 2 * MIN_TRACES and spacing is not None:  # noqa: PLR2004
        out, spacing = out[::2], spacing * 2
    if rng.random() < 0.3 and interval is not None and meta.antenna_mhz is not None:  # noqa: PLR2004
        period_samples = 1e3 / meta.antenna_mhz / interval
        if period_samples / 2 >= MIN_SAMPLES_PER_PERIOD:
            out, interval = out[:, ::2], interval * 2
    if rng.random() < 0.7:  # noqa: PLR2004 - more noise, most of the time
        level = float(np.max(np.abs(out))) * 10 ** (float(rng.uniform(*NOISE_DB)) / 20)
        out = out + rng.normal(0.0, level, out.shape)
    varied = dataclasses.replace(
        meta,
        sample_interval_ns=interval,
        time_window_ns=None if interval is not None else meta.time_window_ns,
        trace_spacing_m=spacing,
    )
    return out.astype(np.float32), varied


def varied_copy(ds: RadarDataset, rng: np.random.Generator) -> RadarDataset:
    """``ds`` with every scan replaced by one varied form of it (labels and settings kept)."""
    scans, metas = [], []
    for scan, meta in zip(ds.x, ds.meta, strict=True):
        varied, varied_meta = vary_scan(scan, meta, rng)
        scans.append(varied)
        metas.append(varied_meta)
    x = np.empty(len(scans), dtype=object)
    x[:] = scans
    return dataclasses.replace(ds, x=x, meta=tuple(metas))
