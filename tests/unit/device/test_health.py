"""The child-process health check on real models (a real LiteRT in a real child)."""

import os
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edgefleet.device import health, health_worker
from edgefleet.device.errors import HealthCheckError
from edgefleet.device.health import _interpret, run_health_check, stop_running_checks
from support.agent import ModelBundle, crash_model, shared_mnist_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


def check(bundle: ModelBundle, **kw):
    args = {"input_spec": bundle.input, "output_spec": bundle.output, "backend": "auto"} | kw
    return run_health_check(bundle.path, **args)


def test_a_good_model_passes(bundle):
    assert check(bundle)["backend"] == "ai_edge_litert"


def test_a_segfaulting_model_is_reported_not_fatal(bundle):
    with pytest.raises(HealthCheckError, match="SIGSEGV") as info:
        check(crash_model(bundle))
    assert info.value.reason == "crashed"


def test_garbage_is_a_load_failure(bundle, tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 4096)
    with pytest.raises(HealthCheckError) as info:
        run_health_check(junk, input_spec=bundle.input, output_spec=bundle.output, backend="auto")
    assert info.value.reason == "load"


def test_specs_that_differ_from_the_manifest_are_refused(bundle):
    lying = bundle.input.model_copy(update={"shape": (1, 32, 32, 1)})
    with pytest.raises(HealthCheckError, match=r"input shape is \[1, 28, 28, 1\]") as info:
        check(bundle, input_spec=lying)
    assert info.value.reason == "spec_mismatch"
    requant = bundle.output.model_copy(update={"zero_point": 0})
    with pytest.raises(HealthCheckError, match="output quantization"):
        check(bundle, output_spec=requant)


def _hanging_model(tmp_path: Path) -> Path:
    """A model file whose reading never ends: a FIFO nobody writes to."""
    path = tmp_path / "hangs.tflite"
    os.mkfifo(path)
    return path


def test_a_hung_check_is_killed(bundle, tmp_path):
    with pytest.raises(HealthCheckError, match="did not finish") as info:
        run_health_check(
            _hanging_model(tmp_path),
            input_spec=bundle.input,
            output_spec=bundle.output,
            backend="auto",
            timeout_s=0.5,
        )
    assert info.value.reason == "timeout"


def _exit(returncode: int, out: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess(["child"], returncode, out, b"")


@pytest.mark.parametrize("sig", ["SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE"])
def test_a_crash_signal_is_a_verdict(sig):
    with pytest.raises(HealthCheckError, match=sig) as info:
        _interpret(_exit(-signal.Signals[sig].value))
    assert (info.value.reason, info.value.verdict) == ("crashed", True)


@pytest.mark.parametrize("returncode", [-signal.SIGKILL, 137, -signal.SIGTERM])
def test_a_killed_child_is_no_verdict(returncode):
    # SIGKILL is the OOM killer's (137 = 128 + 9 as a wrapper reports it): not the model's doing
    with pytest.raises(HealthCheckError, match="killed") as info:
        _interpret(_exit(returncode))
    assert (info.value.reason, info.value.verdict) == ("killed", False)


def test_timeout_is_no_verdict():
    assert not HealthCheckError("slow", reason="timeout").verdict


# -- the warm worker the checks are forked from -------------------------------------------


def _worker_pid() -> int:
    (worker,) = health._workers.values()
    return worker.proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def fresh_worker():
    stop_running_checks()  # the next check starts a worker with this test's environment
    yield
    stop_running_checks()


def test_checks_are_forked_from_one_warm_worker_that_survives_a_crash(bundle, fresh_worker):
    check(bundle)
    pid = _worker_pid()
    with pytest.raises(HealthCheckError, match="SIGSEGV"):
        check(crash_model(bundle))
    assert check(bundle)["ok"]
    assert _worker_pid() == pid  # the crash killed the check's child only
    assert _alive(pid)


def test_concurrent_checks_on_one_worker_all_get_their_own_verdict(bundle, fresh_worker):
    # Children end in any order and their pipes' fd numbers are reused by the next ones.
    crash = crash_model(bundle)
    models = [bundle, crash] * 15
    verdicts: dict[int, str] = {}

    def one(i: int) -> None:
        try:
            check(models[i], timeout_s=120)
            verdicts[i] = "ok"
        except HealthCheckError as exc:
            verdicts[i] = exc.reason

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(models))]
    for t in threads:  # staggered: new children start while others end
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert verdicts == {i: ("ok", "crashed")[i % 2] for i in range(len(models))}
    assert len({w.proc.pid for w in health._workers.values()}) == 1


def test_a_child_is_done_when_both_its_pipes_end_even_if_their_fds_are_reused():
    # The worker closes a child's stdout at its end of file; the next child's pipe may get
    # that fd number before the first child's stderr ends. The first child must still be
    # seen as done (it once waited for ever: a health check that never answered).
    requests_r, requests_w = os.pipe()
    server = health_worker._Server(requests_r)
    first = health_worker._Kid(1, pid=-1)
    ends = {}
    for name in ("stdout", "stderr"):
        r, w = os.pipe()
        first.output[r], first.names[r] = bytearray(), name
        first.open.add(r)
        server.sel.register(r, selectors.EVENT_READ, first)
        ends[name] = (r, w)
    os.close(ends["stdout"][1])
    server._read_child(ends["stdout"][0], first)
    reused_r, reused_w = os.pipe()  # the lowest free number: the one just closed
    assert reused_r == ends["stdout"][0]
    second = health_worker._Kid(2, pid=-1)
    second.output[reused_r], second.names[reused_r] = bytearray(), "stdout"
    second.open.add(reused_r)
    server.sel.register(reused_r, selectors.EVENT_READ, second)
    os.write(ends["stderr"][1], b"warning")
    os.close(ends["stderr"][1])
    server._read_child(ends["stderr"][0], first)
    assert server.ended == []  # not at end of file yet: data first
    server._read_child(ends["stderr"][0], first)
    assert server.ended == [first]
    assert first.output[ends["stderr"][0]] == b"warning"
    for fd in (reused_r, reused_w, requests_r, requests_w):
        os.close(fd)


def test_warm_up_starts_the_worker_the_next_check_uses(bundle, fresh_worker):
    health.warm_up("auto", bundle.path.parent)
    pid = _worker_pid()
    health.warm_up("auto", bundle.path.parent)  # already running: the same one
    assert _worker_pid() == pid
    assert check(bundle)["ok"]
    assert _worker_pid() == pid


def test_a_timed_out_check_is_killed_and_the_worker_serves_the_next(bundle, fresh_worker, tmp_path):
    check(bundle)
    pid = _worker_pid()
    hanging = _hanging_model(tmp_path)
    with pytest.raises(HealthCheckError, match="did not finish") as info:
        run_health_check(
            hanging, input_spec=bundle.input, output_spec=bundle.output, backend="auto", timeout_s=1
        )
    assert info.value.reason == "timeout"
    assert check(bundle)["ok"]
    assert _worker_pid() == pid
    # the hung child was killed (the worker's process group holds only the worker again)
    deadline = time.monotonic() + 30
    while _group(pid) != [pid] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group(pid) == [pid]


def _group(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return sorted(pids)


def test_stopping_kills_a_check_under_way_and_the_worker(bundle, fresh_worker, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_FAULT", "slow_health_check:60")
    errors: list[HealthCheckError] = []

    def slow() -> None:
        try:
            check(bundle)
        except HealthCheckError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    while not health._workers or not next(iter(health._workers.values())).pending:
        time.sleep(0.05)
    pid = _worker_pid()
    assert stop_running_checks() == 1
    thread.join(timeout=30)
    assert not thread.is_alive()
    (error,) = errors
    assert (error.reason, error.verdict) == ("killed", False)  # no verdict on the model
    assert not _alive(pid)
    assert not health._workers


def test_the_worker_ends_when_the_agent_process_does(bundle, fresh_worker):
    check(bundle)
    (worker,) = health._workers.values()
    worker.close()  # what the kernel does to its stdin when the agent dies
    assert worker.proc.wait(timeout=30) == 0


def test_a_fresh_child_is_still_a_complete_check(bundle):
    # ``python -m edgefleet.device.health '<json>'``: the fallback without os.fork
    assert health._run_fresh_child(_args(bundle), 60)["ok"]
    with pytest.raises(HealthCheckError, match="SIGSEGV"):
        health._run_fresh_child(_args(crash_model(bundle)), 60)


def _args(bundle: ModelBundle) -> dict:
    return {
        "model": str(bundle.path),
        "backend": "auto",
        "num_threads": 1,
        "edgetpu": "",
        "input": bundle.input.model_dump(mode="json"),
        "output": bundle.output.model_dump(mode="json"),
    }
