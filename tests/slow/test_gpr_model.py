"""The seed ConvNet on the bundled GPR scans: train briefly, convert, score float32 vs int8."""

import json

import numpy as np
import pytest

from edgefleet.host.datasets.gpr import CLASSES
from edgefleet.host.gpr_model import (
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
