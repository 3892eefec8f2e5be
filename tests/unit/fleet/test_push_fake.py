"""Push, rollout and rollback logic on the in-memory broker, with simulated devices.

A simulated device does what the protocol asks of an agent (docs/protocol.md): it keeps a
retained status, verifies the signed manifest on its desired topics with the real check,
fetches the model from the retained chunks (so a manifest published before its chunks
fails), and reports its update states on its retained ``reported`` topic. Each device
answers inside the host's publish (the fake broker delivers synchronously), so a rollout is
decided without waiting; only the "nobody answers" cases wait for their deadline.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.host.fleet import Fleet, ModelFiles, Phase, PushPlan, open_registry, push, rollback
from edgefleet.shared.chunks import decode_chunk
from edgefleet.shared.connection import Message
from edgefleet.shared.errors import ManifestError, RollbackError
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, key_id_for, verify_manifest
from edgefleet.shared.messages import Reported, Status, UpdateState, encode
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import CHUNK, Topics
from support.fakebroker import FakeBroker, FakeClient

T = Topics("edgefleet")
CHUNK_SIZE = 1000
MODEL_A = bytes(range(256)) * 10  # 2560 bytes: 3 chunks
MODEL_B = bytes(reversed(range(256))) * 14  # 3584 bytes: 4 chunks


def model_files(data: bytes, name: str = "digits") -> ModelFiles:
    template = Manifest(
        name=name,
        version=1,
        created_at=0,
        expires_at=1,
        targets=Targets(),
        variants=[ModelVariant.for_bytes(data, accelerator="cpu", chunk_size=CHUNK_SIZE)],
        mode="int8",
        input=TensorSpec(shape=(1, 28, 28, 1), dtype="int8", scale=0.0039, zero_point=-128),
        output=TensorSpec(shape=(1, 10), dtype="int8", scale=0.00390625, zero_point=-128),
        preprocess=PreprocessSpec(height=28, width=28),
        labels=[str(i) for i in range(10)],
    )
    return ModelFiles(name, {"cpu": data}, template)


@dataclass
class SimDevice:
    """An agent reduced to its MQTT behaviour. ``outcome``: ok, fail (health check), silent."""

    broker: FakeBroker
    device_id: str
    key: Ed25519PrivateKey
    outcome: str = "ok"
    groups: list[str] = field(default_factory=lambda: ["field"])
    active_version: int = 0
    model: bytes | None = None
    seen_manifests: list[int] = field(default_factory=list)
    conn: FakeClient | None = None
    _chunks: dict[int, bytes] = field(default_factory=dict)

    def start(self) -> SimDevice:
        """Connect (persistent session), publish the retained status, subscribe to desired."""
        will = (T.status(self.device_id), encode(Status(device_id=self.device_id, online=False)))
        self.conn = self.broker.connect(
            f"agent-{self.device_id}",
            clean_session=False,
            will=(*will, True),
            on_message=self.on_message,
        )
        self._status()
        filters = [T.desired_device(self.device_id)] + [T.desired_group(g) for g in self.groups]
        self.conn.subscribe(*filters)
        return self

    def on_message(self, msg: Message) -> None:
        parsed = T.parse(msg.topic)
        if parsed.kind == CHUNK:
            if msg.payload and parsed.index is not None:
                self._chunks[parsed.index] = msg.payload
            return
        if msg.payload and self.outcome != "silent":
            self._on_manifest(msg.payload)

    def _on_manifest(self, envelope: bytes) -> None:
        trusted = {key_id_for(self.key.public_key()): self.key.public_key()}
        try:
            manifest = verify_manifest(
                envelope,
                trusted_keys=trusted,
                device_id=self.device_id,
                groups=self.groups,
                current_version=self.active_version,
                now=time.time(),
            )
        except RollbackError:
            return  # not newer than what runs: the agent ignores it
        except ManifestError as exc:
            self._report(UpdateState.REJECTED, reason=exc.reason)
            return
        self.seen_manifests.append(manifest.version)
        self._install(manifest)

    def _install(self, manifest: Manifest) -> None:
        assert self.conn is not None
        variant = manifest.variants[0]
        about = {"version": manifest.version, "sha256": variant.sha256}
        self._report(UpdateState.DOWNLOADING, **about)
        self._chunks = {}
        self.conn.subscribe(T.chunks_filter(variant.sha256))  # retained chunks arrive now
        chunks = [decode_chunk(self._chunks[i]) for i in sorted(self._chunks)]
        data = b"".join(c.payload for c in chunks)
        if hashlib.sha256(data).hexdigest() != variant.sha256:
            step = {"step": "downloading", "reason": "integrity"}
            self._report(UpdateState.FAILED, **about, **step)
            return
        self._report(UpdateState.VERIFYING, **about)
        if self.outcome == "fail":
            step = {"step": "health_check", "reason": "health_check"}
            self._report(UpdateState.FAILED, **about, **step)
            return
        self.active_version, self.model = manifest.version, data
        self._report(UpdateState.ACTIVE, **about)
        self._status()

    def _report(self, state: UpdateState, **fields: object) -> None:
        assert self.conn is not None
        report = Reported(
            device_id=self.device_id,
            state=state,
            active_version=self.active_version or None,
            ts=time.time(),
            **fields,  # type: ignore[arg-type]
        )
        self.conn.publish(T.reported(self.device_id), encode(report), retain=True)

    def _status(self) -> None:
        assert self.conn is not None
        status = Status(
            device_id=self.device_id,
            online=True,
            groups=self.groups,
            model_version=self.active_version or None,
            ts=time.time(),
        )
        self.conn.publish(T.status(self.device_id), encode(status), retain=True)


def devices(broker, key, *specs: str) -> list[SimDevice]:
    """``"d1"`` or ``"d1:fail"``: started simulated devices in group ``field``."""
    out = []
    for spec in specs:
        name, _, outcome = spec.partition(":")
        out.append(SimDevice(broker, name, key, outcome or "ok").start())
    return out


def fresh_host(broker, key, tmp_path) -> Fleet:
    """A second host process with the same registry (each CLI command is one)."""
    registry = open_registry(tmp_path / "state")
    return Fleet(conn=broker.connect(), topics=T, registry=registry, signing_key=key)


def test_group_push_publishes_chunks_once_before_the_retained_manifest(broker, key, host):
    fleet = devices(broker, key, "d1", "d2", "d3")
    result = push(host, model_files(MODEL_A), PushPlan(group="field", wait=5.0))
    assert result.exit_code == 0, result
    assert [p.phase for p in result.progress] == [Phase.ACTIVE] * 3
    assert all(d.model == MODEL_A and d.active_version == result.version for d in fleet)
    sha = hashlib.sha256(MODEL_A).hexdigest()
    chunks = broker.published(T.chunks_filter(sha))
    assert sorted(p.topic for p in chunks) == [T.chunk(sha, i) for i in range(3)]
    assert all(p.retain and p.sender == "host" for p in chunks)
    desired = [p for p in broker.published(T.desired_group("field")) if p.payload]
    assert len(desired) == 1
    assert broker.log.index(chunks[-1]) < broker.log.index(desired[0])
    assert broker.retained[T.desired_group("field")] == desired[0].payload
    assert broker.published("edgefleet/devices/+/desired") == []  # no waves, no device topics


def test_device_push_goes_to_each_listed_device_topic_only(broker, key, host):
    d1, d2 = devices(broker, key, "d1", "d2")
    result = push(host, model_files(MODEL_A), PushPlan(devices=("d1",), wait=5.0))
    assert result.exit_code == 0
    assert (d1.model, d2.model) == (MODEL_A, None)
    assert T.desired_device("d1") in broker.retained
    assert T.desired_group("field") not in broker.retained


def test_canary_failure_aborts_before_the_rest_of_the_group(broker, key, host):
    canary, d2, d3 = devices(broker, key, "d1:fail", "d2", "d3")
    plan = PushPlan(group="field", wait=5.0, canary=1)
    result = push(host, model_files(MODEL_A), plan)
    assert result.aborted is not None
    assert result.aborted.startswith("canary failed: d1 (failed: health_check")
    assert result.exit_code == 1
    assert canary.seen_manifests == [1]
    assert d2.seen_manifests == d3.seen_manifests == []
    assert T.desired_group("field") not in broker.retained


def test_canary_that_never_answers_aborts_at_the_deadline(broker, key, host):
    devices(broker, key, "d1:silent", "d2")
    started = time.monotonic()
    result = push(host, model_files(MODEL_A), PushPlan(group="field", wait=0.3, canary=1))
    assert time.monotonic() - started >= 0.3
    assert result.aborted == "canary not active in time: d1; the rest was not updated"


def test_canary_success_then_waves_then_the_group_topic(broker, key, host):
    fleet = devices(broker, key, "d1", "d2", "d3", "d4")
    plan = PushPlan(group="field", wait=5.0, canary=1, max_failures=50)
    result = push(host, model_files(MODEL_A), plan)
    assert result.exit_code == 0, result.aborted
    assert all(d.seen_manifests == [1] for d in fleet)  # the group copy is not newer: ignored
    waves = [p.topic for p in broker.published("edgefleet/devices/+/desired") if p.payload]
    assert waves == [T.desired_device(d) for d in ("d1", "d2", "d3", "d4")]
    # The group manifest replaces the per-device ones once every wave is through.
    assert T.desired_group("field") in broker.retained
    assert not [t for t in broker.retained if t.endswith("/desired") and "/devices/" in t]


def test_failure_limit_stops_later_waves(broker, key, host):
    fleet = devices(broker, key, "d1", "d2:fail", "d3:fail", "d4")
    plan = PushPlan(group="field", wait=5.0, canary=1, max_failures=25)
    result = push(host, model_files(MODEL_A), plan)
    assert result.aborted is not None
    assert result.aborted.startswith("failure limit exceeded: d2 (failed: health_check")
    # waves: [d1] (canary), [d2, d3] (2 of 4 failed > 25%), and d4 is never asked
    assert [d.seen_manifests for d in fleet] == [[1], [1], [1], []]
    assert T.desired_group("field") not in broker.retained


def test_a_failure_after_the_group_topic_clears_it_for_devices_not_yet_updated(broker, key, host):
    devices(broker, key, "d1:fail", "d2")
    result = push(host, model_files(MODEL_A), PushPlan(group="field", wait=5.0, max_failures=0))
    assert result.aborted is not None
    assert result.aborted.startswith("failure limit exceeded: d1")
    assert T.desired_group("field") not in broker.retained


def test_an_offline_device_catches_up_from_the_retained_state_alone(broker, key, host):
    d1, d2 = devices(broker, key, "d1", "d2")
    assert d2.conn is not None
    d2.conn.drop()  # last will: offline
    result = push(host, model_files(MODEL_A), PushPlan(group="field"))
    assert result.exit_code == 0
    assert (d1.model, d2.model) == (MODEL_A, None)
    host.conn.close()  # the host is gone when the device returns
    d2.start()
    assert d2.model == MODEL_A
    assert d2.active_version == result.version


def test_a_newer_push_clears_the_old_chunks_and_rollback_restores_them(broker, key, host, tmp_path):
    fleet = devices(broker, key, "d1", "d2")
    first = push(host, model_files(MODEL_A), PushPlan(group="field", wait=5.0))
    second = push(host, model_files(MODEL_B), PushPlan(group="field", wait=5.0))
    assert (first.version, second.version) == (1, 2)
    sha_a, sha_b = (hashlib.sha256(m).hexdigest() for m in (MODEL_A, MODEL_B))
    assert not [t for t in broker.retained if sha_a in t]
    assert all(d.model == MODEL_B for d in fleet)

    back = rollback(fresh_host(broker, key, tmp_path), PushPlan(group="field", wait=5.0))
    assert back.exit_code == 0
    assert back.version == 3  # a new version: devices refuse to go back in version
    assert all(d.model == MODEL_A and d.active_version == 3 for d in fleet)
    assert sorted(t for t in broker.retained if sha_a in t) == [T.chunk(sha_a, i) for i in range(3)]
    assert not [t for t in broker.retained if sha_b in t]


def test_a_device_that_does_not_trust_the_key_reports_rejected(broker, key, host):
    stranger = SimDevice(broker, "d1", Ed25519PrivateKey.generate()).start()
    result = push(host, model_files(MODEL_A), PushPlan(devices=("d1",), wait=5.0))
    assert result.exit_code == 1
    [progress] = result.progress
    assert (progress.phase, progress.reason) == (Phase.REJECTED, "unknown_key")
    assert stranger.model is None
