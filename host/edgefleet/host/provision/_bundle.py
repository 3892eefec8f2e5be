"""The device bundle: a tarball with the agent wheels, config, identity, trust and installer."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from edgefleet.host import __version__
from edgefleet.host.fleetdir import DeviceRecord, FleetConfig
from edgefleet.host.provision._brokerconf import (
    BUNDLE_TEMPLATES,
    render_agent_config,
    template_text,
)
from edgefleet.host.provision._wheels import DEVICE_PYTHON, agent_wheels
from edgefleet.shared.atomic import write_atomic

PRIVATE = 0o600


def write_bundle(
    config: FleetConfig,
    record: DeviceRecord,
    *,
    trusted: dict[str, Path],
    cert_pem: bytes,
    key_pem: bytes,
    edgetpu: str,
) -> Path:
    """Write ``bundles/ID.tar.gz`` (mode 0600) and return its path.

    Args:
        config: The fleet.
        record: The device.
        trusted: Trusted signing keys, key id -> public key PEM file.
        cert_pem: The device certificate.
        key_pem: The device's private key.
        edgetpu: The agent's ``runtime.edgetpu`` setting.
    """
    keys = trusted
    files: dict[str, tuple[bytes, int]] = {
        "ca.crt": (config.resolve(config.ca_file).read_bytes(), 0o644),
        "device.crt": (cert_pem, 0o644),
        "device.key": (key_pem, PRIVATE),
        "INSTALL.txt": (_install_text(config, record).encode(), 0o644),
    }
    files |= {f"signing-keys/{kid}.pub": (p.read_bytes(), 0o644) for kid, p in keys.items()}
    agent = render_agent_config(config, record, key_files=sorted(keys), edgetpu=edgetpu)
    files["agent.toml"] = (agent.encode(), 0o644)
    for name in BUNDLE_TEMPLATES:
        mode = 0o755 if name.endswith(".sh") else 0o644
        files[Path(name).name] = (template_text(name).encode(), mode)
    files |= _wheel_files()
    path = config.resolve(f"bundles/{record.device_id}.tar.gz")
    write_atomic(path, _tarball(f"edgefleet-{record.device_id}", files), mode=PRIVATE)
    return path


def _wheel_files() -> dict[str, tuple[bytes, int]]:
    """The edgefleet-shared and edgefleet-device wheels of this host's version, as bundle files."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-bundle-") as tmp:
        return {f"wheels/{w.name}": (w.read_bytes(), 0o644) for w in agent_wheels(Path(tmp))}


def _tarball(top: str, files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    now = int(time.time())
    dirs = {str(PurePosixPath(name).parent) for name in files} - {"."}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for dirname in (top, *(f"{top}/{d}" for d in sorted(dirs | {"signing-keys"}))):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(info)
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _install_text(config: FleetConfig, record: DeviceRecord) -> str:
    groups = ", ".join(record.groups) or "(none)"
    device = record.device_id
    return f"""edgefleet device bundle for {device}
fleet: {config.name}    broker: {config.broker_url}    topic prefix: {config.prefix}
groups: {groups}    agent: edgefleet-device {__version__} (wheels/)

This bundle holds the device's PRIVATE KEY (device.key): copy it to the device over a
trusted channel (scp, a USB stick you keep) and delete other copies afterwards.

On the Raspberry Pi (Raspberry Pi OS Bookworm, 64-bit), as root:

    tar xzf {device}.tar.gz
    cd edgefleet-{device}
    sudo ./install-device.sh --inbox-user "$USER"   # --help for options; --dry-run to preview

The agent comes from wheels/ in this bundle; its dependencies (LiteRT, numpy, paho-mqtt,
...) are downloaded from pypi.org, so the Pi needs internet for this step.

Without internet on the Pi: on the host, fill a wheelhouse for it (aarch64, Python
{DEVICE_PYTHON}) and copy it next to the bundle:

    edgefleet wheelhouse wheelhouse      # on the host
    scp -r wheelhouse pi@{device}:       # with the bundle
    sudo ./install-device.sh --wheelhouse ../wheelhouse      # on the Pi, in edgefleet-{device}

Building an SD-card image instead: run the script inside the image's chroot with --image
(it skips udevadm and systemctl and enables the service for the first boot).
Older images without LiteRT wheels (32-bit): --legacy installs tflite-runtime instead.

It installs the agent in /opt/edgefleet/venv, this config in /etc/edgefleet, state in
/var/lib/edgefleet, and starts edgefleet-agent.service. Sensors drop scans into the inbox
/var/spool/edgefleet/inbox: members of the group edgefleet-inbox may, without sudo
(--inbox-user USER, or later: sudo usermod -aG edgefleet-inbox USER). For a Coral USB accelerator,
install libedgetpu first and set runtime.edgetpu = "usb" in /etc/edgefleet/agent.toml
(see docs/provisioning.md). Check: systemctl status edgefleet-agent
"""
