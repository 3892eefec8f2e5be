"""deploy/install-device.sh, run from a real bundle against a temp root (--root --dry-run)."""

from __future__ import annotations

import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from edgefleet.host.provision import init_fleet, provision_device


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("install")
    init_fleet(root / "fleet")
    archive = provision_device(root / "fleet", "pi-010", groups=["field"])
    with tarfile.open(archive) as tar:
        tar.extractall(root / "unpacked", filter="data")
    return root / "unpacked/edgefleet-pi-010"


def _run(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(bundle / "install-device.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dry_run_into_a_temp_root_installs_the_bundle_and_only_prints_system_commands(
    bundle, tmp_path
):
    result = _run(bundle, "--root", str(tmp_path), "--dry-run", "--package", "edgefleet.whl")
    assert result.returncode == 0, result.stderr
    etc = tmp_path / "etc/edgefleet"
    assert (etc / "agent.toml").read_bytes() == (bundle / "agent.toml").read_bytes()
    assert (etc / "device.crt").read_bytes() == (bundle / "device.crt").read_bytes()
    assert _mode(etc / "device.key") == 0o640
    assert sorted(p.name for p in (etc / "signing-keys").iterdir()) == sorted(
        p.name for p in (bundle / "signing-keys").iterdir()
    )
    unit = tmp_path / "etc/systemd/system/edgefleet-agent.service"
    assert unit.read_bytes() == (bundle / "edgefleet-agent.service").read_bytes()
    assert (tmp_path / "etc/udev/rules.d/99-coral-edgetpu.rules").is_file()
    assert _mode(tmp_path / "var/lib/edgefleet/inbox") == 0o750
    out = result.stdout
    for printed in (
        "would run: apt-get install -y --no-install-recommends python3-venv",
        f"would run: python3 -m venv {tmp_path}/opt/edgefleet/venv",
        f"would run: {tmp_path}/opt/edgefleet/venv/bin/pip install edgefleet.whl",
        f"would run: chown root:edgefleet {etc}/device.key",
        "would run: systemctl enable --now edgefleet-agent.service",
    ):
        assert printed in out, printed
    assert not (tmp_path / "opt/edgefleet/venv").exists(), "a system command really ran"


def test_no_start_skips_enabling_the_service(bundle, tmp_path):
    result = _run(bundle, "--root", str(tmp_path), "--dry-run", "--no-start")
    assert result.returncode == 0, result.stderr
    assert "systemctl enable" not in result.stdout
    assert "would run: systemctl daemon-reload" in result.stdout


def test_incomplete_bundle_is_refused_before_anything_is_installed(bundle, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("install-device.sh", "agent.toml", "ca.crt"):
        (partial / name).write_bytes((bundle / name).read_bytes())
    result = _run(partial, "--root", str(tmp_path / "root"), "--dry-run")
    assert result.returncode == 1
    assert "device.crt is missing" in result.stderr
    assert not (tmp_path / "root").exists()


def test_unknown_option_is_an_error_and_help_works(bundle):
    bad = _run(bundle, "--frobnicate")
    assert bad.returncode == 1
    assert "unknown option '--frobnicate'" in bad.stderr
    usage = _run(bundle, "--help")
    assert usage.returncode == 0
    assert "--root DIR" in usage.stdout
