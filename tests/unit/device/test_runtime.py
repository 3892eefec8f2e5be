import gc
from importlib.util import find_spec
from types import SimpleNamespace

import pytest

from edgefleet.device.errors import DelegateError, RuntimeUnavailableError
from edgefleet.device.runtime import (
    Backend,
    accelerator_note,
    choose_accelerator,
    discover_backend,
    load_edgetpu_delegate,
)

# LiteRT's Delegate.__del__ raises AttributeError on a delegate that failed to load
# (ai-edge-litert 2.3 bug, harmless): pytest reports it as an unraisable exception.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# These tests also run in the device-only environments (LiteRT, or tflite-runtime on
# numpy 1): they use whichever interpreter package is installed and the one that is not.
INSTALLED = "ai_edge_litert" if find_spec("ai_edge_litert") else "tflite_runtime"
ABSENT = "tflite_runtime" if INSTALLED == "ai_edge_litert" else "ai_edge_litert"


@pytest.fixture(autouse=True)
def _collect_failed_delegates():
    yield
    gc.collect()  # run that __del__ here, under this module's filter, not in a later test


def test_auto_picks_litert_first_and_reports_its_version():
    backend = discover_backend("auto")
    assert backend.name == INSTALLED
    assert backend.version[0].isdigit()


def test_a_missing_backend_says_how_to_install():
    with pytest.raises(RuntimeUnavailableError, match=rf"{ABSENT}: .*edgefleet-device\[litert\]"):
        discover_backend(ABSENT)


def test_unknown_backend_name():
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime backend 'onnx'"):
        discover_backend("onnx")


def test_real_edgetpu_library_is_absent_here_and_maps_to_delegate_error():
    backend = discover_backend(INSTALLED)
    with pytest.raises(DelegateError, match=r"libedgetpu\.so\.1.*libedgetpu1-std") as info:
        load_edgetpu_delegate(backend, "usb")
    assert info.value.device == "usb"


def test_edgetpu_configured_but_absent_falls_back_to_cpu_and_says_why():
    choice = choose_accelerator(discover_backend(INSTALLED), "usb")
    assert choice.accelerators == ("cpu",)
    assert choice.delegate is None
    assert "edgetpu unavailable, using cpu" in choice.note
    assert "libedgetpu.so.1" in choice.note
    note = accelerator_note(choice, offered={"cpu", "edgetpu"}, chosen="cpu")
    assert note.startswith("manifest offers an edgetpu variant; running the cpu variant")


def _backend(load_delegate) -> Backend:
    return Backend("fake", "0", SimpleNamespace(load_delegate=load_delegate))


def test_delegate_call_gets_the_device_string_and_errors_are_mapped():
    calls = []

    def ok(library, options):
        calls.append((library, options))
        return "delegate"

    choice = choose_accelerator(_backend(ok), ":0")
    assert calls == [("libedgetpu.so.1", {"device": ":0"})]
    assert choice.accelerators == ("edgetpu", "cpu")
    assert choice.delegate == "delegate"

    def no_device(library, options):
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    with pytest.raises(DelegateError, match="check that the Edge TPU is plugged in"):
        load_edgetpu_delegate(_backend(no_device), "pci")


def test_off_means_cpu_without_a_note():
    choice = choose_accelerator(_backend(None), "off")
    assert (choice.accelerators, choice.note) == (("cpu",), "")
    assert accelerator_note(choice, offered={"cpu", "edgetpu"}, chosen="cpu").endswith(
        "edgetpu is off in the agent config"
    )
