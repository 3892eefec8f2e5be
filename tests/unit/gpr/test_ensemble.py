"""Averaged ConvNets (``_models.average_of``): one model, the mean of its members, deployable."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from edgefleet.host.errors import HostError
from edgefleet.host.quantize import _convert as convert
from edgefleet.host.quantize import _edgetpu as edgetpu
from edgefleet.host.training._gpr import _save_without_optimizer
from edgefleet.host.training._models import average_of, build_gpr_convnet
from edgefleet.host.training._radar import train_radar_convnet

SHAPE = (64, 32, 4)


def _members(n: int) -> list:
    out = []
    for seed in range(n):
        keras.utils.set_random_seed(seed)
        out.append(build_gpr_convnet(SHAPE, 4))
    return out


def _inputs() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(6, *SHAPE)).astype(np.float32)


def test_the_average_outputs_the_mean_of_its_members_and_survives_saving(tmp_path):
    members = _members(3)
    x = _inputs()
    expected = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    assert np.abs(members[0].predict(x, verbose=0) - expected).max() > 1e-3  # they differ

    averaged = average_of(members, name="gpr_radars")
    np.testing.assert_allclose(averaged.predict(x, verbose=0), expected, atol=1e-6)
    _save_without_optimizer(averaged, tmp_path / "m.keras")
    loaded = convert.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)


def test_one_member_is_that_model_and_none_is_refused():
    (only,) = _members(1)
    assert average_of([only]) is only
    with pytest.raises(ValueError, match="at least one"):
        average_of([])
    with pytest.raises(HostError, match="at least 1"):
        train_radar_convnet(Path("unused.keras"), members=0)


def test_the_int8_average_is_one_file_every_op_of_which_maps_to_the_edge_tpu():
    x = _inputs()
    blob = convert.convert(average_of(_members(2)), "int8", representative=x)
    check = edgetpu.precheck(blob)
    assert check.compatible, check
    names = [op.name for op in check.ops]
    assert names.count("SOFTMAX") == 2  # both members are in it
    assert {"ADD", "MUL"} <= set(names)  # and their mean
