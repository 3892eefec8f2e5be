"""Fleet init, device provisioning, revocation and signing-key rotation (real X.509, Ed25519)."""

from __future__ import annotations

import stat
import tarfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.device.config import load_config
from edgefleet.host.errors import ProvisionError
from edgefleet.host.fleetdir import load_fleet_config, load_registry
from edgefleet.host.provision import _pki as pki
from edgefleet.host.provision import (
    activate_signing_key,
    init_fleet,
    load_signing_key,
    provision_device,
    refresh_crl,
    retire_signing_key,
    revoke_device,
    rotate_signing_key,
    trusted_key_files,
)
from edgefleet.shared.errors import UnknownKeyError
from edgefleet.shared.manifest import (
    Manifest,
    ModelVariant,
    Targets,
    key_id_for,
    load_public_key,
    sign_manifest,
    verify_manifest,
)
from edgefleet.shared.spec import PreprocessSpec, TensorSpec


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "fleet"
    init_fleet(root, broker_url="mqtts://broker.example:8883", sans=["broker.example", "10.0.0.5"])
    return root


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _bundle(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


# --- init --------------------------------------------------------------------------------


def test_init_writes_private_keys_with_mode_0600(fleet_dir):
    config = load_fleet_config(fleet_dir)
    private = [config.ca_key_file, config.key_file, config.signing_key, "broker/server.key"]
    for relative in private:
        assert _mode(config.resolve(relative)) == 0o600, relative
    assert not list(fleet_dir.rglob("*.tmp")), "a temp file was left behind"


def test_init_server_certificate_has_requested_sans_and_chains_to_the_ca(fleet_dir):
    ca = _cert(fleet_dir / "ca/ca.crt")
    server = _cert(fleet_dir / "broker/server.crt")
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_init_host_certificate_uses_the_host_identity(fleet_dir):
    config = load_fleet_config(fleet_dir)
    host = _cert(config.resolve(config.cert_file))
    # signed by the host CA, which only the host listener trusts (not the device CA)
    assert config.host_ca_file is not None
    host.verify_directly_issued_by(_cert(config.resolve(config.host_ca_file)))
    cn = host.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == config.host_identity == "edgefleet:host"


def test_init_signing_key_id_matches_the_protocol_key_id(fleet_dir):
    config = load_fleet_config(fleet_dir)
    key = load_signing_key(config)
    assert key_id_for(key.public_key()) == config.signing_key_id
    assert list(trusted_key_files(config)) == [config.signing_key_id]


def test_init_default_sans_come_from_the_broker_url(tmp_path):
    init_fleet(tmp_path / "f", broker_url="mqtts://mqtt.site.example:8884")
    server = _cert(tmp_path / "f/broker/server.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.site.example", "localhost"]
    assert "listener 8884\n" in (tmp_path / "f/broker/mosquitto.conf").read_text()


def test_init_refuses_an_existing_fleet_and_leaves_it_untouched(fleet_dir):
    before = (fleet_dir / "ca/ca.key").read_bytes()
    with pytest.raises(ProvisionError, match="already holds a fleet"):
        init_fleet(fleet_dir)
    assert (fleet_dir / "ca/ca.key").read_bytes() == before


def test_init_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ProvisionError, match="not an empty directory"):
        init_fleet(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_init_accepts_an_empty_directory(tmp_path):
    init_fleet(tmp_path)
    assert (tmp_path / "fleet.toml").is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"broker_url": "mqtt://host:1883"}, "must be mqtts"),
        ({"broker_url": "http://host"}, "is not mqtts://HOST:PORT"),
        ({"prefix": "a/+/b"}, "invalid topic prefix"),
        ({"prefix": "has space"}, "invalid topic prefix"),
    ],
)
def test_init_rejects_bad_settings_and_leaves_nothing(tmp_path, kwargs, message):
    with pytest.raises(ProvisionError, match=message):
        init_fleet(tmp_path / "f", **kwargs)
    assert list(tmp_path.iterdir()) == []


# --- provision ---------------------------------------------------------------------------


def test_provision_writes_a_complete_private_bundle(fleet_dir, tmp_path):
    bundle = provision_device(fleet_dir, "pi-001", groups=["field", "north", "field"])
    assert _mode(bundle) == 0o600
    with tarfile.open(bundle) as tar:
        members = {m.name: m for m in tar.getmembers()}
    top = "edgefleet-pi-001"
    config = load_fleet_config(fleet_dir)
    expected = {
        "agent.toml",
        "ca.crt",
        "device.crt",
        "device.key",
        "INSTALL.txt",
        "install-device.sh",
        "edgefleet-agent.service",
        "99-coral-edgetpu.rules",
        f"signing-keys/{config.signing_key_id}.pub",
        "wheels/edgefleet_device-0.2.0-py3-none-any.whl",
        "wheels/edgefleet_shared-0.2.0-py3-none-any.whl",
    }
    assert {n.removeprefix(f"{top}/") for n, m in members.items() if m.isfile()} == expected
    assert members[f"{top}/device.key"].mode == 0o600
    assert members[f"{top}/install-device.sh"].mode == 0o755

    unpacked = _bundle(bundle, tmp_path)
    device = _cert(unpacked / "device.crt")
    device.verify_directly_issued_by(_cert(unpacked / "ca.crt"))
    assert device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-001"
    key = pki.serialization.load_pem_private_key((unpacked / "device.key").read_bytes(), None)
    assert key.public_key() == device.public_key()


def test_bundle_agent_config_is_valid_for_the_agent(fleet_dir, tmp_path):
    bundle = provision_device(fleet_dir, "pi-002", groups=["field"], edgetpu="usb")
    unpacked = _bundle(bundle, tmp_path)
    cfg = load_config(unpacked / "agent.toml")
    assert cfg.device_id == "pi-002"
    assert cfg.groups == ["field"]
    assert cfg.mqtt.url == "mqtts://broker.example:8883"
    assert cfg.mqtt.cert_file == unpacked / "device.crt"
    assert cfg.mqtt.key_file == unpacked / "device.key"
    assert cfg.trust.signing_keys == [unpacked / "signing-keys"]
    assert cfg.runtime.edgetpu == "usb"
    assert str(cfg.state_dir) == "/var/lib/edgefleet"


def test_provision_records_the_device_and_grants_its_groups(fleet_dir):
    provision_device(fleet_dir, "pi-003", groups=["field", "north"])
    record = load_registry(fleet_dir).devices["pi-003"]
    assert record.groups == ["field", "north"]
    assert record.serial == _cert(fleet_dir / "devices/pi-003.crt").serial_number
    acl = (fleet_dir / "broker/acl").read_text()
    block = acl[acl.index("user pi-003\n") :].split("\n\n")[0]
    assert block.splitlines() == [
        "user pi-003",
        "topic read edgefleet/models/+/chunks/+",
        "topic read edgefleet/groups/field/desired",
        "topic read edgefleet/groups/north/desired",
        "topic read edgefleet/groups/field/shadow",
        "topic read edgefleet/groups/north/shadow",
    ]


def test_provision_refuses_a_second_time_without_reissue(fleet_dir):
    provision_device(fleet_dir, "pi-004")
    serial = load_registry(fleet_dir).devices["pi-004"].serial
    with pytest.raises(ProvisionError, match="already provisioned; pass --reissue"):
        provision_device(fleet_dir, "pi-004")
    assert load_registry(fleet_dir).devices["pi-004"].serial == serial


def test_reissue_revokes_the_previous_certificate(fleet_dir):
    provision_device(fleet_dir, "pi-005")
    old = load_registry(fleet_dir).devices["pi-005"].serial
    provision_device(fleet_dir, "pi-005", reissue=True)
    new = load_registry(fleet_dir).devices["pi-005"]
    assert new.serial != old
    assert new.revoked_at is None
    crl = x509.load_pem_x509_crl((fleet_dir / "ca/crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial) is None


@pytest.mark.parametrize(
    ("device", "groups"), [("a/b", []), ("+", []), ("", []), ("ok", ["bad group"])]
)
def test_provision_rejects_bad_ids(fleet_dir, device, groups):
    with pytest.raises(ProvisionError, match="invalid"):
        provision_device(fleet_dir, device, groups=groups)


def test_provision_refuses_the_hosts_reserved_client_id_prefix(fleet_dir):
    with pytest.raises(ProvisionError, match="reserved for the host"):
        provision_device(fleet_dir, "edgefleet-host-ingest-x", groups=[])


def test_provision_without_a_fleet_says_how_to_make_one(tmp_path):
    with pytest.raises(ProvisionError, match="edgefleet init"):
        provision_device(tmp_path, "pi-1")


# --- revoke -------------------------------------------------------------------------------


def test_revoke_lists_the_serial_in_a_ca_signed_crl_and_drops_the_acl_block(fleet_dir):
    provision_device(fleet_dir, "pi-006", groups=["field"])
    assert "user pi-006\n" in (fleet_dir / "broker/acl").read_text()
    record = revoke_device(fleet_dir, "pi-006")
    assert record.revoked_at is not None
    crl = x509.load_pem_x509_crl((fleet_dir / "ca/crl.pem").read_bytes())
    assert crl.is_signature_valid(_cert(fleet_dir / "ca/ca.crt").public_key())
    assert crl.get_revoked_certificate_by_serial_number(record.serial) is not None
    assert "user pi-006\n" not in (fleet_dir / "broker/acl").read_text()
    with pytest.raises(ProvisionError, match="already revoked"):
        revoke_device(fleet_dir, "pi-006")
    with pytest.raises(ProvisionError, match="was revoked; pass --reissue"):
        provision_device(fleet_dir, "pi-006")


def test_revoke_unknown_device_is_an_error(fleet_dir):
    with pytest.raises(ProvisionError, match="not provisioned"):
        revoke_device(fleet_dir, "ghost")


def test_refresh_crl_keeps_revoked_serials_and_moves_next_update(fleet_dir):
    provision_device(fleet_dir, "pi-007")
    serial = revoke_device(fleet_dir, "pi-007").serial
    before = x509.load_pem_x509_crl((fleet_dir / "ca/crl.pem").read_bytes())
    time.sleep(1.1)  # CRL times have one-second resolution
    refresh_crl(fleet_dir)
    after = x509.load_pem_x509_crl((fleet_dir / "ca/crl.pem").read_bytes())
    assert after.next_update_utc > before.next_update_utc
    assert after.get_revoked_certificate_by_serial_number(serial) is not None


# --- signing key rotation -----------------------------------------------------------------


def _manifest() -> Manifest:
    now = int(time.time())
    model = b"model-bytes" * 100
    return Manifest(
        name="m",
        version=1,
        created_at=now,
        expires_at=now + 600,
        targets=Targets(groups=["field"]),
        variants=[ModelVariant.for_bytes(model, accelerator="cpu")],
        mode="int8",
        input=TensorSpec(shape=(1, 28, 28, 1), dtype="int8"),
        output=TensorSpec(shape=(1, 10), dtype="int8"),
        preprocess=PreprocessSpec(height=28, width=28),
        labels=[str(i) for i in range(10)],
    )


def _trust(unpacked: Path) -> dict:
    keys = [load_public_key(p.read_bytes()) for p in (unpacked / "signing-keys").glob("*.pub")]
    return {key_id_for(k): k for k in keys}


def _accepts(trust: dict, envelope: bytes) -> bool:
    try:
        verify_manifest(
            envelope,
            trusted_keys=trust,
            device_id="x",
            groups=["field"],
            current_version=0,
            now=time.time(),
        )
    except UnknownKeyError:
        return False
    return True


def test_staged_rotation_then_activation_then_retirement(tmp_path):
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    old_id = load_fleet_config(fleet).signing_key_id
    old_device = _trust(_bundle(provision_device(fleet, "old"), tmp_path / "b-old"))
    signed_old = sign_manifest(_manifest(), load_signing_key(load_fleet_config(fleet)))

    new_id = rotate_signing_key(fleet, activate=False)
    config = load_fleet_config(fleet)
    assert config.signing_key_id == old_id, "a staged key must not sign yet"
    assert set(trusted_key_files(config)) == {old_id, new_id}
    both_device = _trust(_bundle(provision_device(fleet, "both"), tmp_path / "b-both"))
    assert set(both_device) == {old_id, new_id}

    activate_signing_key(fleet, new_id)
    signed_new = sign_manifest(_manifest(), load_signing_key(load_fleet_config(fleet)))
    assert _accepts(both_device, signed_new)
    assert _accepts(both_device, signed_old)
    assert not _accepts(old_device, signed_new), "a device that never learned the key"

    retire_signing_key(fleet, old_id)
    config = load_fleet_config(fleet)
    assert list(trusted_key_files(config)) == [new_id]
    assert (fleet / f"signing/retired/{old_id}.key").exists()
    assert not (fleet / f"signing/{old_id}.key").exists()
    new_device = _trust(_bundle(provision_device(fleet, "new"), tmp_path / "b-new"))
    assert _accepts(new_device, signed_new)
    assert not _accepts(new_device, signed_old)


def test_rotate_activates_by_default_and_keeps_the_old_key_trusted(tmp_path):
    init_fleet(tmp_path / "f")
    old_id = load_fleet_config(tmp_path / "f").signing_key_id
    new_id = rotate_signing_key(tmp_path / "f")
    config = load_fleet_config(tmp_path / "f")
    assert config.signing_key_id == new_id != old_id
    assert _mode(config.resolve(config.signing_key)) == 0o600
    assert set(trusted_key_files(config)) == {old_id, new_id}


def test_the_active_key_cannot_be_retired_and_unknown_keys_are_errors(tmp_path):
    init_fleet(tmp_path / "f")
    active = load_fleet_config(tmp_path / "f").signing_key_id
    with pytest.raises(ProvisionError, match="active signing key"):
        retire_signing_key(tmp_path / "f", active)
    with pytest.raises(ProvisionError, match="not trusted"):
        activate_signing_key(tmp_path / "f", "0123456789abcdef")
    assert list(trusted_key_files(load_fleet_config(tmp_path / "f"))) == [active]
