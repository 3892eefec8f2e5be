"""OTA delivery benchmark: a ~4 MB model to N real agents vs the same bytes to N raw subscribers.

For each N (default 1, 10, 100), on one Mosquitto on loopback:

* raw: N paho subscribers (threads of one process) on a topic filter; one publisher sends
  the model's chunks (the host's default chunk size, QoS 1); the clock stops when every
  subscriber has every chunk: what the broker alone needs to fan the bytes out;
* edgefleet: N real agents (``tests/support/agent_pool.py``, 25 to a process, each with
  its own MQTT session and state), idle and online; ``host.publish.push`` to their group;
  "delivered" is when every agent has sent its last progress report (~90 % of the chunks
  persisted; the agent sends its health_check report only together with "active"),
  "active" when every agent reports the new version active.

The ratios (delivered / raw, active / raw) are measured in one run, raw first, on the same
broker. Per N it also prints when the agents reported downloading, their last progress
and active (min/median/max seconds after the push began): where the time goes.

Usage: ``.venv/bin/python bench/bench_ota.py [--agents 1,10,100] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgefleet.host.fleet import PushPlan, close_fleet, load_model, open_fleet, push
from edgefleet.shared.chunks import split_model
from edgefleet.shared.manifest import private_key_pem
from edgefleet.shared.messages import Reported
from support.agent import Signer, write_agent_config
from support.agent_pool import PoolProcess
from support.broker import MosquittoBroker
from support.faults import build_big_model

PAST_DOWNLOAD = {"health_check", "activating", "active"}


def _client(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    return client


def raw_fanout(port: int, chunks: list[bytes], n: int) -> float:
    """Seconds until n raw subscribers hold every chunk."""
    topic = f"raw-{uuid.uuid4().hex[:8]}"
    done, lock = threading.Event(), threading.Lock()
    got = [0] * n
    finished = [0]

    def on_message(i: int) -> object:
        def handler(*_: object) -> None:
            with lock:
                got[i] += 1
                if got[i] == len(chunks):
                    finished[0] += 1
                    if finished[0] == n:
                        done.set()

        return handler

    subs = []
    for i in range(n):
        c = _client(port, f"{topic}-sub-{i}")
        c.on_message = on_message(i)
        c.subscribe(f"{topic}/#", qos=1)[1]
        subs.append(c)
    time.sleep(1.0 + n / 50)  # let every SUBACK arrive
    pub = _client(port, f"{topic}-pub")
    start = time.perf_counter()
    infos = [pub.publish(f"{topic}/{i}", c, 1) for i, c in enumerate(chunks)]
    if not done.wait(300):
        raise RuntimeError(f"raw fan-out incomplete: {sorted(got)[:5]}")
    elapsed = time.perf_counter() - start
    for info in infos:
        info.wait_for_publish(10)
    for c in [*subs, pub]:
        c.disconnect()
        c.loop_stop()
    return elapsed


class ReportWatch:
    """Records when each device first reports past the download, and active at a version."""

    def __init__(self, port: int, prefix: str) -> None:
        self.started: dict[str, float] = {}
        self.delivered: dict[str, float] = {}
        self.active: dict[str, float] = {}
        self.version = -1
        self.client = _client(port, f"watch-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.subscribe(f"{prefix}/devices/+/reported", qos=1)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        report = Reported.model_validate_json(msg.payload)
        if report.version != self.version:
            return
        now = time.perf_counter()
        # The agent reports progress in ~10 % steps and sends its health_check report
        # together with "active": its last progress report is the last sign of the transfer.
        if report.state == "downloading":
            self.started.setdefault(report.device_id, now)
            self.delivered[report.device_id] = now
        elif report.state in PAST_DOWNLOAD:
            self.delivered.setdefault(report.device_id, now)
        if report.state == "active":
            self.active.setdefault(report.device_id, now)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def ota(broker: MosquittoBroker, model_path: Path, n: int, root: Path) -> dict[str, float]:
    """Deliver and activate the model on n fresh agents; seconds to all delivered / active."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    signer = Signer(root / "keys")
    key_file = root / "signing.key"
    key_file.write_bytes(private_key_pem(signer.key))
    configs = []
    for i in range(n):
        path = write_agent_config(
            root / f"a{i:04d}",
            device_id=f"ota-{i:04d}",
            broker_url=broker.url,
            prefix=prefix,
            keys=[signer.public_path],
            groups=["bench"],
        )
        text = path.read_text().replace("heartbeat_s = 0.5", "heartbeat_s = 5")
        text = text.replace("chunk_timeout_s = 0.5", "chunk_timeout_s = 5")
        # N simulated devices share 2 cores: N health-check children start at once.
        path.write_text(text.replace("health_timeout_s = 30", "health_timeout_s = 900"))
        configs.append(path)
    pools = [PoolProcess(configs[i : i + 25], root / f"pool{i}.log") for i in range(0, n, 25)]
    fleet = open_fleet(
        broker=broker.url,
        fleet_dir=None,
        prefix=prefix,
        state_dir=root / "host",
        key_file=key_file,
        need_key=True,
    )
    watch = ReportWatch(broker.port, prefix)
    try:
        devices = {f"ota-{i:04d}" for i in range(n)}
        fleet.observe()
        while not devices <= fleet.view.online():
            fleet.pump(0.5)
        time.sleep(2.0)  # let start-up work (first heartbeats, subscriptions) settle
        watch.version = fleet.registry.max_version() + 1
        files = load_model(model_path)  # reading the file is not delivery: outside the clock
        start = time.perf_counter()
        result = push(fleet, files, PushPlan(group="bench", wait=600))
        if result.exit_code != 0 or result.version != watch.version:
            raise RuntimeError(f"push did not activate v{watch.version}: {result.progress}")
        while len(watch.active) < n:
            time.sleep(0.05)

        def spread(times: dict[str, float]) -> str:
            xs = sorted(t - start for t in times.values())
            return f"{xs[0]:.2f}/{xs[len(xs) // 2]:.2f}/{xs[-1]:.2f}"

        print(
            f"  N={n}: min/median/max s after the push began: downloading "
            f"{spread(watch.started)}, last progress {spread(watch.delivered)}, "
            f"active {spread(watch.active)}",
            flush=True,
        )
        return {
            "delivered_s": max(watch.delivered.values()) - start,
            "active_s": max(watch.active.values()) - start,
        }
    finally:
        watch.close()
        close_fleet(fleet)
        for pool in pools:
            pool.stop()


def main() -> None:
    """Run the benchmark for each N and print a table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1,10,100", help="comma-separated N values")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = [int(x) for x in args.agents.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        root = Path(tmp)
        model = build_big_model(root / "mnist_big.tflite")
        chunks = split_model(model.data)
        broker = MosquittoBroker(root / "broker", persistence=False).start()
        rows = []
        try:
            for n in sizes:
                raw = raw_fanout(broker.port, chunks, n)
                got = ota(broker, model.path, n, root / f"n{n}")
                rows.append({"agents": n, "raw_s": raw, **got})
                print(
                    f"N={n:4d}  raw {raw:7.3f} s  delivered {got['delivered_s']:7.3f} s "
                    f"({got['delivered_s'] / raw:6.1f}x)  active {got['active_s']:7.3f} s "
                    f"({got['active_s'] / raw:6.1f}x)",
                    flush=True,
                )
        finally:
            broker.stop()
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "model_bytes": len(model.data),
        "chunks": len(chunks),
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
