"""Small real TFLite models shared by the host unit tests (converted once per session)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _convert(*, int8: bool, float_tail: bool = False) -> bytes:
    import keras  # noqa: PLC0415 - TensorFlow loads only when a fixture needs it
    import tensorflow as tf  # noqa: PLC0415

    rng = np.random.default_rng(0)
    layers = [
        keras.Input((8, 8, 1), batch_size=1),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: (
            [rng.random((1, 8, 8, 1), dtype=np.float32)] for _ in range(16)
        )
        if not float_tail:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    return bytes(conv.convert())


@pytest.fixture(scope="session")
def tiny_int8() -> bytes:
    """A real full-int8 TFLite model: int8 input/output, every op quantized."""
    return _convert(int8=True)


@pytest.fixture(scope="session")
def tiny_float() -> bytes:
    """The same model as float32 TFLite."""
    return _convert(int8=False)


@pytest.fixture(scope="session")
def tiny_mixed() -> bytes:
    """Integer ops inside, but float input/output with QUANTIZE/DEQUANTIZE at the edges."""
    return _convert(int8=True, float_tail=True)
