"""Malformed messages on every topic the agent reads: it stays up, bounded, and still serves.

One long-lived agent; hypothesis makes the payloads (invalid UTF-8, wrong JSON types,
missing fields, deep nesting, megabytes of junk). After each one a ping on the image topic
must come back, which also proves the junk before it was consumed.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.shared.messages import Ack, encode
from support.faults import CHUNK, RawClient, ping, rss_kib, variant_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPICS = ("desired_device", "desired_group", "chunk", "ack", "images")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ("v", "device_id", "boot_id", "seqs", "key_id", "payload", "signature", "name", "format")


@st.composite
def near_miss(draw) -> bytes:
    """A JSON object with the right field names and wrong or missing values."""
    keys = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    return json.dumps({k: draw(json_values) for k in keys}).encode()


def deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


payloads = st.one_of(
    st.binary(max_size=2048),
    st.binary(min_size=1, max_size=64).map(lambda b: b"\xff\xfe" + b + b"\xc3\x28"),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_miss(),
    st.integers(min_value=100, max_value=50_000).map(deep),
    st.sampled_from([1, 2]).map(lambda mb: b"\x9a" * (mb * 2**20)),
    st.sampled_from([1, 2]).map(lambda mb: b'{"name":"' + b"A" * (mb * 2**20) + b'"}'),
)


@pytest.fixture(scope="module")
def reading(module_rig, mnist_bundle):
    """Keep a download open (its chunks never come) so the agent reads a chunk topic too."""
    stalled = variant_of(mnist_bundle, b"stalled")
    module_rig.push(stalled, 50, chunk_size=CHUNK, offer=False)
    module_rig.wait_report(state="downloading", version=50)
    ping(module_rig.host, module_rig.device_id)  # warm: interpreter, queues, allocator
    raw = RawClient(module_rig.url)
    yield module_rig, stalled, raw, rss_kib(module_rig.agent.proc.pid)
    raw.close()


def _topic(rig, stalled, which: str) -> str:
    t, device = rig.host.topics, rig.device_id
    return {
        "desired_device": t.desired_device(device),
        "desired_group": t.desired_group("field"),
        "chunk": t.chunk(stalled.sha256, 0),
        "ack": t.predictions_ack(device),
        "images": t.images(device),
    }[which]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(which=st.sampled_from(TOPICS), payload=payloads)
def test_junk_on_every_topic_leaves_the_agent_up_and_serving(reading, which, payload):
    rig, stalled, raw, _ = reading
    raw.publish(_topic(rig, stalled, which), payload)
    record = ping(rig.host, rig.device_id)
    assert record.model_version == 1
    assert rig.agent.proc.poll() is None


def test_after_the_junk_memory_is_bounded_and_the_update_still_works(reading, mnist_bundle):
    rig, stalled, raw, rss_before = reading
    # An ack for records of another boot, a foreign device, an empty retained clear.
    raw.publish(
        rig.host.topics.predictions_ack(rig.device_id),
        encode(Ack(device_id="someone-else", boot_id="x", seqs=[1, 2, 3])),
    )
    raw.publish(rig.host.topics.desired_group("field"), b"", retain=True)
    ping(rig.host, rig.device_id)
    growth_mib = (rss_kib(rig.agent.proc.pid) - rss_before) / 1024
    assert growth_mib < 64, f"RSS grew by {growth_mib:.0f} MiB after the junk"
    # The download that was open all along completes once its chunks are served.
    rig.host.offer(stalled.data, chunk_size=CHUNK)
    rig.wait_report(state="active", version=50)
    assert rig.invariant().version == 50
