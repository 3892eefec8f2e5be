"""The GPR ConvNet on the bundled scans: train briefly, convert, score float32 vs int8."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.datasets import CLASSES, load_gpr
from edgefleet.host.demo._data import bundled_gpr_model
from edgefleet.host.training._gpr import (
    INPUT_CHANNELS,
    INPUT_HEIGHT,
    INPUT_WIDTH,
    evaluate,
    prepared,
    train_gpr_convnet,
)
from edgefleet.shared.tflite_model import read_model_info

pytestmark = pytest.mark.slow


def test_prepared_inputs_have_the_model_shape():
    x, y = prepared("train", limit=8)
    assert x.shape == (8, INPUT_HEIGHT, INPUT_WIDTH, INPUT_CHANNELS)
    assert x.dtype == np.float32
    assert 0.0 <= x.min() <= x.max() <= 1.0
    assert sorted(set(y.tolist())) == [0, 1, 2, 3]  # a balanced pick sees every class


def test_train_convert_and_score_per_class(tmp_path):
    model = train_gpr_convnet(tmp_path / "gpr.keras", epochs=1, limit=40)
    result = evaluate(model, tmp_path, calibration_samples=40)
    assert result.count == sum(result.class_counts.values()) >= 80
    assert set(result.accuracy) == {"float32", "int8"}
    for mode in ("float32", "int8"):
        assert 0.0 <= result.accuracy[mode] <= 1.0
        assert set(result.per_class[mode]) == set(CLASSES)
        info = read_model_info((tmp_path / f"gpr_convnet_{mode}.tflite").read_bytes())
        assert info is not None
        assert info.preprocess.kind == "gpr"
        assert info.labels == CLASSES
    int8 = read_model_info((tmp_path / "gpr_convnet_int8.tflite").read_bytes())
    assert int8.input.dtype == "int8"
    assert result.edgetpu_precheck_compatible is True
    saved = json.loads((tmp_path / "gpr_evaluation.json").read_text())
    assert saved["accuracy"] == result.accuracy


def test_cli_trains_and_scores_a_data_set_given_with_data(tmp_path):
    # A data set of one's own: 8 bundled scans per split, copied into the layout
    # `edgefleet gpr generate` writes; --data must make train and evaluate read it.
    root = tmp_path / "data"
    for split in ("train", "heldout"):
        ds = load_gpr(split)
        for k, i in enumerate(range(0, len(ds.y), len(ds.y) // 8)):
            folder = root / split / CLASSES[int(ds.y[i])]
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{k:07d}.npy", ds.x[i])
    model = tmp_path / "m.keras"
    res = CliRunner().invoke(
        app,
        [
            "gpr",
            "train",
            "--out",
            str(model),
            "--epochs",
            "1",
            "--data",
            str(root),
            "--set",
            "first",
        ],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app,
        [
            "gpr",
            "evaluate",
            str(model),
            "--out",
            str(tmp_path / "eval"),
            "--data",
            str(root),
            "--set",
            "first",
        ],
    )
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "eval" / "gpr_evaluation.json").read_text())
    assert saved["count"] == 8  # the copied held-out scans, not the bundled 400

    res = CliRunner().invoke(
        app, ["gpr", "train", "--out", str(model), "--data", str(tmp_path / "nowhere")]
    )
    assert res.exit_code == 1
    assert "nowhere" in res.output


def test_the_bundled_model_scores_as_documented_on_the_held_out_scans(tmp_path):
    # docs/gpr.md: 95.0 % float32 and int8 on the 400 held-out scans; the target is
    # 90 % int8, within 1 point of float32. A change to the conditioning, the data or the
    # converter that costs accuracy shows up here, as does int8 drifting from float32.
    model = bundled_gpr_model()
    assert model is not None
    result = evaluate(model, tmp_path)
    assert result.count == 400
    assert result.accuracy["int8"] >= 0.90
    assert abs(result.accuracy["int8"] - result.accuracy["float32"]) <= 0.01
    assert result.per_class["int8"]["metal"] >= 0.95
    assert min(result.per_class["int8"].values()) >= 0.85  # no class traded for the others
    assert result.edgetpu_precheck_compatible is True
