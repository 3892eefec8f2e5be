"""`edgefleet --help` starts without NumPy or TensorFlow: the CLI imports its libraries lazily."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from edgefleet.host.cli import main
sys.argv = ["edgefleet", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("numpy", "tensorflow", "keras", "tf_keras", "ai_edge_litert",
                           "matplotlib", "paho") if m in sys.modules)
print("exit", code, "heavy", ",".join(heavy) or "-")
"""


def _help(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[-4:]


def test_help_loads_neither_numpy_nor_tensorflow():
    assert _help("--help") == ["exit", "0", "heavy", "-"]


def test_a_command_group_help_is_as_light():
    for group in (["push", "--help"], ["predictions", "--help"], ["quantize", "--help"]):
        assert _help(*group) == ["exit", "0", "heavy", "-"], group


def test_the_probe_sees_a_heavy_import():
    # If the probe could not see heavy modules, the two tests above would prove nothing.
    out = subprocess.run(
        [sys.executable, "-c", "import numpy\n" + PROBE, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-1] == "numpy"
