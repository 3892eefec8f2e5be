"""The host's fleet config (fleet.toml) and device registry (devices.json) in a fleet directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from edgefleet.host.errors import ProvisionError
from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.errors import BrokerUrlError, TopicError
from edgefleet.shared.topics import Topics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FLEET_FILE = "fleet.toml"
REGISTRY_FILE = "devices.json"
DEFAULT_HOST_IDENTITY = "edgefleet:host"


def parse_broker_url(url: str) -> BrokerUrl:
    """``BrokerUrl.parse`` for the fleet config: a bad URL is a ProvisionError."""
    try:
        return BrokerUrl.parse(url)
    except BrokerUrlError as exc:
        raise ProvisionError(str(exc)) from exc


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a usable topic prefix, else raise ProvisionError.

    The rules are edgefleet.shared.topics' (levels of ``[A-Za-z0-9._-]``), which also
    keep the prefix safe inside the whitespace-separated Mosquitto ACL file.
    """
    try:
        Topics(prefix)
    except TopicError as exc:
        raise ProvisionError(str(exc)) from exc
    return prefix


class FleetConfig(BaseModel):
    """What the host CLI needs to reach and sign for a fleet; paths relative to fleet.toml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="edgefleet", description="Fleet name, used as the CA's organization.")
    prefix: str = Field(default="edgefleet", description="Topic prefix shared by host and devices.")
    broker_url: str = Field(description="mqtts://host:port the host and devices connect to.")
    host_identity: str = Field(
        DEFAULT_HOST_IDENTITY,
        description="CN of the host client certificate; the ACL grants it the whole prefix.",
    )
    host_broker_url: str | None = Field(
        default=None,
        description="mqtts://host:port of the host-only listener (certificates of the host CA "
        "only); None for a fleet made before it existed: the host then uses broker_url.",
    )
    ca_file: str = Field(default="ca/ca.crt", description="Fleet CA certificate (PEM).")
    host_ca_file: str | None = Field(
        default=None, description="Host CA certificate: signs host client certificates only."
    )
    host_ca_key_file: str | None = Field(default=None, description="Host CA private key (0600).")
    ca_key_file: str = Field(default="ca/ca.key", description="Fleet CA private key (PEM, 0600).")
    crl_file: str = Field(default="ca/crl.pem", description="CRL of revoked device certificates.")
    crl_days: int = Field(default=400, ge=1, description="Days until the CRL must be re-signed.")
    chunk_answer_interval_s: float = Field(
        default=3.0,
        gt=0,
        le=3600,
        description="A re-requested chunk is republished at most once per this many seconds.",
    )
    chunk_requests_per_device_per_min: int = Field(
        default=30, ge=1, description="Chunk re-requests answered per device per minute at most."
    )
    cert_file: str = Field(default="host/host.crt", description="Host client certificate.")
    key_file: str = Field(default="host/host.key", description="Host client key (0600).")
    signing_key: str = Field(
        default="signing/signing.key", description="Active Ed25519 private key."
    )
    signing_key_id: str = Field(description="Key id of the active signing key.")
    trusted_keys: list[str] = Field(
        default_factory=list, description="Ed25519 public keys devices are told to trust."
    )
    broker_conf: str = Field(
        default="broker/mosquitto.conf", description="Rendered mosquitto.conf."
    )
    acl_file: str = Field(default="broker/acl", description="Rendered Mosquitto ACL file.")

    _root: Path = PrivateAttr(default=Path())

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        try:
            return validate_prefix(value)
        except ProvisionError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("broker_url", "host_broker_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            BrokerUrl.parse(value)  # a BrokerUrlError is a ValueError: pydantic names the field
        return value

    @property
    def host_url(self) -> str:
        """The URL host processes connect to: the host-only listener, else the device one."""
        return self.host_broker_url or self.broker_url

    @property
    def root(self) -> Path:
        """The fleet directory (where fleet.toml lives)."""
        return self._root

    def resolve(self, relative: str) -> Path:
        """Return ``relative`` (a path field's value) as a path inside the fleet directory."""
        return self._root / relative

    @property
    def broker(self) -> BrokerUrl:
        """The parsed broker URL."""
        return BrokerUrl.parse(self.broker_url)

    def tls_files(self) -> tuple[Path, Path, Path]:
        """Return (CA certificate, host certificate, host key) for a host MQTT client."""
        return self.resolve(self.ca_file), self.resolve(self.cert_file), self.resolve(self.key_file)


def load_fleet_config(path: Path) -> FleetConfig:
    """Load fleet.toml (or the fleet directory holding it) with a clear error on any problem."""
    file = path / FLEET_FILE if path.is_dir() else path
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProvisionError(
            f"no fleet config at {file}: create a fleet with `edgefleet init --fleet DIR` "
            "or pass --fleet (or EDGEFLEET_FLEET) pointing at an existing one"
        ) from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisionError(f"cannot read fleet config {file}: {exc}") from exc
    try:
        config = FleetConfig.model_validate(data)
    except ValidationError as exc:
        raise ProvisionError(f"invalid fleet config {file}:\n{exc}") from exc
    config._root = file.parent.resolve()  # noqa: SLF001 - set once, by the loader
    return config


def dump_toml(data: dict[str, Any]) -> str:
    """Render a flat-or-one-level-nested dict of str/int/bool/list[str] as TOML.

    Enough for fleet.toml and the agent config; JSON string escapes are valid TOML
    basic-string escapes, so values round-trip through tomllib.
    """
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def fleet_toml(config: FleetConfig) -> str:
    """Render a FleetConfig as the text of fleet.toml."""
    return (
        "# edgefleet fleet config, written by `edgefleet init`; paths are relative to this file.\n"
        + dump_toml(config.model_dump())
    )


class DeviceRecord(BaseModel):
    """One provisioned device as the fleet directory remembers it."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="Device id, also its certificate CN and MQTT username.")
    groups: list[str] = Field(default_factory=list, description="Groups whose desired it reads.")
    serial: int = Field(description="Serial number of its current certificate.")
    provisioned_at: int = Field(description="Unix time of the (latest) provisioning.")
    revoked_at: int | None = Field(default=None, description="Unix time of revocation, if revoked.")


class RevokedSerial(BaseModel):
    """A revoked certificate serial, kept forever so re-signed CRLs still list it."""

    model_config = ConfigDict(extra="forbid")

    serial: int = Field(description="Certificate serial number.")
    device_id: str = Field(description="Device the certificate was issued to.")
    revoked_at: int = Field(description="Unix time of revocation.")


class Registry(BaseModel):
    """devices.json: provisioned devices and revoked certificate serials."""

    model_config = ConfigDict(extra="forbid")

    devices: dict[str, DeviceRecord] = Field(default_factory=dict, description="By device id.")
    revoked: list[RevokedSerial] = Field(default_factory=list, description="All revoked certs.")

    def active(self) -> list[DeviceRecord]:
        """Devices that are provisioned and not revoked, sorted by id."""
        return sorted(
            (d for d in self.devices.values() if d.revoked_at is None), key=lambda d: d.device_id
        )


def load_registry(fleet_dir: Path) -> Registry:
    """Load devices.json (an empty registry if the fleet has none yet)."""
    file = fleet_dir / REGISTRY_FILE
    if not file.exists():
        return Registry()
    try:
        return Registry.model_validate_json(file.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ProvisionError(f"device registry {file} is unreadable: {exc}") from exc
