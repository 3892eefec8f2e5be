"""How strong each target's echo is against the receiver noise (radar set, docs/gpr.md).

For every pipe scan of a radar-set split, gprMax runs the scan twice: as drawn, and with the
target left out (same soil, layer, stones, surface and antenna). The difference is the
target's echo alone. Against the scan's white receiver noise (``noise_db`` below the direct
wave's peak, per recorded sample) it prints, per scan, one JSON line:

* ``matched_db``: the ideal matched-filter SNR, sum(echo^2) / sigma^2 in dB: what a detector
  that knew the echo exactly could reach;
* ``peak_below_direct_db``: the echo's peak against the direct wave's, in dB;
* ``peak_snr_db``: the echo's peak against the noise's per-sample sigma, in dB.

It measures the data, not a model: join its lines with an evaluation's per-scan results to
see whether misses are where the echo is weak. About 15 s per scan on one core (two FDTD
runs of every trace).

Usage: ``.venv/bin/python bench/bench_gpr_echo.py --split ood --first 940000 --n 120``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np

from edgefleet.host.datasets import _radar
from edgefleet.host.datasets._gprmax import run_traces
from edgefleet.shared.gpr import resample_samples


def echo_figures(seed: int, split: str) -> dict[str, object] | None:
    """The echo's strength in one scan, or None for a scan without a target."""
    params = _radar.sample_radar_params(seed, split)  # type: ignore[arg-type]
    if params.label == "none":
        return None
    empty = dataclasses.replace(params, label="none")
    runs = [
        resample_samples(run_traces(_radar.radar_input_file(p), p.n_traces), p.n_samples)
        for p in (params, empty)
    ]
    echo = runs[0] - runs[1]
    direct = float(np.max(np.abs(runs[0])))
    sigma = _radar.noise_sigma(runs[0], params)  # the generator's own noise level
    peak = float(np.max(np.abs(echo)))
    return {
        "seed": seed,
        "label": params.label,
        "depth_m": params.target_depth,
        "freq_mhz": round(params.freq_hz / 1e6, 1),
        "soil_eps": params.soil_eps,
        "soil_sigma_ms_m": round(params.soil_sigma * 1e3, 2),
        "noise_db": params.noise_db,
        "matched_db": round(10 * math.log10(float(np.sum(echo**2)) / sigma**2), 1),
        "peak_below_direct_db": round(20 * math.log10(peak / direct), 1),
        "peak_snr_db": round(20 * math.log10(peak / sigma), 1),
    }


def main() -> None:
    """Print one JSON line per pipe scan of the chosen seeds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="ood", choices=["train", "heldout", "ood", "native"])
    parser.add_argument("--first", type=int, default=940000, help="seed of the first scan")
    parser.add_argument("--n", type=int, default=120, help="number of scans (seeds) to read")
    args = parser.parse_args()
    for seed in range(args.first, args.first + args.n):
        row = echo_figures(seed, args.split)
        if row is not None:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
