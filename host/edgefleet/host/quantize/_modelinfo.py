"""Make a ``.tflite`` self-describing: build its ModelInfo and embed it as TFLite metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import flatbuffers  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from ai_edge_litert import schema_py_generated as schema

from edgefleet.host.errors import QuantizationError
from edgefleet.shared.spec import DType, ModelInfo, PreprocessSpec, TensorSpec
from edgefleet.shared.tflite_model import (
    FILE_IDENTIFIER,
    MODEL_INFO_KEY,
    Tensor,
    read_flat_model,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

_BUFFER_ALIGNMENT = 16
_SPEC_DTYPES = frozenset({"float32", "float16", "int8", "uint8", "int16", "int32", "int64"})


def tensor_spec(tensor: Tensor) -> TensorSpec:
    """The shared :class:`TensorSpec` of a tensor read from the flatbuffer.

    Raises:
        QuantizationError: the tensor is per-channel quantized or has an unsupported type
            (model inputs and outputs must be per-tensor).
    """
    if tensor.dtype not in _SPEC_DTYPES:
        raise QuantizationError(f"tensor {tensor.name!r} has unsupported type {tensor.dtype}")
    scale, zero_point = 0.0, 0
    if tensor.quantization is not None:
        if len(tensor.quantization.scale) != 1:
            raise QuantizationError(f"model input/output {tensor.name!r} is per-channel")
        scale = tensor.quantization.scale[0]
        zero_point = tensor.quantization.zero_point[0] if tensor.quantization.zero_point else 0
    return TensorSpec(
        name=tensor.name,
        shape=tensor.shape,
        dtype=cast("DType", tensor.dtype),
        scale=scale,
        zero_point=zero_point,
    )


def describe(
    tflite: bytes,
    *,
    name: str,
    mode: str,
    labels: Sequence[str],
    preprocess: PreprocessSpec,
) -> ModelInfo:
    """Build the :class:`ModelInfo` of a single-input, single-output classifier.

    Raises:
        QuantizationError: the model does not have exactly one input and one output.
    """
    graph = read_flat_model(tflite).main
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QuantizationError(
            f"edgefleet handles single-input, single-output classifiers; this model has "
            f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs"
        )
    output = tensor_spec(graph.tensors[graph.outputs[0]])
    if output.shape[-1] != len(labels):
        raise QuantizationError(
            f"the model outputs {output.shape[-1]} classes but {len(labels)} labels were given"
        )
    return ModelInfo(
        name=name,
        mode=mode,
        labels=tuple(labels),
        preprocess=preprocess,
        input=tensor_spec(graph.tensors[graph.inputs[0]]),
        output=output,
    )


def embed_model_info(tflite: bytes, info: ModelInfo) -> bytes:
    """Return ``tflite`` with ``info`` stored as metadata :data:`MODEL_INFO_KEY`.

    An existing entry of that name is replaced; other metadata (the converter's
    ``min_runtime_version`` and conversion metadata) is kept.
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    payload = np.frombuffer(info.model_dump_json().encode(), dtype=np.uint8)
    existing = [m for m in (model.metadata or []) if _decode(m.name) == MODEL_INFO_KEY]
    if existing:  # reuse its buffer, so that re-embedding does not grow the file
        model.buffers[existing[0].buffer].data = payload
    else:
        buffer = schema.BufferT()
        buffer.data = payload
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = MODEL_INFO_KEY
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    builder = _aligned_builder_class(flatbuffers.Builder)(len(tflite) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _decode(name: str | bytes | None) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")


def _aligned_builder_class(base: type[Any]) -> type[Any]:
    """A flatbuffers Builder that starts byte vectors on 16-byte boundaries.

    The TFLite converter aligns every weight buffer to 16 bytes so kernels can map constant
    tensors in place; the stock builder would align byte vectors to 1.
    """

    class AlignedBuilder(base):  # type: ignore[misc]
        def CreateNumpyVector(self, x: npt.NDArray[Any]) -> int:  # noqa: N802 - flatbuffers API
            if x.dtype != np.uint8 or x.ndim != 1:
                return int(super().CreateNumpyVector(x))
            self.StartVector(1, x.size, _BUFFER_ALIGNMENT)
            payload = x.tobytes()
            self.head -= len(payload)
            self.Bytes[self.head : self.head + len(payload)] = payload
            self.vectorNumElems = x.size
            return int(self.EndVector())

    return AlignedBuilder
