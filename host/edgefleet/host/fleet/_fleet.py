"""A connected fleet: the MQTT connection, topics, push registry, and what devices retain.

``open_fleet`` builds one from CLI-style options (``--fleet DIR``, ``--broker``, ``--key``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._connection import connect, settings_from
from edgefleet.host.fleet._pushes import Registry, open_registry
from edgefleet.host.fleet._rollout import (
    Progress,
)
from edgefleet.host.fleetdir import load_fleet_config, load_registry
from edgefleet.shared.chunks import split_model
from edgefleet.shared.errors import DecodeError, KeyFormatError, TopicError
from edgefleet.shared.manifest import load_private_key
from edgefleet.shared.messages import ChunkRequest, Reported, Status, decode
from edgefleet.shared.topics import CHUNK_REQUEST, REPORTED, STATUS, Topics

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.shared.connection import Connection, Message

OnProgress = Callable[[list[Progress]], None]


@dataclass
class FleetView:
    """What the host knows about devices from retained and live status/reported messages."""

    statuses: dict[str, Status] = field(default_factory=dict)
    reports: dict[str, Reported] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    known_groups: dict[str, set[str]] = field(default_factory=dict)

    def members(self, group: str) -> list[str]:
        """Devices known to belong to ``group`` (status messages, host registry, fleet dir)."""
        found = {d for d, s in self.statuses.items() if s.groups and group in s.groups}
        found |= {d for d, groups in self.known_groups.items() if group in groups}
        return sorted(found)

    def online(self) -> set[str]:
        """Devices whose retained status says online."""
        return {d for d, s in self.statuses.items() if s.online}

    def highest_version(self, devices: list[str]) -> int:
        """The highest model version any of ``devices`` runs or reported."""
        versions = [0]
        for d in devices:
            if (s := self.statuses.get(d)) and s.model_version:
                versions.append(s.model_version)
            if (r := self.reports.get(d)) and r.active_version:
                versions.append(r.active_version)
        return max(versions)


@dataclass
class Fleet:
    """A connected host: broker connection, topics, registry, signing key."""

    conn: Connection
    topics: Topics
    registry: Registry
    signing_key: Ed25519PrivateKey | None = None
    view: FleetView = field(default_factory=FleetView)
    on_progress: OnProgress | None = None

    def observe(self) -> FleetView:
        """Subscribe to every status, report and chunk request and take in the retained state."""
        t = self.topics
        self.conn.subscribe(t.all_status(), t.all_reported(), t.all_chunk_requests())
        for msg in self.conn.drain_retained():
            self.handle(msg, live=False)
        for device_id, (groups, _status, _seen) in self.registry.known_devices().items():
            self.view.known_groups.setdefault(device_id, set()).update(groups)
        return self.view

    def handle(self, msg: Message, *, live: bool = True) -> None:
        """Take in one status, reported or chunk-request message; ignore anything malformed."""
        try:
            parsed = self.topics.parse(msg.topic)
            if not msg.payload or parsed.device_id is None:
                return
            if parsed.kind == STATUS:
                self._on_status(parsed.device_id, msg)
            elif parsed.kind == REPORTED:
                report = decode(Reported, msg.payload)
                if report.device_id == parsed.device_id:
                    self.view.reports[parsed.device_id] = report
                    if live and not msg.retain:
                        self.view.live.add(parsed.device_id)
            elif parsed.kind == CHUNK_REQUEST:
                self.answer_chunk_request(decode(ChunkRequest, msg.payload))
        except (DecodeError, TopicError):
            return  # a malformed message from one device must not stop the host

    def _on_status(self, device_id: str, msg: Message) -> None:
        status = decode(Status, msg.payload)
        if status.device_id != device_id:
            return
        self.view.statuses[device_id] = status
        if status.online:
            self.registry.remember_device(
                device_id,
                groups=status.groups,
                status_json=msg.payload.decode(),
                seen=status.ts or msg.received_at,
            )

    def answer_chunk_request(self, request: ChunkRequest) -> int:
        """Publish the requested chunks again (not retained) if this host has the model."""
        data = self.registry.model_bytes(request.sha256)
        latest = {v.sha256: v for p in self.registry.latest_pushes() for v in p.manifest.variants}
        variant = latest.get(request.sha256)
        if data is None or variant is None:
            return 0  # superseded or unknown: the device will get a newer manifest
        chunks = split_model(data, chunk_size=variant.chunk_size)
        wanted = [i for i in sorted(set(request.indexes)) if i < len(chunks)]
        for i in wanted:
            self.conn.publish(self.topics.chunk(request.sha256, i), chunks[i])
        return len(wanted)

    def pump(self, seconds: float) -> None:
        """Handle incoming messages for up to ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            msg = self.conn.next_message(remaining)
            if msg is None:
                return
            self.handle(msg)


def open_fleet(
    *,
    broker: str | None,
    fleet_dir: Path | None,
    prefix: str | None = None,
    state_dir: Path | None = None,
    key_file: Path | None = None,
    client_id: str | None = None,
    persistent: bool = False,
    need_key: bool = False,
) -> Fleet:
    """Connect to the broker and open the host registry, from CLI-style options.

    ``--fleet DIR`` supplies broker URL, TLS files, prefix, signing key and the provisioned
    device list; ``--broker``/``--prefix``/``--key`` override or replace it.

    Raises:
        FleetError: Unreachable broker, unreadable fleet config or key.
        ProvisionError: The fleet config is invalid.
    """
    config = load_fleet_config(fleet_dir) if fleet_dir is not None else None
    settings = settings_from(broker=broker, fleet=config, prefix=prefix)
    if key_file is None and config is not None:
        key_file = config.resolve(config.signing_key)
    key = _load_key(key_file) if need_key else None
    conn = connect(settings, client_id=client_id, persistent=persistent)
    try:
        registry = open_registry(state_dir)
    except FleetError:
        conn.close()
        raise
    fleet = Fleet(conn=conn, topics=Topics(settings.prefix), registry=registry, signing_key=key)
    if config is not None:
        for record in load_registry(config.root).active():
            fleet.view.known_groups.setdefault(record.device_id, set()).update(record.groups)
    return fleet


def _load_key(path: Path | None) -> Any:  # noqa: ANN401 - Ed25519PrivateKey, imported lazily

    if path is None:
        raise FleetError(
            "no signing key: pass --fleet DIR (its fleet.toml names the key) or --key FILE"
        )
    try:
        return load_private_key(path.read_bytes())
    except OSError as exc:
        raise FleetError(f"cannot read signing key {path}: {exc}") from exc
    except KeyFormatError as exc:
        raise FleetError(f"signing key {path}: {exc}") from exc


def close_fleet(fleet: Fleet) -> None:
    """Disconnect and close the registry."""
    fleet.conn.close()
    fleet.registry.close()
