"""The four GPR ConvNet int8 files the delta benchmark and tests compare (made once, cached).

``base``  the bundled GPR ConvNet, full int8 (calibration: the same 300 training scans)
``head``  (a) its dense head (Dense 128 + Dense 4) retrained a few epochs, conv stack frozen
``class5`` (b) a fifth output class ("other", trained on noise scans) added to the head
``seed``  (c) the whole net retrained from another seed (few epochs: 2 cores)

Every file is quantized with the same calibration inputs and carries its ModelInfo, as
``edgefleet quantize`` writes it.
Usage: ``python tests/support/gpr_variants.py OUT_DIR [--cases ...]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CASES = ("base", "head", "class5", "seed")
BUNDLED = (
    Path(__file__).resolve().parents[2]
    / "host/edgefleet/host/datasets/data/models/gpr_convnet.keras"
)
HEAD_EPOCHS = 3
SEED_EPOCHS = 2
TRAIN_LIMIT = 800  # training scans for the retrains (keeps this minutes, not tens)


def make(out_dir: Path, cases: tuple[str, ...] = CASES) -> dict[str, Path]:
    """Write ``<case>.tflite`` for each case not already in ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {c: out_dir / f"{c}.tflite" for c in cases}
    todo = [c for c in cases if not paths[c].exists()]
    if not todo:
        return paths
    import keras  # noqa: PLC0415 - TensorFlow only when a file must be made
    import numpy as np  # noqa: PLC0415

    from edgefleet.host.datasets import CLASSES  # noqa: PLC0415
    from edgefleet.host.quantize import _convert as convert  # noqa: PLC0415
    from edgefleet.host.quantize import describe, embed_model_info  # noqa: PLC0415
    from edgefleet.host.training._gpr import (  # noqa: PLC0415
        MODEL_NAME,
        gpr_spec,
        prepared,
        train_gpr_convnet,
    )
    from edgefleet.shared.atomic import write_atomic  # noqa: PLC0415

    x_cal, _ = prepared("train", limit=300)
    x, y = prepared("train", limit=TRAIN_LIMIT)

    def save(case: str, model: object, labels: tuple[str, ...]) -> None:
        data = convert.convert(model, "int8", representative=x_cal)
        info = describe(data, name=MODEL_NAME, mode="int8", labels=labels, preprocess=gpr_spec())
        write_atomic(paths[case], embed_model_info(data, info))
        print(f"{case}: {paths[case].stat().st_size} bytes", flush=True)

    def frozen_base() -> object:
        model = convert.load_model(BUNDLED)
        for layer in model.layers:
            layer.trainable = isinstance(layer, keras.layers.Dense)
        return model

    for case in todo:
        keras.utils.set_random_seed(1)
        if case == "base":
            save(case, convert.load_model(BUNDLED), CLASSES)
        elif case == "head":
            model = frozen_base()
            model.compile(
                optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy"
            )
            model.fit(x, y, epochs=HEAD_EPOCHS, batch_size=32, verbose=0)
            save(case, model, CLASSES)
        elif case == "class5":
            base = frozen_base()
            old = base.layers[-1]
            feats = base.layers[-2].output
            new = keras.layers.Dense(len(CLASSES) + 1, activation="softmax", name="head5")
            model = keras.Model(base.inputs, new(feats))
            w, b = old.get_weights()
            rng = np.random.default_rng(5)
            new.set_weights(
                [
                    np.concatenate([w, rng.normal(0, 0.05, (w.shape[0], 1))], axis=1),
                    np.concatenate([b, [-1.0]]),
                ]
            )
            noise = rng.normal(0, 1, (len(x) // 4, *x.shape[1:])).astype(np.float32)
            x5 = np.concatenate([x, noise])
            y5 = np.concatenate([y, np.full(len(noise), len(CLASSES))])
            model.compile(
                optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy"
            )
            model.fit(x5, y5, epochs=HEAD_EPOCHS, batch_size=32, verbose=0)
            save(case, model, (*CLASSES, "other"))
        elif case == "seed":
            keras_path = out_dir / "seed.keras"
            train_gpr_convnet(keras_path, epochs=SEED_EPOCHS, seed=7, limit=TRAIN_LIMIT)
            save(case, convert.load_model(keras_path), CLASSES)
    return paths


def main() -> None:
    """Make the files named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args()
    make(args.out, tuple(args.cases))


if __name__ == "__main__":
    sys.exit(main())
