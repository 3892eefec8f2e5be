"""Ingest throughput into SQLite and PostgreSQL: records/s stored, committed and acked.

Run: ``.venv/bin/python bench/bench_ingest.py [--records 20000] [--batch 50]
[--stores sqlite,postgresql] [--workers 1,2]``.

Starts a local mosquitto and (for PostgreSQL) a throwaway cluster (tests/support), then for
each store and worker count: worker processes (each an ``Ingestor`` on its own connection
and its own store handle, on the ``$share/edgefleet/`` subscription, as ``edgefleet
predictions listen`` runs) and one publisher sending ``--records`` records from 10 devices
in batches of ``--batch`` (the agent's batched form). The time runs from the first publish
to the last ack, so it includes MQTT both ways, decoding, the commit and the acks; every
figure is for one machine running broker, database, publisher and workers together. Each
worker also reports records stored per CPU-second it used: what one worker does with a
core of its own, a figure a busy machine distorts less than the wall-clock rate.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from edgefleet.host.fleet import Ingestor, close_fleet, open_fleet, open_store
from edgefleet.shared.messages import Ack, PredictionRecord, TopK, batch_payload, decode, encode
from edgefleet.shared.topics import Topics
from support.broker import MosquittoBroker
from support.postgres import PostgresCluster

DEVICES = 10


def worker(where: tuple[str, str, str, str], ready: object, stop: object, out: object) -> None:
    """One ingest worker process (broker URL, prefix, store, state dir) until ``stop``.

    Puts (records stored, CPU seconds spent ingesting) on ``out`` at the end.
    """
    url, prefix, store, state = where
    fleet = open_fleet(broker=url, fleet_dir=None, prefix=prefix, state_dir=Path(state))
    ingestor = Ingestor(fleet.conn, fleet, open_store(store))
    ingestor.subscribe(shared=True)
    ready.set()  # type: ignore[attr-defined]
    cpu = time.process_time()
    stats = ingestor.run(stop=stop)  # type: ignore[arg-type]
    out.put((stats.stored, time.process_time() - cpu))  # type: ignore[attr-defined]
    ingestor.store.close()
    close_fleet(fleet)


def payloads(n: int, batch: int) -> list[tuple[str, bytes]]:
    """(device id, batch payload) for ``n`` records from DEVICES devices."""
    boot = uuid.uuid4().hex[:12]
    per: dict[str, list[bytes]] = {}
    for i in range(n):
        device = f"d{i % DEVICES}"
        label = ("concrete", "metal", "plastic", "void")[i % 4]
        rec = PredictionRecord(
            device_id=device,
            boot_id=boot,
            seq=i // DEVICES,
            source=f"scan-{i:06d}.npy",
            label=label,
            score=0.9,
            topk=[TopK(label=label, score=0.9), TopK(label="void", score=0.05)],
            latency_ms=2.5,
            model_name="gpr_convnet",
            model_version=1,
            ts=time.time(),
        )
        per.setdefault(device, []).append(encode(rec))
    out = []
    for start in range(0, n // DEVICES + 1, batch):
        for device, encoded in per.items():
            chunk = encoded[start : start + batch]
            if chunk:
                out.append((device, batch_payload(chunk)))
    return out


def run(
    url: str, store: str, root: Path, *, n: int, workers: int, batch: int
) -> tuple[float, list[tuple[int, float]]]:
    """Records/s from first publish to last ack, and each worker's (stored, CPU seconds)."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out = ctx.Queue()
    procs, readies = [], []
    for w in range(workers):
        ready = ctx.Event()
        state = str(root / f"state-{prefix}-{w}")
        p = ctx.Process(target=worker, args=((url, prefix, store, state), ready, stop, out))
        p.start()
        procs.append(p)
        readies.append(ready)
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("a worker did not start")
    work = payloads(n, batch)
    acked = 0
    lock = threading.Lock()
    done = threading.Event()

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal acked
        ack = decode(Ack, msg.payload)
        with lock:
            acked += len(ack.seqs)
            if acked >= n:
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
    for device, payload in work:
        dev.publish(topics.predictions(device), payload, qos=1)
    finished = done.wait(600)
    elapsed = time.perf_counter() - start
    stop.set()
    shares = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    dev.disconnect()
    dev.loop_stop()
    if not finished:
        raise RuntimeError(f"only {acked} of {n} records acked")
    return n / elapsed, shares


def server_cpu_s(cluster: PostgresCluster | None) -> float:
    """CPU seconds the PostgreSQL server used so far, ended backends included (0 if none).

    The postmaster's own time plus its reaped children's (cutime, cstime): a backend's time
    counts once its connection has closed.
    """
    if cluster is None:
        return 0.0
    pid = (cluster.data / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def store_only(store: str, n: int, batch: int = 500) -> float:
    """Records/s of ``add`` alone (batches of ``batch``, each committed): the store's ceiling."""
    boot = uuid.uuid4().hex[:12]
    records = [
        PredictionRecord(
            device_id=f"d{i % DEVICES}",
            boot_id=boot,
            seq=i // DEVICES,
            label="metal",
            score=0.9,
            topk=[TopK(label="metal", score=0.9)],
            latency_ms=2.5,
            model_name="gpr_convnet",
            model_version=1,
            ts=time.time(),
        )
        for i in range(n)
    ]
    target = open_store(store)
    try:
        start = time.perf_counter()
        for i in range(0, n, batch):
            target.add(records[i : i + batch])
        return n / (time.perf_counter() - start)
    finally:
        target.close()


def _server_share(cluster: PostgresCluster | None, before: float, n: int) -> str:
    used = server_cpu_s(cluster) - before
    return f"; per PostgreSQL CPU-second: {n / used:,.0f}" if cluster and used > 0 else ""


def main() -> None:
    """Run the benchmark and print one line per store and worker count."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50, help="records per message")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?"
    )
    print(f"CPU: {model}, {mp.cpu_count()} cores; Python {platform.python_version()}")
    print(f"{args.records} records from {DEVICES} devices, {args.batch} per message")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "mq", persistence=False).start()
        cluster = None
        try:
            for kind in args.stores.split(","):
                if kind == "postgresql":
                    cluster = cluster or PostgresCluster(on_disk=True).start()
                    alone = cluster.create_database(f"bench_{uuid.uuid4().hex[:8]}")
                else:
                    alone = str(root / f"{uuid.uuid4().hex[:8]}.sqlite")
                cpu = server_cpu_s(cluster)
                rate = store_only(alone, args.records)
                print(
                    f"{kind:10s} store.add alone, 500 per commit: {rate:8,.0f} records/s"
                    + _server_share(cluster, cpu, args.records)
                )
                for workers in (int(w) for w in args.workers.split(",")):
                    if kind == "postgresql":
                        cluster = cluster or PostgresCluster(on_disk=True).start()
                        store = cluster.create_database(f"bench_{uuid.uuid4().hex[:8]}")
                    else:
                        store = str(root / f"{uuid.uuid4().hex[:8]}.sqlite")
                    cpu = server_cpu_s(cluster)
                    rate, shares = run(
                        broker.url, store, root, n=args.records, workers=workers, batch=args.batch
                    )
                    per_cpu = ", ".join(f"{s / max(c, 1e-9):,.0f}" for s, c in shares)
                    print(
                        f"{kind:10s} {workers} worker(s): {rate:8,.0f} records/s in total, "
                        f"{rate / workers:8,.0f} per worker; per worker CPU-second: {per_cpu}"
                        + _server_share(cluster, cpu, args.records)
                    )
        finally:
            broker.stop()
            if cluster is not None:
                cluster.remove()


if __name__ == "__main__":
    main()
