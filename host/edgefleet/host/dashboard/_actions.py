"""The dashboard's actions: push a model from the host registry, roll back, cancel.

Each runs on a connection of its own (like the CLI command it mirrors), so the watching
connection keeps its subscriptions, and returns a one-line summary for the page and the audit
log. Pushes and rollbacks do not wait for the devices: their progress shows on the Rollouts
page as the reports come in.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    PushPlan,
    cancel_rollout,
    close_fleet,
    load_model,
    push,
    random_client_id,
    rollback,
)
from edgefleet.shared.topics import validate_id

if TYPE_CHECKING:
    from edgefleet.host.dashboard._live import Settings

ACTIONS = ("push", "rollback", "cancel")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _plan(target: str) -> PushPlan:
    kind, _, name = target.partition(":")
    if kind == "group" and name:
        return PushPlan(group=validate_id(name, what="group name"))
    if kind == "device" and name:
        return PushPlan(devices=(validate_id(name, what="device id"),))
    raise FleetError(f"target {target!r} is not group:NAME or device:ID")


def run_action(settings: Settings, action: str, fields: dict[str, str]) -> str:
    """Run one action; return what happened in one line.

    Raises:
        FleetError: Unknown action, bad target, or the fleet operation failed.
        EdgefleetError: Broker, key or registry trouble.
    """
    if action not in ACTIONS:
        raise FleetError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    fleet = settings.open(client_id=random_client_id("dashboard"), need_key=action != "cancel")
    try:
        if action == "cancel":
            return cancel_rollout(fleet, fields.get("target", "")).summary().replace("\n", ";")
        if action == "rollback":
            target = fields.get("target", "")
            result = rollback(fleet, _plan(target))
            return (
                f"rollback of {target}: {result.name} v{result.version} sent to "
                f"{len(result.targets)} device(s)"
            )
        sha = fields.get("sha", "")
        if not _SHA.match(sha):
            raise FleetError("choose a model of the host registry to push")
        path = fleet.registry.model_path(sha)
        if not path.is_file():
            raise FleetError(f"model {sha[:12]} is not in the host registry {path.parent}")
        names = [p.name for p in fleet.registry.all_pushes() if sha in p.shas]
        group = fields.get("group", "")
        result = push(
            fleet, load_model(path, name=names[-1] if names else None), _plan(f"group:{group}")
        )
        return (
            f"pushed {result.name} v{result.version} to group {group}: "
            f"{len(result.targets)} device(s)"
        )
    finally:
        close_fleet(fleet)
