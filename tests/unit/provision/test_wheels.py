"""The agent wheels a bundle carries, re-packed installs, and the wheelhouse's requirements."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from edgefleet.host import __version__
from edgefleet.host.errors import ProvisionError
from edgefleet.host.provision import _wheels, agent_wheels, init_fleet, provision_device

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    wheels = agent_wheels(tmp_path_factory.mktemp("agent-wheels"))
    return {w.name.split("-")[0]: w for w in wheels}


def test_the_checkout_builds_the_shared_and_device_wheels_of_the_host_version(built):
    assert sorted(built) == ["edgefleet_device", "edgefleet_shared"]
    for wheel in built.values():
        assert f"-{__version__}-py3-none-any.whl" in wheel.name
    with zipfile.ZipFile(built["edgefleet_device"]) as zf:
        agent = zf.read("edgefleet/device/agent.py")
    assert agent == (REPO / "device/edgefleet/device/agent.py").read_bytes()


def test_an_editable_install_points_at_its_checkout_folder():
    dist = metadata.distribution("edgefleet-device")
    assert _wheels.editable_source(dist) == REPO / "device"


def test_an_installed_distribution_is_repacked_into_the_same_wheel(built, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         *map(str, built.values())],
        check=True,
        capture_output=True,
    )  # fmt: skip
    for info in target.glob("*.dist-info"):
        dist = metadata.PathDistribution(info)
        assert _wheels.editable_source(dist) is None
        repacked = _wheels.repack_wheel(dist, tmp_path / "out")
        original = built[repacked.name.split("-")[0]]
        assert repacked.name == original.name
        with zipfile.ZipFile(original) as a, zipfile.ZipFile(repacked) as b:
            assert sorted(a.namelist()) == sorted(b.namelist())
            for name in a.namelist():
                if not name.endswith("/RECORD"):
                    assert a.read(name) == b.read(name), name
            _check_record(b)


def _check_record(zf: zipfile.ZipFile) -> None:
    (record_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    rows = list(csv.reader(io.StringIO(zf.read(record_name).decode())))
    assert sorted(r[0] for r in rows) == sorted(zf.namelist())
    for name, digest, size in rows:
        if name == record_name:
            assert (digest, size) == ("", "")
            continue
        data = zf.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        assert digest == f"sha256={expected.decode()}", name
        assert int(size) == len(data)


def test_a_distribution_of_another_version_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(_wheels, "__version__", "9.9.9")
    with pytest.raises(ProvisionError, match=r"edgefleet-shared .* but edgefleet-host is 9\.9\.9"):
        agent_wheels(tmp_path)


def test_requirements_come_from_the_wheel_metadata_with_markers_for_the_target(built):
    wheels = list(built.values())
    litert = _wheels.agent_requirements(
        wheels, extras=("litert",), python_version="3.11", machine="aarch64"
    )
    assert any(r.startswith("ai-edge-litert") for r in litert)
    assert not any(r.startswith(("edgefleet", "tflite-runtime", "tomli")) for r in litert)
    assert {"paho-mqtt<3,>=2.0", "numpy>=1.23", "cryptography>=41"} <= set(litert)
    legacy = _wheels.agent_requirements(
        wheels, extras=("legacy",), python_version="3.10", machine="aarch64"
    )
    assert {"tflite-runtime==2.14.0", "numpy<2", "tomli>=2"} <= set(legacy)
    assert not any(r.startswith("ai-edge-litert") for r in legacy)


def test_manylinux_tags_expand_to_the_older_glibc_tags():
    tags = _wheels.expand_platforms(["manylinux_2_36_aarch64", "linux_aarch64"])
    assert tags[:2] == ["manylinux_2_36_aarch64", "manylinux_2_35_aarch64"]
    assert "manylinux_2_17_aarch64" in tags
    assert "manylinux_2_16_aarch64" not in tags
    assert tags[-2:] == ["manylinux2014_aarch64", "linux_aarch64"]


def test_a_non_linux_platform_is_refused_before_pip_runs(tmp_path):
    with pytest.raises(ProvisionError, match="'win_amd64' is not a Linux tag"):
        _wheels.fill_wheelhouse(tmp_path / "house", platforms=["win_amd64"])
    assert not list((tmp_path / "house").iterdir())


def test_every_bundle_carries_the_agent_wheels(built, tmp_path):
    init_fleet(tmp_path / "fleet")
    archive = provision_device(tmp_path / "fleet", "pi-3")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        for name, wheel in built.items():
            (member,) = [n for n in names if n.startswith(f"edgefleet-pi-3/wheels/{name}-")]
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == wheel.read_bytes()
        install = tar.extractfile("edgefleet-pi-3/INSTALL.txt")
        assert install is not None
        text = install.read().decode()
    assert f"edgefleet-device {__version__} (wheels/)" in text
    assert "sudo ./install-device.sh --wheelhouse ../wheelhouse" in text
