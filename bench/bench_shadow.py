r"""What a shadow candidate costs a device: RSS, and the active path's latency with and without.

On the GPR ConvNet (int8), with the device's own code (no TensorFlow): the active model
classifies every held-out B-scan, back to back by default (the worst case: no gap between
inputs for the candidate; ``--interval-ms`` paces them), and after each prediction calls
``Shadow.offer`` exactly as the agent does. Measured per input: the active path =
classify + offer. Three settings in one process: no shadow; a running candidate on 20 % of
the inputs; on 100 % of them. The candidate is the same network with other metadata
(other bytes: a retrained model of the same architecture costs the same), run by the real
candidate thread (``edgefleet.device.shadow``) with its bounded queue. The passes are
interleaved (none, 20 %, 100 %, none, ...) so that load from other jobs on the machine
hits the three alike.
RSS (VmRSS): before any candidate was loaded, and the highest with one loaded.
``--quiet-ms``, ``--queue`` and ``--max-cpu-share`` are the agent's ``[shadow]`` settings
(docs/protocol.md 14); the header line prints the date, the CPU (``lscpu``) and the load
average before and after the runs.

Usage::

    edgefleet gpr evaluate \
        host/edgefleet/host/datasets/data/models/gpr_convnet.keras --out /tmp/gpr_eval
    .venv/bin/python bench/bench_shadow.py --model /tmp/gpr_eval/gpr_convnet_int8.tflite
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgefleet.device.config import ShadowConfig
from edgefleet.device.inference import Classifier
from edgefleet.device.inputs import load_input
from edgefleet.device.runtime import discover_backend, open_model
from edgefleet.device.shadow import Shadow, _Run
from edgefleet.device.system import rss_bytes
from edgefleet.host.fleet import load_model
from edgefleet.host.quantize import describe, embed_model_info
from edgefleet.shared.shadow import ShadowReport, ShadowSpec
from edgefleet.shared.tflite_model import read_model_info
from edgefleet.shared.topics import Topics

HELDOUT = Path(__file__).resolve().parent.parent / "host/edgefleet/host/datasets/data/gpr/heldout"


def _cpu() -> str:
    """``lscpu``'s model name, CPU count and the SIMD flags that matter to the interpreter."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())
    }
    simd = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "neon", "asimd")
    flags = [f for f in fields.get("Flags", "").split() if f in simd]
    name = fields.get("Model name") or platform.processor() or "unknown"
    return f"{name}, {fields.get('CPU(s)', '?')} CPUs, flags {' '.join(flags) or '-'}"


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _active_path(
    classifier: Classifier,
    shadow: Shadow,
    arrays: list[np.ndarray],
    repeats: int,
    interval_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per input: the active path (classify + offer) and the offer alone, in ms."""
    times, offers = [], []
    for _ in range(repeats):
        for i, array in enumerate(arrays):
            if interval_s:
                time.sleep(interval_s)
            start = time.perf_counter()
            prediction = classifier.classify(array)
            offered = time.perf_counter()
            shadow.offer(array, prediction, f"scan-{i}.npy")
            end = time.perf_counter()
            times.append((end - start) * 1000.0)
            offers.append((end - offered) * 1000.0)
    return np.asarray(times), np.asarray(offers)


def _start_candidate(shadow: Shadow, path: Path, sample: float) -> tuple[_Run, threading.Thread]:
    files = load_model(path)
    manifest = files.template.model_copy(update={"shadow": ShadowSpec(sample=sample)})
    run = _Run(manifest, manifest.variants[0], "bench", shadow.settings)
    classifier = shadow._load(run, path)  # noqa: SLF001 - the agent's loader, minus the check
    run.state = "running"
    shadow.run = run
    thread = threading.Thread(target=shadow._serve, args=(run, classifier), daemon=True)  # noqa: SLF001
    thread.start()
    return run, thread


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="GPR int8 .tflite")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the scans")
    parser.add_argument(
        "--interval-ms", type=float, default=0.0, help="pause between inputs (0: back to back)"
    )
    parser.add_argument(
        "--quiet-ms", type=float, default=ShadowConfig().quiet_ms, help="[shadow] quiet_ms"
    )
    parser.add_argument("--queue", type=int, default=ShadowConfig().queue, help="[shadow] queue")
    parser.add_argument(
        "--max-cpu-share",
        type=float,
        default=ShadowConfig().max_cpu_share,
        help="[shadow] max_cpu_share",
    )
    return parser


def main() -> None:
    """Run the three measurements and print one table."""
    parser = _parser()
    args = parser.parse_args()
    settings = ShadowConfig(
        quiet_ms=args.quiet_ms, queue=args.queue, max_cpu_share=args.max_cpu_share
    )
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = _load()
    data = args.model.read_bytes()
    info = read_model_info(data)
    if info is None:
        parser.error(f"{args.model} has no edgefleet metadata: make it with edgefleet quantize")
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    candidate = work / "candidate.tflite"
    other = describe(
        data, name="gpr_candidate", mode=info.mode, labels=info.labels, preprocess=info.preprocess
    )
    candidate.write_bytes(embed_model_info(data, other))

    backend = discover_backend("auto")
    active = Classifier(
        open_model(args.model, backend=backend, num_threads=1),
        name=info.name,
        version=1,
        labels=info.labels,
        preprocess_spec=info.preprocess,
    )
    agent = SimpleNamespace(
        config=SimpleNamespace(
            device_id="bench",
            groups=[],
            safety=SimpleNamespace(max_outputs=100_000),
            shadow=settings,
        ),
        topics=Topics("bench"),
        store=SimpleNamespace(root=work),
        backend=backend,
        classifier=active,
    )
    shadow = Shadow(agent)  # type: ignore[arg-type]
    arrays = [load_input(p) for p in sorted(HELDOUT.rglob("*.npy"))]
    _active_path(active, shadow, arrays, 1)  # warm up
    rss = {0.0: rss_bytes()}  # before any candidate was loaded
    # Passes interleaved (none, 0.2, 1.0, none, ...): load from other jobs hits all alike.
    times: dict[float, list[np.ndarray]] = {0.0: [], 0.2: [], 1.0: []}
    offers: dict[float, list[np.ndarray]] = {0.0: [], 0.2: [], 1.0: []}
    reports: dict[float, list[ShadowReport]] = {0.2: [], 1.0: []}
    for _ in range(args.repeats):
        for sample in (0.0, 0.2, 1.0):
            run, thread = _start_candidate(shadow, candidate, sample) if sample else (None, None)
            t, o = _active_path(active, shadow, arrays, 1, args.interval_ms / 1000)
            times[sample].append(t)
            offers[sample].append(o)
            if run is not None and thread is not None:
                time.sleep(0.3)  # the queue drains
                reports[sample].append(shadow.summary(run))
                rss[sample] = max(rss.get(sample, 0) or 0, rss_bytes() or 0)
                run.finish("stopped", "bench")
                thread.join(5)
                shadow.run = None
    rows = [
        (
            "no shadow" if not sample else f"shadow, sample {sample:g}",
            (np.concatenate(times[sample]), np.concatenate(offers[sample])),
            rss[sample],
            reports.get(sample),
        )
        for sample in times
    ]

    print(
        f"{started}; CPU: {_cpu()}; load average {load_before} before, {_load()} after; "
        f"{backend.name} {backend.version}; {len(arrays)} held-out scans x {args.repeats}, "
        f"{args.interval_ms:g} ms between inputs, 1 interpreter thread each; [shadow] quiet_ms "
        f"{settings.quiet_ms:g}, queue {settings.queue}, max_cpu_share {settings.max_cpu_share:g}"
    )
    print(
        f"{'':<20} {'active p50':>10} {'active p99':>10} {'offer p99':>10} {'offer max':>10} "
        f"{'RSS':>9}  candidate"
    )
    for name, (t, o), peak, done in rows:
        extra = ""
        if done:
            compared = sum(r.compared for r in done)
            agreed = sum(r.agreed for r in done)
            p50 = np.median([r.candidate_latency.p50_ms or 0 for r in done])
            p95 = np.median([r.candidate_latency.p95_ms or 0 for r in done])
            extra = (
                f"compared {compared}, dropped {sum(r.dropped for r in done)}, "
                f"p50 {p50:.3f} ms, p95 {p95:.3f} ms, "
                f"agreement {100 * agreed / max(compared, 1):.1f}%"
            )
        print(
            f"{name:<20} {np.percentile(t, 50):8.3f}ms {np.percentile(t, 99):8.3f}ms "
            f"{np.percentile(o, 99):8.4f}ms {o.max():8.4f}ms "
            f"{(peak or 0) / 2**20:7.1f}MiB  {extra}"
        )


if __name__ == "__main__":
    main()
