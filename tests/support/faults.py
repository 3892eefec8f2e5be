"""Fault-injection helpers: the update invariant, a raw MQTT publisher, pings, limits, a 4 MB model.

The invariant every fault test checks afterwards (:func:`check_invariant`):

* the active model is one the agent verified: its pointer names a sha256 the test signed,
  and the file under ``models/`` hashes to exactly that sha256 (no partial file is active);
* its version is at least the stored anti-rollback version;
* (when a host and an agent process are given) the agent still serves: an image sent on
  its image topic comes back as a prediction made by that very model version.
"""

# TensorFlow, Pillow and the host package load lazily, only in the helpers that need them.
# ruff: noqa: PLC0415

from __future__ import annotations

import base64
import hashlib
import io
import json
import resource
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.shared.messages import ImageMessage, encode
from support.agent import AgentProcess, FakeHost, ModelBundle, Signer, write_agent_config

if TYPE_CHECKING:
    from edgefleet.shared.messages import Reported

CHUNK = 4096


# -- the invariant ----------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveState:
    """What the state directory says is active, after the invariant held."""

    sha256: str | None
    version: int | None
    floor: int


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_state_dir(state_dir: Path, *, signed: set[str]) -> ActiveState:
    """Check the on-disk half of the invariant (works while the agent is dead).

    Args:
        state_dir: The agent's ``state_dir``.
        signed: sha256 of every model the test signed (the ones the agent may verify).
    """
    floor_file = state_dir / "antirollback.json"
    floor = int(json.loads(floor_file.read_bytes())["version"]) if floor_file.exists() else 0
    active_file = state_dir / "active.json"
    if not active_file.exists():
        assert floor == 0, f"an anti-rollback floor {floor} but no active model"
        return ActiveState(None, None, floor)
    pointer = json.loads(active_file.read_bytes())
    sha, version = pointer["sha256"], int(pointer["version"])
    assert sha in signed, f"active model {sha[:12]} is none the test signed"
    model = state_dir / "models" / f"{sha}.tflite"
    assert model.is_file(), f"active model file {model} is missing"
    assert _sha256_file(model) == sha, "the active model file is partial or corrupt"
    assert version >= floor, f"active v{version} is below the anti-rollback floor v{floor}"
    assert pointer["manifest"]["version"] == version
    return ActiveState(sha, version, floor)


def check_invariant(
    state_dir: Path,
    *,
    signed: set[str],
    agent: AgentProcess | None = None,
    host: FakeHost | None = None,
    device_id: str = "",
    timeout: float = 60.0,
) -> ActiveState:
    """The whole invariant (see the module docstring); returns the active state.

    With ``agent`` and ``host`` the agent must be alive and answer a ping with a
    prediction from the active version (skipped when nothing is active yet).
    """
    state = check_state_dir(state_dir, signed=signed)
    if agent is not None:
        assert agent.proc.poll() is None, f"agent died:\n{agent.log()[-3000:]}"
    if agent is not None and host is not None and state.version is not None:
        record = ping(host, device_id, timeout=timeout)
        assert record.model_version == state.version, (record.model_version, state)
    return state


# -- talking to the agent ------------------------------------------------------------------


def digit_png(index: int = 0) -> bytes:
    """A real MNIST eval digit as PNG bytes."""
    from PIL import Image

    from edgefleet.host.datasets import load_mnist

    buf = io.BytesIO()
    Image.fromarray(load_mnist("eval").x[index]).save(buf, format="PNG")
    return buf.getvalue()


_PNG_CACHE: dict[int, bytes] = {}


def image_payload(name: str, index: int = 0) -> bytes:
    """An encoded ImageMessage carrying MNIST digit ``index``."""
    if index not in _PNG_CACHE:
        _PNG_CACHE[index] = digit_png(index)
    data = base64.b64encode(_PNG_CACHE[index]).decode()
    return encode(ImageMessage(name=name, format="png", data_b64=data))


def ping(host: FakeHost, device_id: str, *, timeout: float = 60.0) -> Any:
    """Send one digit on the image topic and wait for its prediction record."""
    name = f"ping-{uuid.uuid4().hex[:8]}"
    host.client.publish(host.topics.images(device_id), image_payload(name), 1)
    source = f"mqtt:{name}"
    return host.wait(
        lambda h: next((r for r in h.records.values() if r.source == source), None), timeout
    )


class RawClient:
    """A bare paho client for crafted messages (publishes and waits for PUBACK)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect(host, int(port), 30)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, 1, retain=retain)
        info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the agent process -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def limit_file_size(pid: int, max_bytes: int) -> None:
    """Set RLIMIT_FSIZE of a running process: writes past ``max_bytes`` fail with EFBIG.

    Python ignores SIGXFSZ, so the agent sees an ``OSError`` rather than being killed.
    """
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def wait_until(predicate: Any, *, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


# -- a device rig -------------------------------------------------------------------------


@dataclass
class Rig:
    """One device: config, signer, a FakeHost on the same broker/prefix, its processes."""

    root: Path
    url: str
    prefix: str
    device_id: str = "pi-fault"
    extra: str = ""
    watch_dir: Path | None = None
    signed: set[str] = field(default_factory=set)
    agents: list[AgentProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.signer = Signer(self.root / "keys")
        self.host = FakeHost(self.url, self.prefix)
        self.config = write_agent_config(
            self.root / "device",
            device_id=self.device_id,
            broker_url=self.url,
            prefix=self.prefix,
            keys=[self.signer.public_path],
            groups=["field"],
            watch_dir=self.watch_dir,
            extra=self.extra,
        )
        self.state_dir = self.root / "device" / "state"

    @property
    def agent(self) -> AgentProcess:
        return self.agents[-1]

    def start(self, *, fault: str | None = None) -> AgentProcess:
        self.agents.append(AgentProcess(self.config, fault=fault))
        return self.agent

    def push(
        self, bundle: ModelBundle, version: int, *, chunk_size: int = CHUNK, offer: bool = True
    ) -> bytes:
        """Sign ``bundle`` for this device, serve its chunks on request, publish the manifest."""
        if offer:
            self.host.offer(bundle.data, chunk_size=chunk_size)
        self.signed.add(bundle.sha256)
        _, envelope = self.signer.manifest(
            bundle, version=version, devices=[self.device_id], chunk_size=chunk_size
        )
        self.host.push(envelope, device=self.device_id)
        return envelope

    def wait_report(self, timeout: float = 90.0, **fields: Any) -> Reported:
        return self.host.wait_report(self.device_id, timeout=timeout, **fields)

    def invariant(self, *, serving: bool = True) -> ActiveState:
        agent = self.agent if serving else None
        return check_invariant(
            self.state_dir,
            signed=self.signed,
            agent=agent,
            host=self.host if serving else None,
            device_id=self.device_id,
        )

    def close(self) -> None:
        for agent in self.agents:
            agent.kill()
        self.host.close()


# -- a ~4 MB real model -------------------------------------------------------------------

_BIG_LOCK = threading.Lock()
_BIG_CACHE: dict[Path, ModelBundle] = {}


def build_big_model(out: Path, *, dense: int = 384) -> ModelBundle:
    """A real full-int8 ConvNet of about 4 MB (random weights) with MNIST's input spec.

    Conv2D(16) on 28x28x1 gives 10,816 features; a Dense(384) on them holds 4.15 M int8
    weights: the size the load test and the delivery benchmark push.
    """
    with _BIG_LOCK:
        if out in _BIG_CACHE:
            return _BIG_CACHE[out]
        import keras
        import numpy as np
        import tensorflow as tf

        from support.agent import interpreter_specs

        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(16, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(dense, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        rng = np.random.default_rng(0)
        samples = rng.random((20, 28, 28, 1), dtype=np.float32)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(20))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        data = _embed_info(converter.convert(), "mnist_big")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        inp, outp = interpreter_specs(out)
        bundle = ModelBundle(path=out, data=data, input=inp, output=outp, name="mnist_big")
        _BIG_CACHE[out] = bundle
        return bundle


def _embed_info(tflite: bytes, name: str) -> bytes:
    """Embed edgefleet ModelInfo, as ``edgefleet quantize`` does (``push`` needs it)."""
    from edgefleet.host.quantize import describe, embed_model_info
    from support.agent import MNIST_LABELS, MNIST_PREPROCESS

    info = describe(
        tflite, name=name, mode="int8", labels=MNIST_LABELS, preprocess=MNIST_PREPROCESS
    )
    return embed_model_info(tflite, info)


def variant_of(bundle: ModelBundle, tag: bytes) -> ModelBundle:
    """The same model with bytes appended after the flatbuffer: a new sha256, still loadable."""
    data = bundle.data + b"\0" * 16 + tag
    path = bundle.path.with_name(f"{bundle.path.stem}-{hashlib.sha256(tag).hexdigest()[:8]}.tflite")
    path.write_bytes(data)
    return ModelBundle(
        path, data, bundle.input, bundle.output, bundle.labels, bundle.preprocess, bundle.name
    )
