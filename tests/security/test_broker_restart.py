"""A broker restart must not make the listener deaf (issue 16, attack 3).

With ``persistence true`` (the generated config), mosquitto 2.0.11 restores the listener's
persistent session without its ``$share/...`` subscription; the listener resubscribed only
when the broker reported no session, so it stayed connected and received nothing. Now every
(re)connect subscribes again. Two real agents classify files from their watched folders
while mosquitto is stopped with SIGTERM and with kill -9 and restarted on the same port;
the real ``predictions listen`` (shared and plain subscription) must store every record
exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edgefleet.host.fleet import SqliteStore
from support.agent import (
    AgentProcess,
    FakeHost,
    Signer,
    mnist_eval_pngs,
    shared_mnist_model,
    write_agent_config,
)
from support.broker import MosquittoBroker
from support.faults import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES = ("restart-a", "restart-b")
PER_BATCH = 4


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory):
    return shared_mnist_model(tmp_path_factory)


class Listener:
    """``edgefleet predictions listen`` as a child process."""

    def __init__(self, url: str, prefix: str, root: Path, *, shared: bool) -> None:
        self.db = root / "predictions.sqlite"
        self.log_path = root / "listener.log"
        args = [sys.executable, "-c", "from edgefleet.host.cli import main; main()"]
        args += ["predictions", "listen", "--broker", url, "--prefix", prefix]
        args += ["--db", str(self.db), "--state-dir", str(root / "host-state")]
        args += [] if shared else ["--no-shared"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        wait_until(lambda: "listening on" in self.log(), timeout=30, what="listener up")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stored(self) -> Counter[tuple[str, str]]:
        store = SqliteStore(self.db)
        try:
            return Counter((r.device_id, r.source) for _id, r in store.iter_records())
        finally:
            store.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


class Site:
    """Two real agents with watched folders, serving the tiny model pushed by a FakeHost."""

    def __init__(self, root: Path, url: str, prefix: str, bundle: object) -> None:
        self.host = FakeHost(url, prefix)
        self.host.ack = False  # only the real listener acknowledges
        signer = Signer(root / "keys")
        self.inboxes = {d: root / d / "inbox" for d in DEVICES}
        self.agents = [
            AgentProcess(
                write_agent_config(
                    root / d,
                    device_id=d,
                    broker_url=url,
                    prefix=prefix,
                    keys=[signer.public_path],
                    groups=["field"],
                    watch_dir=self.inboxes[d],
                    extra="[outbox]\nresend_after_s = 2.0\n",
                )
            )
            for d in DEVICES
        ]
        self.host.offer(bundle.data, chunk_size=4096)  # type: ignore[attr-defined]
        _, envelope = signer.manifest(bundle, version=1, groups=["field"])  # type: ignore[arg-type]
        self.host.push(envelope, group="field")
        for device in DEVICES:
            self.host.wait_report(device, state="active", version=1, timeout=90)
        self.expected: set[tuple[str, str]] = set()
        self.batches = 0

    def feed(self) -> None:
        """Drop PER_BATCH new digits into each inbox."""
        for i, device in enumerate(DEVICES):
            start = (self.batches * len(DEVICES) + i) * PER_BATCH
            names = mnist_eval_pngs(self.inboxes[device], PER_BATCH, start=start)
            self.expected.update((device, name) for name in names)
        self.batches += 1
        wait_until(self.classified, what=f"batch {self.batches - 1} classified")

    def classified(self) -> bool:
        done = {(d, p.name) for d in DEVICES for p in (self.inboxes[d] / "processed").glob("*")}
        return self.expected <= done

    def stored_in(self, listener: Listener) -> bool:
        got = {(d, Path(src.split(":", 1)[-1]).name) for d, src in listener.stored()}
        return self.expected <= got

    def close(self) -> None:
        for agent in self.agents:
            agent.kill()
        self.host.close()


@pytest.mark.parametrize("shared", [True, False], ids=["share", "plain"])
def test_every_record_arrives_exactly_once_through_broker_restarts(
    shared, tmp_path, prefix, mnist_bundle
):
    broker = MosquittoBroker(tmp_path / "mosquitto", persistence=True).start()
    site = listener = None
    try:
        site = Site(tmp_path, broker.url, prefix, mnist_bundle)
        listener = Listener(broker.url, prefix, tmp_path, shared=shared)
        site.feed()  # records flow, then SIGTERM with some possibly in flight
        broker.stop(signal.SIGTERM)
        broker.start()
        site.feed()  # after the restart: only a renewed subscription can take these
        wait_until(lambda: site.stored_in(listener), timeout=30, what="stored after SIGTERM")

        broker.kill()  # kill -9: the persistence file is whatever autosave wrote
        broker.start()
        site.feed()
        wait_until(lambda: site.stored_in(listener), timeout=30, what="stored after kill -9")

        counts = listener.stored()
        assert len(counts) == len(site.expected) == 3 * PER_BATCH * len(DEVICES)
        assert set(counts.values()) == {1}, "a record stored twice"
        assert listener.proc.poll() is None, listener.log()[-2000:]
    except TimeoutError as exc:
        logs = listener.log()[-3000:] if listener else ""
        pytest.fail(f"{exc}: records lost after a broker restart; listener log:\n{logs}")
    finally:
        if listener is not None:
            listener.stop()
        if site is not None:
            site.close()
        broker.stop()
