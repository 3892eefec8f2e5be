"""A stop signal is safe to receive again while its handler runs.

CI caught an agent hung for good after two SIGTERMs (the test harness sends one to every
agent, then one more to each that is still up): the handler called ``Event.set()``, whose
lock the first, interrupted call on the same thread still held. The handler
(``shared.signals.StopSignals``) only records the signal, and the main loop sets ``stopping``.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from edgefleet.device.agent import Agent
from edgefleet.device.config import parse_config


def _agent(tmp_path: Path) -> Agent:
    return Agent(parse_config('device_id = "sig-1"\nstate_dir = "state"', base=tmp_path))


def test_the_handler_takes_no_lock_a_second_signal_could_be_waiting_on(tmp_path: Path):
    agent = _agent(tmp_path)
    try:
        # What the interrupted first call held: the stopping event's own lock.
        with agent.stopping._cond:
            done = threading.Event()

            def second_signal() -> None:
                agent.signals.handle(signal.SIGTERM, None)
                done.set()

            threading.Thread(target=second_signal, daemon=True).start()
            assert done.wait(5), "the stop-signal handler blocked on a lock"
        assert agent.signals.received == [signal.SIGTERM]
        assert agent._stop_requested()
    finally:
        agent.outbox.close()


def test_the_main_loop_turns_the_signal_into_stopping_for_every_thread(tmp_path: Path):
    agent = _agent(tmp_path)
    try:
        agent.signals.handle(signal.SIGINT, None)
        assert not agent.stopping.is_set()  # the handler only flags it
        agent._serve()
        assert agent.stopping.is_set()  # the network and log threads see this one
        assert agent.guard.served  # stopped in order
    finally:
        agent.outbox.close()
