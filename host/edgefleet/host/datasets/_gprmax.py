"""Run gprMax (the optional ``gpr`` extra): simulate labelled GPR B-scans, in parallel, resumable.

Imported only by ``edgefleet gpr generate`` and the tests that simulate: gprMax is heavy and
optional, and the bundled data set does not need it.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.pool import Pool
from pathlib import Path
from types import SimpleNamespace

import gprMax
import gprMax.contexts
import h5py
import numpy as np
import numpy.typing as npt

from edgefleet.host.datasets import _radar
from edgefleet.host.datasets._gpr import (
    ScanParams,
    input_file,
    sample_params,
    scan_path,
    write_manifest,
)
from edgefleet.host.errors import DatasetError
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.gpr import resample_samples


def simulate(params: ScanParams) -> npt.NDArray[np.float32]:
    """Run gprMax for one scan and return float32 ``(traces, samples)``."""
    raw = run_traces(input_file(params), params.n_traces)
    return resample_samples(raw, params.n_samples).astype(np.float32)


def run_traces(text: str, n_traces: int) -> npt.NDArray[np.float64]:
    """Run the gprMax input ``text`` for ``n_traces`` traces: received ``Ez`` per time step."""
    # gprMax runs a full gc.collect() after every trace (model); for these small models that
    # is ~30% of the run time, and a worker's memory stays small (maxtasksperchild bounds it).
    saved_gc, gprMax.contexts.gc = gprMax.contexts.gc, SimpleNamespace(collect=lambda: 0)
    try:
        with tempfile.TemporaryDirectory(prefix="edgefleet-gpr-") as tmp:
            path = Path(tmp) / "scan.in"
            path.write_text(text)
            gprMax.run(
                inputfile=str(path),
                n=n_traces,
                geometry_fixed=True,
                log_level=40,
                hide_progress_bars=True,
                allow_underresolved=True,
            )
            traces = []
            for k in range(1, n_traces + 1):
                with h5py.File(Path(tmp) / f"scan{k}.h5", "r") as h5:
                    traces.append(np.asarray(h5["rxs/rx1/Ez"], dtype=np.float64))
    finally:
        gprMax.contexts.gc = saved_gc
    return np.stack(traces)


def _save_atomic(path: Path, array: npt.NDArray[np.float32]) -> None:
    # A scan is written whole or not at all, so an interrupted run resumes cleanly.
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_atomic(path, buf.getvalue())


def _make_one(job: tuple[str, int]) -> int:
    out_dir, scan_seed = Path(job[0]), job[1]
    params = sample_params(scan_seed)
    path = scan_path(out_dir, params)
    if not path.exists():
        _save_atomic(path, simulate(params))
    return scan_seed


def generate(
    out_dir: Path,
    *,
    n: int,
    seed: int,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Simulate scans ``seed .. seed + n - 1`` into ``out_dir``; finished scans are skipped.

    Args:
        out_dir: data set folder; gets ``<class>/<seed>.npy`` and ``manifest.jsonl``.
        n: number of scans (classes cycle with the scan seed, so any 4 in a row are balanced).
        seed: seed of the first scan.
        workers: parallel processes (each runs gprMax on one thread).
        progress: called with (done, total) after each scan.

    Returns:
        The paths of all ``n`` scans.
    """
    if n <= 0 or workers <= 0:
        raise DatasetError(f"n and workers must be positive (got n={n}, workers={workers})")
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = range(seed, seed + n)
    todo = [s for s in seeds if not scan_path(out_dir, sample_params(s)).exists()]
    done = n - len(todo)
    if progress:
        progress(done, n)
    if todo:
        done = _run_pool(out_dir, todo, workers=workers, done=done, n=n, progress=progress)
    write_manifest(out_dir)
    return [scan_path(out_dir, sample_params(s)) for s in seeds]


def _run_pool(
    out_dir: Path,
    todo: list[int],
    *,
    workers: int,
    done: int,
    n: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    # Fresh worker processes now and then: gprMax keeps module-level state between runs.
    with get_context("spawn").Pool(workers, maxtasksperchild=20) as pool:
        for _ in pool.imap_unordered(_make_one, [(str(out_dir), s) for s in todo]):
            done += 1
            if progress:
                progress(done, n)
            if done % 25 == 0:
                write_manifest(out_dir)
        _drain(pool)
    return done


def _drain(pool: Pool) -> None:
    # Let the workers exit on their own before the with block's terminate(): a terminated
    # worker leaves its semaphore behind, and Python warns about "leaked semaphore objects"
    # at the end of every generation run.
    pool.close()
    pool.join()


# The radar set (``_radar``): many radars' settings, a sidecar of physical metadata per scan.
RADAR_SPLITS = ("train", "heldout", "ood", "native")


def simulate_radar(params: _radar.RadarScanParams) -> npt.NDArray[np.float32]:
    """Run gprMax for one radar-set scan: ``(traces, samples)`` with receiver noise added."""
    raw = run_traces(_radar.radar_input_file(params), params.n_traces)
    return _radar.add_noise(resample_samples(raw, params.n_samples), params).astype(np.float32)


def _make_radar(job: tuple[str, str, int]) -> int:
    out_dir, split, scan_seed = Path(job[0]), job[1], job[2]
    params = _radar.sample_radar_params(scan_seed, split)  # type: ignore[arg-type]
    path = _radar.radar_scan_path(out_dir, params)
    if not path.exists():
        # float16 on disk (half the bytes; ~-66 dB relative precision, under any noise floor)
        buf = io.BytesIO()
        np.save(buf, simulate_radar(params).astype(np.float16), allow_pickle=False)
        sidecar = json.dumps(_radar.metadata(params), sort_keys=True).encode() + b"\n"
        write_atomic(path.with_suffix(".json"), sidecar)
        write_atomic(path, buf.getvalue())
    return scan_seed


def generate_radar(
    out_dir: Path,
    *,
    split: str,
    n: int,
    seed: int,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Simulate radar-set scans ``seed .. seed + n - 1`` of ``split`` into ``out_dir``.

    Each scan is ``<out>/<class>/<seed>.npy`` (float16 ``(traces, samples)``) with its
    sidecar ``<seed>.json``; ``manifest.jsonl`` holds every scan's parameters. Finished
    scans are skipped, so rerunning the same command resumes.
    """
    if split not in RADAR_SPLITS:
        raise DatasetError(f"unknown radar-set split {split!r}; use one of {RADAR_SPLITS}")
    if n <= 0 or workers <= 0:
        raise DatasetError(f"n and workers must be positive (got n={n}, workers={workers})")
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = range(seed, seed + n)

    def path_of(s: int) -> Path:
        return _radar.radar_scan_path(out_dir, _radar.sample_radar_params(s, split))  # type: ignore[arg-type]

    todo = [s for s in seeds if not path_of(s).exists()]
    done = n - len(todo)
    if progress:
        progress(done, n)
    with get_context("spawn").Pool(workers, maxtasksperchild=20) as pool:
        jobs = [(str(out_dir), split, s) for s in todo]
        for _ in pool.imap_unordered(_make_radar, jobs):
            done += 1
            if progress:
                progress(done, n)
            if done % 25 == 0:
                _radar.write_radar_manifest(out_dir, split)
        _drain(pool)
    _radar.write_radar_manifest(out_dir, split)
    return [path_of(s) for s in seeds]
