"""Checks before and during a rollout: unknown targets (typos) and a lost broker connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError

if TYPE_CHECKING:
    from edgefleet.host.fleet._fleet import Fleet
    from edgefleet.host.fleet._push import PushPlan

# `push`/`rollback --wait` exit with this when the broker connection was lost while waiting
# and not every target is active: the outcome is unknown, not a device failure.
EXIT_BROKER_LOST = 3


def broker_loss(conn: object) -> str | None:
    """Words for a lost broker connection (``PahoConnection.lost``), or None if it held."""
    lost = getattr(conn, "lost", None)
    return lost() if callable(lost) else None


def check_targets(fleet: Fleet, plan: PushPlan) -> None:
    """Refuse a group or device this fleet does not know (a typo), unless ``plan.force``.

    Known: provisioned in the fleet directory (``--fleet``); without one, seen by this host
    (a status or report on the broker, or in the registry of devices seen).

    Raises:
        FleetError: An unknown target, naming the known ones and ``--force``.
    """
    if plan.force:
        return
    view = fleet.view
    if view.provisioned:
        where = "provisioned in this fleet (devices.json)"
        devices = set(view.known_groups)
    else:
        where = "seen on this broker by this host"
        devices = set(view.statuses) | set(view.reports) | set(fleet.registry.known_devices())
    if plan.group:
        groups = {g for d in devices for g in (view.known_groups.get(d) or ())}
        if not view.provisioned:
            groups |= {g for gs in view.claimed_groups.values() for g in gs}
        if plan.group not in groups:
            raise FleetError(
                f"group {plan.group!r} has no device {where}; known groups: "
                f"{', '.join(sorted(groups)) or 'none'}. Check the name, or pass --force to "
                "publish to it anyway (devices that join it later get the model)"
            )
    unknown = [d for d in plan.devices if d not in devices or d in view.revoked]
    if unknown:
        raise FleetError(
            f"unknown device(s) {', '.join(unknown)}: not {where}"
            + (" (or revoked)" if view.revoked else "")
            + ". Check the id (`edgefleet fleet status` lists them), or pass --force to "
            "publish anyway (it waits, retained, until such a device connects)"
        )
