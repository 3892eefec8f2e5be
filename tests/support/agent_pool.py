"""Several real agents in one process, each with its own MQTT session, state dir and outbox.

For load tests and benchmarks: ``python tests/support/agent_pool.py CONFIG...`` runs one
``edgefleet.device.agent.Agent`` per config until SIGTERM. Each agent runs exactly the
code of ``Agent.run`` minus the signal handlers (only a process's main thread may set
them): its own paho network thread, its own main loop, its own health-check children.
:class:`PoolProcess` starts such a process from a test.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path


def _serve(config_path: Path, stop: threading.Event, started: threading.Barrier) -> None:
    from edgefleet.device.agent import Agent  # noqa: PLC0415 - in the pool process only
    from edgefleet.device.config import load_config  # noqa: PLC0415

    agent = Agent(load_config(config_path))
    started.wait()
    agent.updater.start()  # as Agent.run: sets the report every (re)connect publishes
    net = threading.Thread(target=agent._network_loop, name="mqtt-network", daemon=True)
    net.start()
    threading.Thread(target=lambda: (stop.wait(), agent.stopping.set()), daemon=True).start()
    try:
        agent._serve()  # Agent.run without its signal handlers
    finally:
        agent._shutdown(net)


def main(argv: list[str]) -> int:
    """Run one agent per config path in ``argv`` until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    started = threading.Barrier(len(argv))
    threads = [
        threading.Thread(target=_serve, args=(Path(p), stop, started), name=Path(p).parent.name)
        for p in argv
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


class PoolProcess:
    """A child process running :func:`main` on some agent configs."""

    def __init__(self, configs: list[Path], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, *map(str, configs)], stdout=log, stderr=log
            )

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
