"""The child-process health check on real models (a real LiteRT in a real child)."""

import signal
import subprocess

import pytest
from support.agent import ModelBundle, crash_model, shared_mnist_model

from edgefleet.device.errors import HealthCheckError
from edgefleet.device.health import _interpret, run_health_check

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


def test_a_hung_check_is_killed(bundle):
    with pytest.raises(HealthCheckError, match="did not finish") as info:
        check(bundle, timeout_s=0.05)
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
