"""Quantize a Keras model every TFLite way, measure what each mode costs, check the Edge TPU.

- ``_run``: ``quantize`` (every mode of one model on the user's data) and its ``Report``;
- ``_convert``: Keras loading and the TFLite conversions (float16, dynamic, int8, 16x8, QAT);
- ``_measure``: accuracy and latency on the LiteRT interpreter;
- ``_modelinfo``: the self-describing model info embedded in each ``.tflite``;
- ``_edgetpu``: the Edge TPU pre-check and the ``edgetpu_compiler`` hook;
- ``_report``: ``report.json``, the printed table and ``report.png``.

- ``_foreign``: describe a ``.tflite`` made by another tool, so that it can be pushed.

TensorFlow is imported only with ``_convert`` (and ``_run``, which uses it): the names of
``_run`` load on first use, so the model-info and Edge TPU helpers stay light (``edgefleet
push`` of a foreign model embeds its info without loading TensorFlow).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgefleet.host.quantize._edgetpu import CompileResult, Precheck, compile_model, precheck
from edgefleet.host.quantize._foreign import describe_foreign, described_copy, read_labels
from edgefleet.host.quantize._modelinfo import describe, embed_model_info

if TYPE_CHECKING:
    from edgefleet.host.quantize._run import (
        QUANTIZED_MODES,
        Inputs,
        ModeResult,
        Report,
        load_inputs,
        quantize,
        resolve_modes,
    )

_LAZY = frozenset(
    {
        "QUANTIZED_MODES",
        "Inputs",
        "ModeResult",
        "Report",
        "load_inputs",
        "quantize",
        "resolve_modes",
    }
)


def __getattr__(name: str) -> Any:  # noqa: ANN401 - PEP 562 module attribute
    if name in _LAZY:
        return getattr(importlib.import_module("edgefleet.host.quantize._run"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "QUANTIZED_MODES",
    "CompileResult",
    "Inputs",
    "ModeResult",
    "Precheck",
    "Report",
    "compile_model",
    "describe",
    "describe_foreign",
    "described_copy",
    "embed_model_info",
    "load_inputs",
    "precheck",
    "quantize",
    "read_labels",
    "resolve_modes",
]
