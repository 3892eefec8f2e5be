"""Stop signals are received without a lock in the handler (shared.signals: agent and listener)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from edgefleet.shared.signals import StopSignals, stop_on_signals


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_sets_stop_from_the_relay_thread(restore_handlers):
    stop = threading.Event()
    received = stop_on_signals(stop, (signal.SIGUSR1,))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop.wait(5)
    assert received == [signal.SIGUSR1]


def test_the_handler_returns_while_the_events_lock_is_held(restore_handlers):
    # A second signal arrives while the first one's Event.set() holds the event's lock.
    stop = threading.Event()
    stop_on_signals(stop, (signal.SIGUSR1,))
    handler = signal.getsignal(signal.SIGUSR1)
    assert callable(handler)
    returned = threading.Event()

    def second_signal() -> None:
        handler(signal.SIGUSR1, None)  # a lock-taking handler would block here
        returned.set()

    with stop._cond:  # the lock a re-entered Event.set() would wait on
        threading.Thread(target=second_signal, daemon=True).start()
        assert returned.wait(5), "the signal handler blocked on the event's lock"
    assert stop.wait(5)


def test_the_handler_records_every_signal_in_order():
    signals = StopSignals()
    assert signals.received == []
    signals.handle(signal.SIGINT, None)
    signals.handle(signal.SIGTERM, None)
    assert signals.received == [signal.SIGINT, signal.SIGTERM]


def test_the_relay_ends_without_a_signal_once_stop_is_set_elsewhere():
    stop = threading.Event()
    thread = StopSignals().relay(stop)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
