"""The agent's status message, and when it goes out before the next heartbeat.

The heartbeat (``[status] heartbeat_s``, 30 s by default) keeps the retained status current
at a steady rate. Between beats, :class:`Freshness` sends it early when something an operator
looks at right after acting has changed: the active model (a push or rollback just took
effect), safe mode, or the outbox depth crossing a power of two (0, 1, 2-3, 4-7, ...), at
most once per ``min_interval_s``, so ``edgefleet fleet status`` is fresh after a push without a
device flooding the broker while predictions flow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edgefleet.device.system import cpu_temp_c, rss_bytes
from edgefleet.shared import __version__
from edgefleet.shared.messages import Status

if TYPE_CHECKING:
    from edgefleet.device.agent import Agent

# What makes a status worth sending early: (model name, model version, safe mode, outbox bucket).
StatusKey = tuple[str | None, int | None, bool, int]


def build_status(agent: Agent) -> Status:
    """The agent's current status / heartbeat (docs/protocol.md, the status message)."""
    c = agent.classifier
    p50, p95 = agent.stats.percentile(50), agent.stats.percentile(95)
    return Status(
        device_id=agent.config.device_id,
        online=True,
        agent_version=__version__,
        boot_id=agent.boot_id,
        groups=list(agent.config.groups),
        runtime=agent.backend.name,
        runtime_version=agent.backend.version,
        accelerator=c.model.accelerator if c else agent.accel.accelerators[0],
        accelerator_note=agent.accelerator_note[:4096] or None,
        model_name=c.name if c else None,
        model_version=c.version if c else None,
        inference_count=agent.stats.count,
        latency_p50_ms=round(p50, 3) if p50 is not None else None,
        latency_p95_ms=round(p95, 3) if p95 is not None else None,
        outbox_depth=agent.outbox.depth(),
        dropped=agent.outbox.dropped(),
        ignored_manifests=int(agent.store.ignored()["count"]),
        rejected_inputs=agent.intake.rejected_total,
        safe_mode=agent.guard.safe_mode,
        unclean_exits=agent.guard.start.unclean,
        uptime_s=round(time.monotonic() - agent.started, 1),
        rss_bytes=rss_bytes(),
        cpu_temp_c=cpu_temp_c(),
        ts=time.time(),
    )


def status_key(
    model_name: str | None, model_version: int | None, *, safe_mode: bool, outbox_depth: int
) -> StatusKey:
    """The figures whose change makes a status worth sending before the next heartbeat."""
    return (model_name, model_version, safe_mode, outbox_depth.bit_length())


def status_moved(agent: Agent) -> bool:
    """Whether ``agent``'s status should go out before its next heartbeat."""
    c = agent.classifier
    key = status_key(
        c.name if c else None,
        c.version if c else None,
        safe_mode=agent.guard.safe_mode,
        outbox_depth=agent.outbox.depth(),
    )
    return agent.link.connected.is_set() and agent.freshness.due(key, time.monotonic())


class Freshness:
    """Decides whether a status goes out now rather than at the next heartbeat."""

    def __init__(self, min_interval_s: float = 2.0) -> None:
        self.min_interval_s = min_interval_s
        self._sent: StatusKey | None = None
        self._sent_at = float("-inf")

    def sent(self, status: Status, now: float) -> None:
        """Record the status just published (heartbeat or early)."""
        self._sent = status_key(
            status.model_name,
            status.model_version,
            safe_mode=bool(status.safe_mode),
            outbox_depth=status.outbox_depth or 0,
        )
        self._sent_at = now

    def due(self, key: StatusKey, now: float) -> bool:
        """True when ``key`` differs from what was last sent and the rate limit allows it."""
        return key != self._sent and now - self._sent_at >= self.min_interval_s
