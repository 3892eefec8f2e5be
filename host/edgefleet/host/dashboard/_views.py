"""The dashboard's view models: plain dicts built from the fleet state, for the templates.

Pure functions of a :class:`~edgefleet.host.fleet.Fleet` (its view and registry) so that the
live thread and the page handlers build the same rows.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edgefleet.host.fleet import device_rows
from edgefleet.host.fleet._plans import find_plan
from edgefleet.host.fleet._rollout import Phase, classify
from edgefleet.host.fleet._status import parse_status
from edgefleet.shared.messages import Status

if TYPE_CHECKING:
    from edgefleet.host.fleet import DeviceRow, Fleet, PushRecord
    from edgefleet.host.fleet._plans import WavePlan
    from edgefleet.shared.manifest import Manifest

HISTORY_PUSHES = 30


def _last_status(fleet: Fleet, device_id: str, known: dict[str, Any]) -> Status | None:
    status = fleet.view.statuses.get(device_id)
    if status is not None and status.online:
        return status
    return parse_status(known.get(device_id, ([], None, None))[1])


def _builds(fleet: Fleet) -> dict[tuple[str, int], Manifest]:
    return {(p.name, p.version): p.manifest for p in fleet.registry.all_pushes()}


def ago(ts: float | None, now: float | None = None) -> str:
    """``12s ago``, ``3m ago``, ``never``."""
    if ts is None:
        return "never"
    delta = max(0.0, (time.time() if now is None else now) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} ago"
    return f"{delta:.0f}s ago"


def fleet_rows(fleet: Fleet) -> list[dict[str, Any]]:
    """One dict per device: the fleet page's columns."""
    known = fleet.registry.known_devices()
    builds = _builds(fleet)
    return [
        _row(fleet, r, _last_status(fleet, r.device_id, known), builds) for r in device_rows(fleet)
    ]


def _row(
    fleet: Fleet, r: DeviceRow, status: Status | None, builds: dict[tuple[str, int], Manifest]
) -> dict[str, Any]:
    manifest = builds.get((r.model or "", r.version or -1))
    report = fleet.view.reports.get(r.device_id)
    sha = None
    if manifest is not None:
        variants: dict[str, str] = {v.accelerator: v.sha256 for v in manifest.variants}
        sha = variants.get(r.accelerator or "cpu") or manifest.variants[0].sha256
    elif report is not None and report.sha256 and report.active_version == r.version:
        sha = report.sha256
    state = (
        "revoked" if r.revoked else {True: "online", False: "offline", None: "unknown"}[r.online]
    )
    return {
        "id": r.device_id,
        "state": state,
        "state_text": r.state,
        "last_seen": r.last_seen,
        "model": r.model,
        "version": r.version,
        "mode": manifest.mode if manifest is not None else None,
        "sha": sha[:8] if sha else None,
        "accelerator": r.accelerator,
        "update_text": r.update,
        "update_state": report.state.value if report is not None else None,
        "rss_mib": status.rss_bytes / 2**20 if status and status.rss_bytes is not None else None,
        "p95_ms": status.latency_p95_ms if status else None,
        "inferences": status.inference_count if status else None,
        "outbox": r.outbox_depth,
        "agent": status.agent_version if status else None,
        "groups": list(r.groups),
        "warnings": list(r.warnings),
    }


def rollout_views(fleet: Fleet, *, target: str | None = None) -> list[dict[str, Any]]:
    """The latest push of every target (or of ``target``) with per-device progress."""
    records = [
        r
        for r in sorted(fleet.registry.latest_pushes(), key=lambda p: -p.id)
        if target is None or r.target == target
    ]
    plans = fleet.registry.wave_plans(versions={r.version for r in records})
    return [rollout_view(fleet, r, plans=plans) for r in records]


def plan_view(plan: WavePlan | None, target: str) -> dict[str, Any] | None:
    """A group rollout's plan for the page: canary, wave sizes, failure limit, why it stopped."""
    if plan is None:
        return None
    return {
        "text": plan.describe().replace("; ", " · "),
        "canary": list(plan.canary_devices),
        "canary_asked": plan.canary,
        "waves": [len(w) for w in plan.later_waves],
        "max_failures": plan.max_failures,
        "of": None if plan.target == target else plan.target,
        "aborted": plan.aborted,
    }


def rollout_view(
    fleet: Fleet, record: PushRecord, *, plans: list[WavePlan] | None = None
) -> dict[str, Any]:
    """One push: target, build, canary and waves, per-device step, phase, fraction, failures.

    ``plans``: the registry's wave plans, if the caller already read them (else read here).
    """
    plan = fleet.registry.plan_of(record) if plans is None else find_plan(record, plans)
    kind, _, name = record.target.partition(":")
    members = (
        [name] if kind == "device" else sorted(set(record.members) | set(fleet.view.members(name)))
    )
    view = fleet.view
    devices = []
    for d in members:
        status = view.statuses.get(d)
        p = classify(
            d,
            view.reports.get(d),
            version=record.version,
            shas=frozenset(record.shas),
            started_at=record.created_at,
            live=d in view.live,
            online=status.online if status else None,
        )
        fraction = 1.0 if p.phase == Phase.ACTIVE else p.fraction
        devices.append(
            {
                "id": d,
                "phase": p.phase.value,
                "percent": round(fraction * 100),
                "text": p.describe(),
                "bad": p.phase.bad,
                "reason": p.reason,
                "message": p.message,
                "step": plan.step_of(d) if plan is not None else None,
            }
        )
    done = sum(1 for x in devices if x["phase"] == Phase.ACTIVE.value)
    failed = sum(1 for x in devices if x["bad"])
    cancelled = getattr(record, "cancelled_at", None)
    if cancelled:
        state = "cancelled"
    elif failed:
        state = "failures"
    elif devices and done == len(devices):
        state = "complete"
    else:
        state = "in progress"
    variants: dict[str, str] = {v.accelerator: v.sha256 for v in record.manifest.variants}
    return {
        "id": record.id,
        "target": record.target,
        "kind": record.kind,
        "name": record.name,
        "version": record.version,
        "mode": record.manifest.mode,
        "sha": (variants.get("cpu") or record.shas[0])[:8],
        "created_at": record.created_at,
        "devices": devices,
        "done": done,
        "failed": failed,
        "total": len(devices),
        "state": state,
        "cancelled_at": cancelled,
        "plan": plan_view(plan, record.target),
        "failures": [
            {
                "id": x["id"],
                "step": x["step"],
                "phase": x["phase"],
                "reason": x["reason"] or "unknown",
                "message": x["message"],
            }
            for x in devices
            if x["bad"]
        ],
    }


def push_history(fleet: Fleet, *, target: str | None = None) -> list[dict[str, Any]]:
    """The newest pushes (all targets, or one), without progress."""
    pushes = fleet.registry.history(target) if target else fleet.registry.all_pushes()
    newest = sorted(pushes, key=lambda p: -p.id)[:HISTORY_PUSHES]
    plans = fleet.registry.wave_plans(versions={p.version for p in newest})
    out = []
    for p in newest:
        plan = find_plan(p, plans)
        out.append(
            {
                "id": p.id,
                "target": p.target,
                "kind": p.kind,
                "name": p.name,
                "version": p.version,
                "mode": p.manifest.mode,
                "created_at": p.created_at,
                "members": len(p.members),
                "plan": plan_view(plan, p.target),
            }
        )
    return out


def groups_of(rows: list[dict[str, Any]]) -> list[str]:
    """Every group some device is in, sorted."""
    return sorted({g for r in rows for g in r["groups"]})
