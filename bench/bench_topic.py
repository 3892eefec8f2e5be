"""Agent vs bare interpreter via the image topic (MNIST ConvNet, MobileNetV2); cold start, RSS.

One run per model, same model file and the same images on both sides:

* bare: one LiteRT interpreter (1 thread) in this process; per image decode PNG +
  ``shared.preprocess`` + quantize + ``invoke`` ("with decode"), and ``invoke`` alone on
  the prepared tensors ("invoke only");
* agent: a real ``edgefleet-agent run`` process with a real Mosquitto; the model arrives
  as a signed update; N images are published at once on its image topic (QoS 1) and the
  clock stops when the host side holds all N prediction records;
* cold start (int8 MNIST ConvNet): the agent is stopped with the model active and one
  digit in its watched folder, then started; the time from ``Popen`` to that digit's
  record arriving at the host; and the agent's RSS (VmRSS / VmHWM) after the run.

MobileNetV2 is ``keras.applications.MobileNetV2`` with random weights at 224x224x3, full
int8; the 28x28 digits are resized and replicated to 3 channels by ``shared.preprocess``.

Usage: ``.venv/bin/python bench/bench_topic.py [--n 300] [--models mnist,seed,mobilenetv2]``
(``mnist`` is a tiny 11 KB ConvNet, ``seed`` the seed article's 446 KB one.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgefleet.device.inputs import decode_input
from edgefleet.device.runtime import discover_backend, open_model
from edgefleet.shared.preprocess import preprocess, to_input_tensor
from edgefleet.shared.spec import PreprocessSpec
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
from support.faults import digit_png, image_payload, rss_kib

DEVICE = "bench-topic"
CHUNK = 64 * 1024


def mobilenet_v2(out: Path) -> ModelBundle:
    """MobileNetV2 (random weights, 224x224x3, 10 classes) converted to full int8."""
    import keras  # noqa: PLC0415 - host side only
    import tensorflow as tf  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None, classes=10)
    rng = np.random.default_rng(0)
    samples = rng.random((8, 224, 224, 3), dtype=np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(8))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    out.write_bytes(converter.convert())
    inp, outp = interpreter_specs(out)
    spec = PreprocessSpec(height=224, width=224, channels=3, scale="unit")
    return ModelBundle(out, out.read_bytes(), inp, outp, preprocess=spec, name="mobilenet_v2")


def bare(bundle: ModelBundle, pngs: list[bytes]) -> dict[str, float]:
    """Images per second through a bare interpreter: with decode, and invoke only."""
    m = open_model(bundle.path, backend=discover_backend("auto"), num_threads=1)
    start, cpu = time.perf_counter(), time.process_time()
    tensors = []
    for png in pngs:
        x = to_input_tensor(preprocess(decode_input(png, "png"), bundle.preprocess), m.input_spec)
        tensors.append(x)
        m.run(x)
    with_decode = len(pngs) / (time.perf_counter() - start)
    bare_cpu_ms = (time.process_time() - cpu) * 1000 / len(pngs)
    start = time.perf_counter()
    for x in tensors:
        m.run(x)
    return {
        "bare_cpu_ms": bare_cpu_ms,
        "bare_with_decode": with_decode,
        "bare_invoke": len(pngs) / (time.perf_counter() - start),
    }


def agent_topic(work: Path, bundle: ModelBundle, n: int) -> dict[str, float]:
    """Images per second through the agent's image topic, plus cold start and RSS."""
    broker = MosquittoBroker(work / "mosquitto", persistence=False).start()
    host = FakeHost(broker.url, "bench")
    signer = Signer(work / "keys")
    inbox = work / "inbox"
    config = write_agent_config(
        work / "device",
        device_id=DEVICE,
        broker_url=broker.url,
        prefix="bench",
        keys=[signer.public_path],
        watch_dir=inbox,
    )
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "warning"'))
    agent = AgentProcess(config)
    try:
        host.offer(bundle.data, chunk_size=CHUNK)
        _, envelope = signer.manifest(bundle, version=1, devices=[DEVICE], chunk_size=CHUNK)
        host.push(envelope, device=DEVICE)
        host.wait_report(DEVICE, state="active", version=1, timeout=300)
        time.sleep(1.0)
        payloads = [image_payload(f"img-{i}", i % 100) for i in range(n)]
        topic = host.topics.images(DEVICE)
        cpu = _cpu_s(agent.proc.pid)
        start = time.perf_counter()
        for p in payloads:
            host.client.publish(topic, p, 1)
        host.wait(lambda h: len(h.records) >= n, timeout=1200)
        result = {"agent_topic": n / (time.perf_counter() - start)}
        result["agent_cpu_ms"] = (_cpu_s(agent.proc.pid) - cpu) * 1000 / n
        result["rss_mib"] = rss_kib(agent.proc.pid) / 1024
        result["hwm_mib"] = _hwm_kib(agent.proc.pid) / 1024
        agent.stop()
        mnist_eval_pngs(inbox, 1, start=999)
        start = time.perf_counter()
        agent = AgentProcess(config)
        host.wait(lambda h: any(r.source == "digit-00999.png" for r in h.records.values()), 120)
        result["cold_start_s"] = time.perf_counter() - start
        return result
    finally:
        agent.stop()
        host.close()
        broker.stop()


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    """Run the benchmark for each model and print a table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images per model")
    parser.add_argument("--models", default="mnist,mobilenetv2")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    pngs = [digit_png(i % 100) for i in range(args.n)]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-topic-") as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            if name == "mnist":
                bundle = build_mnist_model(root / "mnist_int8.tflite", train_n=2000, epochs=1)
            elif name == "seed":  # the seed article's ConvNet, as in bench_agent.py
                from bench_agent import seed_int8_model  # noqa: PLC0415 - loads TF

                bundle = seed_int8_model(root / "seed_int8.tflite", epochs=1)
            else:
                bundle = mobilenet_v2(root / "mobilenet_v2_int8.tflite")
            row = {"model_bytes": len(bundle.data), **bare(bundle, pngs)}
            row |= agent_topic(root / name, bundle, args.n)
            row["ratio_vs_invoke"] = row["agent_topic"] / row["bare_invoke"]
            row["ratio_vs_with_decode"] = row["agent_topic"] / row["bare_with_decode"]
            # CPU per image, bare / agent process (all threads): what load on the box hides
            row["cpu_ratio"] = row["bare_cpu_ms"] / row["agent_cpu_ms"]
            rows[name] = row
            print(name, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    result = {"machine": platform.machine(), "n": args.n, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
