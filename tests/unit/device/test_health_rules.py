"""The health check compares what docs/protocol.md 8.3 says, with its tolerances (issue 18)."""

from __future__ import annotations

import pytest

from edgefleet.device.health_worker import spec_mismatch
from edgefleet.shared.spec import TensorSpec

MANIFEST = TensorSpec(
    name="input", shape=(1, 28, 28, 1), dtype="int8", scale=0.00392156862745098, zero_point=-128
)


def model(**changes: object) -> TensorSpec:
    return MANIFEST.model_copy(update=changes)


@pytest.mark.parametrize(
    "actual",
    [
        model(),
        model(name="serving_default_input:0"),  # names are not compared
        model(scale=0.003921568859368563),  # the float32 scale read back: within 1e-5 relative
        model(scale=0.00392156862745098 * (1 + 0.9e-5)),
    ],
)
def test_what_the_check_accepts(actual):
    assert spec_mismatch("input", MANIFEST, actual) is None


@pytest.mark.parametrize(
    ("actual", "says"),
    [
        (model(shape=(1, 28, 28)), "input shape is [1, 28, 28], manifest says [1, 28, 28, 1]"),
        (model(shape=(2, 28, 28, 1)), "input shape is [2, 28, 28, 1]"),
        (model(dtype="uint8"), "input dtype is uint8, manifest says int8"),
        (model(scale=0.00392156862745098 * (1 + 2e-5)), "input quantization is scale="),
        (model(zero_point=-127), "zero_point=-127, manifest says"),
    ],
)
def test_what_the_check_refuses_and_says(actual, says):
    problem = spec_mismatch("input", MANIFEST, actual)
    assert problem is not None
    assert says in problem


def test_an_unquantized_manifest_spec_does_not_compare_quantization():
    plain = MANIFEST.model_copy(update={"scale": 0.0, "zero_point": 0})
    assert spec_mismatch("input", plain, MANIFEST) is None
