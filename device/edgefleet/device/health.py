"""Health-check a staged model in a child process, so a crafted model cannot take the agent down.

Each check runs in its own short-lived process that loads the model, allocates its
tensors, compares its input and output with the manifest and invokes it once on a neutral
sample; it prints one JSON line (that side is :mod:`edgefleet.device.health_worker`). This
module is the agent's side: it maps a crash (signal), a timeout or a failed check to
:class:`HealthCheckError` with a reason code.

That process is forked from a warm worker (``python -m edgefleet.device.health --serve``),
one per agent process and interpreter backend, started at the first check: it has imported
the interpreter package once, so a check costs a fork and the model load (tens of
milliseconds) instead of a fresh interpreter start and imports (about 0.5 s of CPU). The
worker itself never loads a model: a model that kills its process (SIGSEGV in LiteRT) only
kills that check's child. The worker ends when the agent process ends (its stdin closes),
after ``WORKER_IDLE_S`` without a check, or on ``stop_running_checks``; a child dies with
its worker. ``python -m edgefleet.device.health '<json>'`` still runs one check in a fresh
process (the fallback where ``os.fork`` does not exist, and a probe for tests).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import IO, Any, Final

from edgefleet.device.errors import HealthCheckError, WorkerGoneError
from edgefleet.device.health_worker import child_main, neutral_sample, serve_main, spec_mismatch
from edgefleet.shared.spec import TensorSpec

__all__ = [
    "CRASH_CODES",
    "KILLED_EXIT",
    "WORKER_IDLE_S",
    "child_main",
    "neutral_sample",
    "run_health_check",
    "serve_main",
    "spec_mismatch",
    "stop_running_checks",
    "warm_up",
]

# Fresh children of checks under way (the fallback path), so that shutdown can stop them.
_running: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()
WORKER_IDLE_S: Final = 60.0  # a warm worker with no check for this long ends

# Signals by which a model kills the interpreter: a verdict on the model.
CRASH_CODES = frozenset(
    -s for s in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE)
)
KILLED_EXIT = 128 + signal.SIGKILL  # how a wrapper (or the fault point) reports a SIGKILL


class _Worker:
    """The agent process's handle on one warm worker process."""

    def __init__(self, backend: str, label: str) -> None:
        self.cmd = [sys.executable, "-m", "edgefleet.device.health", "--serve", backend, label]
        # One BLAS thread: the worker stays single-threaded, so forking it is safe.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: killpg stops it and its children
        )
        self.pending: dict[int, Future[dict[str, Any]]] = {}
        self.last_used = time.monotonic()
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read, name="health-worker", daemon=True).start()

    def submit(self, request: int, args: dict[str, Any]) -> Future[dict[str, Any]]:
        """Send one check; OSError if the worker is gone (no check started then)."""
        outcome: Future[dict[str, Any]] = Future()
        with _lock:
            self.pending[request] = outcome
            self.last_used = time.monotonic()
        try:
            self._send({"id": request, "args": args})
        except OSError:
            with _lock:
                self.pending.pop(request, None)
            raise
        return outcome

    def cancel(self, request: int) -> None:
        """Kill a check's child (timeout); its late answer is dropped."""
        with _lock:
            self.pending.pop(request, None)
        with contextlib.suppress(OSError, ValueError):
            self._send({"kill": request})
        self._retire_when_idle()

    def done(self) -> None:
        """A check's answer was used (or a warm-up): the worker ends if idle for long."""
        self._retire_when_idle()

    def _send(self, msg: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None  # noqa: S101 - created with stdin=PIPE
        with self._write_lock:
            stdin.write(json.dumps(msg).encode() + b"\n")
            stdin.flush()

    def _read(self) -> None:
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None  # noqa: S101 - created with stdout=PIPE
        try:
            for line in stdout:
                reply = json.loads(line)
                with _lock:
                    outcome = self.pending.pop(int(reply["id"]), None)
                if outcome is not None:
                    outcome.set_result(reply)
        except (OSError, ValueError, KeyError, TypeError):
            self.kill()  # a worker that says nonsense is not trusted with more checks
        returncode = self.proc.wait()
        with _lock:
            if _workers.get(self.key) is self:
                del _workers[self.key]
            pending, self.pending = self.pending, {}
        for outcome in pending.values():
            outcome.set_exception(WorkerGoneError(returncode))

    @property
    def key(self) -> str:
        """Which backend this worker serves."""
        return self.cmd[4]

    def _retire_when_idle(self) -> None:
        timer = threading.Timer(WORKER_IDLE_S, self._retire_if_idle)
        timer.daemon = True
        timer.start()

    def _retire_if_idle(self) -> None:
        with _lock:
            if self.pending or time.monotonic() - self.last_used < WORKER_IDLE_S:
                return
            if _workers.get(self.key) is self:
                del _workers[self.key]
        self.close()

    def close(self) -> None:
        """Let the worker end (it exits when its stdin closes)."""
        with contextlib.suppress(OSError, ValueError), self._write_lock:
            assert self.proc.stdin is not None  # noqa: S101
            self.proc.stdin.close()

    def kill(self) -> None:
        """SIGKILL the worker and every check's child (one process group), and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


_workers: dict[str, _Worker] = {}  # backend name -> this process's warm worker
_requests = itertools.count(1)


def _worker(backend: str, label: str) -> _Worker:
    with _lock:
        worker = _workers.get(backend)
        if worker is None or worker.proc.poll() is not None:
            worker = _workers[backend] = _Worker(backend, label)
        return worker


def warm_up(backend: str, models_dir: Path) -> None:
    """Start this process's worker for ``backend`` now (a download began), if not running.

    Its start (an interpreter and the backend's import) then overlaps the download
    instead of delaying the check. Best effort: a failure shows at the check.
    """
    if hasattr(os, "fork"):
        with contextlib.suppress(OSError):
            _worker(backend, str(models_dir)).done()  # retires when idle if no check follows


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
    """Check a staged model in a child process (forked from the warm worker).

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
    if not hasattr(os, "fork"):
        return _run_fresh_child(args, timeout_s)
    request = next(_requests)
    for _attempt in range(2):  # a worker that just ended (idle) took no request: start one
        worker = _worker(backend, str(model_path.parent))
        try:
            outcome = worker.submit(request, args)
            break
        except OSError:
            worker.kill()
    else:
        msg = "the health-check worker could not be started"
        raise HealthCheckError(msg, reason="exited")
    try:
        reply = outcome.result(timeout=timeout_s)
    except FutureTimeout as exc:
        worker.cancel(request)
        msg = f"the health check did not finish in {timeout_s:g} s (killed)"
        raise HealthCheckError(msg, reason="timeout") from exc
    except WorkerGoneError as exc:
        # Killed with the agent's shutdown, or by the OOM killer: no verdict on the model.
        rc = exc.args[0]
        name = _signal_name(rc) if rc < 0 else f"status {rc}"
        msg = f"the health-check worker was killed ({name}) during the check"
        raise HealthCheckError(msg, reason="killed") from None
    worker.done()
    result = subprocess.CompletedProcess(
        worker.cmd,
        int(reply["returncode"]),
        str(reply.get("stdout", "")).encode(),
        str(reply.get("stderr", "")).encode(),
    )
    return _interpret(result)


def _run_fresh_child(args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
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
    """Stop the warm workers and every check under way (agent shutdown); return how many checks.

    The checks wait on worker threads; without this, an agent stopped during a check
    would leave its child behind (a hanging model: for ever).
    """
    with _lock:
        procs = list(_running)
        workers = list(_workers.values())
        _workers.clear()
        checks = len(procs) + sum(len(w.pending) for w in workers)
    for worker in workers:
        worker.kill()
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # gone before the agent exits, not a moment later
    return checks


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
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve_main(sys.argv[2:]))
    sys.exit(child_main(sys.argv[1:]))
