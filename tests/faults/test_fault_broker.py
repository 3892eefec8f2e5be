"""The broker killed (SIGKILL and SIGTERM) and restarted in the middle of a model transfer."""

from __future__ import annotations

import json
import signal

import pytest

from edgefleet.shared.chunks import chunk_at, chunk_count
from support.faults import Rig, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHUNK = 1024


def received(rig: Rig, sha: str) -> int:
    state = rig.state_dir / "downloads" / sha / "reassembler.state"
    try:
        return len(json.loads(state.read_bytes())["received"])
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_broker_dies_mid_transfer_and_the_update_completes(
    sig, tmp_path, own_broker, prefix, mnist_bundle
):
    rig = Rig(tmp_path, own_broker.url, prefix)
    try:
        rig.start()
        rig.host.serve_chunks = False  # the first half comes as a rollout would send it
        rig.push(mnist_bundle, 1, chunk_size=CHUNK)
        rig.wait_report(state="downloading", version=1)
        count = chunk_count(len(mnist_bundle.data), CHUNK)
        half = count // 2
        for index in range(half):
            raw = chunk_at(mnist_bundle.data, index, chunk_size=CHUNK)
            rig.host.client.publish(rig.host.topics.chunk(mnist_bundle.sha256, index), raw, 1)
        wait_until(lambda: received(rig, mnist_bundle.sha256) >= half, what="half persisted")
        with rig.host.lock:
            rig.host.chunk_requests.clear()

        own_broker.stop(sig)
        assert rig.agent.proc.poll() is None
        own_broker.start()
        rig.host.serve_chunks = True  # the rest on the agent's re-requests
        report = rig.wait_report(state="active", version=1)
        assert report.sha256 == mnist_bundle.sha256
        with rig.host.lock:
            asked = {i for r in rig.host.chunk_requests for i in r.indexes}
        assert asked.isdisjoint(range(half)), "chunks it already had were asked for again"
        assert rig.invariant().version == 1
    finally:
        rig.close()
