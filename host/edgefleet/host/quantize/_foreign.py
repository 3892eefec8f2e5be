"""Describe a ``.tflite`` made by another tool, so that edgefleet can sign and push it.

``edgefleet quantize`` embeds a :class:`ModelInfo` (name, mode, labels, preprocessing, tensor
specs) in every model it writes; the device needs it to turn an image into the input and to
name the output. A model exported elsewhere lacks it. :func:`describe_foreign` builds it from
what the flatbuffer says (tensor shapes, types and quantization) and what only the user knows:
the class names and how pixels map to the model's input,

    model input = (pixel - input_zero_point) * input_scale,   pixel in 0-255,

which must be one of the three mappings the device's preprocessing performs.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgefleet.host.errors import QuantizationError
from edgefleet.host.quantize._modelinfo import describe, embed_model_info
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.errors import EdgefleetError
from edgefleet.shared.spec import PreprocessSpec
from edgefleet.shared.tflite_model import read_flat_model, read_model_info

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from edgefleet.shared.tflite_model import Subgraph

Scale = Literal["unit", "minus_one_one", "raw"]
# (input_scale, input_zero_point) of each mapping the device's preprocessing performs.
INPUT_MAPPINGS: dict[Scale, tuple[float, float]] = {
    "unit": (1.0 / 255.0, 0.0),
    "minus_one_one": (1.0 / 127.5, 127.5),
    "raw": (1.0, 0.0),
}
_RANGES = {"unit": "[0, 1]", "minus_one_one": "[-1, 1]", "raw": "[0, 255]"}
_TOLERANCE = 0.01  # relative: 1/128 with 128 (common in exported models) is [-1, 1] too
_CHANNELS = (1, 3)
_NAME_MAX = 64


def input_mapping(input_scale: float, input_zero_point: float) -> Scale:
    """The preprocess scale whose pixel -> input mapping is ``(pixel - zero_point) * scale``.

    Raises:
        QuantizationError: a mapping the device's preprocessing cannot perform.
    """
    for name, (scale, zero) in INPUT_MAPPINGS.items():
        if abs(input_scale - scale) <= _TOLERANCE * scale and abs(input_zero_point - zero) <= (
            _TOLERANCE * 255.0
        ):
            return name
    low = (0.0 - input_zero_point) * input_scale
    high = (255.0 - input_zero_point) * input_scale
    choices = "; ".join(
        f"{_RANGES[n]}: --input-scale {s:.8g} --input-zero-point {z:g}"
        for n, (s, z) in INPUT_MAPPINGS.items()
    )
    raise QuantizationError(
        f"--input-scale {input_scale:g} --input-zero-point {input_zero_point:g} map pixels "
        f"0-255 to [{low:g}, {high:g}], which the device's preprocessing cannot produce; "
        f"it maps pixels to one of: {choices}"
    )


def read_labels(path: Path) -> list[str]:
    """Class names from a text file, one per line in output order (blank lines ignored).

    Raises:
        QuantizationError: unreadable, empty, or a name given twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantizationError(f"cannot read labels file {path}: {exc}") from exc
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise QuantizationError(f"labels file {path} is empty: give one class name per line")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise QuantizationError(f"labels file {path} names {twice} more than once")
    return labels


def read_sidecar(path: Path) -> tuple[list[str], float | None, float | None]:
    """Labels and input mapping from a JSON sidecar file.

    ``{"labels": ["cable", "pipe"], "input_scale": 0.00392157, "input_zero_point": 0}``;
    the two numbers are optional (the command-line options then give them).

    Raises:
        QuantizationError: unreadable, not JSON, unknown keys, or values of the wrong type.
    """
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantizationError(f"cannot read sidecar file {path}: {exc}") from exc
    keys = {"labels", "input_scale", "input_zero_point"}
    if not isinstance(body, dict) or not set(body) <= keys or "labels" not in body:
        raise QuantizationError(
            f"sidecar file {path} must be a JSON object with 'labels' (a list of class names) "
            "and optionally 'input_scale' and 'input_zero_point' (numbers), nothing else"
        )
    labels = body["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise QuantizationError(f"sidecar file {path}: 'labels' must be a list of class names")
    labels = [x.strip() for x in labels]
    if not all(labels):
        raise QuantizationError(f"sidecar file {path}: a label is empty")
    numbers = [body.get(k) for k in ("input_scale", "input_zero_point")]
    if any(_not_a_number(n) for n in numbers):
        raise QuantizationError(
            f"sidecar file {path}: input_scale and input_zero_point must be numbers"
        )
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise QuantizationError(f"sidecar file {path} names {twice} more than once")
    scale, zero = (None if n is None else float(n) for n in numbers)
    return labels, scale, zero


def _not_a_number(value: object) -> bool:
    return value is not None and (isinstance(value, bool) or not isinstance(value, int | float))


def model_name(stem: str) -> str:
    """A valid model id from a file name: other characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:_NAME_MAX].strip("._-")
    return name or "model"


def guess_mode(graph: Subgraph) -> str:
    """The quantization mode a graph looks like: int8, 16x8, float16, dynamic or float32."""
    inp = graph.tensors[graph.inputs[0]].dtype
    dtypes = {t.dtype for t in graph.tensors}
    if inp in {"int8", "uint8"}:
        return "int8"
    if inp == "int16" or "int16" in dtypes:
        return "16x8"
    if "float16" in dtypes:
        return "float16"
    return "dynamic" if "int8" in dtypes else "float32"


def describe_foreign(
    tflite: bytes,
    *,
    name: str,
    labels: Sequence[str],
    input_scale: float,
    input_zero_point: float,
) -> bytes:
    """``tflite`` with an edgefleet :class:`ModelInfo` embedded, ready for ``edgefleet push``.

    Raises:
        QuantizationError: not a TFLite model, already described by edgefleet, not a single
            ``(1, H, W, 1|3)`` image input, a class count that differs from ``labels``, or an
            input mapping the device cannot perform.
    """
    try:
        graph = read_flat_model(tflite).main
        existing = read_model_info(tflite)
    except EdgefleetError as exc:
        raise QuantizationError(f"not a usable TFLite model: {exc}") from exc
    if existing is not None:
        raise QuantizationError(
            f"this model already carries edgefleet metadata ({existing.name}, "
            f"{len(existing.labels)} labels): push it without --labels, --input-scale and "
            "--input-zero-point"
        )
    if len(graph.inputs) != 1:
        raise QuantizationError(f"the model has {len(graph.inputs)} inputs; edgefleet needs one")
    shape = graph.tensors[graph.inputs[0]].shape
    if len(shape) != 4 or shape[0] != 1 or shape[3] not in _CHANNELS or min(shape) < 1:  # noqa: PLR2004 - NHWC
        raise QuantizationError(
            f"the model's input has shape {shape}; edgefleet feeds one image as "
            "(1, height, width, 1 or 3 channels)"
        )
    spec = PreprocessSpec(
        height=shape[1],
        width=shape[2],
        channels=1 if shape[3] == 1 else 3,
        scale=input_mapping(input_scale, input_zero_point),
    )
    info = describe(
        tflite, name=model_name(name), mode=guess_mode(graph), labels=labels, preprocess=spec
    )
    return embed_model_info(tflite, info)


@contextlib.contextmanager
def described_copy(
    path: Path,
    *,
    labels: Path | None,
    input_scale: float | None,
    input_zero_point: float | None,
) -> Iterator[Path]:
    """A described copy of the foreign model ``path`` in a temporary folder, while in use.

    ``labels`` is a text file (one class name per line) or a JSON sidecar (see
    :func:`read_sidecar`), whose numbers the two options override. The user's file is left
    as it is; the copy (same file name) is removed afterwards.

    Raises:
        QuantizationError: an option missing, an unreadable model, or what
            :func:`describe_foreign` refuses.
    """
    names: list[str] | None = None
    if labels is not None and labels.suffix.lower() == ".json":
        names, scale, zero = read_sidecar(labels)
        input_scale = scale if input_scale is None else input_scale
        input_zero_point = zero if input_zero_point is None else input_zero_point
    given = {
        "--labels": labels,
        "--input-scale": input_scale,
        "--input-zero-point": input_zero_point,
    }
    missing = [flag for flag, value in given.items() if value is None]
    if missing or labels is None or input_scale is None or input_zero_point is None:
        raise QuantizationError(
            f"a model made by another tool needs --labels, --input-scale and --input-zero-point "
            f"together; missing {', '.join(missing)}. E.g. --labels labels.txt --input-scale "
            f"{INPUT_MAPPINGS['unit'][0]:.8g} --input-zero-point 0 for inputs in [0, 1] "
            "(or a JSON sidecar --labels model.json holding labels, input_scale and "
            "input_zero_point)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QuantizationError(f"cannot read model {path}: {exc.strerror or exc}") from exc
    described = describe_foreign(
        data,
        name=path.stem,
        labels=names if names is not None else read_labels(labels),
        input_scale=input_scale,
        input_zero_point=input_zero_point,
    )
    with tempfile.TemporaryDirectory(prefix="edgefleet-foreign-") as tmp:
        copy = Path(tmp) / path.name
        write_atomic(copy, described)
        yield copy
