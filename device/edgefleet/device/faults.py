"""Named fault points: ``EDGEFLEET_FAULT=<point>`` makes the agent die there (tests only).

The fault-injection suite kills the agent at exact steps of an update to prove that a
restart resumes or rolls forward without using a half-written file. The exit is
``os._exit(137)``: no cleanup, no flush, as if the power went out.
"""

from __future__ import annotations

import os
import time
from typing import Final

ENV: Final = "EDGEFLEET_FAULT"
POINTS: Final = frozenset(
    {
        "after_chunk_write",
        "after_verify",
        "after_stage",
        "during_activate",
        "after_activate_before_report",
        "after_outbox_commit",
        "health_child",
    }
)
# Points that stall instead of dying: ``EDGEFLEET_FAULT=slow_health_check:8`` makes the
# health-check child sleep 8 s (default 5) before it loads the model.
DELAY_POINTS: Final = frozenset({"slow_health_check"})


def fault(point: str) -> None:
    """Exit at once with status 137 if ``EDGEFLEET_FAULT`` names ``point``.

    ``EDGEFLEET_FAULT=after_chunk_write:3`` fires on the third time the point is reached.
    """
    wanted = os.environ.get(ENV, "")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != point:
        return
    if count:
        _hits[point] = _hits.get(point, 0) + 1
        if _hits[point] < int(count):
            return
    os._exit(137)


_hits: dict[str, int] = {}


def delay(point: str) -> None:
    """Sleep if ``EDGEFLEET_FAULT=<point>[:seconds]`` names this delay point (tests only)."""
    name, _, seconds = os.environ.get(ENV, "").partition(":")
    if name == point and point in DELAY_POINTS:
        time.sleep(float(seconds or 5))
