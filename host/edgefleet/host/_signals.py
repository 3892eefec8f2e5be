"""Stop a long-running host command on SIGTERM/SIGINT without a lock in the signal handler.

A Python signal handler runs on the main thread between two bytecodes, also inside another
call of itself. ``threading.Event.set()`` takes the event's lock: a second signal arriving
while the first handler is inside ``set()`` would wait for that lock for ever (the agent hung
so in CI). Here the handler only appends to a list, and a relay thread sets the event.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable

RELAY_POLL_S = 0.1  # how soon after the signal ``stop`` is set


def stop_on_signals(
    stop: threading.Event, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
) -> list[int]:
    """Set ``stop`` (from a relay thread) when one of ``signals`` arrives; main thread only.

    Returns:
        The list the handler appends each received signal number to.
    """
    received: list[int] = []
    for sig in signals:
        signal.signal(sig, lambda signum, _frame: received.append(signum))

    def relay() -> None:
        while not received and not stop.wait(RELAY_POLL_S):
            pass
        stop.set()

    threading.Thread(target=relay, name="signal-relay", daemon=True).start()
    return received
