"""Keras model loading and the TFLite conversions: float32, float16, dynamic, int8, 16x8, QAT."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from edgefleet.host.errors import ModelLoadError, QuantizationError
from edgefleet.shared.tflite_model import read_flat_model

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy.typing as npt

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODES = ("float32", "float16", "dynamic", "int8", "16x8", "qat")
MODEL_SUFFIXES = (".keras", ".h5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Tensors an integer-only op may carry besides int8: int32 biases and shape operands.
_INT8_ALLOWED = frozenset({"int8", "int32"})
_OP_PATTERNS = (r"'tfl\.(\w+)'", r"\btf\.(\w+)\b", r"op: '?(\w+)'?", r"operation (\w+)")


def load_model(path: Path) -> Any:  # noqa: ANN401 - keras models are untyped
    """Load a ``.keras``/``.h5`` file (Keras 3, falling back to Keras 2) or a SavedModel dir.

    Raises:
        ModelLoadError: the path is missing or does not hold a Keras model.
    """
    if not path.exists():
        raise ModelLoadError(f"model {path} does not exist")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelLoadError(f"{path} is a folder without saved_model.pb: not a SavedModel")
        return _load_with("tf_keras", path)
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelLoadError(
            f"{path}: unsupported model file {path.suffix!r}; give a .keras or .h5 file "
            "or a SavedModel folder"
        )
    _check_container(path)
    try:
        return _load_with("keras", path)
    except ModelLoadError:
        if path.suffix.lower() != ".h5":
            raise
        return _load_with("tf_keras", path)


def _check_container(path: Path) -> None:
    """Refuse a model file that is unreadable or not the container its suffix says.

    Keras reports a corrupt ``.keras`` file as "File not found", which sends users looking
    for a path problem; say what is wrong instead.

    Raises:
        ModelLoadError: unreadable, a ``.keras`` that is not a zip archive, or an ``.h5``
            that is not HDF5.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_HDF5_SIGNATURE))
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {path}: {exc.strerror or exc}") from exc
    redo = (
        "it is truncated or corrupt (an interrupted copy or download?) or another format "
        "renamed; copy it again, or save the model again with model.save"
    )
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path} ({path.stat().st_size} bytes) is not a valid .keras file: a .keras model "
            f"is a zip archive and this file is not one; {redo}('{path.stem}.keras')"
        )
    if path.suffix.lower() == ".h5" and head != _HDF5_SIGNATURE:
        raise ModelLoadError(
            f"{path} ({path.stat().st_size} bytes) is not a valid .h5 file: it does not start "
            f"with the HDF5 signature; {redo}('{path.stem}.h5')"
        )


def _load_with(module_name: str, path: Path) -> Any:  # noqa: ANN401
    module = importlib.import_module(module_name)
    try:
        model = module.models.load_model(str(path), compile=False)
    except Exception as exc:  # Keras raises anything from ValueError to OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} is not a loadable Keras model: {first}") from exc
    if not hasattr(model, "inputs") or not model.inputs:
        raise ModelLoadError(f"{path} loaded, but is not a Keras model with known inputs")
    return model


def is_keras2(model: Any) -> bool:  # noqa: ANN401
    """True for a tf-keras (Keras 2) model, False for Keras 3."""
    return isinstance(model, tf_keras.Model)


def static_input_shape(model: Any) -> tuple[int, int, int]:  # noqa: ANN401
    """The model's single input as static ``(H, W, C)`` (batch becomes 1).

    Raises:
        ModelLoadError: several inputs, not an image input, or an unknown dimension.
    """
    if len(model.inputs) != 1:
        raise ModelLoadError(f"the model has {len(model.inputs)} inputs; edgefleet needs one")
    dims = tuple(model.inputs[0].shape)[1:]
    if len(dims) != 3 or any(d is None for d in dims):  # noqa: PLR2004 - H, W, C
        raise ModelLoadError(
            f"the model's input shape {tuple(model.inputs[0].shape)} cannot be made static: "
            "edgefleet needs (batch, height, width, channels) with known height, width, "
            "channels; rebuild the model with keras.Input((H, W, C))"
        )
    return int(dims[0]), int(dims[1]), int(dims[2])


def _batch_one(model: Any, shape: tuple[int, int, int]) -> Any:  # noqa: ANN401
    # A batch-1 input makes every shape static, so no SHAPE/PACK ops end up in the graph
    # (the Edge TPU needs static shapes, and the device runs one image at a time).

    module = importlib.import_module("tf_keras" if is_keras2(model) else "keras")
    inp = module.Input(shape, batch_size=1)
    return module.Model(inp, model(inp))


def convert(
    model: Any,  # noqa: ANN401
    mode: str,
    *,
    representative: npt.NDArray[np.float32] | None = None,
    per_channel: bool = True,
) -> bytes:
    """Convert ``model`` to a TFLite flatbuffer in ``mode`` (QAT models convert as ``qat``).

    Args:
        model: a Keras 3 or tf-keras model with one image input.
        mode: one of :data:`MODES`.
        representative: preprocessed calibration inputs ``(n, H, W, C)`` (int8, 16x8, qat).
        per_channel: False quantizes conv/dense weights per tensor (for benchmarks).

    Raises:
        QuantizationError: the converter failed, or an int8 model kept float ops.
    """
    static = _batch_one(model, static_input_shape(model))
    converter = tf.lite.TFLiteConverter.from_keras_model(static)
    _configure(converter, mode, tf, _representative(representative, mode))
    # A private converter flag, the only switch TF offers for per-tensor weights.
    converter._experimental_disable_per_channel = not per_channel  # noqa: SLF001
    try:
        # Keras' export prints "Saved artifact at ..." for every conversion; keep it out of
        # the CLI's output (the table is what the user reads).
        with contextlib.redirect_stdout(io.StringIO()):
            data = bytes(converter.convert())
    except Exception as exc:  # the converter raises many unrelated types
        raise QuantizationError(_converter_message(mode, exc)) from exc
    if mode in {"int8", "qat"}:
        check_full_int8(data)
    return data


def _representative(
    x: npt.NDArray[np.float32] | None, mode: str
) -> Callable[[], Iterator[list[npt.NDArray[np.float32]]]] | None:
    if mode not in {"int8", "16x8", "qat"}:
        return None
    if x is None or len(x) == 0:
        raise QuantizationError(f"mode {mode} needs calibration data (--calibration)")
    return lambda: ([x[i : i + 1]] for i in range(len(x)))


def _configure(converter: Any, mode: str, tf: Any, rep: Any) -> None:  # noqa: ANN401
    if mode == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode in {"int8", "qat"}:
        converter.representative_dataset = rep
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif mode == "16x8":
        converter.representative_dataset = rep
        ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        converter.target_spec.supported_ops = [ops]
    elif mode != "dynamic":
        raise QuantizationError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")


def _converter_message(mode: str, exc: Exception) -> str:
    text = str(exc)
    ops = sorted({m for p in _OP_PATTERNS for m in re.findall(p, text)})
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()][:3]
    detail = "; ".join(lines) or (text.strip().splitlines() or [type(exc).__name__])[0]
    hint = f" (ops involved: {', '.join(ops)})" if ops else ""
    return f"TFLite conversion to {mode} failed{hint}: {detail}"


def check_full_int8(tflite: bytes) -> None:
    """Fail when any operator of a full-int8 model reads or writes a non-integer tensor.

    Raises:
        QuantizationError: naming each op (and tensor) that stayed in float.
    """
    graph = read_flat_model(tflite).main
    bad: list[str] = []
    for number, op in enumerate(graph.operators):
        for index in (*op.inputs, *op.outputs):
            tensor = graph.tensors[index] if index >= 0 else None
            if tensor is not None and tensor.dtype not in _INT8_ALLOWED:
                bad.append(f"{op.name} (op #{number}) tensor {tensor.name!r} is {tensor.dtype}")
    if bad:
        raise QuantizationError(
            "full-int8 conversion left float ops in the model: " + "; ".join(bad[:8])
        )


def keras2_clone(model: Any) -> Any:  # noqa: ANN401
    """Rebuild a Keras 3 Sequential model in tf-keras (Keras 2) with the same weights.

    tensorflow-model-optimization's QAT only understands Keras 2 models.

    Raises:
        QuantizationError: the model is not Sequential, or a layer has no tf-keras twin.
    """
    if is_keras2(model):
        return model

    if model.__class__.__name__ != "Sequential":
        raise QuantizationError(
            f"QAT needs the model rebuilt in Keras 2 (tf-keras), and edgefleet rebuilds only "
            f"Sequential models; this is a {model.__class__.__name__}. Save it with tf_keras "
            "(a SavedModel or .h5) or use --mode int8"
        )
    layers = [tf_keras.Input(static_input_shape(model))]
    layers.extend(_keras2_layer(layer, tf_keras) for layer in model.layers)
    clone = tf_keras.Sequential(layers, name=model.name)
    clone.set_weights(model.get_weights())
    return clone


def _keras2_layer(layer: Any, tf_keras: Any) -> Any:  # noqa: ANN401
    name = layer.__class__.__name__
    cls = getattr(tf_keras.layers, name, None)
    if cls is None:
        raise QuantizationError(f"QAT: layer {layer.name!r} ({name}) has no tf-keras equivalent")
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "dtype"}
    # Initializers are dropped (the weights are copied); Keras 3-only options too.
    config = {
        k: v
        for k, v in layer.get_config().items()
        if k in accepted and not k.endswith("_initializer")
    }
    if isinstance(config.get("dtype"), dict):
        config["dtype"] = config["dtype"].get("config", {}).get("name", "float32")
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise QuantizationError(
            f"QAT: cannot rebuild layer {layer.name!r} ({name}): {exc}"
        ) from exc


def qat_fine_tune(
    model: Any,  # noqa: ANN401
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int,
    batch_size: int = 250,
) -> Any:  # noqa: ANN401
    """Wrap ``model`` with fake-quant nodes (tfmot) and fine-tune it on ``x``, ``y``.

    Raises:
        QuantizationError: the model cannot be cloned into Keras 2 or quantized by tfmot.
    """
    keras2 = keras2_clone(model)
    try:
        qat = tfmot.quantization.keras.quantize_model(keras2)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise QuantizationError(f"QAT: tfmot cannot quantize this model: {exc}") from exc
    qat.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    qat.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    return qat
