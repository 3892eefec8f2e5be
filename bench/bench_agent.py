"""Agent benchmark: RSS with the seed's int8 ConvNet, and watched-folder throughput vs a bare loop.

One run, same model and images for both sides:

* bare loop: ``load_input`` + ``preprocess`` + quantize + ``invoke`` per PNG in one process
  (and the invoke alone, on pre-decoded tensors, for scale);
* the agent: a real ``edgefleet-agent run`` process with a real Mosquitto; the model
  arrives as a signed update; N PNGs are renamed into the watched folder at once and the
  clock stops when the host side has received (and acked) all N prediction records.

Usage: ``.venv/bin/python bench/bench_agent.py [--n 1000] [--epochs 1] [--model M.tflite]``
"""

# TensorFlow and the host package load only when the seed model is trained.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgefleet.device.inputs import load_input
from edgefleet.device.runtime import discover_backend, open_model
from edgefleet.host.datasets import load_mnist
from edgefleet.shared.preprocess import preprocess, to_input_tensor
from support.agent import (
    MNIST_LABELS,
    MNIST_PREPROCESS,
    AgentProcess,
    FakeHost,
    ModelBundle,
    Signer,
    interpreter_specs,
    mnist_eval_pngs,
    write_agent_config,
)
from support.broker import MosquittoBroker


def seed_int8_model(out: Path, epochs: int) -> ModelBundle:
    """The seed article's ConvNet, trained on the 8,000 MNIST train digits, full int8."""
    import tensorflow as tf

    from edgefleet.host.quantize import describe, embed_model_info
    from edgefleet.host.training import build_seed_convnet, train

    data = load_mnist("train")
    x = (data.x.astype("float32") / 255.0)[..., None]
    model = build_seed_convnet((28, 28, 1), 10)
    train(model, x, data.y, epochs=epochs)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i : i + 1]] for i in range(500))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = converter.convert()
    info = describe(
        tflite, name="seed_convnet", mode="int8", labels=MNIST_LABELS, preprocess=MNIST_PREPROCESS
    )
    out.write_bytes(embed_model_info(tflite, info))
    return load_bundle(out)


def load_bundle(path: Path) -> ModelBundle:
    """A model file with the tensor specs LiteRT reads from it."""
    data = path.read_bytes()
    inp, outp = interpreter_specs(path)
    return ModelBundle(path, data, inp, outp, name="seed_convnet")


BARE_CPU_MS = 0.0


def bare_loop(model: Path, files: list[Path]) -> tuple[float, float, list[int]]:
    """(files/s with decode + preprocess, invokes/s alone, predictions)."""
    m = open_model(model, backend=discover_backend("auto"), num_threads=1)
    start, cpu = time.perf_counter(), time.process_time()
    preds, tensors = [], []
    for f in files:
        x = to_input_tensor(preprocess(load_input(f), MNIST_PREPROCESS), m.input_spec)
        tensors.append(x)
        preds.append(int(np.argmax(m.run(x))))
    with_decode = len(files) / (time.perf_counter() - start)
    global BARE_CPU_MS  # noqa: PLW0603 - one extra figure, kept out of the return value
    BARE_CPU_MS = (time.process_time() - cpu) * 1000 / len(files)
    start = time.perf_counter()
    for x in tensors:
        m.run(x)
    invoke_only = len(files) / (time.perf_counter() - start)
    return with_decode, invoke_only, preds


def cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_agent_side(work: Path, bundle: ModelBundle, files: list[Path]) -> dict[str, float]:
    """Run broker + host + agent, update the agent, drop the files, time the records."""
    broker = MosquittoBroker(work / "mosquitto", persistence=False).start()
    host = FakeHost(broker.url, "bench")
    signer = Signer(work / "keys")
    inbox = work / "inbox"
    config = write_agent_config(
        work / "device",
        device_id="bench-pi",
        broker_url=broker.url,
        prefix="bench",
        keys=[signer.public_path],
        watch_dir=inbox,
        extra="",
    )
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "warning"'))
    agent = AgentProcess(config)
    try:
        host.offer(bundle.data, chunk_size=64 * 1024)
        _, envelope = signer.manifest(bundle, version=1, devices=["bench-pi"], chunk_size=64 * 1024)
        host.push(envelope, device="bench-pi")
        host.wait_report("bench-pi", state="active", version=1, timeout=120)
        time.sleep(1.0)
        idle = host.latest_status("bench-pi")
        cpu0 = cpu_s(agent.proc.pid)
        start = time.perf_counter()
        for f in files:
            f.rename(inbox / f.name)
        processed = inbox / "processed"
        # os.listdir every 10 ms: cheap next to the agent (Path objects for 1,000 names
        # every 5 ms took a good part of a core away from it on a 2-core box)
        while len(os.listdir(processed)) < len(files):  # noqa: PTH208
            time.sleep(0.01)
        committed = time.perf_counter() - start
        host.wait(lambda h: len(h.records) >= len(files), timeout=600)
        elapsed = time.perf_counter() - start
        cpu = cpu_s(agent.proc.pid) - cpu0
        time.sleep(1.0)
        after = host.latest_status("bench-pi")
        return {
            "per_s": len(files) / elapsed,
            "committed_per_s": len(files) / committed,
            "cpu_ms": cpu * 1000 / len(files),
            "rss_idle": float(idle.rss_bytes or 0) if idle else 0.0,
            "rss_after": float(after.rss_bytes or 0) if after else 0.0,
            "hwm": float(vm_hwm(agent.proc.pid)),
            "p50": float(after.latency_p50_ms or 0) if after else 0.0,
            "p95": float(after.latency_p95_ms or 0) if after else 0.0,
        }
    finally:
        agent.stop()
        host.close()
        broker.stop()


def main() -> None:
    """Run both sides and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="MNIST eval digits to classify")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (no --model)")
    parser.add_argument("--model", type=Path, help="an int8 .tflite (default: train the seed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = (
            load_bundle(args.model)
            if args.model
            else seed_int8_model(work / "seed_int8.tflite", args.epochs)
        )
        names = mnist_eval_pngs(work / "staging", args.n)
        files = [work / "staging" / n for n in sorted(names)]
        bare, invoke_only, preds = bare_loop(bundle.path, files)
        accuracy = np.mean([p == names[f.name] for p, f in zip(preds, files, strict=True)])
        agent = run_agent_side(work, bundle, files)
    cpus = os.cpu_count()
    print(f"machine: {platform.machine()}, {cpus} cpus, python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d')}")
    print(
        f"model: seed ConvNet int8, {len(bundle.data)} bytes, accuracy on {args.n}: {accuracy:.4f}"
    )
    print(f"bare loop (decode+preprocess+invoke): {bare:8.1f} files/s")
    print(f"bare invoke only:                     {invoke_only:8.1f} invokes/s")
    print(
        f"agent watched folder -> acked record: {agent['per_s']:8.1f} predictions/s "
        f"({agent['per_s'] / bare:.2f}x the bare loop)"
    )
    commit_rate = agent["committed_per_s"]
    print(f"agent watched folder -> outbox commit: {commit_rate:7.1f} files/s")
    print(
        f"CPU per file: bare loop {BARE_CPU_MS:.3f} ms, agent process (all threads, drop to "
        f"ack) {agent['cpu_ms']:.3f} ms ({BARE_CPU_MS / agent['cpu_ms']:.2f}x)"
    )
    print(
        f"agent latency (preprocess+invoke): p50 {agent['p50']:.3f} ms, p95 {agent['p95']:.3f} ms"
    )
    print(
        f"agent RSS: idle with model {agent['rss_idle'] / 2**20:.1f} MiB, "
        f"after run {agent['rss_after'] / 2**20:.1f} MiB, peak {agent['hwm'] / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
