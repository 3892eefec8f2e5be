"""GPR per-scan cost on the device path: load, condition + resize + quantize, invoke.

Splits what the agent spends on one held-out B-scan, in both input forms (`.npy` and the
16-bit PNG rendering), with the device's own code (no TensorFlow): ``load_input``,
``preprocess`` + ``to_input_tensor``, and LiteRT ``invoke`` on one thread.

Usage::

    edgefleet gpr evaluate \
        host/edgefleet/host/datasets/data/models/gpr_convnet.keras --out /tmp/gpr_eval
    .venv/bin/python bench/bench_gpr_path.py --model /tmp/gpr_eval/gpr_convnet_int8.tflite
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgefleet.device.inputs import load_input
from edgefleet.device.runtime import discover_backend, open_model
from edgefleet.shared.errors import ModelFormatError
from edgefleet.shared.gpr import render_png
from edgefleet.shared.preprocess import preprocess, to_input_tensor
from edgefleet.shared.tflite_model import read_model_info

HELDOUT = Path(__file__).resolve().parent.parent / "host/edgefleet/host/datasets/data/gpr/heldout"


def main() -> None:
    """Time each step of the device path on every held-out scan, in both forms."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="GPR int8 .tflite")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the scans")
    args = parser.parse_args()

    try:
        info = read_model_info(args.model.read_bytes())
    except (OSError, ModelFormatError) as exc:
        parser.error(str(exc))
    if info is None:
        parser.error(f"{args.model} carries no ModelInfo; use one made by `edgefleet gpr evaluate`")
    spec = info.preprocess
    model = open_model(args.model, backend=discover_backend())
    scans = sorted(HELDOUT.glob("*/*.npy"))
    print(f"{platform.machine()}, {len(scans)} held-out scans x {args.repeats}, 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        pngs = []
        for path in scans:
            png = Path(tmp) / f"{path.stem}.png"
            Image.fromarray(render_png(np.load(path))).save(png)
            pngs.append(png)
        for form, files in ((".npy", scans), (".png", pngs)):
            spent = np.zeros(3)
            for _ in range(args.repeats):
                for path in files:
                    t0 = time.perf_counter()
                    raw = load_input(path)
                    t1 = time.perf_counter()
                    x = to_input_tensor(preprocess(raw, spec), model.input_spec)
                    t2 = time.perf_counter()
                    model.run(x)
                    spent += (t1 - t0, t2 - t1, time.perf_counter() - t2)
            load, cond, invoke = 1e3 * spent / (args.repeats * len(files))
            total = load + cond + invoke
            print(
                f"{form}: load {load:.3f} ms, condition {cond:.3f} ms, invoke {invoke:.3f} ms, "
                f"total {total:.3f} ms ({total / invoke:.2f}x invoke)"
            )


if __name__ == "__main__":
    main()
