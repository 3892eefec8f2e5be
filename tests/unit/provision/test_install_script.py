"""deploy/install-device.sh, run from a real bundle against a temp root (--root --dry-run).

EDGEFLEET_SYSTEMD_RUNDIR stands in for /run/systemd/system: an existing folder makes the
script behave as on a booted Pi, a missing one as in a chroot (image mode).
"""

from __future__ import annotations

import os
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


def _run(bundle: Path, *args: str, booted: bool = True) -> subprocess.CompletedProcess[str]:
    rundir = bundle if booted else bundle / "no-such-dir"
    return subprocess.run(
        ["sh", str(bundle / "install-device.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "EDGEFLEET_SYSTEMD_RUNDIR": str(rundir)},
    )


def _wheel(bundle: Path, dist: str) -> Path:
    (wheel,) = (bundle / "wheels").glob(f"{dist}-*.whl")
    return wheel


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dry_run_into_a_temp_root_installs_the_bundle_and_only_prints_system_commands(
    bundle, tmp_path
):
    result = _run(bundle, "--root", str(tmp_path), "--dry-run", "--package", "edgefleet-device")
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
    assert _mode(tmp_path / "var/lib/edgefleet") == 0o750
    assert _mode(tmp_path / "var/spool/edgefleet/inbox") == 0o2770  # setgid, group-writable
    assert "would run: groupadd --system edgefleet-inbox" in result.stdout
    assert "would run: chown edgefleet:edgefleet-inbox" in result.stdout
    out = result.stdout
    for printed in (
        "would run: apt-get install -y --no-install-recommends python3-venv",
        f"would run: python3 -m venv {tmp_path}/opt/edgefleet/venv",
        (
            f"would run: {tmp_path}/opt/edgefleet/venv/bin/pip install --find-links "
            f"{bundle}/wheels edgefleet-device"
        ),
        f"would run: chown root:edgefleet {etc}/device.key",
        "would run: systemctl enable --now edgefleet-agent.service",
    ):
        assert printed in out, printed
    assert not (tmp_path / "opt/edgefleet/venv").exists(), "a system command really ran"


def test_inbox_users_join_the_inbox_group_and_apt_runs_into_another_root(bundle, tmp_path):
    args = ("--root", str(tmp_path), "--dry-run", "--inbox-user", "pi", "--inbox-user", "sensor")
    result = _run(bundle, *args)
    assert result.returncode == 0, result.stderr
    for user in ("edgefleet", "pi", "sensor"):
        assert f"would run: usermod -a -G edgefleet-inbox {user}" in result.stdout
    # Installed packages skip apt only on the running machine, never for another root.
    assert "would run: apt-get update" in result.stdout
    assert _run(bundle, "--inbox-user").returncode == 1


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


def test_default_installs_the_bundles_own_wheels_with_litert(bundle, tmp_path):
    result = _run(bundle, "--root", str(tmp_path), "--dry-run")
    assert result.returncode == 0, result.stderr
    device, shared = _wheel(bundle, "edgefleet_device"), _wheel(bundle, "edgefleet_shared")
    pip = f"{tmp_path}/opt/edgefleet/venv/bin/pip"
    assert (
        f"would run: {pip} install --find-links {bundle}/wheels {device}[litert] {shared}\n"
        in result.stdout
    )
    assert "image mode" not in result.stdout


def test_wheelhouse_installs_offline_and_legacy_picks_tflite_runtime(bundle, tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    result = _run(
        bundle, "--root", str(tmp_path), "--dry-run", "--wheelhouse", str(house), "--legacy"
    )
    assert result.returncode == 0, result.stderr
    device, shared = _wheel(bundle, "edgefleet_device"), _wheel(bundle, "edgefleet_shared")
    pip = f"{tmp_path}/opt/edgefleet/venv/bin/pip"
    assert (
        f"would run: {pip} install --no-index --find-links {house} --find-links {bundle}/wheels "
        f"{device}[legacy] {shared}\n" in result.stdout
    )
    assert "install --upgrade pip" not in result.stdout  # that would need the index


def test_missing_wheelhouse_or_wheels_are_refused_before_any_change(bundle, tmp_path):
    result = _run(bundle, "--root", str(tmp_path / "r1"), "--wheelhouse", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "wheelhouse" in result.stderr
    assert "edgefleet wheelhouse DIR" in result.stderr
    assert not (tmp_path / "r1").exists()
    no_wheels = tmp_path / "no-wheels"
    no_wheels.mkdir()
    for p in bundle.iterdir():
        if p.is_file():
            (no_wheels / p.name).write_bytes(p.read_bytes())
    (no_wheels / "signing-keys").mkdir()
    result = _run(no_wheels, "--root", str(tmp_path / "r2"), "--dry-run")
    assert result.returncode == 1
    assert "bundle has no edgefleet_device wheel" in result.stderr
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("how", ["auto", "--image"])
def test_image_mode_skips_udevadm_and_systemctl_and_enables_the_unit_by_symlink(
    bundle, tmp_path, how
):
    args = ["--image"] if how == "--image" else []
    result = _run(bundle, "--root", str(tmp_path), "--dry-run", *args, booted=how == "--image")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ("not booted with systemd" in out) == (how == "auto")
    assert "image mode: udevadm and systemctl are skipped" in out
    assert "would run: udevadm" not in out
    assert "would run: systemctl" not in out
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service"
    assert link.readlink().as_posix() == "/etc/systemd/system/edgefleet-agent.service"
    assert "would run: apt-get install" in out  # everything else still happens (in the chroot)


def test_image_mode_with_no_start_enables_nothing(bundle, tmp_path):
    result = _run(bundle, "--root", str(tmp_path), "--dry-run", "--no-start", booted=False)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "etc/systemd/system/multi-user.target.wants").exists()


def test_venv_only_builds_just_the_virtualenv(bundle, tmp_path):
    venv = tmp_path / "agent-venv"
    result = _run(bundle, "--venv-only", str(venv), "--python", "python3.11", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("would run: ")]
    assert lines[0] == f"would run: python3.11 -m venv {venv}"
    assert all(str(venv) in ln for ln in lines), lines
    assert not any(word in result.stdout for word in ("apt-get", "useradd", "systemctl"))
