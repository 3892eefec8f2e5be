"""Cancel a rollout: retract its retained desired manifests and mark it cancelled.

The protocol clears a retained message with a zero-length retained publish (docs/protocol.md
section 2), and devices ignore zero-length payloads: a device that has not fetched the
manifest yet never sees it, a device that already activated it keeps it (roll it back with
``edgefleet rollback``). The push registry marks the rows cancelled, stops re-asserting them
(``record_cleared``) and the chunks no other target wants are cleared too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._push import clear_superseded_chunks, publish_desired
from edgefleet.host.fleet._rollout import Phase, classify

if TYPE_CHECKING:
    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.host.fleet._pushes import PushRecord


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel_rollout`` did.

    Attributes:
        target: The registry target cancelled (``group:NAME`` or ``device:ID``).
        name: Model name of the cancelled push.
        version: Its version.
        build: Its build id (mode and short sha).
        cleared_topics: Desired topics emptied (the group topic, canary device topics).
        active: Target devices that had already activated it (cancel does not undo that).
        not_started: Target devices that will not get it.
        in_progress: Devices that had started on it; they finish or fail on their own.
        cleared_chunks: Model hashes whose retained chunks were cleared.
    """

    target: str
    name: str
    version: int
    build: str
    cleared_topics: tuple[str, ...]
    active: tuple[str, ...]
    not_started: tuple[str, ...]
    in_progress: tuple[str, ...]
    cleared_chunks: tuple[str, ...]

    def summary(self) -> str:
        """One paragraph for the operator."""
        lines = [
            (
                f"cancelled {self.name} v{self.version} ({self.build}) for {self.target}: "
                f"{len(self.cleared_topics)} retained desired topic(s) cleared"
            )
        ]
        if self.not_started:
            lines.append(f"  will not get it: {', '.join(self.not_started)}")
        if self.in_progress:
            lines.append(
                f"  already fetching it (they finish or fail on their own): "
                f"{', '.join(self.in_progress)}"
            )
        if self.active:
            lines.append(
                f"  already running it (use `edgefleet rollback` to return them): "
                f"{', '.join(self.active)}"
            )
        return "\n".join(lines)


def cancel_rollout(fleet: Fleet, target: str) -> CancelResult:
    """Cancel the current rollout to ``target`` (``group:NAME`` or ``device:ID``).

    Clears the retained desired manifest(s) of the rollout with zero-length retained
    publishes (the group topic and any canary device topics of a group rollout), records the
    push rows as cancelled and withdrawn in the push registry (so ``fleet reassert`` never
    puts them back) and clears the retained chunks no other target still wants.

    Args:
        fleet: An open fleet (``open_fleet``); no signing key is needed.
        target: ``group_target(name)`` or ``device_target(id)``, i.e. ``PushRecord.target``
            as ``rollout status`` lists it.

    Returns:
        What was cleared and where each target device stood.

    Raises:
        FleetError: ``target`` is malformed or has no current (not yet withdrawn) rollout.
    """
    kind, _, name = target.partition(":")
    if kind not in ("group", "device") or not name:
        raise FleetError(f"cannot cancel {target!r}: name a group:NAME or device:ID target")
    fleet.observe()
    current = {r.target: r for r in fleet.registry.current_desired()}
    main = current.get(target)
    records = [main] if main is not None else []
    if kind == "group":
        # A group rollout stopped in its canary waves left newer manifests on device topics.
        canaries = _canary_rows(fleet, current, main, group=name)
        records = canaries or records
    if not records:
        raise FleetError(
            f"nothing to cancel for {target}: this host has no current rollout to it "
            f"(state dir {fleet.registry.state_dir}); see `edgefleet rollout status`"
        )
    topics = []
    for record in records:
        rkind, _, rname = record.target.partition(":")
        topic = (
            fleet.topics.desired_group(rname)
            if rkind == "group"
            else fleet.topics.desired_device(rname)
        )
        publish_desired(fleet, topic, b"")
        topics.append(topic)
    fleet.registry.record_cancelled(records)
    for record in records:
        fleet.registry.record_cleared(record.target)
    chunks = clear_superseded_chunks(fleet, records)
    first = records[0]
    members = _members(fleet, first, records, kind=kind, name=name)
    progress = [
        classify(
            d,
            fleet.view.reports.get(d),
            version=first.version,
            shas=frozenset(first.shas),
            started_at=first.created_at,
        )
        for d in members
    ]
    return CancelResult(
        target=target,
        name=first.name,
        version=first.version,
        build=first.build,
        cleared_topics=tuple(topics),
        active=tuple(p.device_id for p in progress if p.phase == Phase.ACTIVE),
        not_started=tuple(p.device_id for p in progress if p.phase == Phase.PENDING),
        in_progress=tuple(
            p.device_id for p in progress if p.phase not in (Phase.ACTIVE, Phase.PENDING)
        ),
        cleared_chunks=tuple(chunks),
    )


def _canary_rows(
    fleet: Fleet, current: dict[str, PushRecord], main: PushRecord | None, *, group: str
) -> list[PushRecord]:
    """Canary device rows of ``group`` newer than its group manifest (one version, newest)."""
    members = set(fleet.view.members(group)) | set(main.members if main else ())
    floor = main.version if main is not None else 0
    rows = [
        r
        for r in current.values()
        if r.kind == "canary" and r.target.partition(":")[2] in members and r.version > floor
    ]
    newest = max((r.version for r in rows), default=0)
    return [r for r in rows if r.version == newest]


def _members(
    fleet: Fleet, first: PushRecord, records: list[PushRecord], *, kind: str, name: str
) -> list[str]:
    if kind == "device":
        return [name]
    found = set(first.members) | set(fleet.view.members(name))
    found |= {r.target.partition(":")[2] for r in records if r.target.startswith("device:")}
    return sorted(found)
