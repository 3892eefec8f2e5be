"""A bundle made by the real `edgefleet provision` installs the agent without a package index.

`edgefleet provision --wheelhouse` fills a wheelhouse (from PyPI, hence the `venv` marker; pip's
cache makes reruns fast) for THIS machine's platform instead of the Pi's, then
install-device.sh --venv-only builds an empty virtualenv from the bundle's wheels and that
wheelhouse alone (`pip --no-index`, no pip config, an unreachable index URL).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.venv

BIN = Path(sys.executable).parent
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _this_platform() -> list[str]:
    """pip platform tags of this machine, most specific first."""
    machine = platform.machine()
    libc, version = platform.libc_ver()
    assert libc == "glibc", "the test needs a glibc Linux"
    major, minor = version.split(".")[:2]
    return [f"manylinux_{major}_{minor}_{machine}", f"linux_{machine}"]


def _offline_env() -> dict[str, str]:
    """No pip config (this machine's adds find-links) and an index that cannot answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    env.pop("PYTHONPATH", None)
    return env


def _edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgefleet"), *args], capture_output=True, text=True, check=False, timeout=600
    )


def test_the_bundle_installs_the_agent_offline_from_its_wheels_and_a_wheelhouse(tmp_path):
    fleet, house = tmp_path / "fleet", tmp_path / "wheelhouse"
    assert _edgefleet("init", "--dir", str(fleet)).returncode == 0
    platforms = [arg for tag in _this_platform() for arg in ("--platform", tag)]
    made = _edgefleet(
        "provision", "pi-7", "--dir", str(fleet), "--wheelhouse", str(house),
        *platforms, "--python-version", PY,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"wheelhouse: {house}" in made.stdout
    assert not list(house.glob("edgefleet*")), "the agent wheels come from the bundle"
    with tarfile.open(fleet / "bundles/pi-7.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    bundle = tmp_path / "unpacked/edgefleet-pi-7"
    assert sorted(p.name.split("-")[0] for p in (bundle / "wheels").iterdir()) == [
        "edgefleet_device",
        "edgefleet_shared",
    ]
    assert "install-device.sh --wheelhouse" in (bundle / "INSTALL.txt").read_text()

    venv = tmp_path / "agent-venv"
    installed = subprocess.run(
        ["sh", str(bundle / "install-device.sh"), "--venv-only", str(venv),
         "--wheelhouse", str(house), "--python", sys.executable],
        capture_output=True, text=True, check=False, timeout=600, env=_offline_env(), cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "--no-index" in installed.stdout

    helped = subprocess.run(
        [str(venv / "bin/edgefleet-agent"), "--help"],
        capture_output=True, text=True, check=False, timeout=120, env=_offline_env(), cwd=tmp_path,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    assert "predict" in helped.stdout
    listed = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True, env=_offline_env(), cwd=tmp_path,
    ).stdout.lower()  # fmt: skip
    assert "edgefleet-device==" in listed
    assert "ai-edge-litert==" in listed
    assert "tensorflow" not in listed
    assert "edgefleet-host" not in listed


def test_a_platform_without_wheels_is_a_clear_error_naming_the_package(tmp_path):
    assert _edgefleet("init", "--dir", str(tmp_path / "fleet")).returncode == 0
    result = _edgefleet(
        "wheelhouse", str(tmp_path / "house"), "--platform", "manylinux_2_36_riscv64"
    )
    assert result.returncode == 1
    assert result.stdout.startswith("error: pip failed downloading wheels")
    assert "(no wheel of ai-edge-litert" in result.stdout
    assert "pip wheel PACKAGE" in result.stdout
