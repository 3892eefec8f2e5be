"""The real agent process against a real Mosquitto: updates, rejections, predictions."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.device.tools import local_status
from edgefleet.host.datasets import load_mnist
from edgefleet.shared.messages import ImageMessage, encode
from support.agent import (
    AgentProcess,
    FakeHost,
    ModelBundle,
    Signer,
    bare_predictions,
    crash_model,
    mnist_eval_pngs,
    shared_mnist_model,
    signed_agent_config,
)
from support.broker import MosquittoBroker
from support.scrape import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICE = "pi-001"
CHUNK = 4096


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


@pytest.fixture
def host(broker, prefix):
    h = FakeHost(broker.url, prefix)
    yield h
    h.close()


@pytest.fixture
def setup(tmp_path: Path, broker, prefix, host):
    signer, inbox, config = signed_agent_config(
        tmp_path, device_id=DEVICE, broker_url=broker.url, prefix=prefix, groups=["field"]
    )
    agents: list[AgentProcess] = []

    def start(**kw) -> AgentProcess:
        agent = AgentProcess(config, **kw)
        agents.append(agent)
        return agent

    yield signer, inbox, config, start
    for agent in agents:
        agent.kill()


def install(host: FakeHost, signer: Signer, bundle: ModelBundle, version: int, **kw):
    host.offer(bundle.data, chunk_size=CHUNK)
    _, envelope = signer.manifest(bundle, version=version, devices=[DEVICE], chunk_size=CHUNK)
    host.push(envelope, **({"device": DEVICE} | kw))
    return envelope


def predictions_for(host: FakeHost, names: set[str], timeout: float = 60):
    return host.wait(
        lambda h: (
            (recs := {r.source: r for r in h.records.values() if r.source in names})
            and len(recs) == len(names)
            and recs
        ),
        timeout,
    )


def test_update_activates_then_folder_digits_come_back_as_correct_predictions(
    setup, host, mnist_bundle
):
    signer, inbox, _config, start = setup
    agent = start()
    install(host, signer, mnist_bundle, 1)
    active = host.wait_report(DEVICE, state="active", version=1)
    assert active.sha256 == mnist_bundle.sha256
    assert active.active_version == 1
    states = [r.state for r in host.reports if r.device_id == DEVICE]
    for step in ("downloading", "health_check", "activating", "active"):
        assert step in states

    truth = mnist_eval_pngs(inbox, 30)
    records = predictions_for(host, set(truth))
    digits = load_mnist("eval").x[:30]
    reference = bare_predictions(mnist_bundle.path, digits)
    got = [int(records[name].label) for name in sorted(truth)]
    assert got == reference  # exactly what a bare interpreter says on the same pixels
    accuracy = np.mean([int(records[n].label) == truth[n] for n in truth])
    assert accuracy >= 0.7
    rec = next(iter(records.values()))
    assert (rec.model_name, rec.model_version, rec.device_id) == ("mnist_tiny", 1, DEVICE)
    assert len(rec.topk) == 3
    assert rec.topk[0].label == rec.label
    assert rec.latency_ms > 0
    assert sorted(r.seq for r in records.values()) == sorted({r.seq for r in records.values()})

    # the MQTT image topic: an .npy array of digit 0 of the eval set
    buf = io.BytesIO()
    np.save(buf, digits[0])
    image = ImageMessage.from_bytes(name="scan-0", format="npy", data=buf.getvalue())
    host.client.publish(host.topics.images(DEVICE), encode(image), 1)
    (remote,) = predictions_for(host, {"mqtt:scan-0"}).values()
    assert int(remote.label) == reference[0]

    status = host.wait(
        lambda h: (
            (s := h.latest_status(DEVICE))
            and s.online
            and s.inference_count == 31
            and s.outbox_depth == 0
            and s
        )
    )
    assert status.runtime == "ai_edge_litert"
    assert status.model_version == 1
    assert status.rss_bytes > 0
    assert status.latency_p95_ms >= status.latency_p50_ms > 0
    assert (Path(inbox) / "processed" / min(truth)).exists()

    assert agent.stop() == 0
    offline = host.wait(lambda h: (s := h.latest_status(DEVICE)) and not s.online and s)
    assert offline.device_id == DEVICE


def test_bad_updates_are_refused_while_the_old_model_keeps_serving(
    setup, host, mnist_bundle, tmp_path
):
    signer, inbox, _config, start = setup
    start()
    install(host, signer, mnist_bundle, 2)
    host.wait_report(DEVICE, state="active", version=2)

    # unsigned by a trusted key
    stranger = Signer(tmp_path / "stranger")
    _, envelope = stranger.manifest(mnist_bundle, version=3, devices=[DEVICE], chunk_size=CHUNK)
    host.push(envelope, device=DEVICE)
    host.wait_report(DEVICE, state="rejected", reason="unknown_key", active_version=2)

    # (a replayed older manifest is ignored without a report: see the next test)

    # corrupt: self-consistent chunks whose bytes do not hash to the signed sha256
    retrained = mnist_bundle.path.with_name("v4.tflite")
    data = mnist_bundle.data + b"\0" * 16  # a different file, same model
    retrained.write_bytes(data)
    fake = ModelBundle(retrained, data, mnist_bundle.input, mnist_bundle.output)
    host.offer(bytes(reversed(data)), chunk_size=CHUNK, sha256=fake.sha256)
    _, env4 = signer.manifest(fake, version=4, devices=[DEVICE], chunk_size=CHUNK)
    host.push(env4, device=DEVICE)
    host.wait_report(DEVICE, state="failed", reason="integrity", version=4, active_version=2)

    # signed and intact, but not a model the interpreter can load
    garbage = hashlib.sha256(b"seed").digest() * 512
    bad = ModelBundle(retrained, garbage, mnist_bundle.input, mnist_bundle.output)
    host.offer(garbage, chunk_size=CHUNK)
    _, env5 = signer.manifest(bad, version=5, devices=[DEVICE], chunk_size=CHUNK)
    host.push(env5, device=DEVICE)
    failed = host.wait_report(DEVICE, state="failed", step="health_check", version=5)
    assert failed.active_version == 2

    # still serving v2
    truth = mnist_eval_pngs(inbox, 3, start=100)
    records = predictions_for(host, set(truth))
    assert {r.model_version for r in records.values()} == {2}


def test_canary_then_group_copy_and_old_retained_manifests_keep_active_reported(
    setup, host, mnist_bundle
):
    signer, _inbox, config, start = setup
    agent = start()
    host.offer(mnist_bundle.data, chunk_size=CHUNK)
    _, group_v1 = signer.manifest(mnist_bundle, version=1, groups=["field"], chunk_size=CHUNK)
    host.push(group_v1, group="field")
    host.wait_report(DEVICE, state="active", version=1)
    install(host, signer, mnist_bundle, 2)  # the canary of v2, on the device topic
    host.wait_report(DEVICE, state="active", version=2)
    assert agent.stop() == 0

    # After a restart both retained manifests come back: v2 (serving) and the group's old v1.
    since = len(host.reports)
    agent = start()
    host.wait(lambda h: any(r.state == "active" and r.version == 2 for r in h.reports[since:]))
    # The fleet promotes the canary: the same v2 on the group topic.
    _, group_v2 = signer.manifest(mnist_bundle, version=2, groups=["field"], chunk_size=CHUNK)
    host.push(group_v2, group="field")
    # v3 is handled after both (one subscriber queue, in order): a point to look back from.
    install(host, signer, mnist_bundle, 3)
    host.wait_report(DEVICE, state="active", version=3)
    later = [r for r in host.reports[since:] if r.device_id == DEVICE]
    assert [r.model_dump() for r in later if r.state in {"rejected", "failed"}] == []
    assert agent.stop() == 0
    # The replayed v1 is not lost from sight: logged and counted in the local status.
    ignored = local_status(config)["ignored_manifests"]
    assert (ignored["count"], ignored["last"]["version"]) == (1, 1)
    assert "ignoring manifest mnist_tiny v1" in agent.log()


def test_a_model_that_crashes_the_interpreter_is_caught_by_the_child(setup, host, mnist_bundle):
    signer, inbox, _config, start = setup
    agent = start()
    install(host, signer, mnist_bundle, 1)
    host.wait_report(DEVICE, state="active", version=1)
    # The health-check child dies by SIGSEGV on this model (see support.agent.crash_model).
    crash = crash_model(mnist_bundle)
    host.offer(crash.data, chunk_size=CHUNK)
    _, envelope = signer.manifest(crash, version=2, devices=[DEVICE], chunk_size=CHUNK)
    host.push(envelope, device=DEVICE)
    failed = host.wait_report(DEVICE, state="failed", step="health_check", version=2)
    assert "SIGSEGV" in failed.message
    assert agent.proc.poll() is None  # the agent itself is fine
    truth = mnist_eval_pngs(inbox, 2, start=200)
    records = predictions_for(host, set(truth))
    assert {r.model_version for r in records.values()} == {1}


def test_one_shot_predict_prints_one_json_line_per_file(mnist_bundle, tmp_path):
    truth = mnist_eval_pngs(tmp_path, 5)
    npy = tmp_path / "scan.npy"
    np.save(npy, load_mnist("eval").x[0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    files = [str(tmp_path / n) for n in sorted(truth)] + [str(npy), str(broken)]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from edgefleet.device.cli import main; main()",
            "predict",
            "--model",
            str(mnist_bundle.path),
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 7
    assert proc.returncode == 1  # one file failed, and said so
    assert "broken.png" in lines[-1]["error"]
    reference = bare_predictions(mnist_bundle.path, load_mnist("eval").x[:5])
    assert [int(line["label"]) for line in lines[:5]] == reference
    assert lines[5]["label"] == lines[0]["label"]  # the same digit as .npy and as .png
    assert lines[0]["model_name"] == "mnist_tiny"


def test_a_crashing_model_is_not_checked_again_after_a_restart(setup, host, mnist_bundle):
    signer, _inbox, _config, start = setup
    agent = start()
    install(host, signer, mnist_bundle, 1)
    host.wait_report(DEVICE, state="active", version=1)
    crash = crash_model(mnist_bundle)
    host.offer(crash.data, chunk_size=CHUNK)
    _, envelope = signer.manifest(crash, version=2, devices=[DEVICE], chunk_size=CHUNK)
    host.push(envelope, device=DEVICE)
    first = host.wait_report(DEVICE, state="failed", step="health_check", version=2)
    assert agent.stop() == 0

    # The retained manifest comes back after the restart: refused from memory, no new check.
    since = len(host.reports)
    agent = start()
    again = host.wait(
        lambda h: next((r for r in h.reports[since:] if r.state == "failed" and r.version == 2), 0)
    )
    assert (again.step, again.reason, again.active_version) == ("health_check", "health_check", 1)
    assert "before" in again.message
    assert first.message[:200] in again.message  # why it failed the first time
    states = {r.state for r in host.reports[since:] if r.device_id == DEVICE}
    assert not states & {"downloading", "health_check"}

    # The same file under a newer manifest is a new decision: checked (and refused) again.
    _, v3 = signer.manifest(crash, version=3, devices=[DEVICE], chunk_size=CHUNK)
    host.push(v3, device=DEVICE)
    fresh = host.wait_report(DEVICE, state="failed", step="health_check", version=3)
    assert "before" not in fresh.message
    assert any(r.state == "health_check" and r.version == 3 for r in host.reports[since:])
    assert agent.stop() == 0


def test_predictions_keep_flowing_while_a_slow_health_check_runs(setup, host, mnist_bundle):
    signer, inbox, _config, start = setup
    agent = start()
    install(host, signer, mnist_bundle, 1)
    host.wait_report(DEVICE, state="active", version=1)
    assert agent.stop() == 0
    # The health-check child now sleeps 10 s before it even loads the model.
    agent = start(fault="slow_health_check:10")
    install(host, signer, mnist_bundle, 2)  # the same file re-signed: no download, a check
    checking = host.wait_report(DEVICE, state="health_check", version=2)
    truth = mnist_eval_pngs(inbox, 5, start=300)
    records = predictions_for(host, set(truth))
    activating = host.wait_report(DEVICE, state="activating", version=2)
    host.wait_report(DEVICE, state="active", version=2)
    # Every record was made by v1 between the start and the end of v2's check.
    for record in records.values():
        assert record.model_version == 1
        assert checking.ts < record.ts < activating.ts
    more = mnist_eval_pngs(inbox, 2, start=310)
    assert {r.model_version for r in predictions_for(host, set(more)).values()} == {2}
    assert agent.stop() == 0


def _health_children(state_dir: Path) -> list[int]:
    """Pids of health-check children that work on a model of ``state_dir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"edgefleet.device.health" in cmdline and str(state_dir).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def test_stopping_during_a_health_check_leaves_no_child_and_no_verdict(setup, host, mnist_bundle):
    signer, _inbox, config, start = setup
    state_dir = config.parent / "state"
    agent = start()
    install(host, signer, mnist_bundle, 1)
    host.wait_report(DEVICE, state="active", version=1)
    assert agent.stop() == 0
    agent = start(fault="slow_health_check:120")  # a check that would outlive the agent
    install(host, signer, mnist_bundle, 2)
    host.wait_report(DEVICE, state="health_check", version=2)
    # The report goes out just before the child starts: wait for it, do not race it.
    wait_for(lambda: _health_children(state_dir), 30, "the health-check child")
    assert agent.stop() == 0
    assert _health_children(state_dir) == []  # killed with the agent, not orphaned
    assert not (state_dir / "bad_models.json").exists()  # an interrupted check is no verdict
    # After the restart the same manifest is checked again, and this time it passes.
    agent = start()
    host.wait_report(DEVICE, state="active", version=2)
    assert agent.stop() == 0


def test_an_agent_speaking_mqtt_311_completes_an_update(tmp_path: Path, prefix, mnist_bundle):
    # connection_messages: mosquitto logs "(p2, c0, ...)": p2 is its code for MQTT 3.1.1
    # (p5 for MQTT 5), c0 a persistent session
    broker = MosquittoBroker(
        tmp_path / "mosquitto", extra_conf="log_type notice\nconnection_messages true\n"
    ).start()
    host = FakeHost(broker.url, prefix)
    signer, inbox, config = signed_agent_config(
        tmp_path, device_id=DEVICE, broker_url=broker.url, prefix=prefix, protocol="3.1.1"
    )
    agent = AgentProcess(config)
    try:
        install(host, signer, mnist_bundle, 1)
        host.wait_report(DEVICE, state="active", version=1)
        truth = mnist_eval_pngs(inbox, 3)
        predictions_for(host, set(truth))
        assert f"as {DEVICE} (p2, c0" in broker.log_path.read_text()
    finally:
        agent.kill()
        host.close()
        broker.stop()


def test_sigusr2_dumps_every_threads_stack_and_the_agent_keeps_running(setup, host):
    # What an operator does with an agent that seems hung: `kill -USR2 PID` (docs/agent.md).
    _signer, _inbox, _config, start = setup
    agent = start()
    host.wait(lambda h: (s := h.latest_status(DEVICE)) is not None and s.online, 60)
    # One signal, one whole dump: it is written on the main thread with the GIL held, so no
    # thread's stack changes while it is read (device/edgefleet/device/stackdump.py).
    agent.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "_serve" in (log := agent.log()) and "network_loop" in log:
            break
        time.sleep(0.1)
    log = agent.log()
    frames = [line for line in log.splitlines() if line.startswith('  File "')]
    assert frames, log
    assert all(re.fullmatch(r'  File ".+", line \d+ in \S+', f) for f in frames), log
    assert "Thread 0x" in log, log[-2000:]
    assert "(most recent call first)" in log
    assert "network_loop" in log  # every thread, not only the main one
    assert "_serve" in log  # the main thread's frames, with the agent's own functions
    assert agent.proc.poll() is None  # still running: the dump stops nothing
    assert agent.stop() == 0  # and it still stops in order
    assert "stopped in" in agent.log()
