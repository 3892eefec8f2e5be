"""Quantize a Keras model every TFLite way, measure what each mode costs, check the Edge TPU.

- ``_run``: ``quantize`` (every mode of one model on the user's data) and its ``Report``;
- ``_convert``: Keras loading and the TFLite conversions (float16, dynamic, int8, 16x8, QAT);
- ``_measure``: accuracy and latency on the LiteRT interpreter;
- ``_modelinfo``: the self-describing model info embedded in each ``.tflite``;
- ``_edgetpu``: the Edge TPU pre-check and the ``edgetpu_compiler`` hook;
- ``_report``: ``report.json``, the printed table and ``report.png``.

TensorFlow is imported inside the functions that need it, never at import time.
"""

from __future__ import annotations

from edgefleet.host.quantize._edgetpu import CompileResult, Precheck, compile_model, precheck
from edgefleet.host.quantize._modelinfo import describe, embed_model_info
from edgefleet.host.quantize._run import (
    QUANTIZED_MODES,
    Inputs,
    ModeResult,
    Report,
    load_inputs,
    quantize,
    resolve_modes,
)

__all__ = [
    "QUANTIZED_MODES",
    "CompileResult",
    "Inputs",
    "ModeResult",
    "Precheck",
    "Report",
    "compile_model",
    "describe",
    "embed_model_info",
    "load_inputs",
    "precheck",
    "quantize",
    "resolve_modes",
]
