"""The distribution installs under one namespace and the device side runs without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_MODULES = [
    f"edgefleet.{pkg}.{p.stem}"
    for pkg in ("device", "shared")
    for p in sorted((ROOT / pkg).glob("*.py"))
    if p.stem != "__init__"
]

CHECK_DEVICE_ENV = """
import importlib, importlib.util, sys
mods = sys.argv[1:]
for m in ["edgefleet", "edgefleet.device", "edgefleet.shared", *mods]:
    importlib.import_module(m)
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is installed"
assert "tensorflow" not in sys.modules
for bare in ("host", "device", "shared"):
    assert importlib.util.find_spec(bare) is None, f"bare package {bare!r} installed"
print("device-env-ok", len(mods))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("edgefleet-*.whl")
    return whl


def test_wheel_installs_only_the_edgefleet_namespace(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"edgefleet"}
    for sub in ("host", "device", "shared"):
        assert f"edgefleet/{sub}/__init__.py" in names
    # The real MNIST files and their license note ship with the package.
    assert "edgefleet/host/datasets/data/mnist/README.md" in names
    assert "edgefleet/host/datasets/data/mnist/t10k-images-idx3-ubyte.gz" in names


def test_console_scripts_declared(wheel: Path):
    zf = zipfile.ZipFile(wheel)
    (ep,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
    text = zf.read(ep).decode()
    assert "edgefleet = edgefleet.host.cli:main" in text
    assert "edgefleet-agent = edgefleet.device.cli:main" in text


def _make_env(path: Path, extra: str) -> Path:
    venv.create(path, with_pip=True, clear=True)
    py = path / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", f"{ROOT}[{extra},test]"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    return py


@pytest.mark.venv
@pytest.mark.slow
@pytest.mark.parametrize("extra", ["device", "device-legacy"])
def test_device_extra_runs_without_tensorflow(extra: str, tmp_path: Path):
    py = _make_env(tmp_path / f"venv-{extra}", extra)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run(
        [str(py), "-c", CHECK_DEVICE_ENV, *DEVICE_MODULES],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert "device-env-ok" in ok.stdout
    helped = subprocess.run(
        [str(tmp_path / f"venv-{extra}" / "bin" / "edgefleet-agent"), "--help"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert helped.returncode == 0, helped.stderr
    assert "edgefleet-agent" in helped.stdout
    no_host = subprocess.run(
        [str(py), "-c", "import host"], check=False, capture_output=True, cwd=tmp_path, env=env
    )
    assert no_host.returncode != 0
    if extra == "device-legacy":
        numpy_major = subprocess.run(
            [str(py), "-c", "import numpy; print(numpy.__version__.split('.')[0])"],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        ).stdout.strip()
        assert numpy_major == "1"
    # The device and protocol unit tests pass in the device-only environment too.
    # Run from outside the checkout so the installed package, not the source tree, is tested.
    unit_dirs = [
        d for d in ("tests/unit/device", "tests/unit/shared") if any((ROOT / d).glob("test_*.py"))
    ]
    if unit_dirs:
        run = subprocess.run(
            [
                str(py),
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "not slow",
                "-c",
                str(ROOT / "pyproject.toml"),
                "--rootdir",
                str(ROOT),
                *[str(ROOT / d) for d in unit_dirs],
            ],
            check=False,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
