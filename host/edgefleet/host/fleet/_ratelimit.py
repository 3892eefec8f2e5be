"""Rate limits on what devices can make the host do (docs/protocol.md 7.3, docs/fleet.md).

A chunk request of ~130 bytes can ask for 4096 chunks of up to 128 KiB each, and the broker
fans every republished chunk out to every device downloading that model. Without limits a
single device (or a stolen certificate) turns the host into an amplifier. So:

- each (model sha256, chunk index) is republished at most once per ``chunk_interval_s``
  (every device downloading the model receives that one publish);
- each device gets ``device_requests_per_min`` chunk requests per sliding minute; requests
  beyond that are ignored;
- a device's online status is written to the host registry at most once per
  ``status_write_interval_s`` unless what it says changed.

Everything ignored is counted (:class:`DeviceLimiter` attributes), never an error. The
classes are pure (a clock is injected) and bounded in memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_MAX_KEYS = 100_000  # bound on remembered (sha, index) and device entries


@dataclass(frozen=True)
class DeviceLimits:
    """The limits; defaults suit a Pi-sized host and the agent's 5 s chunk quiet period."""

    chunk_interval_s: float = 3.0
    device_requests_per_min: int = 30
    status_write_interval_s: float = 10.0


@dataclass
class DeviceLimiter:
    """Decides which device-triggered host actions to carry out (see the module docstring)."""

    limits: DeviceLimits = field(default_factory=DeviceLimits)
    clock: Callable[[], float] = time.monotonic
    ignored_requests: int = 0  # chunk requests dropped by the per-device budget
    skipped_chunks: int = 0  # requested indexes not republished (answered recently)
    skipped_status_writes: int = 0  # status messages not written to the registry
    _answered: dict[tuple[str, int], float] = field(default_factory=dict)
    _requests: dict[str, deque[float]] = field(default_factory=dict)
    _status_written: dict[str, tuple[float, str]] = field(default_factory=dict)

    def allow_request(self, device_id: str) -> bool:
        """Take one chunk request of ``device_id`` against its budget; False: ignore it."""
        now = self.clock()
        window = self._requests.get(device_id)
        if window is None:
            if len(self._requests) >= _MAX_KEYS:
                self._prune_requests(now)
            window = self._requests[device_id] = deque()
        while window and now - window[0] >= 60.0:  # noqa: PLR2004 - one minute
            window.popleft()
        if len(window) >= self.limits.device_requests_per_min:
            self.ignored_requests += 1
            return False
        window.append(now)
        return True

    def chunks_to_send(self, sha256: str, indexes: Iterable[int]) -> list[int]:
        """The indexes not republished within ``chunk_interval_s``, marked as sent now."""
        now = self.clock()
        interval = self.limits.chunk_interval_s
        if len(self._answered) >= _MAX_KEYS:
            self._answered = {k: t for k, t in self._answered.items() if now - t < interval}
        out: list[int] = []
        for i in sorted(set(indexes)):
            last = self._answered.get((sha256, i))
            if last is not None and now - last < interval:
                self.skipped_chunks += 1
                continue
            self._answered[sha256, i] = now
            out.append(i)
        return out

    def forget_chunks(self, sha256: str, indexes: Iterable[int]) -> None:
        """Undo :meth:`chunks_to_send` for indexes that were not published after all."""
        for i in indexes:
            self._answered.pop((sha256, i), None)

    def allow_status_write(self, device_id: str, digest: str) -> bool:
        """True if a status (``digest``: what matters in it) should be written now."""
        now = self.clock()
        last = self._status_written.get(device_id)
        if (
            last is not None
            and last[1] == digest
            and now - last[0] < self.limits.status_write_interval_s
        ):
            self.skipped_status_writes += 1
            return False
        if len(self._status_written) >= _MAX_KEYS:
            self._status_written.clear()
        self._status_written[device_id] = (now, digest)
        return True

    def _prune_requests(self, now: float) -> None:
        stale = [d for d, w in self._requests.items() if not w or now - w[-1] >= 60.0]  # noqa: PLR2004
        for d in stale:
            del self._requests[d]
        if len(self._requests) >= _MAX_KEYS:
            self._requests.clear()
