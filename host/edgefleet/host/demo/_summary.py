"""The demo's summary: what ``edgefleet demo`` reports, as data and as text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModeSummary:
    """One quantization mode as measured on the host (LiteRT, held-out set)."""

    mode: str
    size_bytes: int
    accuracy: float
    latency_ms: float


@dataclass
class DeviceSummary:
    """One device: its update and its predictions."""

    device_id: str
    pid: int
    update: str
    activated_after_s: float | None
    sent: int = 0
    received: int = 0
    correct: int = 0
    median_latency_ms: float | None = None


@dataclass
class Summary:
    """What ``edgefleet demo`` reports (``--json`` prints it)."""

    ok: bool = False
    problems: list[str] = field(default_factory=list)
    dataset: str = ""
    model_source: str = ""
    broker: dict[str, Any] = field(default_factory=dict)
    eval_count: int = 0
    quantization: list[ModeSummary] = field(default_factory=list)
    deployed: dict[str, Any] = field(default_factory=dict)
    all_active: bool = False
    seconds_to_all_active: float | None = None
    devices: list[DeviceSummary] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    duplicates: int = 0
    accuracy: float | None = None
    min_accuracy: float = 0.0
    host_agreement: float | None = None
    median_latency_ms: float | None = None
    median_end_to_end_ms: float | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    workdir: str = ""
    kept: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def format_summary(s: Summary) -> str:
    """The human-readable end of ``edgefleet demo``."""
    lines = [
        "summary",
        f"  data set      {s.dataset}: {s.model_source}",
        f"  broker        {s.broker.get('kind')} at {s.broker.get('url')}"
        + (" (mutual TLS, ACL)" if s.broker.get("tls") else " (plain, loopback)"),
        f"  quantization  {s.eval_count} held-out inputs, host LiteRT, 1 thread:",
    ]
    lines += [
        f"                {m.mode:<8} {m.size_bytes / 1024:8.1f} KiB  {m.accuracy * 100:5.1f}%"
        f"  {m.latency_ms:.3f} ms"
        for m in s.quantization
    ]
    d = s.deployed
    if d:
        lines.append(
            f"  deployed      {d.get('name')} {d.get('mode')} v{d.get('version')}, "
            f"{d.get('size_bytes', 0) / 1024:.1f} KiB in {d.get('chunks')} chunk(s), signed"
        )
    active = sum(1 for dev in s.devices if dev.activated_after_s is not None)
    lines.append(
        f"  rollout       {active}/{len(s.devices)} devices active"
        + (f", all after {s.seconds_to_all_active:.2f} s" if s.all_active else "")
    )
    lines += [
        f"                {dev.device_id}  {dev.update}"
        + (f" after {dev.activated_after_s:.2f} s" if dev.activated_after_s is not None else "")
        + f"; {dev.sent} sent, {dev.received} received, {dev.correct} correct"
        for dev in s.devices
    ]
    lines.append(
        f"  predictions   {s.sent} sent, {s.received} received, "
        f"{s.duplicates} duplicate deliveries absorbed"
    )
    if s.accuracy is not None:
        agree = (
            "" if s.host_agreement is None else f"; same as host LiteRT on {s.host_agreement:.1%}"
        )
        lines.append(
            f"  accuracy      {s.accuracy:.1%} on the devices (target {s.min_accuracy:.0%}){agree}"
        )
    if s.median_latency_ms is not None:
        lines.append(
            f"  latency       median {s.median_latency_ms:.3f} ms on device, "
            f"{s.median_end_to_end_ms:.0f} ms from file dropped to record stored on the host"
        )
    lines.append("  time          " + ", ".join(f"{k} {v:.1f} s" for k, v in s.timings_s.items()))
    if s.workdir:
        lines.append(
            f"  files         kept in {s.workdir} (fleet, agent logs, quantize.log, models)"
            if s.kept
            else f"  files         {s.workdir} removed; --keep keeps it, with the logs above"
        )
    lines.append("  result        " + ("OK" if s.ok else "FAILED: " + "; ".join(s.problems)))
    return "\n".join(lines)
