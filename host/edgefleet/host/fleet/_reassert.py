"""Re-assert the desired state the host knows is current, after a broker lost some of it.

A broker that crashes (kill -9, power loss) restarts from its last autosave: a retained
desired manifest published since is gone, and chunks cleared since come back. The push
registry (``edgefleet.host.fleet._pushes``) knows what every target should desire, so the
host compares that with what the broker retains and puts back only what is missing or stale:

- a target's current manifest (``Registry.current_desired``) whose retained desired topic is
  empty or holds an older version is published again (retained), after its chunks;
- a current variant whose first or last retained chunk is missing gets all its chunks again
  (from the host's model store);
- a withdrawn target (its desired cleared by the host) whose old manifest came back is
  cleared again; so are the chunks of recently superseded models that came back.

A retained manifest with a NEWER version than the registry's (another host pushed it) is left
alone and reported. The check reads the retained desired topics (small) and at most two
chunks per current variant and one per recently superseded one, so it is cheap enough to
run on ``predictions listen`` start and every few minutes (``DEFAULT_REASSERT_INTERVAL_S``).
Run it on its own connection: it subscribes and drains, which would take messages from
another consumer of the same connection.
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgefleet.host.fleet._connection import BrokerSettings, connect
from edgefleet.host.fleet._delta import probe_topics
from edgefleet.host.fleet._fleet import Fleet
from edgefleet.host.fleet._pgregistry import open_any_registry
from edgefleet.host.fleet._push import publish_chunks, publish_desired
from edgefleet.shared.errors import DecodeError
from edgefleet.shared.manifest import Manifest, decode_envelope

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from edgefleet.host.fleet._pushes import PushRecord, Registry
    from edgefleet.shared.connection import Connection, Message
    from edgefleet.shared.topics import Topics

DEFAULT_REASSERT_INTERVAL_S = 300.0
# Superseded models whose chunks are checked for a resurrection (the most recent ones).
SUPERSEDED_CHECK_LIMIT = 20


@dataclass
class ReassertReport:
    """What a re-assert found and did."""

    checked: int = 0
    manifests: list[str] = field(default_factory=list)
    chunks: int = 0
    cleared_targets: list[str] = field(default_factory=list)
    cleared_models: list[str] = field(default_factory=list)
    newer_elsewhere: list[str] = field(default_factory=list)
    missing_models: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True if anything was republished or cleared."""
        return bool(self.manifests or self.chunks or self.cleared_targets or self.cleared_models)

    def summary(self) -> str:
        """One line for the operator."""
        if not self.changed and not self.newer_elsewhere and not self.missing_models:
            return f"desired state intact: {self.checked} target(s) checked, nothing to re-assert"
        parts = [f"{self.checked} target(s) checked"]
        if self.manifests:
            parts.append(f"re-published the manifest of {', '.join(self.manifests)}")
        if self.chunks:
            parts.append(f"re-published {self.chunks} chunk(s)")
        if self.cleared_targets:
            parts.append(f"cleared withdrawn {', '.join(self.cleared_targets)} again")
        if self.cleared_models:
            parts.append(f"cleared {len(self.cleared_models)} superseded model(s)' chunks again")
        if self.newer_elsewhere:
            parts.append(
                f"left {', '.join(self.newer_elsewhere)} alone: the broker holds a newer "
                "version than this host's registry (pushed from another state dir?)"
            )
        if self.missing_models:
            parts.append(
                f"cannot re-publish model(s) {', '.join(m[:12] for m in self.missing_models)}: "
                "missing from the host's model store"
            )
        return "; ".join(parts)


def target_topic(topics: Topics, target: str) -> str:
    """The desired topic of a registry target (``device:ID`` or ``group:NAME``)."""
    kind, _, name = target.partition(":")
    return topics.desired_device(name) if kind == "device" else topics.desired_group(name)


def retained_version(payload: bytes) -> int | None:
    """The version in a retained envelope, or None if it is empty or unreadable.

    The signature is not checked: only the host may publish there (the ACL).
    """
    if not payload:
        return None
    try:
        envelope = decode_envelope(payload)
        return Manifest.model_validate_json(base64.b64decode(envelope.payload)).version
    except (DecodeError, ValidationError, ValueError, binascii.Error):
        return None


def _retained(conn: Connection, filters: list[str]) -> dict[str, bytes]:
    if not filters:
        return {}
    conn.subscribe(*filters)
    return {m.topic: m.payload for m in _drain(conn)}


def _drain(conn: Connection) -> list[Message]:
    return conn.drain_retained(quiet_s=0.5, max_s=10.0)


def reassert(conn: Connection, topics: Topics, registry: Registry) -> ReassertReport:
    """Compare what the broker retains with the registry; put back what is missing or stale.

    Args:
        conn: A connection of its own (see the module docstring), with the host's rights.
        topics: The fleet's topics.
        registry: The push registry (what this host pushed, withdrew and still has).

    Raises:
        FleetError: Broker trouble (subscribe or publish not acknowledged).
    """
    fleet = Fleet(conn=conn, topics=topics, registry=registry)
    report = ReassertReport()
    current = registry.current_desired()
    current_targets = {r.target for r in current}
    withdrawn = [t for t in registry.cleared_targets() if t not in current_targets]
    report.checked = len(current) + len(withdrawn)
    desired_topics = {target_topic(topics, t): t for t in [*current_targets, *withdrawn]}
    retained = _retained(conn, list(desired_topics))
    _reassert_chunks(fleet, current, report)
    signed = registry.max_version()
    for record in current:
        topic = target_topic(topics, record.target)
        have = retained_version(retained.get(topic, b""))
        if have is not None and have > record.version:
            report.newer_elsewhere.append(record.target)
        elif have is None or have < record.version:
            publish_desired(fleet, topic, record.envelope)
            report.manifests.append(record.target)
    for target in withdrawn:
        topic = target_topic(topics, target)
        have = retained_version(retained.get(topic, b""))
        if have is not None and have <= signed:
            publish_desired(fleet, topic, b"")
            report.cleared_targets.append(target)
    _clear_superseded(fleet, registry, report)
    return report


def _reassert_chunks(fleet: Fleet, current: list[PushRecord], report: ReassertReport) -> None:
    """Publish again every chunk of a current variant whose first or last chunk is missing."""
    variants = {v.sha256: (v, r.manifest) for r in current for v in r.manifest.variants}
    probes = {}
    for sha, (variant, _manifest) in variants.items():
        probes.update(dict.fromkeys(probe_topics(fleet, variant), sha))
    present = {t for t, payload in _retained(fleet.conn, list(probes)).items() if payload}
    incomplete = {sha for topic, sha in probes.items() if topic not in present}
    for sha in sorted(incomplete):
        variant, manifest = variants[sha]
        data = fleet.registry.model_bytes(sha)
        if data is None:
            report.missing_models.append(sha)
            continue
        one = manifest.model_copy(update={"variants": [variant]})
        report.chunks += publish_chunks(fleet, {variant.accelerator: data}, one)


def _clear_superseded(fleet: Fleet, registry: Registry, report: ReassertReport) -> None:
    """Clear again the chunks of recently superseded models that a crash brought back."""
    desired = registry.desired_shas()
    superseded: dict[str, int] = {}
    for record in reversed(registry.all_pushes()):
        for variant in record.manifest.variants:
            if variant.sha256 not in desired and len(superseded) < SUPERSEDED_CHECK_LIMIT:
                superseded.setdefault(variant.sha256, variant.chunk_count)
    probes = {fleet.topics.chunk(sha, 0): sha for sha in superseded}
    found = _retained(fleet.conn, list(probes))
    back = {probes[t] for t, payload in found.items() if payload and t in probes}
    handles = []
    for sha in sorted(back):
        handles += [
            fleet.conn.publish(fleet.topics.chunk(sha, i), b"", retain=True)
            for i in range(superseded[sha])
        ]
        report.cleared_models.append(sha)
    fleet.conn.wait_published(handles)


def reassert_on_own_connection(
    settings: BrokerSettings, topics: Topics, state_dir: Path | None, store: str | None = None
) -> ReassertReport:
    """Open a connection and a registry of its own, re-assert, close both.

    Raises:
        FleetError: Broker or registry trouble.
    """
    registry = open_any_registry(state_dir, store)
    try:
        with connect(settings) as conn:
            return reassert(conn, topics, registry)
    finally:
        registry.close()


def start_periodic(
    settings: BrokerSettings,
    topics: Topics,
    state_dir: Path | None,
    *,
    stop: threading.Event,
    interval_s: float = DEFAULT_REASSERT_INTERVAL_S,
    on_report: Callable[[ReassertReport | Exception], None] | None = None,
    store: str | None = None,
) -> threading.Thread:
    """Re-assert now and then every ``interval_s`` seconds in a daemon thread until ``stop``.

    A failed round (broker down) is handed to ``on_report`` and retried next round; it never
    ends the thread.
    """

    def loop() -> None:
        while not stop.is_set():
            try:
                result: ReassertReport | Exception = reassert_on_own_connection(
                    settings, topics, state_dir, store
                )
            except Exception as exc:  # noqa: BLE001 - reported, retried next round
                result = exc
            if on_report is not None:
                on_report(result)
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="edgefleet-reassert", daemon=True)
    thread.start()
    return thread
