r"""What a shadow candidate costs a device: RSS, and the active path's latency with and without.

On the GPR ConvNet (int8), with the device's own code (no TensorFlow): the active model
classifies every held-out B-scan back to back (the worst case: inputs arrive faster than
the candidate can follow), and after each prediction calls ``Shadow.offer`` exactly as the
agent does. Measured per input: the active path = classify + offer. Three runs in one
process: no shadow; a running candidate on 20 % of the inputs; on 100 % of them. The
candidate is the same network with other metadata (other bytes: a retrained model of the
same architecture costs the same), run by the real candidate thread
(``edgefleet.device.shadow``) with its bounded queue. RSS (VmRSS) is read after each run.

Usage::

    edgefleet gpr evaluate \
        host/edgefleet/host/datasets/data/models/gpr_convnet.keras --out /tmp/gpr_eval
    .venv/bin/python bench/bench_shadow.py --model /tmp/gpr_eval/gpr_convnet_int8.tflite
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgefleet.device.inference import Classifier
from edgefleet.device.inputs import load_input
from edgefleet.device.runtime import discover_backend, open_model
from edgefleet.device.shadow import Shadow, _Run
from edgefleet.device.system import rss_bytes
from edgefleet.host.fleet import load_model
from edgefleet.host.quantize import describe, embed_model_info
from edgefleet.shared.shadow import ShadowSpec
from edgefleet.shared.tflite_model import read_model_info
from edgefleet.shared.topics import Topics

HELDOUT = Path(__file__).resolve().parent.parent / "host/edgefleet/host/datasets/data/gpr/heldout"


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return names[0] if names else platform.processor() or "unknown"


def _active_path(
    classifier: Classifier, shadow: Shadow, arrays: list[np.ndarray], repeats: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per input: the active path (classify + offer) and the offer alone, in ms."""
    times, offers = [], []
    for _ in range(repeats):
        for i, array in enumerate(arrays):
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
    run = _Run(manifest, manifest.variants[0], "bench")
    classifier = shadow._load(run, path)  # noqa: SLF001 - the agent's loader, minus the check
    run.state = "running"
    shadow.run = run
    thread = threading.Thread(target=shadow._serve, args=(run, classifier), daemon=True)  # noqa: SLF001
    thread.start()
    return run, thread


def main() -> None:
    """Run the three measurements and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="GPR int8 .tflite")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the scans")
    args = parser.parse_args()
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
            device_id="bench", groups=[], safety=SimpleNamespace(max_outputs=100_000)
        ),
        topics=Topics("bench"),
        store=SimpleNamespace(root=work),
        backend=backend,
        classifier=active,
    )
    shadow = Shadow(agent)  # type: ignore[arg-type]
    arrays = [load_input(p) for p in sorted(HELDOUT.rglob("*.npy"))]
    _active_path(active, shadow, arrays, 1)  # warm up
    rows = [("no shadow", _active_path(active, shadow, arrays, args.repeats), rss_bytes(), None)]
    for sample in (0.2, 1.0):
        run, thread = _start_candidate(shadow, candidate, sample)
        times = _active_path(active, shadow, arrays, args.repeats)
        time.sleep(0.5)  # the queue drains
        report = shadow.summary(run)
        rows.append((f"shadow, sample {sample:g}", times, rss_bytes(), report))
        run.finish("stopped", "bench")
        thread.join(5)

    print(
        f"CPU: {_cpu()}; {backend.name} {backend.version}; {len(arrays)} held-out scans "
        f"x {args.repeats}, back to back, 1 interpreter thread each"
    )
    print(
        f"{'':<20} {'active p50':>10} {'active p99':>10} {'offer p99':>10} {'offer max':>10} "
        f"{'RSS':>9}  candidate"
    )
    for name, (times, offers), rss, report in rows:
        extra = ""
        if report is not None:
            extra = (
                f"compared {report.compared}, dropped {report.dropped}, p50 "
                f"{report.candidate_latency.p50_ms} ms, "
                f"agreement {100 * (report.agreement or 0):.1f}%"
            )
        print(
            f"{name:<20} {np.percentile(times, 50):8.3f}ms {np.percentile(times, 99):8.3f}ms "
            f"{np.percentile(offers, 99):8.4f}ms {offers.max():8.4f}ms "
            f"{(rss or 0) / 2**20:7.1f}MiB  {extra}"
        )


if __name__ == "__main__":
    main()
