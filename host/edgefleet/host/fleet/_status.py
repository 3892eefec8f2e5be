"""Fleet status: one row per device from the retained status and reported topics.

Groups and revocation come from provisioning (the fleet's devices.json, see
``FleetView.load_provisioned``); what a device's status claims is shown next to them and a
mismatch becomes a warning, never a membership.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.shared.errors import DecodeError
from edgefleet.shared.messages import (
    Reported,
    Status,
    decode,
)

if TYPE_CHECKING:
    from edgefleet.host.fleet._fleet import Fleet


@dataclass(frozen=True)
class DeviceRow:
    """One line of ``edgefleet fleet status``."""

    device_id: str
    online: bool | None
    last_seen: float | None
    model: str | None
    version: int | None
    runtime: str | None
    accelerator: str | None
    latency_p50_ms: float | None
    outbox_depth: int | None
    dropped: int | None
    update: str | None
    groups: tuple[str, ...] = ()
    claimed_groups: tuple[str, ...] | None = None
    groups_verified: bool = False
    revoked: bool = False
    warnings: tuple[str, ...] = ()
    build: str | None = None
    status_ts: float | None = None
    report_ts: float | None = None
    figures: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """A dict for ``--json``: the columns plus every figure the device's status reports.

        ``figures`` is the device's latest status as it sent it (RSS, uptime, p95, inference
        count, agent version, outbox, ...), so no reported figure is lost; ``status_ts`` and
        ``report_ts`` say how fresh the status and the update report are.
        """
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @property
    def state(self) -> str:
        """The STATE column: online/offline/?, and ``REVOKED`` first for a revoked device."""
        text = {True: "online", False: "offline", None: "?"}[self.online]
        return f"REVOKED ({text})" if self.revoked else text


def _trust_warnings(
    device_id: str, *, provisioned: set[str] | None, claimed: set[str] | None, revoked: bool
) -> tuple[str, ...]:
    """What does not match provisioning, for one device (``provisioned`` None: no fleet dir)."""
    if provisioned is None and not revoked:
        return ()
    out = []
    if revoked:
        out.append(f"{device_id} is revoked (devices.json); it must not be connected")
    elif provisioned is not None and claimed is not None and claimed != provisioned:
        out.append(
            f"{device_id} claims groups {sorted(claimed)} but is provisioned in "
            f"{sorted(provisioned)}: the claim is ignored"
        )
    return tuple(out)


def _builds(fleet: Fleet) -> dict[tuple[str, int], str]:
    """(model name, version) -> build id of what this host pushed, from the push registry."""
    return {(r.name, r.version): r.build for r in fleet.registry.all_pushes()}


def _fresh_model(
    last: Status | None, report: Reported | None, names: dict[int, str]
) -> tuple[str | None, int | None]:
    """Model name and version: the status's, unless a later update report says newer.

    The status is re-sent only at the agent's heartbeat, the ``reported`` topic on every
    update step: right after a push it is the one that knows the new version.
    """
    name = last.model_name if last else None
    version = last.model_version if last else None
    if report is None:
        return name, version
    active = report.active_version
    if report.state.value == "active" and report.version is not None:
        active = max(active or 0, report.version)
    if active is not None and (version is None or active > version):
        same = report.version == active and report.model_name
        return (report.model_name if same else names.get(active, name)), active
    return name, version


def device_rows(fleet: Fleet) -> list[DeviceRow]:
    """Join retained status, reported state and what the host saw before into table rows."""
    view = fleet.view
    known = fleet.registry.known_devices()
    builds = _builds(fleet)
    names = {version: name for name, version in builds}
    rows = []
    everyone = set(view.statuses) | set(view.reports) | set(known)
    if view.provisioned:
        everyone |= set(view.known_groups) | view.revoked
    for device_id in sorted(everyone):
        status = view.statuses.get(device_id)
        claimed_list, last_json, last_seen = known.get(device_id, ([], None, None))
        # An offline device's last will carries only its id: fill in from its last status.
        last = status if status is not None and status.online else parse_status(last_json)
        report = view.reports.get(device_id)
        seen = status.ts if status is not None and status.online and status.ts else last_seen
        claimed = view.claimed_groups.get(device_id)
        if claimed is None and (last is not None and last.groups is not None):
            claimed = set(last.groups)
        if view.provisioned:
            provisioned = view.known_groups.get(device_id)
            groups = tuple(sorted(provisioned or ()))
            warnings = _trust_warnings(
                device_id,
                provisioned=provisioned if device_id in view.known_groups else set(),
                claimed=claimed,
                revoked=device_id in view.revoked,
            )
            if device_id not in view.known_groups and device_id not in view.revoked:
                warnings = (f"{device_id} is not provisioned in this fleet (devices.json)",)
        else:
            groups = tuple(sorted(claimed or claimed_list))
            warnings = ()
        model, version = _fresh_model(last, report, names)
        rows.append(
            DeviceRow(
                device_id=device_id,
                online=status.online if status is not None else None,
                last_seen=seen,
                model=model,
                version=version,
                runtime=last.runtime if last else None,
                accelerator=last.accelerator if last else None,
                latency_p50_ms=last.latency_p50_ms if last else None,
                outbox_depth=last.outbox_depth if last else None,
                dropped=last.dropped if last else None,
                update=_update_text(report),
                groups=groups,
                claimed_groups=tuple(sorted(claimed)) if claimed is not None else None,
                groups_verified=view.provisioned,
                revoked=device_id in view.revoked,
                warnings=warnings,
                build=builds.get((model, version)) if model and version else None,
                status_ts=last.ts if last else None,
                report_ts=report.ts if report else None,
                figures=last.model_dump(mode="json", exclude_none=True) if last else None,
            )
        )
    return rows


def parse_status(text: str | None) -> Status | None:
    """A retained status message's text, decoded; None if absent or unreadable."""
    if text is None:
        return None
    try:
        return decode(Status, text.encode())
    except DecodeError:
        return None


def _update_text(report: Reported | None) -> str | None:
    if report is None:
        return None
    text = str(report.state)
    if report.state.value == "downloading":
        text += f" {report.progress * 100:.0f}%"
    if report.reason:
        text += f": {report.reason}"
    return text


def format_table(rows: list[DeviceRow], *, now: float | None = None) -> str:
    """Render rows as an aligned text table."""
    now = time.time() if now is None else now
    head = (
        "DEVICE",
        "STATE",
        "LAST SEEN",
        "MODEL",
        "VER",
        "BUILD",
        "RUNTIME",
        "ACCEL",
        "P50 MS",
        "OUTBOX",
        "DROPPED",
        "UPDATE",
    )
    body = [
        (
            r.device_id,
            r.state,
            _ago(r.last_seen, now),
            r.model or "-",
            _s(r.version),
            r.build or "-",
            r.runtime or "-",
            r.accelerator or "-",
            "-" if r.latency_p50_ms is None else f"{r.latency_p50_ms:.2f}",
            _s(r.outbox_depth),
            _s(r.dropped),
            r.update or "-",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *body)
    ]
    return "\n".join(lines) if body else "no devices have reported yet"


def format_warnings(rows: list[DeviceRow], *, verified: bool) -> str:
    """The lines printed under the table: trust warnings, or that nothing could be checked."""
    lines = [f"warning: {w}" for r in rows for w in r.warnings]
    if not verified:
        lines.append(
            "warning: no fleet directory (--fleet DIR): groups are what devices claim, "
            "UNVERIFIED, and revoked devices cannot be marked"
        )
    return "\n".join(lines)


def _s(value: object) -> str:
    return "-" if value is None else str(value)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    delta = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} ago"
    return f"{delta:.0f}s ago"
