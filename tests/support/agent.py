"""Test helpers for the device agent: tiny real models, signed updates, a real agent process.

Used by tests/integration/test_agent*.py and reusable by fleet / fault-injection tests:

* :func:`build_mnist_model` trains a tiny ConvNet on real MNIST digits and converts it
  to full int8 with the real TFLite converter (TensorFlow: host side only).
* :class:`Signer` makes Ed25519 keys and signed manifests; :class:`FakeHost` is a real
  paho client that publishes manifests, answers chunk requests, stores and acks
  predictions, and records every status / reported message.
* :class:`AgentProcess` runs ``edgefleet-agent run`` as a real child process.
"""

# TensorFlow, Pillow and the host package load lazily, only in the helpers that need them.
# ruff: noqa: PLC0415

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared.chunks import chunk_at, chunk_count
from edgefleet.shared.manifest import (
    Manifest,
    ModelVariant,
    Targets,
    key_id_for,
    public_key_pem,
    sign_manifest,
)
from edgefleet.shared.messages import (
    Ack,
    ChunkRequest,
    PredictionRecord,
    Reported,
    Status,
    decode_predictions,
    encode,
)
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics

MNIST_LABELS = tuple(str(i) for i in range(10))
MNIST_PREPROCESS = PreprocessSpec(height=28, width=28, channels=1, scale="unit")


# -- models -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelBundle:
    """A .tflite file and what a manifest says about it."""

    path: Path
    data: bytes
    input: TensorSpec
    output: TensorSpec
    labels: tuple[str, ...] = MNIST_LABELS
    preprocess: PreprocessSpec = MNIST_PREPROCESS
    name: str = "mnist_tiny"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def interpreter_specs(path: Path) -> tuple[TensorSpec, TensorSpec]:
    """Input and output TensorSpec of a model, read by LiteRT (as the agent does)."""
    from edgefleet.device.runtime import discover_backend, open_model

    model = open_model(path, backend=discover_backend("ai_edge_litert"))
    return model.input_spec, model.output_spec


def build_mnist_model(out: Path, *, train_n: int = 3000, epochs: int = 3) -> ModelBundle:
    """Train a tiny ConvNet on real MNIST and convert it to full int8 (int8 in and out)."""
    import keras
    import tensorflow as tf

    from edgefleet.host.datasets import load_mnist

    keras.utils.set_random_seed(0)
    data = load_mnist("train")
    x = (data.x[:train_n].astype("float32") / 255.0)[..., None]
    y = data.y[:train_n]
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i : i + 1]] for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite = converter.convert()
    tflite = _embed_info(tflite)
    out.write_bytes(tflite)
    inp, outp = interpreter_specs(out)
    return ModelBundle(path=out, data=tflite, input=inp, output=outp)


def _embed_info(tflite: bytes) -> bytes:
    try:
        from edgefleet.host.quantize import describe, embed_model_info
    except ImportError:  # the quantizer's module is not there: the manifest still carries it
        return tflite
    info = describe(
        tflite, name="mnist_tiny", mode="int8", labels=MNIST_LABELS, preprocess=MNIST_PREPROCESS
    )
    return embed_model_info(tflite, info)


# Inputs whose removal (tensor index -1, "optional") a kernel dereferences anyway, in order
# of preference. RESHAPE's shape input and STRIDED_SLICE's begin input crashed the health
# child every time on the tiny ConvNet (ai-edge-litert 2.3, 2026-11-27, 8 of 8 runs each, at
# several paths). The CONV_2D filter, used before, is undefined behaviour that depends on the
# process: it crashed at some model paths and failed cleanly at others ("Tensor at index 1 was
# optional but was expected"), so it is only the last resort.
_CRASH_CANDIDATES = (("RESHAPE", 1), ("STRIDED_SLICE", 1), ("CONV_2D", 1))


def _dies_by_signal(path: Path, bundle: ModelBundle) -> bool:
    """True if the agent's health-check child dies by a signal on ``path``, 3 times in a row.

    The probe is that very child: the crash is undefined behaviour, so whether it happens
    depends on the process (what it imported, its heap), not only on the model.
    """
    args = {
        "model": str(path),
        "backend": "ai_edge_litert",
        "num_threads": 1,
        "edgetpu": "",
        "input": bundle.input.model_dump(mode="json"),
        "output": bundle.output.model_dump(mode="json"),
    }
    cmd = [sys.executable, "-m", "edgefleet.device.health", json.dumps(args)]
    for _ in range(3):
        proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        if proc.returncode >= 0:
            return False
    return True


def crash_model(bundle: ModelBundle) -> ModelBundle:
    """A crafted model that makes LiteRT die by a signal (SIGSEGV), verified here.

    One operator loses an input (its index becomes -1, "optional"), which the kernel
    dereferences anyway. The bytes are a valid flatbuffer with the original tensor specs,
    so only a health check that runs the interpreter can find out - and it must do so in a
    child process. Each candidate of ``_CRASH_CANDIDATES`` is tried with the health-check
    child itself; the first that really crashes it (3 times) is returned.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    ops = schema.BuiltinOperator
    path = bundle.path.with_name("crashing.tflite")
    for op_name, position in _CRASH_CANDIDATES:
        model = schema.ModelT.InitFromPackedBuf(bytearray(bundle.data), 0)
        code = getattr(ops, op_name)
        target = next(
            (
                op
                for op in model.subgraphs[0].operators
                if model.operatorCodes[op.opcodeIndex].builtinCode == code
                and len(op.inputs) > position
            ),
            None,
        )
        if target is None:
            continue
        target.inputs[position] = -1
        builder = flatbuffers.Builder(len(bundle.data) + 4096)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        data = bytes(builder.Output())
        path.write_bytes(data)
        if _dies_by_signal(path, bundle):
            return ModelBundle(path, data, bundle.input, bundle.output)
    msg = f"no crafted variant of {bundle.path} crashes LiteRT here; tried {_CRASH_CANDIDATES}"
    raise RuntimeError(msg)


# -- signing and publishing -------------------------------------------------------------


class Signer:
    """An Ed25519 signing key and its public key file (what the device trusts)."""

    def __init__(self, keys_dir: Path, name: str = "signing") -> None:
        self.key = Ed25519PrivateKey.generate()
        keys_dir.mkdir(parents=True, exist_ok=True)
        self.public_path = keys_dir / f"{name}.pub"
        self.public_path.write_bytes(public_key_pem(self.key.public_key()))
        self.key_id = key_id_for(self.key.public_key())

    def manifest(
        self,
        bundle: ModelBundle,
        *,
        version: int,
        devices: list[str] | None = None,
        groups: list[str] | None = None,
        chunk_size: int = 4096,
        created_at: int | None = None,
        ttl_s: int = 3600,
    ) -> tuple[Manifest, bytes]:
        """A signed manifest for ``bundle`` (returns the model and the envelope bytes)."""
        now = int(time.time()) if created_at is None else created_at
        manifest = Manifest(
            name=bundle.name,
            version=version,
            created_at=now,
            expires_at=now + ttl_s,
            targets=Targets(devices=devices or [], groups=groups or []),
            variants=[
                ModelVariant.for_bytes(bundle.data, accelerator="cpu", chunk_size=chunk_size)
            ],
            mode="int8",
            input=bundle.input,
            output=bundle.output,
            preprocess=bundle.preprocess,
            labels=list(bundle.labels),
        )
        return manifest, sign_manifest(manifest, self.key)


# -- a real MQTT "host" -------------------------------------------------------------------


@dataclass
class FakeHost:
    """A paho client playing the host: publishes updates, serves chunks, acks predictions."""

    url: str
    prefix: str
    models: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # sha -> (data, chunk)
    records: dict[tuple[str, str, int], PredictionRecord] = field(default_factory=dict)
    deliveries: int = 0
    reports: list[Reported] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    chunk_requests: list[ChunkRequest] = field(default_factory=list)
    serve_chunks: bool = True
    ack: bool = True

    def __post_init__(self) -> None:
        self.topics = Topics(self.prefix)
        self.lock = threading.Condition()
        host, port = self.url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"host-{self.prefix}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(host, int(port), 30, clean_start=True)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, *_: Any) -> None:
        t = self.topics
        for topic in (
            t.all_status(),
            t.all_reported(),
            t.all_predictions(),
            t.all_chunk_requests(),
        ):
            client.subscribe(topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        kind = self.topics.parse(msg.topic).kind
        payload = bytes(msg.payload)
        if not payload:
            return
        with self.lock:
            if kind == "status":
                self.statuses.append(Status.model_validate_json(payload))
            elif kind == "reported":
                self.reports.append(Reported.model_validate_json(payload))
            elif kind == "predictions":
                self._on_predictions(decode_predictions(payload))
            elif kind == "chunk_request":
                self._on_chunk_request(ChunkRequest.model_validate_json(payload))
            self.lock.notify_all()

    def _on_predictions(self, records: list[PredictionRecord]) -> None:
        # One record or a PredictionBatch: stored, then one Ack per (device, boot) in it.
        seqs: dict[tuple[str, str], list[int]] = {}
        for record in records:
            self.deliveries += 1
            self.records.setdefault((record.device_id, record.boot_id, record.seq), record)
            seqs.setdefault((record.device_id, record.boot_id), []).append(record.seq)
        if self.ack:
            for (device, boot), numbers in seqs.items():
                ack = Ack(device_id=device, boot_id=boot, seqs=numbers)
                self.client.publish(self.topics.predictions_ack(device), encode(ack), 1)

    def _on_chunk_request(self, request: ChunkRequest) -> None:
        self.chunk_requests.append(request)
        if self.serve_chunks and request.sha256 in self.models:
            data, size = self.models[request.sha256]
            for index in request.indexes:
                raw = chunk_at(data, index, chunk_size=size, model_sha256=request.sha256)
                self.client.publish(self.topics.chunk(request.sha256, index), raw, 1)

    def offer(self, data: bytes, *, chunk_size: int, sha256: str | None = None) -> None:
        """Serve chunks of ``data`` on request (``sha256`` may lie, for corrupt-model tests)."""
        sha = sha256 or hashlib.sha256(data).hexdigest()
        self.models[sha] = (data, chunk_size)

    def push(self, envelope: bytes, *, device: str | None = None, group: str | None = None) -> None:
        """Publish a signed manifest as the retained desired state."""
        topic = (
            self.topics.desired_device(device) if device else self.topics.desired_group(group or "")
        )
        self.client.publish(topic, envelope, 1, retain=True).wait_for_publish(5)

    def publish_chunks(self, data: bytes, *, chunk_size: int) -> None:
        """Publish every chunk once (not retained), as a rollout does."""
        sha = hashlib.sha256(data).hexdigest()
        for index in range(chunk_count(len(data), chunk_size)):
            raw = chunk_at(data, index, chunk_size=chunk_size, model_sha256=sha)
            self.client.publish(self.topics.chunk(sha, index), raw, 1)

    def wait(self, predicate: Callable[[FakeHost], Any], timeout: float = 60.0) -> Any:
        """Wait until ``predicate(self)`` is truthy and return its value."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    msg = f"timed out; last reports: {[r.model_dump() for r in self.reports[-3:]]}"
                    raise TimeoutError(msg)
                self.lock.wait(min(left, 0.2))

    def wait_report(self, device_id: str, timeout: float = 60.0, **fields: Any) -> Reported:
        """Wait for a reported state of ``device_id`` matching all ``fields``."""

        def match(host: FakeHost) -> Reported | None:
            for report in reversed(host.reports):
                if report.device_id == device_id and all(
                    getattr(report, k) == v for k, v in fields.items()
                ):
                    return report
            return None

        return self.wait(match, timeout)

    def latest_status(self, device_id: str) -> Status | None:
        with self.lock:
            found = [s for s in self.statuses if s.device_id == device_id]
        return found[-1] if found else None


# -- the agent process ------------------------------------------------------------------


def write_agent_config(
    directory: Path,
    *,
    device_id: str,
    broker_url: str,
    prefix: str,
    keys: list[Path],
    groups: list[str] | None = None,
    watch_dir: Path | None = None,
    extra: str = "",
    protocol: str | None = None,
) -> Path:
    """Write an agent.toml for tests (short timeouts, fast heartbeat)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        f'device_id = "{device_id}"',
        f"groups = {json.dumps(groups or [])}",
        f'state_dir = "{directory / "state"}"',
        'log_level = "info"',
        "[mqtt]",
        f'url = "{broker_url}"',
        f'prefix = "{prefix}"',
        "reconnect_max_s = 1.0",
        *([f'protocol = "{protocol}"'] if protocol else []),
        "[trust]",
        f"signing_keys = {json.dumps([str(k) for k in keys])}",
        "[update]",
        "chunk_timeout_s = 0.5",
        "health_timeout_s = 30",
        "[status]",
        "heartbeat_s = 0.5",
        "[inference]",
        "poll_s = 0.05",
    ]
    if watch_dir is not None:
        lines.append(f'watch_dir = "{watch_dir}"')
    path = directory / "agent.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def signed_agent_config(
    tmp_path: Path,
    *,
    device_id: str,
    broker_url: str,
    prefix: str,
    watch: bool = True,
    groups: list[str] | None = None,
    extra: str = "",
    protocol: str | None = None,
) -> tuple[Signer, Path, Path]:
    """One test device: a key in ``tmp_path/keys``, its agent.toml in ``tmp_path/device``.

    The agent trusts that key and (``watch``) watches ``tmp_path/inbox`` (not created).
    Returns the signer, the inbox and the config's path.
    """
    signer = Signer(tmp_path / "keys")
    inbox = tmp_path / "inbox"
    config = write_agent_config(
        tmp_path / "device",
        device_id=device_id,
        broker_url=broker_url,
        prefix=prefix,
        keys=[signer.public_path],
        groups=groups,
        watch_dir=inbox if watch else None,
        extra=extra,
        protocol=protocol,
    )
    return signer, inbox, config


class AgentStopError(AssertionError):
    """An agent outlived its stop timeout after SIGTERM (its log, with thread stacks, says why)."""


class AgentProcess:
    """``edgefleet-agent run --config PATH`` as a real child process."""

    def __init__(self, config: Path, *, fault: str | None = None) -> None:
        self.config = config
        self.log_path = config.with_name("agent.log")
        env = dict(os.environ)
        env.pop("EDGEFLEET_FAULT", None)
        if fault:
            env["EDGEFLEET_FAULT"] = fault
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from edgefleet.device.cli import main; main()",
                "run",
                "--config",
                str(config),
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM, then wait; kill if it does not stop.

        An agent stops in about 3 s (its offline status, the DISCONNECT, its threads); every
        wait in its shutdown is bounded, but on a machine running three test workers and a
        broker each bounded wait can run to its end: the timeout is a hang detector, not a
        speed check. A hang fails with the agent's thread stacks (SIGUSR2) in the message.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                self.proc.send_signal(signal.SIGUSR2)  # the agent dumps its threads' stacks
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait()
                raise AgentStopError(
                    f"agent did not stop within {timeout:.0f} s of SIGTERM; its log ends:\n"
                    + self.log()[-6000:]
                ) from exc
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def mnist_eval_pngs(directory: Path, n: int, *, start: int = 0) -> dict[str, int]:
    """Write ``n`` real MNIST eval digits as PNGs (renamed into place); name -> true label."""
    from PIL import Image

    from edgefleet.host.datasets import load_mnist

    data = load_mnist("eval")
    truth: dict[str, int] = {}
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        name = f"digit-{i:05d}.png"
        tmp = directory / f".{name}.tmp"
        Image.fromarray(data.x[i]).save(tmp, format="PNG")
        tmp.rename(directory / name)
        truth[name] = int(data.y[i])
    return truth


def bare_predictions(model: Path, images: np.ndarray) -> list[int]:
    """Argmax of a bare LiteRT interpreter over uint8 28x28 images (the reference)."""
    from edgefleet.device.runtime import discover_backend, open_model
    from edgefleet.shared.preprocess import preprocess, to_input_tensor

    m = open_model(model, backend=discover_backend("ai_edge_litert"))
    out = []
    for img in images:
        x = to_input_tensor(preprocess(img, MNIST_PREPROCESS), m.input_spec)
        out.append(int(np.argmax(m.run(x))))
    return out


# -- a model shared by every test of a session ------------------------------------------

_MODEL_CACHE: dict[str, ModelBundle] = {}


def shared_mnist_model(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    """The tiny int8 MNIST model, trained once per test session whoever asks first.

    Use it from a fixture: ``return shared_mnist_model(tmp_path_factory)``.
    """
    if "mnist" not in _MODEL_CACHE:
        path = tmp_path_factory.mktemp("models") / "mnist_tiny_int8.tflite"
        _MODEL_CACHE["mnist"] = build_mnist_model(path)
    return _MODEL_CACHE["mnist"]
