"""Predictions flowing while the host listener, the broker and the agent are each killed.

The real ``edgefleet predictions listen`` process stores into SQLite and acks; afterwards
the store must hold exactly one record per classified file: none lost, none twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edgefleet.host.fleet import SqliteStore
from support.agent import mnist_eval_pngs
from support.faults import Rig, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 8


class Listener:
    """``edgefleet predictions listen`` as a child process (persistent MQTT session)."""

    def __init__(self, rig: Rig, db: Path) -> None:
        self.args = [
            sys.executable,
            "-c",
            "from edgefleet.host.cli import main; main()",
            "predictions",
            "listen",
            "--broker",
            rig.url,
            "--prefix",
            rig.prefix,
            "--db",
            str(db),
            "--state-dir",
            str(rig.root / "host-state"),
        ]
        self.log_path = rig.root / "listener.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def stored_sources(db: Path) -> Counter[str]:
    store = SqliteStore(db)
    try:
        return Counter(record.source for _id, record in store.iter_records())
    finally:
        store.close()


def test_no_prediction_lost_or_stored_twice_through_kills(
    tmp_path, own_broker, prefix, mnist_bundle
):
    inbox = tmp_path / "inbox"
    rig = Rig(tmp_path, own_broker.url, prefix, watch_dir=inbox)
    db = tmp_path / "predictions.sqlite"
    listener = None
    try:
        rig.host.ack = False  # only the real listener acknowledges
        rig.start()
        rig.push(mnist_bundle, 1)
        rig.wait_report(state="active", version=1)
        listener = Listener(rig, db)
        processed = inbox / "processed"
        sources: set[str] = set()

        def batch(n: int) -> None:
            sources.update(mnist_eval_pngs(inbox, BATCH, start=n * BATCH))

        def all_processed() -> bool:
            return len(list(processed.glob("*.png"))) == len(sources)

        batch(0)  # 1. the listener is killed while records flow
        listener.kill()
        wait_until(all_processed, what="batch 0 classified")
        batch(1)
        listener.start()
        wait_until(all_processed, what="batch 1 classified")
        # The broker dies next: the listener must have connected first (it exits with an
        # error when the broker is unreachable at start, as a service manager expects).
        wait_until(
            lambda: "listening on" in listener.log_path.read_text(errors="replace"),
            timeout=30,
            what="listener connected",
        )

        own_broker.kill()  # 2. the broker dies (SIGKILL) with records in flight
        batch(2)
        wait_until(all_processed, what="batch 2 classified offline")
        own_broker.start()

        batch(3)  # 3. the agent dies right after classifying, before all acks
        wait_until(all_processed, what="batch 3 classified")
        rig.agent.kill()
        batch(4)
        rig.start()
        wait_until(all_processed, timeout=90, what="batch 4 classified after restart")

        counts = wait_until(
            lambda: (c := stored_sources(db)) and set(c) == sources and c,
            timeout=120,
            what="every record stored",
        )
        assert counts == Counter(dict.fromkeys(sources, 1)), "a record stored twice"
        assert listener.alive(), listener.log_path.read_text()[-2000:]
        assert rig.invariant().version == 1
        status = rig.host.wait(
            lambda h: (s := h.latest_status(rig.device_id)) and s.outbox_depth == 0 and s,
            timeout=60,
        )
        assert status.dropped == 0
    finally:
        if listener is not None:
            listener.kill()
        rig.close()
