"""Fleet provisioning: CA, broker/host/device certificates, signing keys, ACL, CRL, bundles.

A fleet directory (``edgefleet init``) looks like::

    fleet.toml            FleetConfig (edgefleet.host.fleetdir); its presence marks a fleet
    devices.json          provisioned devices and revoked certificate serials
    ca/ca.crt ca/ca.key   the fleet CA (key 0600); ca/crl.pem the CRL Mosquitto reads
    broker/               server.crt, server.key, mosquitto.conf, acl, data/ (persistence)
    host/                 host.crt, host.key: the host's client identity
    signing/KEYID.key     Ed25519 model-signing keys (0600) and KEYID.pub; retired/ old ones
    devices/ID.crt        each device's current certificate (its key only goes in the bundle)
    bundles/ID.tar.gz     the device bundle (0600: it holds the device's private key)

Every file is written atomically; changes to an existing fleet hold an exclusive lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edgefleet.host.errors import ProvisionError
from edgefleet.host.fleet._clientid import HOST_CLIENT_PREFIX
from edgefleet.host.fleetdir import (
    DEFAULT_HOST_IDENTITY,
    FLEET_FILE,
    REGISTRY_FILE,
    DeviceRecord,
    FleetConfig,
    Registry,
    RevokedSerial,
    fleet_toml,
    load_fleet_config,
    load_registry,
    parse_broker_url,
    validate_prefix,
)
from edgefleet.host.provision import _pki as pki
from edgefleet.host.provision._brokerconf import (
    DEFAULT_AUTOSAVE_INTERVAL,
    DEFAULT_AUTOSAVE_ON_CHANGES,
    render_acl,
    render_mosquitto_conf,
)
from edgefleet.host.provision._bundle import write_bundle
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.errors import BrokerUrlError, TopicError
from edgefleet.shared.manifest import key_id_for
from edgefleet.shared.topics import validate_id

_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
PRIVATE = 0o600


def init_fleet(
    fleet_dir: Path,
    *,
    name: str = "edgefleet",
    broker_url: str = "mqtts://localhost:8883",
    host_broker_url: str | None = None,
    prefix: str = "edgefleet",
    sans: Sequence[str] | None = None,
    bind_address: str | None = None,
    broker_user: str | None = None,
    host_identity: str = DEFAULT_HOST_IDENTITY,
    ca_days: int = 3650,
    cert_days: int = 1825,
    crl_days: int = 400,
    autosave_interval: int = DEFAULT_AUTOSAVE_INTERVAL,
    autosave_on_changes: bool = DEFAULT_AUTOSAVE_ON_CHANGES,
) -> FleetConfig:
    """Create a new fleet directory; refuse if ``fleet_dir`` exists and is not empty.

    Args:
        fleet_dir: Where to create the fleet (must be missing or empty).
        name: Fleet name (the CA's organization).
        broker_url: ``mqtts://HOST:PORT`` that devices connect to (the device listener).
        host_broker_url: ``mqtts://HOST:PORT`` of the host-only listener that host
            processes connect to (default: the broker URL's host, port + 1).
        prefix: MQTT topic prefix.
        sans: Broker certificate SANs (default: the URL's host, localhost, 127.0.0.1).
        bind_address: Address the Mosquitto listener binds (default: all interfaces).
        broker_user: ``user`` line for mosquitto.conf (None: Mosquitto's default).
        host_identity: CN of the host certificate (not a valid device id, so no clash).
        ca_days: CA validity in days.
        cert_days: Broker and host certificate validity in days.
        crl_days: Days until the CRL must be re-signed.
        autosave_interval: The broker's ``autosave_interval`` (docs/provisioning.md).
        autosave_on_changes: The broker's ``autosave_on_changes``.

    Returns:
        The new fleet's config.
    """
    fleet_dir = fleet_dir.resolve()
    _refuse_existing(fleet_dir)
    validate_prefix(prefix)
    address = parse_broker_url(broker_url)
    if not address.tls:
        raise ProvisionError(f"broker URL {broker_url!r} must be mqtts:// (devices use TLS)")
    try:
        host_url = host_broker_url or str(BrokerUrl("mqtts", address.host, address.port + 1))
    except BrokerUrlError as exc:
        raise ProvisionError(f"{exc}: pass --host-broker-url") from exc
    host_address = parse_broker_url(host_url)
    if not host_address.tls or host_address.port == address.port:
        raise ProvisionError(
            f"host broker URL {host_url!r} must be mqtts:// on another port than the "
            f"device listener ({address.port}): host processes get a listener of their own"
        )
    fleet_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=fleet_dir.parent, prefix=f".{fleet_dir.name}.init-"))
    try:
        config = _create_fleet_files(
            staging,
            name=name,
            broker_url=broker_url,
            host_broker_url=host_url,
            prefix=prefix,
            sans=list(sans or _default_sans(address.host)),
            host_identity=host_identity,
            cert_days=cert_days,
            ca_days=ca_days,
            crl_days=crl_days,
        )
        conf = render_mosquitto_conf(
            config,
            bind_address=bind_address,
            broker_user=broker_user,
            paths_under=fleet_dir,
            autosave_interval=autosave_interval,
            autosave_on_changes=autosave_on_changes,
        )
        write_atomic(staging / config.broker_conf, conf.encode())
        if fleet_dir.exists():
            fleet_dir.rmdir()  # empty, checked above
        staging.replace(fleet_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_fleet_config(fleet_dir)


def _refuse_existing(fleet_dir: Path) -> None:
    if (fleet_dir / FLEET_FILE).exists():
        raise ProvisionError(f"{fleet_dir} already holds a fleet; refusing to overwrite it")
    if fleet_dir.exists() and (not fleet_dir.is_dir() or any(fleet_dir.iterdir())):
        raise ProvisionError(
            f"{fleet_dir} exists and is not an empty directory; choose a new --fleet DIR"
        )


def _default_sans(host: str) -> list[str]:
    return list(dict.fromkeys([host, "localhost", "127.0.0.1"]))


def _create_fleet_files(
    root: Path,
    *,
    name: str,
    broker_url: str,
    host_broker_url: str,
    prefix: str,
    sans: list[str],
    host_identity: str,
    cert_days: int,
    ca_days: int,
    crl_days: int,
) -> FleetConfig:
    ca = pki.create_ca(name=name, days=ca_days)
    write_atomic(root / "ca/ca.key", pki.key_pem(ca.key), mode=PRIVATE)
    write_atomic(root / "ca/ca.crt", pki.cert_pem(ca.cert))
    _issue_to_files(ca, root / "broker/server", "broker", server=True, sans=sans, days=cert_days)
    # Host certificates come from a CA of their own, which only the host listener trusts:
    # a device certificate cannot connect there, and a host one not on the device listener.
    host_ca = pki.create_ca(name=f"{name} hosts", days=ca_days)
    write_atomic(root / "ca/host-ca.key", pki.key_pem(host_ca.key), mode=PRIVATE)
    write_atomic(root / "ca/host-ca.crt", pki.cert_pem(host_ca.cert))
    _issue_to_files(host_ca, root / "host/host", host_identity, days=cert_days)
    key_id = _new_signing_key(root / "signing")
    config = FleetConfig(
        name=name,
        prefix=prefix,
        broker_url=broker_url,
        host_broker_url=host_broker_url,
        host_ca_file="ca/host-ca.crt",
        host_ca_key_file="ca/host-ca.key",
        host_identity=host_identity,
        crl_days=crl_days,
        signing_key=f"signing/{key_id}.key",
        signing_key_id=key_id,
        trusted_keys=[f"signing/{key_id}.pub"],
    )
    config._root = root  # noqa: SLF001 - the staging directory until it is renamed
    _write_crl(config, Registry())
    _write_acl(config, Registry())
    (root / "broker/data").mkdir(parents=True, exist_ok=True)
    write_atomic(root / FLEET_FILE, fleet_toml(config).encode())
    return config


def _issue_to_files(
    ca: pki.CertificateAuthority,
    stem: Path,
    common_name: str,
    *,
    server: bool = False,
    sans: list[str] | None = None,
    days: int,
) -> int:
    key = pki.new_tls_key()
    cert = pki.issue_certificate(
        ca,
        common_name=common_name,
        public_key=key.public_key(),
        server=server,
        sans=sans,
        days=days,
    )
    write_atomic(stem.with_suffix(".key"), pki.key_pem(key), mode=PRIVATE)
    write_atomic(stem.with_suffix(".crt"), pki.cert_pem(cert))
    return int(cert.serial_number)


# --- signing keys -----------------------------------------------------------------------


def signing_key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """Return the protocol's key id for ``public_key`` (also its file name)."""
    key_id = key_id_for(public_key)
    if not _KEY_ID_RE.fullmatch(key_id):
        raise ProvisionError(f"key id {key_id!r} is not usable as a file name")
    return key_id


def _new_signing_key(signing_dir: Path) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    key_id = signing_key_id(key.public_key())
    write_atomic(signing_dir / f"{key_id}.key", pki.key_pem(key), mode=PRIVATE)
    write_atomic(signing_dir / f"{key_id}.pub", pki.signing_public_pem(key))
    return key_id


def load_signing_key(config: FleetConfig) -> ed25519.Ed25519PrivateKey:
    """Load the fleet's active Ed25519 signing key."""
    path = config.resolve(config.signing_key)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot load signing key {path}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ProvisionError(f"{path} is not an Ed25519 private key")
    return key


def trusted_key_files(config: FleetConfig) -> dict[str, Path]:
    """Return the trusted public keys as key id -> PEM file."""
    result = {}
    for relative in config.trusted_keys:
        path = config.resolve(relative)
        try:
            public = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"cannot load trusted key {path}: {exc}") from exc
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise ProvisionError(f"{path} is not an Ed25519 public key")
        result[signing_key_id(public)] = path
    return result


def rotate_signing_key(fleet_dir: Path, *, activate: bool = True) -> str:
    """Create a new signing key and add it to the trusted set.

    Args:
        fleet_dir: The fleet.
        activate: Sign with the new key from now on. With False the key is only staged
            (trusted, shipped in new bundles) until :func:`activate_signing_key`: the safe
            order when devices in the field must learn the new key first.

    Returns:
        The new key id. The old key stays trusted until :func:`retire_signing_key`.
    """
    with _locked(fleet_dir) as config:
        key_id = _new_signing_key(config.resolve("signing"))
        update: dict[str, object] = {
            "trusted_keys": [*config.trusted_keys, f"signing/{key_id}.pub"]
        }
        if activate:
            update |= {"signing_key": f"signing/{key_id}.key", "signing_key_id": key_id}
        _save_config(config.model_copy(update=update), config.root)
    return key_id


def activate_signing_key(fleet_dir: Path, key_id: str) -> None:
    """Sign with ``key_id`` (a trusted key whose private key the fleet holds) from now on."""
    with _locked(fleet_dir) as config:
        if key_id not in trusted_key_files(config):
            raise ProvisionError(f"key {key_id} is not trusted by this fleet; see `keys list`")
        key_file = f"signing/{key_id}.key"
        if not config.resolve(key_file).exists():
            raise ProvisionError(f"the private key of {key_id} is not in {config.root}/signing")
        update = {"signing_key": key_file, "signing_key_id": key_id}
        _save_config(config.model_copy(update=update), config.root)


def retire_signing_key(fleet_dir: Path, key_id: str) -> None:
    """Stop trusting ``key_id``: new bundles leave it out; its private key moves to retired/."""
    with _locked(fleet_dir) as config:
        files = trusted_key_files(config)
        if key_id not in files:
            raise ProvisionError(f"key {key_id} is not trusted by this fleet; see `keys list`")
        if key_id == config.signing_key_id:
            raise ProvisionError(f"key {key_id} is the active signing key; activate another first")
        keep = [k for k in config.trusted_keys if config.resolve(k) != files[key_id]]
        _save_config(config.model_copy(update={"trusted_keys": keep}), config.root)
        retired = config.resolve("signing/retired")
        retired.mkdir(exist_ok=True)
        for path in (files[key_id], files[key_id].with_suffix(".key")):
            if path.exists():
                path.replace(retired / path.name)


# --- devices --------------------------------------------------------------------------


def provision_device(
    fleet_dir: Path,
    device_id: str,
    *,
    groups: Sequence[str] = (),
    reissue: bool = False,
    days: int = 1825,
    edgetpu: str = "off",
) -> Path:
    """Issue a device certificate and write its bundle; record the device in the fleet.

    Args:
        fleet_dir: The fleet.
        device_id: The device id (certificate CN, MQTT username).
        groups: Groups whose desired state the device may read.
        reissue: Allowed to replace an existing (or revoked) device: its previous
            certificate is revoked and a new key and certificate are issued.
        days: Certificate validity in days.
        edgetpu: The agent's ``runtime.edgetpu`` setting (off, usb, pci, ...).

    Returns:
        Path of the bundle tarball (mode 0600: it holds the device's private key).
    """
    groups = _check_ids(device_id, groups)
    with _locked(fleet_dir) as config:
        registry = load_registry(config.root)
        previous = registry.devices.get(device_id)
        if previous is not None and not reissue:
            state = "was revoked" if previous.revoked_at else "is already provisioned"
            raise ProvisionError(
                f"device {device_id} {state}; pass --reissue to issue a new certificate"
            )
        if previous is not None and previous.revoked_at is None:
            _revoke_serial(registry, previous)
        ca = pki.load_ca(
            cert_path=config.resolve(config.ca_file), key_path=config.resolve(config.ca_key_file)
        )
        key = pki.new_tls_key()
        cert = pki.issue_certificate(
            ca, common_name=device_id, public_key=key.public_key(), days=days
        )
        record = DeviceRecord(
            device_id=device_id,
            groups=groups,
            serial=cert.serial_number,
            provisioned_at=int(time.time()),
        )
        write_atomic(config.resolve(f"devices/{device_id}.crt"), pki.cert_pem(cert))
        bundle = write_bundle(
            config,
            record,
            trusted=trusted_key_files(config),
            cert_pem=pki.cert_pem(cert),
            key_pem=pki.key_pem(key),
            edgetpu=edgetpu,
        )
        registry.devices[device_id] = record
        _save_registry(config, registry)
        _write_crl(config, registry)
        _write_acl(config, registry)
    return bundle


def _check_ids(device_id: str, groups: Sequence[str]) -> list[str]:
    if device_id.startswith(HOST_CLIENT_PREFIX):
        # The broker binds a device's client id to its id: this one could take a host's session.
        raise ProvisionError(
            f"device id {device_id!r} starts with {HOST_CLIENT_PREFIX!r}, which is reserved for "
            "the host's own MQTT client ids: choose another id"
        )
    try:
        validate_id(device_id)
        return list(dict.fromkeys(validate_id(g, what="group") for g in groups))
    except TopicError as exc:
        raise ProvisionError(str(exc)) from exc


def revoke_device(fleet_dir: Path, device_id: str) -> DeviceRecord:
    """Revoke the device's certificate (CRL) and drop it from the ACL.

    A broker reload (SIGHUP) applies both to NEW connections only; a session the device
    already has goes on until the broker restarts (:func:`restart_broker`,
    ``edgefleet revoke DEVICE --apply``; docs/provisioning.md, "Revoking a device").
    """
    with _locked(fleet_dir) as config:
        registry = load_registry(config.root)
        record = registry.devices.get(device_id)
        if record is None:
            raise ProvisionError(f"device {device_id} is not provisioned in {config.root}")
        if record.revoked_at is not None:
            raise ProvisionError(f"device {device_id} is already revoked")
        _revoke_serial(registry, record)
        _save_registry(config, registry)
        _write_crl(config, registry)
        _write_acl(config, registry)
        return registry.devices[device_id]


def _revoke_serial(registry: Registry, record: DeviceRecord) -> None:
    now = int(time.time())
    registry.revoked.append(
        RevokedSerial(serial=record.serial, device_id=record.device_id, revoked_at=now)
    )
    registry.devices[record.device_id] = record.model_copy(update={"revoked_at": now})


def refresh_crl(fleet_dir: Path) -> Path:
    """Re-sign the CRL with a fresh next-update time (run well within ``crl_days``)."""
    with _locked(fleet_dir) as config:
        return _write_crl(config, load_registry(config.root))


def _write_crl(config: FleetConfig, registry: Registry) -> Path:
    ca = pki.load_ca(
        cert_path=config.resolve(config.ca_file), key_path=config.resolve(config.ca_key_file)
    )
    revoked = {r.serial: _utc(r.revoked_at) for r in registry.revoked}
    crl = pki.build_crl(ca, revoked=revoked, days=config.crl_days)
    path = config.resolve(config.crl_file)
    write_atomic(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def _utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def _write_acl(config: FleetConfig, registry: Registry) -> None:
    text = render_acl(config, registry.active())
    write_atomic(config.resolve(config.acl_file), text.encode())


def _save_registry(config: FleetConfig, registry: Registry) -> None:
    data = registry.model_dump_json(indent=2).encode()
    write_atomic(config.resolve(REGISTRY_FILE), data)


def _save_config(config: FleetConfig, root: Path) -> None:
    write_atomic(root / FLEET_FILE, fleet_toml(config).encode())


@contextmanager
def _locked(fleet_dir: Path) -> Iterator[FleetConfig]:
    """Hold the fleet's lock file and yield its config, read under the lock."""
    load_fleet_config(fleet_dir)  # a clear error before creating a lock file anywhere
    with (fleet_dir / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield load_fleet_config(fleet_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
