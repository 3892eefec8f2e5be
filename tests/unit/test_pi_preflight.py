"""`make test-pi` on a machine that cannot run it: skipped locally, a failure under CI.

The check itself needs root, binfmt_misc and qemu (tests/pi/pi_check.py); these tests only
run its preflight, as a non-root user would, with the real script and its real reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PI_DIR = Path(__file__).resolve().parents[1] / "pi"

# The script as `make test-pi` runs it, with one fact changed: the effective user is not root.
_AS_NON_ROOT = (
    "import os, runpy, sys; os.geteuid = lambda: 1000; "
    f"sys.path.insert(0, {str(PI_DIR)!r}); sys.argv = ['pi_check.py']; "
    f"runpy.run_path({str(PI_DIR / 'pi_check.py')!r}, run_name='__main__')"
)


def _preflight(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-c", _AS_NON_ROOT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_without_root_it_is_skipped_with_the_reason_and_exit_0():
    proc = _preflight(None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "make test-pi: SKIPPED: it needs root" in proc.stdout
    assert "With CI=true this is a failure" in proc.stdout


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_under_ci_the_same_machine_is_a_failure(ci):
    proc = _preflight(ci)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "make test-pi: FAILED: CI=true but this machine cannot run it: it needs root" in (
        proc.stdout
    )
