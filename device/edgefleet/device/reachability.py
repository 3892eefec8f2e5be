"""Says, at the default log level, when the agent cannot reach its broker, at a bounded rate.

A device that cannot reach its broker keeps serving (the outbox holds the records), so
nothing else tells its operator: the first failure is logged as a warning at once, then
one warning every :data:`WARN_EVERY_S` seconds while it lasts (the attempts between are
logged at info), and one warning when the broker is reached again, saying how long it took.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("edgefleet.device._mqtt")

WARN_EVERY_S = 30.0


@dataclass
class Reachability:
    """The broker link's outage bookkeeping (network thread only)."""

    where: str  # the broker URL, as configured
    clock: Callable[[], float] = time.monotonic
    warn_every_s: float = WARN_EVERY_S
    down_since: float | None = None
    failures: int = 0
    warned_at: float | None = None

    def failed(self, problem: str, retry_in: float) -> None:
        """A connection attempt failed (``problem``); the next one is in ``retry_in`` s."""
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
        self.failures += 1
        due = self.warned_at is None or now - self.warned_at >= self.warn_every_s
        level = logging.WARNING if due else logging.INFO
        if due:
            self.warned_at = now
        log.log(
            level,
            "cannot reach the broker at %s: %s; retrying in %.1f s (%d attempts, %.0f s "
            "without a connection; check that the broker runs and mqtt.url in agent.toml)",
            self.where,
            problem,
            retry_in,
            self.failures,
            now - self.down_since,
        )

    def lost(self, problem: str) -> None:
        """An established connection broke."""
        if self.down_since is None:
            self.down_since = self.clock()
            self.warned_at = self.down_since
            log.warning(
                "lost the connection to the broker at %s: %s; reconnecting", self.where, problem
            )

    def connected(self) -> None:
        """The broker accepted a connection: say so if an outage was reported."""
        if self.down_since is not None and self.warned_at is not None:
            log.warning(
                "connected to the broker at %s after %.0f s without a connection",
                self.where,
                self.clock() - self.down_since,
            )
        self.down_since, self.warned_at, self.failures = None, None, 0
