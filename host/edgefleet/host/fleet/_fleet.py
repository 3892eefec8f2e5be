"""A connected fleet: the MQTT connection, topics, push registry, and what devices retain.

``open_fleet`` builds one from CLI-style options (``--fleet DIR``, ``--broker``, ``--key``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._connection import connect, settings_from
from edgefleet.host.fleet._delta import answer_delta_request
from edgefleet.host.fleet._pgregistry import open_any_registry
from edgefleet.host.fleet._pushes import Registry
from edgefleet.host.fleet._ratelimit import DeviceLimiter, DeviceLimits
from edgefleet.host.fleet._rollout import (
    Progress,
)
from edgefleet.host.fleetdir import load_fleet_config, load_registry
from edgefleet.shared.chunks import chunk_at
from edgefleet.shared.errors import DecodeError, EdgefleetError, KeyFormatError, TopicError
from edgefleet.shared.manifest import Manifest, load_private_key
from edgefleet.shared.messages import ChunkRequest, Reported, Status, decode
from edgefleet.shared.topics import CHUNK_REQUEST, REPORTED, STATUS, Topics

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.host.fleetdir import Registry as DeviceRegistry
    from edgefleet.shared.connection import Connection, Message

OnProgress = Callable[[list[Progress]], None]

log = logging.getLogger(__name__)


@dataclass
class FleetView:
    """What the host knows about devices: provisioning (trusted) and their messages (claims).

    Group membership is trusted only from the fleet's device registry (devices.json, what
    ``edgefleet provision`` wrote; see :meth:`load_provisioned`): ``known_groups`` then
    holds the provisioned groups and ``provisioned`` is True. The groups a device's status
    claims are kept apart in ``claimed_groups``, for display and mismatch warnings only.
    Without a fleet directory (a bare ``--broker``) there is nothing to check claims
    against: :meth:`members` falls back to them and ``provisioned`` stays False
    (``fleet status`` and ``push`` say that membership is unverified).
    """

    statuses: dict[str, Status] = field(default_factory=dict)
    reports: dict[str, Reported] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)
    known_groups: dict[str, set[str]] = field(default_factory=dict)
    claimed_groups: dict[str, set[str]] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    provisioned: bool = False

    def load_provisioned(self, registry: DeviceRegistry) -> None:
        """Take group membership and revocations from the fleet's device registry."""
        self.provisioned = True
        for record in registry.devices.values():
            if record.revoked_at is not None:
                self.revoked.add(record.device_id)
                self.known_groups.pop(record.device_id, None)
            else:
                self.known_groups[record.device_id] = set(record.groups)

    def members(self, group: str) -> list[str]:
        """Devices of ``group``: provisioned ones (never revoked) or, unverified, claimed ones."""
        if self.provisioned:
            found = {d for d, groups in self.known_groups.items() if group in groups}
            return sorted(found - self.revoked)
        found = {d for d, groups in self.claimed_groups.items() if group in groups}
        found |= {d for d, groups in self.known_groups.items() if group in groups}
        return sorted(found)

    def claimed_versions(self, devices: list[str]) -> dict[str, int]:
        """The highest model version each of ``devices`` claims to run (status or report)."""
        claims: dict[str, int] = {}
        for d in devices:
            versions = [0]
            if (s := self.statuses.get(d)) and s.model_version:
                versions.append(s.model_version)
            if (r := self.reports.get(d)) and r.active_version:
                versions.append(r.active_version)
            claims[d] = max(versions)
        return claims

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
    limiter: DeviceLimiter = field(default_factory=DeviceLimiter)

    def observe(self) -> FleetView:
        """Subscribe to every status, report and chunk request and take in the retained state."""
        t = self.topics
        self.conn.subscribe(t.all_status(), t.all_reported(), t.all_chunk_requests())
        for msg in self.conn.drain_retained():
            self.handle(msg, live=False)
        for device_id, (groups, _status, _seen) in self.registry.known_devices().items():
            self.view.claimed_groups.setdefault(device_id, set()).update(groups)
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
                request = decode(ChunkRequest, msg.payload)
                self.answer_chunk_request(request, device_id=parsed.device_id)
        except (DecodeError, TopicError):
            return  # a malformed message from one device must not stop the host

    def _on_status(self, device_id: str, msg: Message) -> None:
        status = decode(Status, msg.payload)
        if status.device_id != device_id:
            return
        self.view.statuses[device_id] = status
        if status.groups is not None:  # a claim: shown and checked, never trusted
            self.view.claimed_groups[device_id] = set(status.groups)
        # Rate-limited: an unchanged status is written at most every few seconds.
        digest = status.model_dump_json(include={"groups", "model_name", "model_version"})
        if status.online and self.limiter.allow_status_write(device_id, digest):
            self.registry.remember_device(
                device_id,
                groups=status.groups,
                status_json=msg.payload.decode(),
                seen=status.ts or msg.received_at,
            )

    def answer_chunk_request(  # noqa: PLR0911 - one early return per reason to send nothing
        self, request: ChunkRequest, *, device_id: str | None = None
    ) -> int:
        """Publish the requested chunks again (not retained) if this host has the model.

        Rate-limited (:mod:`edgefleet.host.fleet._ratelimit`): each index at most once per
        few seconds per model, and a budget of requests per device and minute; what is
        ignored is counted in ``self.limiter``. ``device_id`` is the device of the topic the
        request came on (the one the broker authenticated); a request naming another device
        is ignored. Returns how many chunks were published.
        """
        if device_id is not None and request.device_id != device_id:
            self.limiter.ignored_requests += 1
            return 0
        if not self.limiter.allow_request(request.device_id):
            return 0
        latest = {
            v.sha256: (p.manifest, v)
            for p in self.registry.latest_pushes()
            if p.cancelled_at is None
            for v in p.manifest.variants
        }
        if request.sha256 not in latest:
            return 0  # superseded or unknown: the device will get a newer manifest
        manifest, variant = latest[request.sha256]
        indexes = [i for i in request.indexes if i < variant.chunk_count]
        wanted = self.limiter.chunks_to_send(request.sha256, indexes)
        if not wanted:
            return 0
        if variant.chunks is not None:  # v2: by content (docs/protocol.md 7.5)
            sent, nbytes = answer_delta_request(self, variant, wanted)
            if sent:
                self._record_resent(request.device_id, manifest, nbytes, sent)
            return sent
        data = self.registry.model_bytes(request.sha256)
        if data is None:
            self.limiter.forget_chunks(request.sha256, wanted)
            return 0
        for n, i in enumerate(wanted):
            try:
                payload = chunk_at(
                    data, i, chunk_size=variant.chunk_size, model_sha256=request.sha256
                )
                self.conn.publish(self.topics.chunk(request.sha256, i), payload)
            except Exception:
                self.limiter.forget_chunks(request.sha256, wanted[n:])
                raise
        return len(wanted)

    def _record_resent(self, device_id: str, manifest: Manifest, nbytes: int, chunks: int) -> None:
        """Add chunks sent again to the device's transfer of that push (bytes sent, #21)."""
        try:
            self.registry.record_resent(
                device_id, manifest.name, manifest.version, nbytes=nbytes, chunks=chunks
            )
        except EdgefleetError as exc:  # the registry is down: answering still goes on
            log.warning("cannot record the chunks sent again to %s: %s", device_id, exc)

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
    read_only: bool = False,
    store: str | None = None,
) -> Fleet:
    """Connect to the broker and open the host registry, from CLI-style options.

    ``--fleet DIR`` supplies broker URL, TLS files, prefix, signing key and the provisioned
    device list; ``--broker``/``--prefix``/``--key`` override or replace it. ``read_only``
    (status commands) opens the host registry without creating or writing anything.
    ``store`` (default ``$EDGEFLEET_STORE``): a ``postgresql://`` URL puts the host
    registry in that database (shared by workers on several machines).

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
        registry = open_any_registry(state_dir, store, read_only=read_only)
    except FleetError:
        conn.close()
        raise
    fleet = Fleet(conn=conn, topics=Topics(settings.prefix), registry=registry, signing_key=key)
    if config is not None:
        fleet.limiter = DeviceLimiter(
            DeviceLimits(
                chunk_interval_s=config.chunk_answer_interval_s,
                device_requests_per_min=config.chunk_requests_per_device_per_min,
            )
        )
    if config is not None:
        fleet.view.load_provisioned(load_registry(config.root))
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
