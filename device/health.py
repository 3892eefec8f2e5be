"""Health-check a staged model in a child process, so a crafted model cannot take the agent down.

The child (``python -m edgefleet.device.health``) loads the model, allocates its tensors,
compares its input and output with the manifest and invokes it once on a neutral sample;
it prints one JSON line. The parent maps a crash (signal), a timeout or a failed check
to :class:`HealthCheckError` with a reason code.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.device.errors import DeviceError, HealthCheckError
from edgefleet.device.faults import delay, fault
from edgefleet.device.runtime import discover_backend, load_edgetpu_delegate, open_model
from edgefleet.shared.spec import TensorSpec

# Children of checks under way (one per worker thread), so that shutdown can stop them.
_running: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()

# Signals by which a model kills the interpreter: a verdict on the model.
CRASH_CODES = frozenset(
    -s for s in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
)
KILLED_EXIT = 128 + signal.SIGKILL  # how a wrapper (or the fault point) reports a SIGKILL


def spec_mismatch(what: str, expected: TensorSpec, actual: TensorSpec) -> str | None:
    """Describe how the model's tensor differs from the manifest's, or None if it matches."""
    if tuple(expected.shape) != tuple(actual.shape):
        return f"{what} shape is {list(actual.shape)}, manifest says {list(expected.shape)}"
    if expected.dtype != actual.dtype:
        return f"{what} dtype is {actual.dtype}, manifest says {expected.dtype}"
    if expected.quantized and (
        not math.isclose(expected.scale, actual.scale, rel_tol=1e-5)
        or expected.zero_point != actual.zero_point
    ):
        return (
            f"{what} quantization is scale={actual.scale} zero_point={actual.zero_point}, "
            f"manifest says scale={expected.scale} zero_point={expected.zero_point}"
        )
    return None


def neutral_sample(spec: TensorSpec) -> np.ndarray:
    """An all-'zero' input: the zero point for quantized tensors, 0.0 otherwise."""
    return np.full(spec.shape, spec.zero_point if spec.quantized else 0, dtype=spec.dtype)


def _check(args: dict[str, Any]) -> dict[str, Any]:
    delay("slow_health_check")
    backend = discover_backend(args["backend"])
    delegate = load_edgetpu_delegate(backend, args["edgetpu"]) if args["edgetpu"] else None
    model = open_model(
        Path(args["model"]), backend=backend, num_threads=args["num_threads"], delegate=delegate
    )
    for what, key, actual in (
        ("input", "input", model.input_spec),
        ("output", "output", model.output_spec),
    ):
        problem = spec_mismatch(what, TensorSpec.model_validate(args[key]), actual)
        if problem:
            return {"ok": False, "reason": "spec_mismatch", "message": problem}
    fault("health_child")
    y = model.run(neutral_sample(model.input_spec))
    if y.shape != tuple(model.output_spec.shape):
        return {"ok": False, "reason": "invoke", "message": f"output shape {y.shape}"}
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        return {"ok": False, "reason": "invoke", "message": "output has NaN or infinity"}
    return {"ok": True, "backend": backend.name, "accelerator": model.accelerator}


def child_main(argv: list[str]) -> int:
    """Entry point of the child: one JSON argument in, one JSON line out."""
    args = json.loads(argv[0])
    try:
        result = _check(args)
    except DeviceError as exc:
        result = {"ok": False, "reason": "load", "message": str(exc)}
    print(json.dumps(result), flush=True)
    return 0


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_health_check(
    model_path: Path,
    *,
    input_spec: TensorSpec,
    output_spec: TensorSpec,
    backend: str,
    num_threads: int = 1,
    edgetpu: str = "",
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Check a staged model in a child process.

    Args:
        model_path: The staged .tflite.
        input_spec: The input tensor the manifest promises.
        output_spec: The output tensor the manifest promises.
        backend: Backend name for the child (the one the agent uses).
        num_threads: Interpreter threads.
        edgetpu: Edge TPU device string, or "" for the CPU.
        timeout_s: Kill the child after this long.

    Returns:
        The child's report (``ok`` is True).

    Raises:
        HealthCheckError: the child crashed, hung, or reported a failed check.
    """
    args = {
        "model": str(model_path),
        "backend": backend,
        "num_threads": num_threads,
        "edgetpu": edgetpu,
        "input": input_spec.model_dump(mode="json"),
        "output": output_spec.model_dump(mode="json"),
    }
    cmd = [sys.executable, "-m", "edgefleet.device.health", json.dumps(args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _lock:
        _running.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        msg = f"the health check did not finish in {timeout_s:g} s (killed)"
        raise HealthCheckError(msg, reason="timeout") from exc
    finally:
        with _lock:
            _running.discard(proc)
    return _interpret(subprocess.CompletedProcess(cmd, proc.returncode, out, err))


def stop_running_checks() -> int:
    """Kill the health-check children still running (agent shutdown); return how many.

    The checks wait on worker threads; without this, an agent stopped during a check
    would leave its child behind (a hanging model: for ever).
    """
    with _lock:
        procs = list(_running)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # gone before the agent exits, not a moment later
    return len(procs)


def _interpret(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
    if proc.returncode in CRASH_CODES:
        msg = f"the model crashed the interpreter ({_signal_name(proc.returncode)})"
        raise HealthCheckError(msg, reason="crashed")
    if proc.returncode < 0 or proc.returncode == KILLED_EXIT:
        # SIGKILL is what the OOM killer sends: the box was short of memory, no verdict.
        name = _signal_name(-signal.SIGKILL if proc.returncode == KILLED_EXIT else proc.returncode)
        msg = f"the health-check child was killed ({name}; out of memory?)"
        raise HealthCheckError(msg, reason="killed")
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        detail = " | ".join(tail) or "no output"
        msg = f"the health check exited with status {proc.returncode}: {detail}"
        raise HealthCheckError(msg, reason="exited") from None
    if not result.get("ok"):
        raise HealthCheckError(str(result.get("message")), reason=str(result.get("reason")))
    return result


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
