"""The radar set's ConvNet (batch normalisation after each convolution) as deployed: int8."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from edgefleet.host.quantize import _convert as convert
from edgefleet.host.quantize import _edgetpu as edgetpu
from edgefleet.host.training._models import build_gpr_convnet, build_radar_convnet

SHAPE = (64, 32, 4)


def _fitted(build) -> tuple[keras.Model, np.ndarray]:  # type: ignore[type-arg]
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, size=(32, *SHAPE)).astype(np.float32)
    model = build(SHAPE, 4)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, np.arange(32) % 4, epochs=2, verbose=0)  # moves the normalisation statistics
    return model, x


def test_the_normalisation_folds_into_the_convolutions_and_every_op_maps_to_the_edge_tpu():
    model, x = _fitted(build_radar_convnet)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    plain, _ = _fitted(build_gpr_convnet)
    blob = convert.convert(model, "int8", representative=x)
    check = edgetpu.precheck(blob)
    assert check.compatible, check
    ops = [op.name for op in check.ops]
    plain_ops = [
        op.name for op in edgetpu.precheck(convert.convert(plain, "int8", representative=x)).ops
    ]
    # The same graph as the model without normalisation: nothing left of it at run time.
    assert ops == plain_ops
    # Each channel: four normalisation weights (two learnt, two statistics) for one bias.
    assert model.count_params() - plain.count_params() == 3 * (32 + 64 + 128 + 128)


def _int8_outputs(blob: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = tf.lite.Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    o_scale, o_zero = out["quantization"]
    got = []
    for sample in x:
        q = np.clip(np.round(sample / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        got.append((interpreter.get_tensor(out["index"])[0].astype(np.float32) - o_zero) * o_scale)
    return np.array(got)


def _set_normalisation(model: keras.Model, rng: np.random.Generator | None) -> None:  # type: ignore[type-arg]
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            if rng is None:  # the identity
                layer.set_weights([np.ones(n), np.zeros(n), np.zeros(n), np.ones(n)])
            else:
                layer.set_weights(
                    [rng.uniform(0.5, 2, n), rng.uniform(-0.5, 0.5, n),
                     rng.uniform(-0.2, 0.2, n), rng.uniform(0.3, 3, n)]
                )  # fmt: skip


def test_the_int8_model_keeps_what_the_normalisation_does():
    model, x = _fitted(build_radar_convnet)
    _set_normalisation(model, np.random.default_rng(1))
    last = model.layers[-1]  # a confident head, so the outputs differ well beyond int8's step
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 30, bias])
    expected = model.predict(x, verbose=0)
    got = _int8_outputs(convert.convert(model, "int8", representative=x), x)

    without = keras.models.clone_model(model)
    without.set_weights(model.get_weights())
    _set_normalisation(without, None)
    # The normalisation matters to this model's outputs...
    assert np.abs(without.predict(x, verbose=0) - expected).max() > 0.1
    # ... and the int8 file, where it is folded into the convolutions, still does it.
    assert np.abs(got - expected).max() < 0.05
