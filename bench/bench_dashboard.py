"""Dashboard benchmark: fleet page with 1,000 devices, predictions page over 100,000 records.

A real mosquitto holds 1,000 retained device statuses (and the push registry knows them); a
real SQLite prediction store holds N records (10 % with a radargram thumbnail of a bundled
GPR scan, in the store's thumbnails side table, where an agent's InputThumbnail lands). The
dashboard runs as ``edgefleet dashboard`` in its own process. Measured:

* server side (``http.client``, R runs, median and max): time to first byte and to the last
  byte of each page;
* in headless chromium (Selenium, Navigation Timing, R runs, median): ``responseStart``
  (TTFB) and ``loadEventEnd`` (the page and its CSS/JS loaded, laid out);
* the dashboard process's resident memory (VmRSS) and peak (VmHWM) after the runs.

Usage: ``.venv/bin/python bench/bench_dashboard.py [--devices 1000] [--records 100000] [--runs 15]``
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgefleet.device.thumbnails import draw
from edgefleet.host.fleet import SqliteStore, open_registry
from edgefleet.shared.messages import PredictionRecord, Status, TopK, encode
from edgefleet.shared.topics import Topics
from support.broker import MosquittoBroker, free_port
from support.chromium import headless_chromium

GPR_SCANS = Path(__file__).resolve().parent.parent / "host/edgefleet/host/datasets/data/gpr/heldout"
LABELS = ("metal", "plastic", "concrete", "none")
VERBOSE = bool(os.environ.get("BENCH_VERBOSE"))
PAGES = ("/", "/predictions", "/predictions?label=metal&min_score=0.9")


def cpu_model() -> str:
    """The CPU model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def publish_statuses(url: str, prefix: str, n: int) -> list[str]:
    """Retain ``n`` device statuses (every tenth offline) on the broker; return the ids."""
    topics = Topics(prefix)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-seed")
    host, port = url.removeprefix("mqtt://").split(":")
    client.connect(host, int(port))
    client.loop_start()
    ids = [f"pi-{i:04d}" for i in range(n)]
    now = time.time()
    infos = []
    for i, d in enumerate(ids):
        status = Status(
            device_id=d,
            online=i % 10 != 0,
            agent_version="0.2.0",
            boot_id="b0",
            groups=[f"site-{i % 20:02d}"],
            runtime="ai_edge_litert",
            accelerator="cpu",
            model_name="gpr_convnet",
            model_version=7,
            inference_count=1000 + i,
            latency_p50_ms=2.1,
            latency_p95_ms=3.4,
            outbox_depth=i % 3,
            dropped=0,
            rss_bytes=60_000_000 + i,
            ts=now,
        )
        infos.append(client.publish(topics.status(d), encode(status), qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()
    return ids


def fill_store(path: Path, n: int, devices: list[str]) -> float:
    """Write ``n`` records (10 % with a radargram thumbnail); return the seconds it took."""
    started = time.perf_counter()
    store = SqliteStore(path)
    scan = np.load(next(GPR_SCANS.glob("*/*.npy")))
    picture = draw(scan)  # a real radargram, as an agent sends it
    t0 = time.time() - n * 0.5
    batch: list[PredictionRecord] = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        batch.append(
            PredictionRecord(
                device_id=devices[i % len(devices)],
                boot_id="b0",
                seq=i + 1,
                source=f"watch:/var/lib/edgefleet/in/scan-{i:06d}.npy",
                label=label,
                score=0.5 + (i % 50) / 100,
                topk=[TopK(label=label, score=0.9), TopK(label="none", score=0.05)],
                latency_ms=2.5,
                model_name="gpr_convnet",
                model_version=7,
                ts=t0 + i * 0.5,
            )
        )
        if i % 10 == 0:
            thumb = picture.message(device_id=devices[i % len(devices)], boot_id="b0", seq=i + 1)
            store.add_thumbnails([(thumb, t0 + i * 0.5)])
        if len(batch) == 5000:
            store.add(batch)
            batch = []
    if batch:
        store.add(batch)
    store.close()
    return time.perf_counter() - started


def fetch(port: int, path: str) -> tuple[float, float, int]:
    """(ttfb s, total s, bytes) of one GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    first = response.read(1)
    ttfb = time.perf_counter() - start
    body = first + response.read()
    total = time.perf_counter() - start
    conn.close()
    if response.status != http.client.OK:
        raise RuntimeError(f"GET {path}: {response.status}")
    return ttfb, total, len(body)


def browser_timings(port: int, runs: int, profile: Path) -> dict[str, tuple[float, float, float]]:
    """Median (TTFB, loadEventEnd, browser CPU) in ms per page (Navigation Timing, /proc)."""
    driver = headless_chromium(profile)
    out = {}
    try:
        for page in PAGES:
            ttfb, load, cpu = [], [], []
            for _ in range(runs):
                before = tree_cpu_s(driver.service.process.pid)
                driver.get(f"http://127.0.0.1:{port}{page}")
                cpu.append((tree_cpu_s(driver.service.process.pid) - before) * 1000)
                nav = driver.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "return [n.responseStart - n.startTime, n.loadEventEnd - n.startTime,"
                    " n.responseEnd - n.startTime, n.domInteractive - n.startTime];"
                )
                ttfb.append(nav[0])
                load.append(nav[1])
                if VERBOSE:
                    print("   ", page, [round(x) for x in nav])
            out[page] = (statistics.median(ttfb), statistics.median(load), statistics.median(cpu))
    finally:
        driver.quit()
    return out


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, user+system CPU seconds) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process below it."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)], cpu[int(entry.name)] = _stat(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(cpu.get(p, 0.0) for p in tree)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def start_dashboard(broker: str, prefix: str, state: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``edgefleet dashboard`` in its own process, once it answers: (process, port)."""
    port = free_port()
    dash = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from edgefleet.host.cli import main; main()",
            "dashboard",
            "--broker",
            broker,
            "--prefix",
            prefix,
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            fetch(port, "/static/dashboard.css")
        except OSError:
            if time.monotonic() > deadline:
                dash.kill()
                raise
            time.sleep(0.3)
        else:
            return dash, port


def measure(dash: subprocess.Popen[bytes], port: int, runs: int, profile: Path | None) -> None:
    """Print server-side and browser timings and the process memory."""
    idle = rss_kib(dash.pid)
    print(f"dashboard process after start: RSS {idle[0] / 1024:.0f} MiB")
    print(f"server side, {runs} runs (median / max):")
    for page in PAGES:
        fetch(port, page)  # warm-up
        before = _stat(dash.pid)[1]
        got = [fetch(port, page) for _ in range(runs)]
        cpu_ms = (_stat(dash.pid)[1] - before) / runs * 1000
        ttfb = [r[0] * 1000 for r in got]
        total = [r[1] * 1000 for r in got]
        print(
            f"  GET {page:42s} TTFB {statistics.median(ttfb):6.1f} / {max(ttfb):6.1f} ms"
            f"   complete {statistics.median(total):6.1f} / {max(total):6.1f} ms"
            f"   server CPU {cpu_ms:5.1f} ms   {got[0][2] / 1024:.0f} KiB"
        )
    if profile is not None:
        n = max(3, runs // 3)
        print(f"headless chromium, {n} runs (median):")
        for page, (ttfb_ms, load_ms, cpu_ms) in browser_timings(port, n, profile).items():
            print(
                f"  {page:46s} TTFB {ttfb_ms:6.1f} ms   loaded {load_ms:6.1f} ms"
                f"   chromium CPU {cpu_ms:5.0f} ms"
            )
    rss, peak = rss_kib(dash.pid)
    print(f"dashboard process: RSS {rss / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB")


def main() -> None:
    """Set up the fleet and store, start the dashboard, measure, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    broker = MosquittoBroker(work / "mosquitto", persistence=False).start()
    dash = None
    try:
        prefix = "bench"
        devices = publish_statuses(broker.url, prefix, args.devices)
        state = work / "state"
        registry = open_registry(state)
        for d in devices:
            registry.remember_device(d, groups=None, status_json=None, seen=time.time())
        registry.close()
        took = fill_store(state / "predictions.sqlite", args.records, devices)
        size = (state / "predictions.sqlite").stat().st_size / 2**20
        print(f"store: {args.records} records ({size:.0f} MiB) written in {took:.1f} s")
        dash, port = start_dashboard(broker.url, prefix, state)
        measure(dash, port, args.runs, None if args.no_browser else work / "profile")
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if dash is not None:
            dash.terminate()
            dash.wait(timeout=30)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
