"""The three wheels: one PEP 420 namespace, a small device-only agent, data only on the host.

The slow `venv` test installs ONLY the shared and device wheels into fresh virtualenvs (with
LiteRT, and with the legacy tflite-runtime) and runs the agent there, without TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

from edgefleet.host.datasets import load_mnist
from support.agent import bare_predictions, mnist_eval_pngs, shared_mnist_model

ROOT = Path(__file__).resolve().parents[1]
DISTS = ("shared", "device", "host")
DEVICE_MODULES = [
    f"edgefleet.{pkg}.{p.stem}"
    for pkg in ("device", "shared")
    for p in sorted((ROOT / pkg / "edgefleet" / pkg).glob("*.py"))
    if p.stem != "__init__"
]
DATA_SUFFIXES = (".gz", ".npy", ".npz", ".keras", ".h5", ".tflite", ".png", ".jpg", ".csv")

CHECK_DEVICE_ENV = """
import importlib, importlib.util, sys
mods = sys.argv[1:]
for m in ["edgefleet", "edgefleet.device", "edgefleet.shared", *mods]:
    importlib.import_module(m)
assert importlib.util.find_spec("edgefleet.host") is None, "the host package is installed"
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is installed"
assert "tensorflow" not in sys.modules
for bare in ("host", "device", "shared"):
    assert importlib.util.find_spec(bare) is None, f"bare package {bare!r} installed"
print("device-env-ok", len(mods))
"""


@pytest.fixture(scope="module")
def wheel_build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Build the three wheels and the root project (what `make` installs), keep what pip said."""
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(out), *(str(ROOT / d) for d in DISTS), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return out, proc


@pytest.fixture(scope="module")
def wheels(wheel_build: tuple[Path, subprocess.CompletedProcess[str]]) -> dict[str, Path]:
    out, _ = wheel_build
    found = {}
    for dist in DISTS:
        (found[dist],) = out.glob(f"edgefleet_{dist}-*.whl")
    return found


def test_building_every_project_prints_no_warning(wheel_build):
    # The first version's setuptools builds printed packaging warnings at every `make demo`.
    _, proc = wheel_build
    said = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in said if "warn" in line.lower()], "\n".join(said)


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def _version(dist: str) -> str:
    text = (ROOT / dist / "edgefleet" / dist / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert match, f"{dist} has no __version__"
    return match[1]


@pytest.mark.parametrize("dist", DISTS)
def test_each_wheel_installs_only_its_portion_of_the_edgefleet_namespace(wheels, dist):
    names = _names(wheels[dist])
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"edgefleet"}
    assert "edgefleet/__init__.py" not in names  # PEP 420: the portions must not collide
    code = [n for n in names if not n.split("/")[0].endswith(".dist-info")]
    assert all(n.startswith(f"edgefleet/{dist}/") for n in code)
    assert f"edgefleet/{dist}/__init__.py" in names


def test_device_wheel_is_small_and_holds_no_host_code_or_data(wheels):
    size = wheels["device"].stat().st_size
    assert size <= 200_000, f"device wheel is {size} bytes"
    names = _names(wheels["device"])
    assert not [n for n in names if n.startswith("edgefleet/host/")]
    assert not [n for n in names if "datasets" in n or n.endswith(DATA_SUFFIXES)]


def test_shared_wheel_is_small_and_holds_no_data(wheels):
    size = wheels["shared"].stat().st_size
    assert size <= 150_000, f"shared wheel is {size} bytes"
    assert not [n for n in _names(wheels["shared"]) if n.endswith(DATA_SUFFIXES)]


def test_host_wheel_carries_the_data_and_every_deploy_file_unchanged(wheels):
    with zipfile.ZipFile(wheels["host"]) as zf:
        names = set(zf.namelist())
        for name in ("README.md", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            assert f"edgefleet/host/datasets/data/mnist/{name}" in names
        deploy = [p for p in sorted((ROOT / "deploy").rglob("*")) if p.is_file()]
        assert deploy
        for path in deploy:
            packaged = f"edgefleet/host/templates/{path.relative_to(ROOT / 'deploy').as_posix()}"
            assert zf.read(packaged) == path.read_bytes(), packaged
        shipped = {n for n in names if n.startswith("edgefleet/host/templates/")}
        assert len(shipped) == len(deploy), "a file in templates/ that deploy/ does not have"


@pytest.mark.parametrize(
    ("dist", "line"),
    [
        ("host", "edgefleet = edgefleet.host.cli:main"),
        ("device", "edgefleet-agent = edgefleet.device.cli:main"),
    ],
)
def test_console_scripts_declared(wheels, dist, line):
    with zipfile.ZipFile(wheels[dist]) as zf:
        (ep,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert line in zf.read(ep).decode().splitlines()


def test_the_three_versions_and_every_internal_pin_agree(wheels):
    versions = {dist: _version(dist) for dist in DISTS}
    assert len(set(versions.values())) == 1, f"versions differ: {versions}"
    version = versions["shared"]
    for dist, wheel in wheels.items():
        assert wheel.name.startswith(f"edgefleet_{dist}-{version}-"), wheel.name
    pins = []
    for pyproject in ("device/pyproject.toml", "host/pyproject.toml", "pyproject.toml"):
        project = tomllib.loads((ROOT / pyproject).read_text())["project"]
        reqs = [*project["dependencies"]]
        for extra in project.get("optional-dependencies", {}).values():
            reqs += extra
        pins += [(pyproject, r) for r in reqs if re.match(r"edgefleet-(shared|device|host)\b", r)]
    assert ("device/pyproject.toml", f"edgefleet-shared=={version}") in pins
    assert ("host/pyproject.toml", f"edgefleet-shared=={version}") in pins
    assert ("pyproject.toml", f"edgefleet-shared=={version}") in pins
    for where, req in pins:
        assert req.endswith(f"=={version}"), f"{where}: {req} is not pinned to {version}"


# -- the device-only environments -----------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_digits(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[Path], list[int]]:
    """The tiny int8 MNIST model (real converter), 5 digit PNGs and what a bare interpreter says."""
    model = shared_mnist_model(tmp_path_factory)
    folder = tmp_path_factory.mktemp("digits")
    pngs = sorted(folder / name for name in mnist_eval_pngs(folder, 5))
    return model.path, pngs, bare_predictions(model.path, load_mnist("eval").x[:5])


def _device_env(path: Path, wheels: dict[str, Path], extra: str) -> Path:
    """A fresh venv with only the shared and device wheels (deps from the index) and pytest."""
    venv.create(path, with_pip=True, clear=True)
    py = path / "bin" / "python"
    test_deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet",
         f"{wheels['device']}[{extra}]", str(wheels["shared"]), *test_deps],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    return py


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(a) for a in args], check=False, capture_output=True, text=True, cwd=cwd, env=env
    )


@pytest.mark.venv
@pytest.mark.slow
@pytest.mark.parametrize("extra", ["litert", "legacy"])
def test_shared_and_device_wheels_alone_run_the_agent_without_tensorflow(
    extra, wheels, model_and_digits, tmp_path
):
    bin_dir = tmp_path / f"venv-{extra}" / "bin"
    py = _device_env(bin_dir.parent, wheels, extra)
    ok = _run(py, "-c", CHECK_DEVICE_ENV, *DEVICE_MODULES, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"device-env-ok {len(DEVICE_MODULES)}" in ok.stdout

    helped = _run(bin_dir / "edgefleet-agent", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "edgefleet-agent" in helped.stdout

    if extra == "legacy":  # tflite-runtime 2.14 is built against numpy 1
        numpy = _run(py, "-c", "import numpy; print(numpy.__version__)", cwd=tmp_path)
        assert numpy.stdout.startswith("1."), numpy.stdout + numpy.stderr
    runtime = "tflite_runtime" if extra == "legacy" else "ai_edge_litert"

    model, pngs, reference = model_and_digits
    predicted = _run(
        bin_dir / "edgefleet-agent", "predict", "--backend", runtime, "--model", model, *pngs,
        cwd=tmp_path,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [int(line["label"]) for line in lines] == reference

    # The device and protocol unit tests pass in the device-only environment too.
    # Run from outside the checkout so the installed package, not the source tree, is tested.
    run = _run(
        py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
        "-c", ROOT / "pyproject.toml", "--rootdir", ROOT,
        ROOT / "tests/unit/device", ROOT / "tests/unit/shared",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
