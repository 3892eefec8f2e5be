"""Two ingest workers share one PostgreSQL store; one is SIGKILLed mid-stream and restarted.

Real processes throughout: mosquitto, a throwaway PostgreSQL cluster, two
``edgefleet predictions listen --store postgresql://...`` workers on the shared subscription
(each with its own state directory, as on two machines), and simulated device outboxes
that publish thousands of batched records and resend what is not acked. Afterwards the
database must hold every record sent, each exactly once and unchanged, and every record
acked before the kill must have been in the database already (commit, then ack).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from edgefleet.shared.messages import PredictionRecord
from support.device_sim import SimulatedDevices

pytestmark = pytest.mark.integration

DEVICES = 8
PER_DEVICE = 500  # 4,000 records
RATE = 1_500  # records/s offered: the stream lasts about 3 s, plus the restart


class Worker:
    """One ``edgefleet predictions listen`` process with its log in a file."""

    def __init__(self, name: str, root: Path, broker_url: str, prefix: str, store: str) -> None:
        self.name = name
        self.log_path = root / f"{name}.log"
        self.args = [
            sys.executable,
            "-c",
            "from edgefleet.host.cli import main; main()",
            "predictions",
            "listen",
            "--broker",
            broker_url,
            "--prefix",
            prefix,
            "--worker",
            name,
            "--state-dir",
            str(root / f"state-{name}"),
        ]
        # The URL (with its password) goes through the environment, as the docs advise.
        self.env = {**os.environ, "EDGEFLEET_STORE": store}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + 60
        while "listening on" not in self.log_path.read_text(errors="replace")[offset:]:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stored(self) -> list[int]:
        """'stored N new' of each run that ended normally."""
        return [int(n) for n in re.findall(r"stored (\d+) new", self.log())]


def _rows(url: str) -> list[tuple[str, str, int, str]]:
    with psycopg.connect(url) as conn:
        return [
            (str(d), str(b), int(s), str(r))
            for d, b, s, r in conn.execute(
                "SELECT device_id, boot_id, seq, record FROM predictions"
            )
        ]


def _keys(url: str) -> set[tuple[str, str, int]]:
    with psycopg.connect(url) as conn:
        return {
            (str(d), str(b), int(s))
            for d, b, s in conn.execute("SELECT device_id, boot_id, seq FROM predictions")
        }


def test_two_workers_one_killed_and_restarted_lose_and_duplicate_nothing(
    broker, prefix, pg_url, tmp_path
):
    w1, w2 = (Worker(n, tmp_path, broker.url, prefix, pg_url) for n in ("w1", "w2"))
    devices = None
    stop = threading.Event()
    try:
        w1.start()
        w2.start()
        devices = SimulatedDevices(
            broker.url, prefix, devices=DEVICES, per_device=PER_DEVICE, resend_after_s=4.0
        )
        total = len(devices.sent)
        resume = threading.Event()  # the second half waits until the killed worker is back
        feeder = threading.Thread(
            target=devices.stream,
            kwargs={"rate": RATE, "stop": stop, "hold_after": total // 2, "resume": resume},
        )
        feeder.start()

        # Mid-stream: a quarter acked, most still to come.
        deadline = time.monotonic() + 30
        while len(devices.acked()) < total // 4:
            assert time.monotonic() < deadline, (len(devices.acked()), w1.log(), w2.log())
            time.sleep(0.02)
        w1.kill()
        acked_before_kill = devices.acked()
        assert len(acked_before_kill) <= total // 2
        # Commit, then ack: everything a device was told is stored is in the database.
        assert acked_before_kill <= _keys(pg_url)
        time.sleep(0.5)  # records keep coming; w2 takes them, and the broker keeps w1's share
        w1.start()
        resume.set()

        deadline = time.monotonic() + 40
        while devices.unacked:
            assert time.monotonic() < deadline, (len(devices.unacked), w1.log(), w2.log())
            time.sleep(0.1)
        stop.set()
        feeder.join()
    finally:
        stop.set()
        if devices is not None:
            devices.close()
        w1.stop()
        w2.stop()

    rows = _rows(pg_url)
    keys = [(d, b, s) for d, b, s, _ in rows]
    assert len(keys) == len(set(keys)) == total, "duplicates or losses in the store"
    assert set(keys) == set(devices.sent)
    for d, b, s, text in rows:
        assert PredictionRecord.model_validate_json(text) == devices.sent[d, b, s]
    # Both workers took part, and the restarted one went on storing after the kill.
    assert w1.starts == 2
    [w1_after_restart] = w1.stored()
    [w2_total] = w2.stored()
    assert w1_after_restart > 0, w1.log()
    assert w2_total > 0, w2.log()
    assert w1_after_restart + w2_total <= total
