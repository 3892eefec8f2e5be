"""A minimal, dependency-free reader of TFLite flatbuffers: ops, tensors, metadata, ModelInfo.

The device never imports TensorFlow, yet it must read the :class:`ModelInfo` that the host
embedded in a ``.tflite`` (a ``metadata`` entry named :data:`MODEL_INFO_KEY`), and the host's
Edge TPU pre-check needs operator codes and tensor types without running a converter. Both
only read a handful of tables from the schema (tensorflow/compiler/mlir/lite/schema/
schema.fbs): Model, OperatorCode, SubGraph, Tensor, QuantizationParameters, Operator, Buffer,
Metadata. Every offset is bounds-checked, so a truncated or crafted file raises
:class:`~edgefleet.shared.errors.ModelFormatError` instead of reading garbage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pydantic import ValidationError

from edgefleet.shared.errors import ModelFormatError
from edgefleet.shared.spec import ModelInfo

MODEL_INFO_KEY = "edgefleet.model_info"
FILE_IDENTIFIER = b"TFL3"

# TensorType enum of schema.fbs, by value.
TENSOR_TYPES = (
    "float32", "float16", "int32", "uint8", "int64", "string", "bool", "int16",
    "complex64", "int8", "float64", "complex128", "uint64", "resource", "variant",
    "uint32", "uint16", "int4", "bfloat16", "int2", "uint4",
)  # fmt: skip

# BuiltinOperator enum of schema.fbs, by value (0-161; StableHLO codes above are not listed).
BUILTIN_OPS = (
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE",
    "DEQUANTIZE", "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP",
    "L2_NORMALIZATION", "L2_POOL_2D", "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC",
    "LSH_PROJECTION", "LSTM", "MAX_POOL_2D", "MUL", "RELU", "RELU_N1_TO_1", "RELU6", "RESHAPE",
    "RESIZE_BILINEAR", "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH", "CONCAT_EMBEDDINGS",
    "SKIP_GRAM", "CALL", "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND",
    "TRANSPOSE", "MEAN", "SUB", "DIV", "SQUEEZE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE",
    "BIDIRECTIONAL_SEQUENCE_RNN", "EXP", "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE",
    "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU", "MAXIMUM", "ARG_MAX", "MINIMUM", "LESS",
    "NEG", "PADV2", "GREATER", "GREATER_EQUAL", "LESS_EQUAL", "SELECT", "SLICE", "SIN",
    "TRANSPOSE_CONV", "SPARSE_TO_DENSE", "TILE", "EXPAND_DIMS", "EQUAL", "NOT_EQUAL", "LOG",
    "SUM", "SQRT", "RSQRT", "SHAPE", "POW", "ARG_MIN", "FAKE_QUANT", "REDUCE_PROD", "REDUCE_MAX",
    "PACK", "LOGICAL_OR", "ONE_HOT", "LOGICAL_AND", "LOGICAL_NOT", "UNPACK", "REDUCE_MIN",
    "FLOOR_DIV", "REDUCE_ANY", "SQUARE", "ZEROS_LIKE", "FILL", "FLOOR_MOD", "RANGE",
    "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU", "SQUARED_DIFFERENCE", "MIRROR_PAD", "ABS", "SPLIT_V",
    "UNIQUE", "CEIL", "REVERSE_V2", "ADD_N", "GATHER_ND", "COS", "WHERE", "RANK", "ELU",
    "REVERSE_SEQUENCE", "MATRIX_DIAG", "QUANTIZE", "MATRIX_SET_DIAG", "ROUND", "HARD_SWISH", "IF",
    "WHILE", "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "SCATTER_ND", "SELECT_V2",
    "DENSIFY", "SEGMENT_SUM", "BATCH_MATMUL", "PLACEHOLDER_FOR_GREATER_OP_CODES", "CUMSUM",
    "CALL_ONCE", "BROADCAST_TO", "RFFT2D", "CONV_3D", "IMAG", "REAL", "COMPLEX_ABS", "HASHTABLE",
    "HASHTABLE_FIND", "HASHTABLE_IMPORT", "HASHTABLE_SIZE", "REDUCE_ALL", "CONV_3D_TRANSPOSE",
    "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "BROADCAST_ARGS", "RANDOM_STANDARD_NORMAL",
    "BUCKETIZE", "RANDOM_UNIFORM", "MULTINOMIAL", "GELU", "DYNAMIC_UPDATE_SLICE", "RELU_0_TO_1",
    "UNSORTED_SEGMENT_PROD", "UNSORTED_SEGMENT_MAX", "UNSORTED_SEGMENT_SUM", "ATAN2",
    "UNSORTED_SEGMENT_MIN", "SIGN", "BITCAST", "BITWISE_XOR", "RIGHT_SHIFT",
)  # fmt: skip


@dataclass(frozen=True)
class Quantization:
    """Per-tensor or per-channel affine quantization: ``real = scale * (q - zero_point)``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int = 0


@dataclass(frozen=True)
class Tensor:
    """One tensor of a subgraph."""

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    quantization: Quantization | None
    buffer: int

    @property
    def is_static(self) -> bool:
        """True when no dimension is dynamic (-1 in the shape signature)."""
        dims = self.shape_signature if self.shape_signature is not None else self.shape
        return all(d >= 0 for d in dims)


@dataclass(frozen=True)
class Operator:
    """One operator: its builtin name (or CUSTOM), and tensor indices (-1 = optional absent)."""

    name: str
    custom_code: str | None
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Subgraph:
    """A subgraph: tensors, graph inputs/outputs (tensor indices) and operators in order."""

    name: str
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


@dataclass(frozen=True)
class FlatModel:
    """What edgefleet reads from a ``.tflite``: schema version, subgraphs, named metadata."""

    version: int
    description: str
    subgraphs: tuple[Subgraph, ...]
    metadata: dict[str, bytes] = field(default_factory=dict)

    @property
    def main(self) -> Subgraph:
        """The first subgraph, the one the interpreter runs."""
        return self.subgraphs[0]


class _Reader:
    """Bounds-checked access to flatbuffer tables, vectors and strings."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise ModelFormatError(
                f"TFLite flatbuffer is truncated or corrupt (offset {pos} outside "
                f"{len(self.data)} bytes); re-export the model"
            )
        value: int = struct.unpack_from(fmt, self.data, pos)[0]
        return value

    def _float(self, pos: int) -> float:
        self._unpack("<I", pos)  # bounds check
        value: float = struct.unpack_from("<f", self.data, pos)[0]
        return value

    def root(self) -> int:
        return self._unpack("<I", 0)

    def _field(self, table: int, slot: int) -> int:
        """Absolute position of field ``slot`` in ``table``, or 0 when absent."""
        vtable = table - self._unpack("<i", table)
        vsize = self._unpack("<H", vtable)
        entry = 4 + 2 * slot
        if entry + 2 > vsize:
            return 0
        off = self._unpack("<H", vtable + entry)
        return table + off if off else 0

    def scalar(self, table: int, slot: int, fmt: str, default: int = 0) -> int:
        pos = self._field(table, slot)
        return self._unpack(fmt, pos) if pos else default

    def ref(self, table: int, slot: int) -> int:
        """Position of the table/vector/string that field ``slot`` points to, or 0."""
        pos = self._field(table, slot)
        return pos + self._unpack("<I", pos) if pos else 0

    def vector(self, table: int, slot: int) -> tuple[int, int]:
        """(position of the first element, length) of a vector field; (0, 0) if absent."""
        vec = self.ref(table, slot)
        if not vec:
            return 0, 0
        length = self._unpack("<I", vec)
        if vec + 4 + length > len(self.data):
            raise ModelFormatError("TFLite flatbuffer vector runs past the end of the file")
        return vec + 4, length

    def ints(self, table: int, slot: int, fmt: str = "<i") -> tuple[int, ...]:
        start, length = self.vector(table, slot)
        size = struct.calcsize(fmt)
        return tuple(self._unpack(fmt, start + i * size) for i in range(length))

    def floats(self, table: int, slot: int) -> tuple[float, ...]:
        start, length = self.vector(table, slot)
        return tuple(self._float(start + 4 * i) for i in range(length))

    def tables(self, table: int, slot: int) -> tuple[int, ...]:
        start, length = self.vector(table, slot)
        return tuple(start + 4 * i + self._unpack("<I", start + 4 * i) for i in range(length))

    def string(self, table: int, slot: int) -> str:
        start, length = self.vector(table, slot)
        return self.data[start : start + length].decode("utf-8", errors="replace")

    def blob(self, table: int, slot: int) -> bytes:
        start, length = self.vector(table, slot)
        return self.data[start : start + length]


def _quantization(r: _Reader, t: int) -> Quantization | None:
    q = r.ref(t, 4)
    if not q:
        return None
    scale = r.floats(q, 2)
    if not scale:
        return None
    zero_point = r.ints(q, 3, "<q")
    return Quantization(scale, zero_point, r.scalar(q, 6, "<i"))


def _tensor(r: _Reader, t: int, index: int) -> Tensor:
    type_code = r.scalar(t, 1, "<b")
    dtype = TENSOR_TYPES[type_code] if 0 <= type_code < len(TENSOR_TYPES) else f"type{type_code}"
    signature = r.ints(t, 7) if r.ref(t, 7) else None
    return Tensor(
        index=index,
        name=r.string(t, 3),
        dtype=dtype,
        shape=r.ints(t, 0),
        shape_signature=signature,
        quantization=_quantization(r, t),
        buffer=r.scalar(t, 2, "<I"),
    )


def _opcode(r: _Reader, t: int) -> tuple[str, str | None, int]:
    # Codes above 127 live in builtin_code (field 3); old files only have the deprecated byte.
    code = max(r.scalar(t, 0, "<b"), r.scalar(t, 3, "<i"))
    name = BUILTIN_OPS[code] if 0 <= code < len(BUILTIN_OPS) else f"BUILTIN_{code}"
    custom = r.string(t, 1) if r.ref(t, 1) else None
    return name, custom, r.scalar(t, 2, "<i", default=1)


def _subgraph(r: _Reader, t: int, opcodes: list[tuple[str, str | None, int]]) -> Subgraph:
    tensors = tuple(_tensor(r, p, i) for i, p in enumerate(r.tables(t, 0)))
    operators = []
    for p in r.tables(t, 3):
        index = r.scalar(p, 0, "<I")
        if index >= len(opcodes):
            raise ModelFormatError(f"operator refers to opcode {index} of {len(opcodes)}")
        name, custom, version = opcodes[index]
        operators.append(Operator(name, custom, version, r.ints(p, 1), r.ints(p, 2)))
    return Subgraph(r.string(t, 4), tensors, r.ints(t, 1), r.ints(t, 2), tuple(operators))


def _buffer_bytes(r: _Reader, t: int) -> bytes:
    offset = r.scalar(t, 1, "<Q")
    if offset:  # models over 2 GB keep buffers after the flatbuffer
        size = r.scalar(t, 2, "<Q")
        if offset + size > len(r.data):
            raise ModelFormatError("TFLite buffer points past the end of the file")
        return r.data[offset : offset + size]
    return r.blob(t, 0)


def _metadata(r: _Reader, model: int) -> dict[str, bytes]:
    buffers = r.tables(model, 4)
    result: dict[str, bytes] = {}
    for entry in r.tables(model, 6):
        index = r.scalar(entry, 1, "<I")
        if index >= len(buffers):
            raise ModelFormatError(f"metadata refers to buffer {index} of {len(buffers)}")
        result[r.string(entry, 0)] = _buffer_bytes(r, buffers[index])
    return result


def read_flat_model(data: bytes) -> FlatModel:
    """Parse the parts of a ``.tflite`` flatbuffer that edgefleet uses.

    Args:
        data: the whole ``.tflite`` file.

    Returns:
        Schema version, subgraphs (tensors, operators) and named metadata buffers.

    Raises:
        ModelFormatError: the bytes are not a TFLite flatbuffer, or are truncated.
    """
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:  # noqa: PLR2004 - header size
        raise ModelFormatError(
            "not a TFLite model (no 'TFL3' file identifier); give a .tflite written by "
            "the TFLite converter"
        )
    r = _Reader(bytes(data))
    model = r.root()
    opcodes = [_opcode(r, p) for p in r.tables(model, 1)]
    subgraphs = tuple(_subgraph(r, p, opcodes) for p in r.tables(model, 2))
    if not subgraphs:
        raise ModelFormatError("TFLite model has no subgraph")
    return FlatModel(
        version=r.scalar(model, 0, "<I"),
        description=r.string(model, 3),
        subgraphs=subgraphs,
        metadata=_metadata(r, model),
    )


def read_model_info(data: bytes) -> ModelInfo | None:
    """The :class:`ModelInfo` embedded by ``edgefleet quantize``, or None if there is none.

    Raises:
        ModelFormatError: the file is not a TFLite model, or the embedded info is invalid.
    """
    raw = read_flat_model(data).metadata.get(MODEL_INFO_KEY)
    if raw is None:
        return None
    try:
        return ModelInfo.model_validate_json(raw)
    except ValidationError as exc:
        raise ModelFormatError(f"embedded {MODEL_INFO_KEY} is invalid: {exc}") from exc
