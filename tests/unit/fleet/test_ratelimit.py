"""Rate limits on device-triggered host actions, host client ids, resubscribe on reconnect.

Issue 16, attacks 3, 6 and 8 (the pure logic; tests/security/ runs them against mosquitto).
"""

from __future__ import annotations

import stat
from types import SimpleNamespace

import pytest

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    BrokerSettings,
    Fleet,
    PahoConnection,
    open_registry,
    random_client_id,
    stable_client_id,
)
from edgefleet.host.fleet._ratelimit import DeviceLimiter, DeviceLimits
from edgefleet.shared.chunks import decode_chunk
from edgefleet.shared.manifest import ModelVariant
from edgefleet.shared.messages import ChunkRequest, Status, encode
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the limiter ---------------------------------------------------------------------------


def test_each_chunk_index_is_answered_at_most_once_per_interval():
    clock = Clock()
    limiter = DeviceLimiter(DeviceLimits(chunk_interval_s=3.0), clock=clock)
    assert limiter.chunks_to_send("a" * 64, [2, 0, 1, 1]) == [0, 1, 2]
    assert limiter.chunks_to_send("a" * 64, [0, 1, 2, 3]) == [3]
    assert limiter.chunks_to_send("b" * 64, [0]) == [0]  # per model
    clock.now += 2.9
    assert limiter.chunks_to_send("a" * 64, [0]) == []
    clock.now += 0.2
    assert limiter.chunks_to_send("a" * 64, [0, 3]) == [0, 3]
    assert limiter.chunks_to_send("a" * 64, [0, 3, 4]) == [4]
    assert limiter.skipped_chunks == 6


def test_a_device_gets_a_budget_of_requests_per_minute():
    clock = Clock()
    limiter = DeviceLimiter(DeviceLimits(device_requests_per_min=5), clock=clock)
    assert [limiter.allow_request("d1") for _ in range(8)] == [True] * 5 + [False] * 3
    assert limiter.allow_request("d2")  # its own budget
    clock.now += 59.0
    assert not limiter.allow_request("d1")
    clock.now += 1.0  # the first five are a minute old
    assert limiter.allow_request("d1")
    assert limiter.ignored_requests == 4


def test_an_unchanged_status_is_written_at_most_once_per_interval():
    clock = Clock()
    limiter = DeviceLimiter(DeviceLimits(status_write_interval_s=10.0), clock=clock)
    assert limiter.allow_status_write("d1", "x")
    assert not limiter.allow_status_write("d1", "x")
    assert limiter.allow_status_write("d1", "y")  # it changed: written at once
    clock.now += 10.0
    assert limiter.allow_status_write("d1", "y")
    assert limiter.skipped_status_writes == 1


# -- answering chunk requests ---------------------------------------------------------------

T = Topics("edgefleet")
MODEL = bytes(range(256)) * 4  # 1024 bytes: 8 chunks of 128


class Registry:
    """The two registry calls answer_chunk_request makes."""

    def __init__(self) -> None:
        self.variant = ModelVariant.for_bytes(MODEL, accelerator="cpu", chunk_size=128)
        self.reads = 0

    def latest_pushes(self):
        manifest = SimpleNamespace(variants=[self.variant])
        return [SimpleNamespace(manifest=manifest, cancelled_at=None)]

    def model_bytes(self, sha256: str) -> bytes | None:
        self.reads += 1
        return MODEL if sha256 == self.variant.sha256 else None


def flood(limits: DeviceLimits, n: int, *, claim: str = "attacker"):
    broker = FakeBroker()
    conn = broker.connect(None)
    registry = Registry()
    fleet = Fleet(conn=conn, topics=T, registry=registry, limiter=DeviceLimiter(limits))  # type: ignore[arg-type]
    attacker = broker.connect("attacker")
    conn.subscribe(T.all_chunk_requests())
    request = ChunkRequest(device_id=claim, sha256=registry.variant.sha256, indexes=list(range(8)))
    for _ in range(n):
        attacker.publish("edgefleet/devices/attacker/chunk-requests", encode(request))
    fleet.pump(0.5)
    chunks = list(broker.published("edgefleet/models/+/chunks/+"))
    return fleet, registry, chunks


def test_300_requests_republish_each_chunk_once_within_the_interval():
    fleet, registry, chunks = flood(DeviceLimits(), 300)
    assert sorted(decode_chunk(p.payload).index for p in chunks) == list(range(8))
    assert fleet.limiter.ignored_requests == 300 - 30  # the per-device budget
    assert fleet.limiter.skipped_chunks == 29 * 8
    assert registry.reads == 1  # the model file is read only when something is sent


def test_a_request_naming_another_device_is_ignored():
    fleet, _registry, chunks = flood(DeviceLimits(), 5, claim="victim")
    assert chunks == []
    assert fleet.limiter.ignored_requests == 5


def test_without_limits_the_host_amplifies():
    # What the limits stop: the same flood with limits wide open republishes every time.
    _fleet, _registry, chunks = flood(
        DeviceLimits(chunk_interval_s=1e-9, device_requests_per_min=10**9), 50
    )
    assert len(chunks) == 50 * 8


def test_a_status_flood_writes_the_registry_once(tmp_path):
    broker = FakeBroker()
    conn = broker.connect(None)
    registry = open_registry(tmp_path / "state")
    fleet = Fleet(conn=conn, topics=T, registry=registry)
    conn.subscribe(T.all_status())
    device = broker.connect("d1")
    writes = []
    original = registry.remember_device
    registry.remember_device = lambda *a, **k: (writes.append(1), original(*a, **k))  # type: ignore[method-assign]
    status = Status(device_id="d1", online=True, groups=["g"], ts=1.0)
    for _ in range(200):
        device.publish(T.status("d1"), encode(status))
    fleet.pump(0.5)
    assert len(writes) == 1
    assert fleet.limiter.skipped_status_writes == 199
    registry.close()


# -- client ids ------------------------------------------------------------------------------


def test_host_client_ids_are_random_and_outside_device_ids():
    a, b = random_client_id(), random_client_id()
    assert a != b
    assert a.startswith("edgefleet-host-cli-")
    assert len(a.rsplit("-", 1)[1]) == 16


def test_a_stable_client_id_is_stable_per_state_dir_and_unguessable(tmp_path):
    one = stable_client_id("ingest", "edgefleet/1", state_dir=tmp_path / "a")
    assert one == stable_client_id("ingest", "edgefleet/1", state_dir=tmp_path / "a")
    assert one.startswith("edgefleet-host-ingest-")
    assert one != stable_client_id("ingest", "edgefleet/2", state_dir=tmp_path / "a")
    assert one != stable_client_id("ingest", "edgefleet/1", state_dir=tmp_path / "b")
    assert "edgefleet/1" not in one
    secret = tmp_path / "a" / "client-id.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(list((tmp_path / "a").iterdir())) == 1  # no temp file left behind


def test_a_damaged_secret_is_a_clear_error(tmp_path):
    (tmp_path / "client-id.secret").write_text("not hex\n")
    with pytest.raises(FleetError, match="delete it to make a new one"):
        stable_client_id("ingest", "x", state_dir=tmp_path)


# -- resubscribe on every reconnect -----------------------------------------------------------


class StubClient:
    def __init__(self) -> None:
        self.subscribed: list[list[tuple[str, int]]] = []
        self.on_message = None

    def subscribe(self, filters):
        self.subscribed.append(filters)
        return 0, 1


@pytest.mark.parametrize("session_present", [True, False])
def test_every_reconnect_subscribes_again_whatever_session_present_says(session_present):
    client = StubClient()
    conn = PahoConnection(client, BrokerSettings(url="mqtt://127.0.0.1:1883"), 5)  # type: ignore[arg-type]
    conn.filters = {"$share/edgefleet/p/devices/+/predictions": 1, "p/devices/+/status": 1}
    flags = SimpleNamespace(session_present=session_present)
    conn._on_reconnect(client, None, flags, 0, None)  # type: ignore[arg-type]
    assert client.subscribed == [list(conn.filters.items())]
    conn._on_reconnect(client, None, flags, 135, None)  # type: ignore[arg-type] # refused
    assert len(client.subscribed) == 1
