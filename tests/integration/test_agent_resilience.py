"""The real agent through broker outages and crashes: nothing lost, downloads resume."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from edgefleet.shared.chunks import chunk_count
from support.agent import (
    AgentProcess,
    FakeHost,
    ModelBundle,
    mnist_eval_pngs,
    shared_mnist_model,
    signed_agent_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICE = "pi-007"


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def test_predictions_made_while_the_broker_is_down_all_arrive_once(
    tmp_path: Path, own_broker, prefix, mnist_bundle
):
    host = FakeHost(own_broker.url, prefix)
    signer, inbox, config = signed_agent_config(
        tmp_path, device_id=DEVICE, broker_url=own_broker.url, prefix=prefix
    )
    agent = AgentProcess(config)
    try:
        host.offer(mnist_bundle.data, chunk_size=4096)
        _, envelope = signer.manifest(mnist_bundle, version=1, devices=[DEVICE])
        host.push(envelope, device=DEVICE)
        host.wait_report(DEVICE, state="active", version=1)

        own_broker.kill()
        truth = mnist_eval_pngs(inbox, 12, start=300)
        processed = inbox / "processed"
        # classified and committed to the outbox while nobody could hear it
        wait_until(lambda: len(list(processed.glob("*.png"))) == 12, what="files processed")
        assert not host.records

        own_broker.start()
        records = host.wait(
            lambda h: len({r.source for r in h.records.values()} & set(truth)) == 12 and h.records,
            timeout=90,
        )
        by_source: dict[str, int] = {}
        for record in records.values():
            by_source[record.source] = by_source.get(record.source, 0) + 1
        assert by_source == dict.fromkeys(truth, 1)  # each exactly once in the host's store
        status = host.wait(
            lambda h: (s := h.latest_status(DEVICE)) and s.online and s.outbox_depth == 0 and s,
            timeout=30,
        )
        assert status.dropped == 0
        assert status.inference_count == 12
    finally:
        agent.kill()
        host.close()


def test_agent_killed_mid_download_resumes_with_only_the_missing_chunks(
    tmp_path: Path, broker, prefix, mnist_bundle
):
    chunk = 1024
    total = chunk_count(len(mnist_bundle.data), chunk)
    host = FakeHost(broker.url, prefix)
    signer, _, config = signed_agent_config(
        tmp_path, device_id=DEVICE, broker_url=broker.url, prefix=prefix, watch=False
    )
    first = AgentProcess(config, fault="after_chunk_write:3")
    second = None
    try:
        host.offer(mnist_bundle.data, chunk_size=chunk)
        _, envelope = signer.manifest(mnist_bundle, version=1, devices=[DEVICE], chunk_size=chunk)
        host.push(envelope, device=DEVICE)
        assert first.wait_exit(timeout=60) == 137  # died right after persisting chunk 3

        download = tmp_path / "device" / "state" / "downloads" / mnist_bundle.sha256
        saved = json.loads((download / "reassembler.state").read_bytes())
        received = {index for index, _ in saved["received"]}
        assert len(received) == 3
        part = (download / "model.part").read_bytes()  # the chunks at their places
        for index, digest in saved["received"]:
            payload = part[index * chunk : (index + 1) * chunk]
            assert hashlib.sha256(payload).hexdigest() == digest
        assert not (tmp_path / "device" / "state" / "active.json").exists()

        with host.lock:
            host.chunk_requests.clear()
        second = AgentProcess(config)
        report = host.wait_report(DEVICE, state="active", version=1)
        assert report.sha256 == mnist_bundle.sha256
        with host.lock:
            first_request = host.chunk_requests[0]
        assert set(first_request.indexes) == set(range(total)) - received
        assert not download.exists()
        assert second.stop() == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
        host.close()
