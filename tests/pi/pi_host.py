"""The x86 host side of `make test-pi`: cached artefacts, the fleet, broker and listener.

Used by tests/pi/pi_check.py (see there and docs/testing.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pi_rootfs as rf
from pi_rootfs import PiCheckError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEVICE, GROUP = "pi-ci", "pi"
N_SCANS = 40  # 20 .npy + 20 16-bit PNG


def edgefleet(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return rf.run([str(BIN / "edgefleet"), *args], timeout=timeout)


# -- host side: caches of x86 artefacts ---------------------------------------------------


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def wheelhouse(extra: str) -> Path:
    """aarch64/cp311 wheels of the agent's dependencies (``edgefleet wheelhouse``), cached."""
    key = _digest(REPO / "device/pyproject.toml", REPO / "shared/pyproject.toml")
    house = rf.cache_dir() / "pi-wheelhouse" / f"{extra}-{key}"
    if not house.is_dir():
        partial = house.with_name(house.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        legacy = ["--legacy"] if extra == "legacy" else []
        edgefleet("wheelhouse", str(partial), *legacy)
        partial.rename(house)
    return house


def int8_model(work: Path) -> Path:
    """The bundled GPR ConvNet quantized to int8 by `edgefleet quantize` on x86, cached."""
    keras = REPO / "host/edgefleet/host/datasets/data/models/gpr_convnet.keras"
    # Keyed by the model and TensorFlow's version: what decides the bytes of the int8 file.
    tf_version = importlib.metadata.version("tensorflow")
    key = hashlib.sha256(keras.read_bytes() + tf_version.encode()).hexdigest()[:16]
    cached = rf.cache_dir() / "pi-models" / f"gpr_convnet_int8-{key}.tflite"
    if not cached.is_file():
        out = work / "quantized"
        edgefleet("quantize", str(keras), "--mode", "int8", "--out", str(out), "--runs", "1",
                  "--calibration", "gpr", "--eval", "gpr")  # fmt: skip
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "gpr_convnet_int8.tflite", cached.with_suffix(".partial"))
        cached.with_suffix(".partial").rename(cached)
    model = work / "gpr_convnet_int8.tflite"
    shutil.copyfile(cached, model)
    return model


def crashing_model(model: Path) -> Path:
    """A model that crashes the interpreter (crafted as tests/faults do), cached."""
    cached = rf.cache_dir() / "pi-models" / f"crashing-{_digest(model)}.tflite"
    if not cached.is_file():
        sys.path.insert(0, str(REPO / "tests"))
        import support.agent as fault  # noqa: PLC0415

        # The GPR ConvNet has no RESHAPE or STRIDED_SLICE. Without its first FULLY_CONNECTED
        # weights (tensor index -1, "optional") LiteRT dereferences them anyway: undefined
        # behaviour that killed the health child on x86 in some runs and failed cleanly in
        # others, so it is not verified here; the round reports what the device's health
        # check saw (crashed by a signal or failed), and requires only the refusal.
        fault._CRASH_CANDIDATES = (("FULLY_CONNECTED", 1),)
        fault._dies_by_signal = lambda _path, _bundle: True
        inp, out = fault.interpreter_specs(model)
        crash = fault.crash_model(fault.ModelBundle(model, model.read_bytes(), inp, out))
        shutil.copyfile(crash.path, cached.with_suffix(".partial"))
        cached.with_suffix(".partial").rename(cached)
    target = model.with_name("crashing.tflite")
    shutil.copyfile(cached, target)
    return target


def write_scans(folder: Path) -> dict[str, str]:
    """40 held-out scans spread over the split, alternately raw .npy and 16-bit PNG (as the
    demo feeds them); returns file name -> true class."""
    import io  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from edgefleet.host.datasets import CLASSES, load_gpr  # noqa: PLC0415
    from edgefleet.shared.gpr import render_png  # noqa: PLC0415

    data = load_gpr("heldout")
    folder.mkdir(parents=True)
    truth = {}
    for k, i in enumerate(np.linspace(0, len(data.y) - 1, N_SCANS).astype(int)):
        buf = io.BytesIO()
        if k % 2:
            Image.fromarray(render_png(data.x[i])).save(buf, format="PNG")
            name = f"scan-{i:04d}.png"
        else:
            np.save(buf, data.x[i], allow_pickle=False)
            name = f"scan-{i:04d}.npy"
        (folder / name).write_bytes(buf.getvalue())
        truth[name] = CLASSES[int(data.y[i])]
    return truth


def x86_reference(model: Path, scans: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Labels and scores of the same model on the same files, by the agent's code on x86."""
    from edgefleet.device.inputs import load_input  # noqa: PLC0415
    from edgefleet.device.runtime import discover_backend  # noqa: PLC0415
    from edgefleet.device.tools import classifier_from_file  # noqa: PLC0415

    classifier = classifier_from_file(
        model, backend=discover_backend("ai_edge_litert"), num_threads=1, top_k=4
    )
    ref = {}
    for name in names:
        p = classifier.classify(load_input(scans / name))
        ref[name] = {"label": p.label, "score": p.score, "topk": [list(t) for t in p.topk]}
    return ref


# -- the fleet, the broker and the listener on the host -----------------------------------


class Host:
    """A fleet made by `edgefleet init`, its mosquitto, and `edgefleet predictions listen`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.fleet = work / "fleet"
        self.state = work / "host-state"
        port = _free_port()
        edgefleet(
            "init", "--dir", str(self.fleet), "--broker-url", f"mqtts://127.0.0.1:{port}",
            "--bind", "127.0.0.1", "--broker-user", "root",
        )  # fmt: skip
        self.port = port
        self.procs: list[subprocess.Popen[bytes]] = []
        self.listener: subprocess.Popen[bytes] | None = None

    def provision(self) -> Path:
        edgefleet("provision", DEVICE, "--group", GROUP, "--dir", str(self.fleet))
        return self.fleet / "bundles" / f"{DEVICE}.tar.gz"

    def start_broker(self) -> None:
        conf = self.fleet / "broker/mosquitto.conf"
        log = (self.work / "mosquitto.log").open("ab")
        self.procs.append(subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log))
        _wait_port(self.port)

    def listen(self, db: Path) -> None:
        """(Re)start the prediction listener storing into ``db``."""
        self.stop_listener()
        log = (self.work / "listen.log").open("ab")
        argv = [str(BIN / "edgefleet"), "predictions", "listen", "--fleet", str(self.fleet)]
        argv += ["--db", str(db), "--state-dir", str(self.state)]
        self.listener = subprocess.Popen(argv, stdout=log, stderr=log)

    def stop_listener(self) -> None:
        if self.listener is not None:
            _stop(self.listener, signal.SIGINT)
            self.listener = None

    def push(self, model: Path, *, wait: float) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "edgefleet"), "push", str(model), "--device", DEVICE, "--fleet"]
        argv += [str(self.fleet), "--state-dir", str(self.state), "--wait", str(wait)]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=wait + 60)

    def records(self, db: Path) -> list[dict[str, Any]]:
        out = edgefleet("predictions", "export", "--db", str(db), "--jsonl").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def close(self) -> None:
        self.stop_listener()
        for proc in reversed(self.procs):
            _stop(proc, signal.SIGTERM)


def _free_port() -> int:
    import socket  # noqa: PLC0415

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:  # the host listener takes port + 1
            if s.connect_ex(("127.0.0.1", port + 1)) != 0:
                return port
    raise PiCheckError("no free loopback port pair")


def _wait_port(port: int, timeout: float = 15) -> None:
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise PiCheckError(f"mosquitto does not listen on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
