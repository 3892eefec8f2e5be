"""Rendering helpers of the dashboard: the jinja2 environment, its filters, form parsing, chart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from edgefleet.host.dashboard._views import ago

HERE = Path(__file__).parent
CHART_W, CHART_H = 360, 90
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def make_templates() -> jinja2.Environment:
    """The jinja2 environment of the package's templates (autoescaped)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ago=ago, clock=clock, num=_num, basename=lambda s: PurePosixPath(str(s)).name or s
    )
    return env


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"time {text!r} is not YYYY-MM-DDTHH:MM[:SS]") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def parse_score(text: str | None, name: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"{name} {text!r} is not a number (e.g. 0.8)") from exc


def time_text(ts: float | None) -> str:
    return "" if ts is None else clock(ts).replace(" ", "T")


def chart_model(start: float, counts: list[int]) -> dict[str, Any]:
    """Bars of the per-minute SVG chart."""
    top = max([1, *counts])
    width = CHART_W / max(1, len(counts))
    bars = []
    for i, n in enumerate(counts):
        h = round(n / top * CHART_H, 1)
        bars.append(
            {
                "x": round(i * width, 1),
                "y": round(CHART_H - h, 1),
                "w": round(max(1.0, width - 1), 1),
                "h": h,
                "n": n,
                "label": clock(start + 60 * i)[11:16],
            }
        )
    return {
        "bars": bars,
        "width": CHART_W,
        "height": CHART_H,
        "max": max(counts) if counts else 0,
        "start": start,
        "end": start + 60 * len(counts),
        "minutes": len(counts),
    }
