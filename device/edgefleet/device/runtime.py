"""Interpreter backends (LiteRT, tflite-runtime, tensorflow.lite) and the Edge TPU delegate.

One small interface over three packages that expose the same ``Interpreter`` and
``load_delegate``: the agent asks for a :class:`Backend`, opens a :class:`Model` with it
and says in its status which backend, version and accelerator it runs, and why not the
Edge TPU when one was configured but could not be used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgefleet.device.errors import DelegateError, ModelLoadError, RuntimeUnavailableError
from edgefleet.shared.spec import DType, TensorSpec

log = logging.getLogger(__name__)

EDGETPU_LIBRARY: Final = "libedgetpu.so.1"

# (backend name, module holding Interpreter/load_delegate, distribution for the version)
_BACKENDS: Final = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow.lite", "tensorflow"),
)
_DTYPES: Final[dict[str, DType]] = {
    "float32": "float32",
    "float16": "float16",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
}


@dataclass(frozen=True)
class Backend:
    """An importable interpreter package.

    Attributes:
        name: ``ai_edge_litert``, ``tflite_runtime`` or ``tensorflow``.
        version: the installed distribution's version.
        module: the module that has ``Interpreter`` and ``load_delegate``.
    """

    name: str
    version: str
    module: Any

    def interpreter(self, **kwargs: Any) -> Any:  # noqa: ANN401 - third-party object
        """Construct the package's ``Interpreter`` with ``kwargs``."""
        return self.module.Interpreter(**kwargs)

    def load_delegate(self, library: str, options: dict[str, str]) -> Any:  # noqa: ANN401
        """Call the package's ``load_delegate``."""
        return self.module.load_delegate(library, options)


def _import_backend(name: str, module_name: str, dist: str) -> Backend:
    module = importlib.import_module(module_name)
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(module, "__version__", "unknown"))
    return Backend(name=name, version=version, module=module)


def discover_backend(preference: str = "auto") -> Backend:
    """Return the first importable backend (or exactly the one asked for).

    ``auto`` tries ai_edge_litert, then tflite_runtime, then tensorflow.lite; the last
    exists for host-side testing only and is never installed on a device.

    Raises:
        RuntimeUnavailableError: nothing (or not the requested backend) can be imported.
    """
    candidates = [b for b in _BACKENDS if preference in {"auto", b[0]}]
    if not candidates:
        raise RuntimeUnavailableError(
            f"unknown runtime backend {preference!r}: use auto, ai_edge_litert, "
            "tflite_runtime or tensorflow"
        )
    problems = []
    for name, module_name, dist in candidates:
        try:
            return _import_backend(name, module_name, dist)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    raise RuntimeUnavailableError(
        "no TFLite interpreter can be imported ("
        + "; ".join(problems)
        + "): install a runtime, e.g. `pip install 'edgefleet-device[litert]'`"
    )


def load_edgetpu_delegate(backend: Backend, device: str) -> Any:  # noqa: ANN401
    """Load libedgetpu for ``device`` (``usb``, ``pci``, ``:0`` or ``""`` for any).

    Raises:
        DelegateError: the library is absent or no matching Edge TPU answers.
    """
    options = {"device": device} if device else {}
    try:
        return backend.load_delegate(EDGETPU_LIBRARY, options)
    except (OSError, ValueError, RuntimeError) as exc:
        detail = str(exc).strip() or type(exc).__name__
        if "cannot open shared object" in detail or "No such file" in detail:
            hint = "install the Edge TPU runtime (libedgetpu1-std) from the Coral apt repository"
        else:
            hint = f"check that the Edge TPU is plugged in and that device {device!r} is right"
        msg = f"cannot load the Edge TPU delegate {EDGETPU_LIBRARY} ({detail}): {hint}"
        raise DelegateError(msg, device=device) from exc


@dataclass(frozen=True)
class AcceleratorChoice:
    """What this device can run, decided once at start.

    Attributes:
        accelerators: manifest variants this device accepts, best first.
        delegate: the loaded Edge TPU delegate, or None.
        note: why the Edge TPU is or is not used (empty when it was not asked for).
    """

    accelerators: tuple[str, ...]
    delegate: Any
    note: str


def choose_accelerator(backend: Backend, edgetpu: str) -> AcceleratorChoice:
    """Try the Edge TPU when configured; otherwise (or on failure) say why and use the CPU."""
    if edgetpu == "off":
        return AcceleratorChoice(("cpu",), None, "")
    device = "" if edgetpu == "any" else edgetpu
    try:
        delegate = load_edgetpu_delegate(backend, device)
    except DelegateError as exc:
        log.warning("Edge TPU unavailable, using the CPU int8 variant: %s", exc)
        return AcceleratorChoice(("cpu",), None, f"edgetpu unavailable, using cpu: {exc}")
    return AcceleratorChoice(("edgetpu", "cpu"), delegate, f"edgetpu {edgetpu} loaded")


def accelerator_note(choice: AcceleratorChoice, *, offered: Collection[str], chosen: str) -> str:
    """Say why a model runs where it runs (for the status' ``accelerator_note``).

    Args:
        choice: What the device decided at start.
        offered: Accelerators the manifest has variants for.
        chosen: The variant's accelerator that is being served.
    """
    if "edgetpu" in offered and chosen == "cpu":
        why = choice.note or "edgetpu is off in the agent config"
        return f"manifest offers an edgetpu variant; running the cpu variant: {why}"
    return choice.note


def tensor_spec(detail: dict[str, Any]) -> TensorSpec:
    """Turn an interpreter's input/output detail into a :class:`TensorSpec`."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"]).name
    if dtype not in _DTYPES:
        raise ModelLoadError(f"tensor {detail.get('name')!r} has unsupported dtype {dtype}")
    return TensorSpec(
        name=str(detail.get("name", "")),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=_DTYPES[dtype],
        scale=float(scale),
        zero_point=int(zero_point),
    )


class Model:
    """A loaded, allocated interpreter with one input and one output tensor."""

    def __init__(self, interpreter: Any, *, accelerator: str) -> None:  # noqa: ANN401
        self._interpreter = interpreter
        self.accelerator = accelerator
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(
                f"model has {len(inputs)} inputs and {len(outputs)} outputs; "
                "edgefleet serves single-input, single-output classifiers"
            )
        self._in_index = int(inputs[0]["index"])
        self._out_index = int(outputs[0]["index"])
        self.input_spec = tensor_spec(inputs[0])
        self.output_spec = tensor_spec(outputs[0])

    def run(self, x: np.ndarray) -> np.ndarray:
        """Invoke once on an input tensor already in the model's dtype and shape."""
        try:
            self._interpreter.set_tensor(self._in_index, x)
            self._interpreter.invoke()
            return np.array(self._interpreter.get_tensor(self._out_index))
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"inference failed: {exc}") from exc


def open_model(
    path: Path,
    *,
    backend: Backend,
    num_threads: int = 1,
    delegate: Any = None,  # noqa: ANN401 - an opaque Delegate object
) -> Model:
    """Load and allocate a .tflite file.

    Args:
        path: The model file.
        backend: Which interpreter package to use.
        num_threads: CPU threads for the interpreter.
        delegate: A loaded Edge TPU delegate, or None for the CPU.

    Raises:
        ModelLoadError: the file is missing, not a valid model, or cannot be allocated.
    """
    kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": num_threads}
    if delegate is not None:
        kwargs["experimental_delegates"] = [delegate]
    try:
        interpreter = backend.interpreter(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"cannot load model {path}: {exc}") from exc
    # tflite-runtime built against numpy 1.x raises ImportError-derived errors at first use.
    except ImportError as exc:
        raise ModelLoadError(f"{backend.name} {backend.version} cannot run here: {exc}") from exc
    return Model(interpreter, accelerator="edgetpu" if delegate is not None else "cpu")
