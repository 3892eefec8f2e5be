"""Measure prediction ingestion (store, commit, ack) and chunk fan-out on a local Mosquitto.

Run: ``.venv/bin/python bench/bench_fleet.py [--records 20000] [--workers 2]``.
Prints records/s from first publish to last ack, for in-process Ingestor workers sharing one
SQLite file through the ``$share/edgefleet/`` subscription.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from edgefleet.host.fleet import Ingestor, SqliteStore, close_fleet, open_fleet
from edgefleet.shared.messages import Ack, PredictionRecord, decode, encode
from edgefleet.shared.topics import Topics
from support.broker import MosquittoBroker


def main() -> None:
    """Run the benchmark and print the result."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "mq", persistence=False).start()
        try:
            rate = run(broker.url, root, args.records, args.workers)
        finally:
            broker.stop()
    print(f"{args.records} records, {args.workers} worker(s): {rate:,.0f} records/s stored+acked")


def run(url: str, root: Path, n: int, workers: int) -> float:
    """Publish ``n`` records from 10 devices and time until every one is acked."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    stop = threading.Event()
    fleets, threads = [], []
    for w in range(workers):
        fleet = open_fleet(broker=url, fleet_dir=None, prefix=prefix, state_dir=root / "state")
        ingestor = Ingestor(fleet.conn, fleet, SqliteStore(root / "p.sqlite"))
        ingestor.subscribe(shared=True)
        threads.append(threading.Thread(target=ingestor.run, kwargs={"stop": stop}, name=f"w{w}"))
        fleets.append(fleet)
    for t in threads:
        t.start()
    acked: set[tuple[str, int]] = set()
    done = threading.Event()

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        ack = decode(Ack, msg.payload)
        acked.update((ack.device_id, s) for s in ack.seqs)
        if len(acked) >= n:
            done.set()

    host, port = url.removeprefix("mqtt://").split(":")
    dev = mqtt.Client(CallbackAPIVersion.VERSION2)
    dev.max_inflight_messages_set(1000)
    dev.on_message = on_ack
    dev.connect(host, int(port))
    dev.loop_start()
    dev.subscribe(f"{prefix}/devices/+/predictions/ack", qos=1)
    time.sleep(0.5)
    topics = Topics(prefix)
    start = time.perf_counter()
    for i in range(n):
        rec = PredictionRecord(
            device_id=f"d{i % 10}",
            boot_id="b",
            seq=i,
            label="3",
            score=0.9,
            latency_ms=0.3,
            model_name="m",
            model_version=1,
            ts=time.time(),
        )
        dev.publish(topics.predictions(rec.device_id), encode(rec), qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    for fleet in fleets:
        close_fleet(fleet)
    dev.disconnect()
    dev.loop_stop()
    return n / elapsed


if __name__ == "__main__":
    main()
