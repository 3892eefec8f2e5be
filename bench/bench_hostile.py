"""Hostile-input benchmark: the agent's peak RSS under every hostile input of issue 16.

A real ``edgefleet-agent run`` with the default ``[limits]`` and a real Mosquitto; the tiny
int8 MNIST ConvNet arrives as a signed update. Then, with the agent's peak resident memory
(``VmHWM`` in ``/proc/PID/status``) read after each phase:

1. the watched folder gets a 20000x20000 PNG bomb, a 12000x12000 and a 9000x9000 RGB PNG, a
   192-byte ``.npy`` whose header claims 8 TB, a sparse 288 MB ``.npy``, a symbolic link to
   a root-only file, a fifo, a 0-byte file, an undecodable file and a writer that pauses
   mid-copy; then the largest inputs the defaults accept (a 1 Mpx RGB PNG, an 8 MiB
   float32 ``.npy``) and valid digits;
2. the image topic gets the same bombs as ``edgefleet send-image`` sends them, messages of
   4 MiB + 1000 bytes, 9 MiB and 64 MiB, the largest image the defaults accept, then
   valid digits.

The agent must stay up, classify the valid inputs and keep its peak under 150 MB.
``inference.incomplete_timeout_s`` is 5 s here (60 by default) so the run is short; it
changes how long a 0-byte file waits, not what anything costs.

Usage: ``.venv/bin/python bench/bench_hostile.py [--model M.tflite]``
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgefleet.shared.messages import ImageMessage, encode
from support.agent import (
    AgentProcess,
    FakeHost,
    ModelBundle,
    Signer,
    build_mnist_model,
    interpreter_specs,
    mnist_eval_pngs,
    write_agent_config,
)
from support.broker import MosquittoBroker

DEVICE = "bench-hostile"
LIMIT_MB = 150


def bomb_png(width: int, height: int, *, rgb: bool = False) -> bytes:
    """A valid PNG announcing width x height, a few KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    color = 2 if rgb else 0
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width * (3 if rgb else 1) + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def npy_header(shape: tuple[int, ...], descr: str = "<f8", total: int = 0) -> bytes:
    """A .npy header for ``shape`` (padded with zeros to ``total`` bytes)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    data = buf.getvalue()
    return data + b"\0" * max(0, total - len(data))


def png_bytes(array: np.ndarray) -> bytes:
    """An array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as .npy bytes."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def vm_hwm_mib(pid: int) -> float:
    """Peak resident memory of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def deliver(inbox: Path, name: str, data: bytes) -> None:
    """Write a dot-file, then rename it into the inbox."""
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    tmp.rename(inbox / name)


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001 - a tiny helper
    """Poll ``predicate`` until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def at_limit_rgb(width: int, height: int) -> np.ndarray:
    """A smooth RGB image (compresses well, decodes to full size)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x % 256), (y % 256), ((x + y) % 256)], axis=-1).astype(np.uint8)


def alive(agent: AgentProcess) -> None:
    """Fail loudly if the agent died."""
    if agent.proc.poll() is not None:
        raise RuntimeError(f"the agent died:\n{agent.log()[-2000:]}")


def folder_phase(host: FakeHost, inbox: Path, work: Path, agent: AgentProcess) -> list[str]:
    """Feed the watched folder; wait for every refusal and every valid record."""
    secret = work / "root-only.npy"
    secret.write_bytes(npy_header((2, 2), total=160))
    secret.chmod(0o600)
    hostile = {
        "bomb-20000.png": bomb_png(20000, 20000),
        "big-12000.png": bomb_png(12000, 12000),
        "rgb-9000.png": bomb_png(9000, 9000, rgb=True),
        "claims-8tb.npy": npy_header((1_000_000, 1_000_000), total=192),
        "garbage.png": b"\x89PNG\r\n\x1a\n" + os.urandom(500),
    }
    for name, data in hostile.items():
        deliver(inbox, name, data)
    with (inbox / "huge-288mb.npy").open("wb") as fh:
        fh.write(npy_header((36_000_000,)))
        fh.truncate(288_000_128)
    (inbox / "shadow.npy").symlink_to(secret)
    os.mkfifo(inbox / "pipe.png")
    (inbox / "empty.png").write_bytes(b"")
    digit = png_bytes(np.full((28, 28), 128, dtype=np.uint8))

    def slow() -> None:
        with (inbox / "slow.png").open("wb") as fh:
            fh.write(digit[: len(digit) // 2])
            fh.flush()
            time.sleep(2.0)
            fh.write(digit[len(digit) // 2 :])

    writer = threading.Thread(target=slow)
    writer.start()
    # the largest inputs the default limits accept
    deliver(inbox, "max-rgb.png", png_bytes(at_limit_rgb(1024, 1024)))
    deliver(inbox, "max-float32.npy", npy_bytes(np.ones((1023, 2048), dtype=np.float32)))
    rejected = [*hostile, "huge-288mb.npy", "shadow.npy", "pipe.png", "empty.png"]
    notes = [inbox / "rejected" / f"{n}.error.txt" for n in rejected]
    wait_for(lambda: all(p.exists() for p in notes), 60, "rejected notes")
    writer.join()
    sources = {"slow.png", "max-rgb.png", "max-float32.npy"}
    sources |= set(mnist_eval_pngs(inbox, 5, start=200))
    host.wait(lambda h: sources <= {r.source for r in h.records.values()}, timeout=60)
    alive(agent)
    return rejected


def topic_phase(host: FakeHost, agent: AgentProcess) -> None:
    """Feed the image topic; wait for the valid records."""
    topic = host.topics.images(DEVICE)
    messages = {
        "bomb-20000.png": ("png", bomb_png(20000, 20000)),
        "big-12000.png": ("png", bomb_png(12000, 12000)),
        "rgb-9000.png": ("png", bomb_png(9000, 9000, rgb=True)),
        "claims-8tb.npy": ("npy", npy_header((1_000_000, 1_000_000), total=192)),
        "max-rgb.png": ("png", png_bytes(at_limit_rgb(1024, 1024))),
    }
    for name, (fmt, data) in messages.items():
        message = ImageMessage.from_bytes(name=name, format=fmt, data=data)
        host.client.publish(topic, encode(message), 1).wait_for_publish(10)
    for size in (4 * 2**20 + 1000, 9 * 2**20, 64 * 2**20):  # over the message / packet cap
        host.client.publish(topic, b"{" + b" " * size + b"}", 1).wait_for_publish(30)
    digit = png_bytes(np.full((28, 28), 128, dtype=np.uint8))
    for i in range(5):
        message = ImageMessage.from_bytes(name=f"digit-{i}", format="png", data=digit)
        host.client.publish(topic, encode(message), 1).wait_for_publish(10)
    wanted = {"mqtt:max-rgb.png"} | {f"mqtt:digit-{i}" for i in range(5)}
    host.wait(lambda h: wanted <= {r.source for r in h.records.values()}, timeout=60)
    alive(agent)


def run(work: Path, bundle: ModelBundle) -> dict[str, float]:
    """Broker, host, agent with default limits; the peak RSS after each phase."""
    broker = MosquittoBroker(work / "mosquitto", persistence=False).start()
    host = FakeHost(broker.url, "benchh")
    signer = Signer(work / "keys")
    inbox = work / "inbox"
    config = write_agent_config(
        work / "device",
        device_id=DEVICE,
        broker_url=broker.url,
        prefix="benchh",
        keys=[signer.public_path],
        watch_dir=inbox,
        extra="incomplete_timeout_s = 5\n",
    )
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "warning"'))
    agent = AgentProcess(config)
    try:
        host.offer(bundle.data, chunk_size=64 * 1024)
        _, envelope = signer.manifest(bundle, version=1, devices=[DEVICE], chunk_size=64 * 1024)
        host.push(envelope, device=DEVICE)
        host.wait_report(DEVICE, state="active", version=1, timeout=120)
        mnist_eval_pngs(inbox, 3)
        host.wait(lambda h: len(h.records) >= 3, timeout=60)
        figures = {"baseline": vm_hwm_mib(agent.proc.pid)}
        start = time.perf_counter()
        folder_phase(host, inbox, work, agent)
        figures["folder"] = vm_hwm_mib(agent.proc.pid)
        topic_phase(host, agent)
        figures["topic"] = vm_hwm_mib(agent.proc.pid)
        figures["seconds"] = time.perf_counter() - start
        time.sleep(1.0)
        status = host.latest_status(DEVICE)
        figures["rejected"] = float(status.rejected_inputs or 0) if status else -1.0
        figures["alive"] = float(agent.proc.poll() is None)
        return figures
    finally:
        agent.stop()
        host.close()
        broker.stop()


def main() -> None:
    """Run the phases and print the peak RSS after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an int8 MNIST .tflite (default: train one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model:
            inp, outp = interpreter_specs(args.model)
            bundle = ModelBundle(args.model, args.model.read_bytes(), inp, outp)
        else:
            bundle = build_mnist_model(work / "mnist_tiny_int8.tflite")
        figures = run(work, bundle)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, {cpu_model()}")
    print(f"python {platform.python_version()}, date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"agent peak RSS (VmHWM) after a model and 3 digits: {figures['baseline']:6.1f} MiB")
    print(f"                after the watched-folder inputs:   {figures['folder']:6.1f} MiB")
    print(f"                after the image-topic inputs:      {figures['topic']:6.1f} MiB")
    print(
        f"inputs refused: {figures['rejected']:.0f}; agent still running: {bool(figures['alive'])}"
    )
    print(f"hostile phases took {figures['seconds']:.1f} s")
    peak_mb = figures["topic"] * 2**20 / 1e6
    verdict = "under" if peak_mb < LIMIT_MB else "OVER"
    print(f"peak {peak_mb:.1f} MB (SI): {verdict} the {LIMIT_MB} MB target")


if __name__ == "__main__":
    main()
