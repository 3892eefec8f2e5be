"""Delta updates on real retrains of the bundled GPR ConvNet (int8): bytes on the wire, device cost.

The files (``tests/support/gpr_variants.py``, made once into ``--models``): ``base`` (the
bundled net), ``head`` (a: dense head retrained 3 epochs, conv frozen), ``class5`` (b: a fifth
class added to the head), ``seed`` (c: the whole net retrained from another seed, 2 epochs).
For each case and each chunking - fixed 4 KiB blocks, FastCDC alone, FastCDC cut at the
.tflite buffers (what edgefleet signs) - it prints the bytes a device holding ``base`` must
be sent, as a share of the new file and as chunks. Then, for edgefleet's chunking, the
device side: ``DeltaDownload`` filling the new file from ``base`` in a real state directory,
the missing chunks fed in, the whole file verified - wall time (median of 5) and the Python
heap's peak (tracemalloc) during it.

Usage: ``.venv/bin/python bench/bench_delta.py [--models DIR] [--json out.json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgefleet.device.delta import DeltaDownload
from edgefleet.device.store import Pointer, StateStore
from edgefleet.shared.cdc import CdcParams, chunk_model
from edgefleet.shared.chunklist import make_chunk_list
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from support.gpr_variants import make

CASES = {"head": "(a) head retrained", "class5": "(b) fifth class", "seed": "(c) other seed"}


def _entries(data: bytes, spans: list[tuple[int, int]]) -> list[tuple[str, int, int]]:
    return [(hashlib.sha256(data[o : o + n]).hexdigest(), o, n) for o, n in spans]


def chunkings(data: bytes) -> dict[str, list[tuple[str, int, int]]]:
    """The three ways of cutting a file compared."""
    fixed = [(o, min(4096, len(data) - o)) for o in range(0, len(data), 4096)]
    params = CdcParams.for_size(len(data))
    return {
        "fixed 4 KiB": _entries(data, fixed),
        "FastCDC": _entries(data, chunk_model(data, params, align=False)),
        "FastCDC + buffers": make_chunk_list(data),
    }


def to_send(new: list[tuple[str, int, int]], old: list[tuple[str, int, int]]) -> tuple[int, int]:
    """(bytes, chunks) of ``new`` not in ``old``, each distinct chunk once."""
    held = {c[0] for c in old}
    need = {c[0]: c[2] for c in new if c[0] not in held}
    return sum(need.values()), len(need)


def _manifest(data: bytes, version: int) -> Manifest:
    chunks = make_chunk_list(data)
    variant = ModelVariant(
        accelerator="cpu",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=max(c[2] for c in chunks),
        chunk_count=len(chunks),
        chunks=chunks,
    )
    return Manifest(
        v=2,
        name="gpr_convnet",
        version=version,
        created_at=1,
        expires_at=2,
        targets=Targets(all_devices=True),
        variants=[variant],
        mode="int8",
        input=TensorSpec(shape=(1, 64, 32, 3), dtype="int8", scale=1.0, zero_point=0),
        output=TensorSpec(shape=(1, 4), dtype="int8", scale=1.0, zero_point=0),
        preprocess=PreprocessSpec(height=64, width=32, channels=3),
        labels=["a", "b", "c", "d"],
    )


def assemble(base: bytes, new: bytes) -> tuple[float, int, int]:
    """One device-side delta: (seconds, peak Python heap bytes, bytes fetched)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state")
        sha = hashlib.sha256(base).hexdigest()
        store.stage_model(sha, base)
        store.activate(Pointer(sha, "gpr_convnet", 1, _manifest(base, 1).model_dump(mode="json")))
        manifest = _manifest(new, 2)
        variant = manifest.variants[0]
        payloads = {c[0]: new[c[1] : c[1] + c[2]] for c in variant.chunks or []}
        tracemalloc.start()
        t0 = time.perf_counter()
        job = DeltaDownload.start(
            manifest,
            variant,
            b"envelope",
            "e" * 64,
            directory=store.download_dir(variant.sha256),
            now=0.0,
            store=store,
        )
        fetched = 0
        for chunk_sha in list(job.missing):
            fetched += len(payloads[chunk_sha])
            job.add(payloads[chunk_sha], 1.0)
        job.verify()
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if job.part.read_bytes() != new:
            raise SystemExit("assembled file differs from the new model")
        return seconds, peak, fetched


def cpu_model() -> str:
    """The CPU model line of lscpu (or the platform's processor)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "")


def main() -> None:
    """Run the benchmark and print (and optionally save) the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "ef-delta")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    files = make(args.models)
    base = files["base"].read_bytes()
    base_lists = chunkings(base)
    print(f"CPU: {cpu_model()}; base {len(base)} bytes")
    results: dict[str, dict[str, object]] = {}
    for case, title in CASES.items():
        new = files[case].read_bytes()
        row: dict[str, object] = {"size": len(new)}
        for name, listed in chunkings(new).items():
            sent, chunks = to_send(listed, base_lists[name])
            row[name] = {"bytes": sent, "fraction": sent / len(new), "chunks": chunks}
            print(
                f"{title:<20} {name:<18} {sent:>7} B  {100 * sent / len(new):5.1f} %  "
                f"{chunks:>3} of {len(listed)} chunks"
            )
        runs = [assemble(base, new) for _ in range(5)]
        seconds = statistics.median(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        row["assemble_s"], row["peak_heap_bytes"] = seconds, peak
        print(
            f"{title:<20} device: assemble {1000 * seconds:.1f} ms (median of 5), "
            f"peak Python heap {peak / 1024:.0f} KiB, fetched {runs[0][2]} B"
        )
        results[case] = row
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
