import numpy as np
import pytest

from edgefleet.shared.errors import InputError
from edgefleet.shared.preprocess import dequantize_output, preprocess, to_input_tensor
from edgefleet.shared.spec import PreprocessSpec, TensorSpec

SPEC = PreprocessSpec(height=28, width=28)


def test_unit_scale_maps_255_to_one():
    img = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    out = preprocess(img, PreprocessSpec(height=2, width=2))
    assert out.shape == (2, 2, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0], [[0, 1], [0.2, 0.4]], atol=1e-6)


def test_scales_and_invert():
    img = np.array([[0, 255]], dtype=np.uint8)
    m11 = preprocess(img, PreprocessSpec(height=1, width=2, scale="minus_one_one"))
    raw = preprocess(img, PreprocessSpec(height=1, width=2, scale="raw", invert=True))
    np.testing.assert_allclose(m11[0, :, 0], [-1, 1])
    np.testing.assert_allclose(raw[0, :, 0], [255, 0])


def test_rgb_to_gray_and_resize():
    rgb = np.zeros((56, 56, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green
    out = preprocess(rgb, SPEC)
    assert out.shape == (28, 28, 1)
    np.testing.assert_allclose(out, 0.587, atol=1e-5)


def test_gray_to_rgb_replicates():
    out = preprocess(np.full((28, 28), 128, np.uint8), SPEC.model_copy(update={"channels": 3}))
    assert out.shape == (28, 28, 3)
    np.testing.assert_allclose(out, 128 / 255, atol=1e-6)


@pytest.mark.parametrize(
    "bad", [np.zeros((0, 5)), np.zeros((2, 3, 4, 5)), np.array([[np.nan, 1.0]])]
)
def test_bad_arrays_are_rejected(bad):
    with pytest.raises(InputError):
        preprocess(bad, SPEC)


def test_int8_quantization_clips_and_rounds():
    spec = TensorSpec(shape=(1, 1, 3, 1), dtype="int8", scale=1 / 255, zero_point=-128)
    x = np.array([[[0.0], [0.4], [2.0]]], dtype=np.float32)
    q = to_input_tensor(x, spec)
    assert q.dtype == np.int8
    assert q.shape == (1, 1, 3, 1)
    assert q.ravel().tolist() == [-128, -26, 127]


def test_shape_mismatch_is_clear():
    spec = TensorSpec(shape=(1, 28, 28, 1), dtype="float32")
    with pytest.raises(InputError, match="expects"):
        to_input_tensor(np.zeros((14, 14, 1), np.float32), spec)


def test_dequantize_output():
    spec = TensorSpec(shape=(1, 3), dtype="int8", scale=0.5, zero_point=-2)
    out = dequantize_output(np.array([[-2, 0, 2]], dtype=np.int8), spec)
    np.testing.assert_allclose(out, [[0, 1, 2]])
    plain = TensorSpec(shape=(1, 3), dtype="float32")
    assert dequantize_output(np.ones((1, 3)), plain).dtype == np.float32
