"""Rollback and rollout status: what the push registry remembers, applied to the fleet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._checks import check_targets
from edgefleet.host.fleet._push import (
    PushPlan,
    RolloutResult,
    _roll_out,
    _Rollout,
    group_members,
    next_version,
)
from edgefleet.host.fleet._pushes import PushRecord, device_target, group_target

if TYPE_CHECKING:
    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.host.fleet._rollout import Progress


def rollback(fleet: Fleet, plan: PushPlan) -> RolloutResult:
    """Send targets back to the model they had before their latest push, as a new version.

    Raises:
        FleetError: The host registry has no earlier model for the target.
    """
    plan.check()
    if fleet.signing_key is None:
        raise FleetError("no signing key: pass --fleet DIR (fleet.toml names it) or --key FILE")
    target = group_target(plan.group) if plan.group else device_target(plan.devices[0])
    history = fleet.registry.history(target)
    if not history:
        raise FleetError(
            f"this host never pushed to {target}; nothing to roll back "
            f"(state dir {fleet.registry.state_dir})"
        )
    current = set(history[-1].shas)
    previous = next((p for p in reversed(history) if set(p.shas) != current), None)
    if previous is None:
        raise FleetError(
            f"{target} has only ever had {history[-1].name} "
            f"v{history[-1].version}: no earlier model to return to"
        )
    blobs: dict[str, bytes] = {}
    for v in previous.manifest.variants:
        data = fleet.registry.model_bytes(v.sha256)
        if data is None:
            raise FleetError(f"model {v.sha256[:12]} is missing from {fleet.registry.state_dir}")
        blobs[v.accelerator] = data
    fleet.observe()
    check_targets(fleet, plan)
    targets = list(plan.devices) if plan.devices else group_members(fleet, plan.group or "")
    version = next_version(fleet, targets, None)
    result = _roll_out(fleet, previous.manifest, blobs, plan, targets, version, kind="rollback")
    result.returned_to = (
        f"{previous.name} {previous.build}, first pushed as v{previous.version} "
        f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(previous.created_at))})"
    )
    return result


def rollout_status(
    fleet: Fleet, *, target: str | None = None
) -> list[tuple[PushRecord, list[Progress]]]:
    """Where each target of the latest push (to ``target``, or to every target) stands."""
    fleet.observe()
    out = []
    for record in fleet.registry.latest_pushes():
        if target is not None and record.target != target:
            continue
        kind, _, name = record.target.partition(":")
        members = (
            [name]
            if kind == "device"
            else sorted(set(record.members) | set(fleet.view.members(name)))
        )
        rollout = _Rollout(
            fleet, record.version, frozenset(record.shas), members, started_at=record.created_at
        )
        out.append((record, rollout.progress()))
    return out
