"""Edge TPU: a compatibility pre-check from the flatbuffer, and the ``edgetpu_compiler`` hook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.host.errors import EdgeTPUError
from edgefleet.shared.tflite_model import Subgraph, read_flat_model

# Operations the Edge TPU runs, from Coral's "TensorFlow models on the Edge TPU",
# table "Supported operations": https://coral.ai/docs/edgetpu/models-intro/#supported-operations
# (spelled as TFLite builtin operator names).
EDGETPU_OPS = frozenset(
    {
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS", "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM",
        "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU",
        "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
        "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
        "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM",
        "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    }
)  # fmt: skip
_EIGHT_BIT = frozenset({"int8", "uint8"})
COMPILER_ENV = "EDGETPU_COMPILER"
COMPILER_NAME = "edgetpu_compiler"
INSTALL_HINT = (
    "edgetpu_compiler was not found (looked at $EDGETPU_COMPILER and PATH). It runs only on "
    "x86-64 Debian/Ubuntu: add Coral's apt repository (https://coral.ai/docs/edgetpu/compiler/:"
    " 'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' plus its key), "
    "then 'sudo apt-get install edgetpu-compiler'; or set EDGETPU_COMPILER to its path."
)
_MAPPED = "Mapped to Edge TPU"


@dataclass(frozen=True)
class OpVerdict:
    """One operator: where it would run and why."""

    index: int
    name: str
    edgetpu: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Precheck:
    """What the Edge TPU compiler would be expected to map, read from the flatbuffer alone."""

    model_problems: tuple[str, ...]
    ops: tuple[OpVerdict, ...]
    cpu_ops: tuple[str, ...] = field(default=())

    @property
    def compatible(self) -> bool:
        """True when every op is expected on the Edge TPU and the model itself qualifies."""
        return not self.model_problems and not self.cpu_ops

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the report."""
        return {"compatible": self.compatible, **asdict(self)}


def precheck(tflite: bytes) -> Precheck:
    """Check an int8 model against the Edge TPU's requirements.

    Requirements (same Coral page): 8-bit quantized tensors, static shapes, batch 1, and
    supported operations. The compiler partitions the graph once, so the first op it cannot
    map and every op after it run on the CPU; ``cpu_ops`` lists them as ``#index NAME``.
    """
    graph = read_flat_model(tflite).main
    verdicts = tuple(_verdict(graph, i) for i in range(len(graph.operators)))
    first = next((v.index for v in verdicts if not v.edgetpu), None)
    cpu = () if first is None else tuple(f"#{v.index} {v.name}" for v in verdicts[first:])
    return Precheck(model_problems=_model_problems(graph), ops=verdicts, cpu_ops=cpu)


def _model_problems(graph: Subgraph) -> tuple[str, ...]:
    problems = []
    for index in graph.inputs:
        tensor = graph.tensors[index]
        if not tensor.shape or tensor.shape[0] != 1:
            problems.append(f"input {tensor.name!r} has batch {tensor.shape[:1]}, need 1")
    dynamic = [t.name for t in graph.tensors if not t.is_static]
    if dynamic:
        problems.append(f"dynamic shapes in {len(dynamic)} tensors, e.g. {dynamic[0]!r}")
    return tuple(problems)


def _verdict(graph: Subgraph, index: int) -> OpVerdict:
    op = graph.operators[index]
    produced = {o for other in graph.operators for o in other.outputs}
    reasons = [] if op.name in EDGETPU_OPS else [f"{op.name} is not supported by the Edge TPU"]
    for tensor_index in (*op.inputs, *op.outputs):
        if tensor_index < 0:
            continue
        tensor = graph.tensors[tensor_index]
        constant = tensor_index not in produced and tensor_index not in graph.inputs
        if tensor.dtype == "int32" and constant:
            continue  # biases and shape operands of quantized ops are int32 by design
        if tensor.dtype not in _EIGHT_BIT or tensor.quantization is None:
            reasons.append(f"tensor {tensor.name!r} is {tensor.dtype}, not 8-bit quantized")
        elif not tensor.is_static:
            reasons.append(f"tensor {tensor.name!r} has a dynamic shape")
    return OpVerdict(index=index, name=op.name, edgetpu=not reasons, reasons=tuple(reasons))


@dataclass(frozen=True)
class CompileResult:
    """What ``edgetpu_compiler`` produced."""

    model: Path
    log: Path
    mapped_ops: int
    total_ops: int
    stdout: str


def find_compiler() -> Path | None:
    """``$EDGETPU_COMPILER`` if set, else ``edgetpu_compiler`` on PATH, else None."""
    configured = os.environ.get(COMPILER_ENV)
    if configured:
        return Path(configured)
    found = shutil.which(COMPILER_NAME)
    return Path(found) if found else None


def compile_model(model: Path, out_dir: Path, *, timeout_s: int = 180) -> CompileResult:
    """Run ``edgetpu_compiler -s -o OUT -t TIMEOUT MODEL`` and check that it mapped ops.

    Raises:
        EdgeTPUError: compiler missing, non-zero exit, timeout, missing output, or no
            operation mapped to the Edge TPU (the compiler still exits 0 then).
    """
    compiler = find_compiler()
    if compiler is None:
        raise EdgeTPUError(INSTALL_HINT)
    cmd = [str(compiler), "-s", "-o", str(out_dir), "-t", str(timeout_s), str(model)]
    try:
        proc = subprocess.run(  # noqa: PLW1510 - exit status checked below with the log
            cmd, capture_output=True, text=True, timeout=timeout_s + 30
        )
    except FileNotFoundError as exc:
        raise EdgeTPUError(f"{compiler}: cannot run it ({exc.strerror}). {INSTALL_HINT}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EdgeTPUError(f"edgetpu_compiler did not finish in {timeout_s + 30} s") from exc
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise EdgeTPUError(f"edgetpu_compiler exited {proc.returncode}: {output.strip()[-800:]}")
    return _result(model, out_dir, output)


def _result(model: Path, out_dir: Path, output: str) -> CompileResult:
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    log = out_dir / f"{model.stem}_edgetpu.log"
    if not compiled.is_file():
        raise EdgeTPUError(f"edgetpu_compiler reported success but wrote no {compiled.name}")
    mapped, total = parse_compiler_output(output)
    if mapped == 0:
        compiled.unlink()  # a model with nothing on the TPU is no Edge TPU model at all
        raise EdgeTPUError(
            f"edgetpu_compiler mapped no operation to the Edge TPU (of {total}); see {log}"
        )
    return CompileResult(model=compiled, log=log, mapped_ops=mapped, total_ops=total, stdout=output)


def parse_compiler_output(output: str) -> tuple[int, int]:
    """(operations mapped to the Edge TPU, total operations) from the compiler's stdout.

    The ``-s`` table has rows ``OPERATOR  COUNT  STATUS``; rows whose status is
    "Mapped to Edge TPU" count as mapped.
    """
    mapped = total = 0
    for line in output.splitlines():
        match = re.match(r"^\s*([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$", line)
        if match:
            count = int(match.group(2))
            total += count
            mapped += count if match.group(3) == _MAPPED else 0
    declared = re.search(r"Total number of operations:\s*(\d+)", output)
    return mapped, int(declared.group(1)) if declared else total
