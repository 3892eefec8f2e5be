"""Delta updates (manifest v2) to real agents over a real Mosquitto, with real GPR retrains.

v1 is the bundled GPR ConvNet (int8); v2 the same net with its dense head retrained (conv
stack frozen), made once per session by ``tests/support/gpr_variants.py``. An independent
MQTT subscriber counts the chunk bytes the broker carries.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fleet_helpers import AgentFleet, wait_online
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.host.fleet import Phase, PushPlan, close_fleet, load_model, push
from edgefleet.host.fleet._history import rollback
from edgefleet.shared.chunklist import make_chunk_list
from support.agent import AgentProcess, Signer
from support.gpr_variants import make

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_CACHE: dict[str, dict[str, Path]] = {}


@pytest.fixture(scope="session")
def gpr_files(tmp_path_factory) -> dict[str, Path]:
    # EDGEFLEET_GPR_VARIANTS=DIR keeps the files between sessions (made there if missing).
    if "files" not in _CACHE:
        kept = os.environ.get("EDGEFLEET_GPR_VARIANTS")
        where = Path(kept) if kept else tmp_path_factory.mktemp("gpr-variants")
        _CACHE["files"] = make(where, ("base", "head"))
    return _CACHE["files"]


@pytest.fixture
def agents(broker, prefix, tmp_path):
    fleet = AgentFleet(tmp_path / "agents", broker.url, prefix, Signer(tmp_path / "keys"))
    yield fleet
    fleet.stop_all()


@pytest.fixture
def host(agents, tmp_path):
    handle = agents.host(tmp_path / "host-state")
    yield handle
    close_fleet(handle)


class WireCounter:
    """An independent subscriber: bytes of every chunk message published while it listens."""

    def __init__(self, port: int, prefix: str) -> None:
        self.bytes = 0
        self.messages = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"wire-{uuid.uuid4()}")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/models/+/chunks/+", qos=1)
        assert ready.wait(10)
        time.sleep(0.5)  # retained chunks from earlier pushes arrive now (and are skipped)

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:  # held by the broker from before: not sent now
            return
        with self._lock:
            self.bytes += len(msg.payload)
            self.messages += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _device_model(agents: AgentFleet, device: str, data: bytes) -> bytes:
    path = agents.root / device / "state" / "models" / f"{hashlib.sha256(data).hexdigest()}.tflite"
    return path.read_bytes()


def _push(host, path: Path, plan: PushPlan):
    result = push(host, load_model(path), plan)
    assert result.exit_code == 0, result.progress
    return result


def test_head_retrain_sends_at_most_15_percent_and_activates_the_same_bytes(
    agents, host, broker, prefix, gpr_files
):
    agents.start("dl-a")
    wait_online(host, ["dl-a"])
    _push(host, gpr_files["base"], PushPlan(devices=("dl-a",), wait=90))
    host.pump(1.0)

    counter = WireCounter(broker.port, prefix)
    try:
        result = _push(host, gpr_files["head"], PushPlan(devices=("dl-a",), wait=90))
        time.sleep(0.5)
    finally:
        counter.close()

    v2 = gpr_files["head"].read_bytes()
    assert _device_model(agents, "dl-a", v2) == v2
    [transfer] = result.transfers
    assert transfer.known
    assert counter.bytes <= 0.15 * len(v2), (counter.bytes, len(v2))
    assert transfer.send_bytes <= counter.bytes  # re-requests may add, never remove
    assert host.registry.transfers("dl-a")[-1][3] == transfer.send_bytes


def test_a_device_with_no_previous_model_gets_the_whole_file(agents, host, gpr_files):
    agents.start("dl-new")
    wait_online(host, ["dl-new"])
    result = _push(host, gpr_files["head"], PushPlan(devices=("dl-new",), wait=90))
    [transfer] = result.transfers
    v2 = gpr_files["head"].read_bytes()
    assert not transfer.known
    assert transfer.send_bytes == sum({c[0]: c[2] for c in make_chunk_list(v2)}.values())
    assert _device_model(agents, "dl-new", v2) == v2


def test_a_corrupt_local_chunk_is_fetched_instead(agents, host, gpr_files):
    agents.start("dl-c")
    wait_online(host, ["dl-c"])
    _push(host, gpr_files["base"], PushPlan(devices=("dl-c",), wait=90))
    base = gpr_files["base"].read_bytes()
    local = agents.root / "dl-c" / "state" / "models" / f"{hashlib.sha256(base).hexdigest()}.tflite"
    shared = {c[0] for c in make_chunk_list(gpr_files["head"].read_bytes())}
    _, offset, length = next(c for c in make_chunk_list(base) if c[0] in shared)
    damaged = bytearray(local.read_bytes())
    damaged[offset + length // 2] ^= 0xFF  # one bit pattern in a chunk v2 reuses
    local.write_bytes(bytes(damaged))

    _push(host, gpr_files["head"], PushPlan(devices=("dl-c",), wait=90))

    v2 = gpr_files["head"].read_bytes()
    assert _device_model(agents, "dl-c", v2) == v2
    assert "is damaged: fetching it" in agents.agents["dl-c"].log()


def test_an_interrupted_delta_resumes_after_kill_9(agents, host, gpr_files):
    agents.start("dl-k")
    wait_online(host, ["dl-k"])
    _push(host, gpr_files["base"], PushPlan(devices=("dl-k",), wait=90))
    agents.stop("dl-k")
    # the next start dies (os._exit, no cleanup) right after its first fetched chunk
    config = agents.configs["dl-k"]
    dying = AgentProcess(config, fault="after_chunk_write")
    host.pump(0.5)
    result = push(host, load_model(gpr_files["head"]), PushPlan(devices=("dl-k",)))
    assert dying.wait_exit(60) == 137, dying.log()[-2000:]
    part = next((agents.root / "dl-k" / "state" / "downloads").glob("*/model.part"))
    assert part.stat().st_size == gpr_files["head"].stat().st_size

    agents.start("dl-k")
    host.pump(0.5)
    v2 = gpr_files["head"].read_bytes()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        host.pump(0.5)
        report = host.view.reports.get("dl-k")
        if report is not None and report.active_version == result.version:
            break
    assert report is not None
    assert report.active_version == result.version
    assert _device_model(agents, "dl-k", v2) == v2
    # the restart took from the part file what the killed run had fetched (and copied)
    head = hashlib.sha256(v2).hexdigest()[:12]
    found = [
        int(m.group(1))
        for m in re.finditer(rf"delta download of {head}: (\d+) of", agents.agents["dl-k"].log())
    ]
    first = re.search(rf"delta download of {head}: (\d+) of", dying.log())
    assert first is not None
    assert found
    assert found[-1] > int(first.group(1))


def test_rollback_right_after_a_delta_update(agents, host, gpr_files):
    agents.start("dl-r")
    wait_online(host, ["dl-r"])
    _push(host, gpr_files["base"], PushPlan(devices=("dl-r",), wait=90))
    _push(host, gpr_files["head"], PushPlan(devices=("dl-r",), wait=90))

    result = rollback(host, PushPlan(devices=("dl-r",), wait=90))

    assert result.exit_code == 0, result.progress
    assert {p.phase for p in result.progress} == {Phase.ACTIVE}
    base = gpr_files["base"].read_bytes()
    assert _device_model(agents, "dl-r", base) == base
    # the device still held v1 (previous model): nothing to send
    assert [t.send_bytes for t in result.transfers] == [0]


def test_one_group_push_to_devices_holding_different_bases(agents, host, gpr_files):
    agents.start("dl-g1", groups=["dlg"])
    agents.start("dl-g2", groups=["dlg"])
    wait_online(host, ["dl-g1", "dl-g2"])
    _push(host, gpr_files["base"], PushPlan(devices=("dl-g1",), wait=90))
    host.pump(1.0)

    result = _push(host, gpr_files["head"], PushPlan(group="dlg", wait=90))

    v2 = gpr_files["head"].read_bytes()
    sent = {t.device_id: t.send_bytes for t in result.transfers}
    distinct = sum({c[0]: c[2] for c in make_chunk_list(v2)}.values())
    assert sent["dl-g2"] == distinct  # held nothing: every distinct chunk
    assert sent["dl-g1"] <= 0.15 * len(v2)  # held v1
    assert result.bytes_published == distinct  # the union, each chunk once
    for device in ("dl-g1", "dl-g2"):
        assert _device_model(agents, device, v2) == v2
