"""Receive SIGTERM/SIGINT without taking a lock in the signal handler (agent and host alike).

A Python signal handler runs on the main thread between two bytecodes, also inside another
call of itself. ``threading.Event.set()`` takes the event's lock: a second signal arriving
while the first handler is inside ``set()`` would wait for that lock for ever (the agent hung
so in CI). The handler here only appends the signal number to a list. The agent's main loop
polls :attr:`StopSignals.received`; a program that waits on an event instead lets
:meth:`StopSignals.relay` set it from a thread of its own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELAY_POLL_S = 0.1  # how soon after the signal the relayed event is set


class StopSignals:
    """The stop signals received so far, recorded by a handler that takes no lock."""

    def __init__(self) -> None:
        self.received: list[int] = []  # list.append is atomic and takes no Python lock

    def handle(self, signum: int, _frame: object) -> None:
        """The signal handler: record ``signum``, nothing else."""
        self.received.append(signum)

    def install(self, signals: Iterable[int] = STOP_SIGNALS) -> StopSignals:
        """Make :meth:`handle` the handler of ``signals``; main thread only."""
        for sig in signals:
            signal.signal(sig, self.handle)
        return self

    def relay(self, stop: threading.Event) -> threading.Thread:
        """Set ``stop`` from a daemon thread once a signal is received (or ``stop`` is set)."""

        def run() -> None:
            while not self.received and not stop.wait(RELAY_POLL_S):
                pass
            stop.set()

        thread = threading.Thread(target=run, name="signal-relay", daemon=True)
        thread.start()
        return thread


def stop_on_signals(stop: threading.Event, signals: Iterable[int] = STOP_SIGNALS) -> list[int]:
    """Set ``stop`` (from a relay thread) when one of ``signals`` arrives; main thread only.

    Returns:
        The list the handler appends each received signal number to.
    """
    stop_signals = StopSignals().install(signals)
    stop_signals.relay(stop)
    return stop_signals.received
