"""What runs in the health check's own processes: the check, and the warm worker forking it.

A check (:func:`child_main`, or a child forked by the worker) loads the staged model,
allocates its tensors, compares its input and output with the manifest and invokes it
once on a neutral sample; it prints one JSON line. The warm worker (:func:`serve_main`)
has imported the interpreter package once and forks one child per check, so a check
costs a fork and the model load; it never loads a model itself, so a model that kills its
process (SIGSEGV in LiteRT) only kills that check's child. The agent's side, which starts
the worker and turns the outcome into a verdict, is :mod:`edgefleet.device.health`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import selectors
import signal
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgefleet.device.errors import DeviceError
from edgefleet.device.faults import delay, fault
from edgefleet.device.runtime import discover_backend, load_edgetpu_delegate, open_model
from edgefleet.shared.spec import TensorSpec

MAX_OUTPUT: Final = 1 << 20  # bytes of a child's stdout/stderr kept by the worker


# -- the check (runs in a child) --------------------------------------------------------


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
    """Entry point of a fresh child: one JSON argument in, one JSON line out."""
    return _check_and_print(json.loads(argv[0]))


def _check_and_print(args: dict[str, Any]) -> int:
    try:
        result = _check(args)
    except DeviceError as exc:
        result = {"ok": False, "reason": "load", "message": str(exc)}
    print(json.dumps(result), flush=True)
    return 0


# -- the warm worker (runs in its own process) ---------------------------------------------


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent (the worker) dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _fork_check(args: dict[str, Any]) -> tuple[int, int, int]:
    """Fork one check's child; return (pid, stdout read fd, stderr read fd)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: one check, then exit without running the worker's cleanup
        code = 1
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (null, out_r, out_w, err_r, err_w):
                os.close(fd)
            _die_with_parent()
            if os.getppid() != parent:  # the worker died before prctl took effect
                os._exit(code)
            code = _check_and_print(args)
        except BaseException:  # noqa: BLE001 - reported on stderr, like an uncaught error
            traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    return pid, out_r, err_r


@dataclass
class _Kid:
    """A check's child as the worker sees it."""

    request: int
    pid: int
    output: dict[int, bytearray] = field(default_factory=dict)  # fd -> bytes read
    names: dict[int, str] = field(default_factory=dict)  # fd -> "stdout" / "stderr"
    open: set[int] = field(default_factory=set)  # fds not at end of file yet


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve_main(argv: list[str]) -> int:
    """The warm worker: JSON lines in on stdin, JSON lines out on stdout.

    In: ``{"id": n, "args": {...}}`` (fork a check) or ``{"kill": n}`` (SIGKILL that
    check's child). Out, when a child has ended: ``{"id": n, "returncode": rc,
    "stdout": "...", "stderr": "..."}`` (``rc`` negative for a signal, as subprocess says).
    ``argv``: backend name to import now, then a label for ``ps`` (the agent's directory).
    It returns when its stdin closes (the agent is gone), killing any child left.
    """
    backend = argv[0] if argv else "auto"
    with contextlib.suppress(DeviceError):
        discover_backend(backend)  # the import every check would pay; a failure shows per check
    return _Server().run()


class _Server:
    """The worker's loop: requests on ``requests`` (fd 0), children's pipes, replies on fd 1."""

    def __init__(self, requests: int = 0) -> None:
        self.requests = requests
        self.sel = selectors.DefaultSelector()
        self.sel.register(requests, selectors.EVENT_READ, None)
        self.kids: dict[int, _Kid] = {}  # request id -> child
        self.ended: list[_Kid] = []  # output closed, not reaped yet
        self.buf = b""

    def run(self) -> int:
        while True:
            for key, _ in self.sel.select(timeout=0.05 if self.ended else None):
                if key.data is not None:
                    self._read_child(key.fd, key.data)
                elif not self._read_requests():
                    for kid in self.kids.values():  # nobody wants these results
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(kid.pid, signal.SIGKILL)
                    return 0
            self._reap()

    def _read_requests(self) -> bool:
        data = os.read(self.requests, 1 << 16)
        if not data:
            return False
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if "kill" in msg:
                kid = self.kids.get(int(msg["kill"]))
                if kid is not None:  # not reaped yet: the pid is still the child's
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(kid.pid, signal.SIGKILL)
                continue
            pid, out_r, err_r = _fork_check(msg["args"])
            kid = _Kid(int(msg["id"]), pid)
            for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
                kid.output[fd] = bytearray()
                kid.names[fd] = name
                kid.open.add(fd)
                self.sel.register(fd, selectors.EVENT_READ, kid)
            self.kids[kid.request] = kid
        return True

    def _read_child(self, fd: int, kid: _Kid) -> None:
        chunk = os.read(fd, 1 << 16)
        if chunk:
            kept = kid.output[fd]
            kept += chunk
            del kept[:-MAX_OUTPUT]
            return
        self.sel.unregister(fd)
        os.close(fd)  # its number may serve another child's pipe from now on
        kid.open.discard(fd)
        if not kid.open:
            self.ended.append(kid)

    def _reap(self) -> None:
        for kid in list(self.ended):
            pid, status = os.waitpid(kid.pid, os.WNOHANG)
            if pid == 0:
                continue  # closed its output but still running: look again shortly
            self.ended.remove(kid)
            self.kids.pop(kid.request, None)
            reply: dict[str, Any] = {
                "id": kid.request,
                "returncode": os.waitstatus_to_exitcode(status),
            }
            for fd, name in kid.names.items():
                reply[name] = kid.output[fd].decode(errors="replace")
            _write_all(1, json.dumps(reply).encode() + b"\n")
