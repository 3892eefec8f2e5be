"""Fleet status: one row per device from the retained status and reported topics."""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".npy": "npy"}
SHARE_GROUP = "edgefleet"


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

    def as_json(self) -> dict[str, Any]:
        """A dict for ``--json``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def device_rows(fleet: Fleet) -> list[DeviceRow]:
    """Join retained status, reported state and what the host saw before into table rows."""
    view = fleet.view
    known = fleet.registry.known_devices()
    rows = []
    for device_id in sorted(set(view.statuses) | set(view.reports) | set(known)):
        status = view.statuses.get(device_id)
        groups, last_json, last_seen = known.get(device_id, ([], None, None))
        # An offline device's last will carries only its id: fill in from its last status.
        last = status if status is not None and status.online else _parse_status(last_json)
        report = view.reports.get(device_id)
        seen = status.ts if status is not None and status.online and status.ts else last_seen
        rows.append(
            DeviceRow(
                device_id=device_id,
                online=status.online if status is not None else None,
                last_seen=seen,
                model=last.model_name if last else None,
                version=last.model_version if last else None,
                runtime=last.runtime if last else None,
                accelerator=last.accelerator if last else None,
                latency_p50_ms=last.latency_p50_ms if last else None,
                outbox_depth=last.outbox_depth if last else None,
                dropped=last.dropped if last else None,
                update=_update_text(report),
                groups=tuple((last.groups if last and last.groups else None) or groups),
            )
        )
    return rows


def _parse_status(text: str | None) -> Status | None:
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
            {True: "online", False: "offline", None: "?"}[r.online],
            _ago(r.last_seen, now),
            r.model or "-",
            _s(r.version),
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
