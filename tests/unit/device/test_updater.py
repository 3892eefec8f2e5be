"""The update state machine, driven by events without MQTT (real manifests, chunks, files)."""

import base64
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import edgefleet.device.store as store_mod
from edgefleet.device.errors import HealthCheckError, ModelLoadError
from edgefleet.device.store import StateStore
from edgefleet.device.updater import (
    CHECKPOINT_S,
    Publish,
    Subscribe,
    Unsubscribe,
    Updater,
    UpdaterSettings,
)
from edgefleet.shared.chunks import chunk_count, encode_chunk, split_model
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, key_id_for, sign_manifest
from edgefleet.shared.messages import ChunkRequest, Reported, UpdateState
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics

KEY = Ed25519PrivateKey.generate()
TOPICS = Topics("t")
CHUNK = 100
NOW = time.time()  # the harness clock (fixed, so expiry does not depend on the run time)


def manifest(
    data: bytes, version: int, *, key=KEY, devices=("d1",), sha=None, accel="cpu", **fields
) -> bytes:
    variant = ModelVariant.for_bytes(data, accelerator=accel, chunk_size=CHUNK)
    if sha:
        variant = variant.model_copy(update={"sha256": sha})
    now = int(time.time())
    m = Manifest(
        name="m",
        version=version,
        created_at=now - 10,
        expires_at=now + 3600,
        targets=Targets(devices=list(devices)),
        variants=[variant],
        mode="int8",
        input=TensorSpec(shape=(1, 2), dtype="int8", scale=0.1),
        output=TensorSpec(shape=(1, 3), dtype="int8", scale=0.1),
        preprocess=PreprocessSpec(height=1, width=2),
        labels=["a", "b", "c"],
    )
    return sign_manifest(m.model_copy(update=fields), key)


def tamper_signature(envelope: bytes) -> bytes:
    doc = json.loads(envelope)
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc).encode()


class Harness:
    def __init__(self, root: Path, *, health_error=None, activate_error=None):
        self.checked: list[Path] = []
        self.activated: list[int] = []
        self.health_error = health_error
        self.activate_error = activate_error
        self.updater = self.make(root)

    def make(self, root: Path) -> Updater:
        return Updater(
            settings=UpdaterSettings(
                device_id="d1",
                groups=["g"],
                topics=TOPICS,
                trusted_keys={key_id_for(KEY.public_key()): KEY.public_key()},
                chunk_timeout_s=5,
            ),
            store=StateStore(root),
            health_check=self.health,
            on_activate=self.activate,
            clock=lambda: self.now,
        )

    now = NOW

    def health(self, path: Path, _m: Manifest) -> None:
        self.checked.append(path)
        if self.health_error:
            raise self.health_error

    def activate(self, _path: Path, m: Manifest) -> None:
        if self.activate_error:
            raise self.activate_error
        self.activated.append(m.version)


def reports(actions) -> list[Reported]:
    return [
        Reported.model_validate_json(a.payload)
        for a in actions
        if isinstance(a, Publish) and a.topic == TOPICS.reported("d1")
    ]


def deliver(h: Harness, data: bytes, version: int):
    actions = h.updater.on_desired(manifest(data, version))
    assert Subscribe(TOPICS.chunks_filter(hashlib.sha256(data).hexdigest())) in actions
    for raw in split_model(data, chunk_size=CHUNK):
        actions += h.updater.on_chunk(raw)
    return actions


def test_happy_path_reaches_active_through_every_state(tmp_path: Path):
    h = Harness(tmp_path)
    data = bytes(range(256)) * 3
    actions = deliver(h, data, 1)
    states = [r.state for r in reports(actions)]
    assert states[0] == UpdateState.DOWNLOADING
    assert states[-3:] == [UpdateState.HEALTH_CHECK, UpdateState.ACTIVATING, UpdateState.ACTIVE]
    assert reports(actions)[-1].active_version == 1
    assert any(isinstance(a, Unsubscribe) for a in actions)
    assert h.activated == [1]
    assert h.updater.store.model_path(hashlib.sha256(data).hexdigest()).read_bytes() == data
    assert h.updater.store.floor()[0] == 1
    assert not any((tmp_path / "downloads").iterdir())


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (lambda d: manifest(d, 1, key=Ed25519PrivateKey.generate()), "unknown_key"),
        (lambda d: tamper_signature(manifest(d, 1)), "bad_signature"),
        (lambda d: manifest(d, 1, devices=("other",)), "not_targeted"),
        (lambda _d: b"not json", "malformed"),
    ],
)
def test_refused_manifests_are_reported_and_change_nothing(tmp_path: Path, envelope, reason):
    h = Harness(tmp_path)
    actions = h.updater.on_desired(envelope(b"x" * 300))
    (report,) = reports(actions)
    assert (report.state, report.reason) == (UpdateState.REJECTED, reason)
    assert report.message
    if reason != "not_targeted":  # unsigned fields are never reported back
        assert (report.model_name, report.version) == (None, None)
    assert h.updater.store.active() is None
    assert not any(isinstance(a, Subscribe) for a in actions)


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (lambda d: manifest(d, 7, devices=("other",)), "not_targeted"),
        (lambda d: manifest(d, 7, created_at=int(NOW) - 99, expires_at=int(NOW) - 1), "expired"),
        (lambda d: manifest(d, 7, accel="edgetpu"), "accelerator"),
        (lambda d: manifest(d * 100, 7), "too_large"),
        (lambda d: manifest(d, 3), "rollback"),  # floor 5, nothing active
    ],
)
def test_refusals_of_signed_manifests_name_the_version(tmp_path: Path, envelope, reason):
    # The host matches reports to a rollout by version: a verified manifest's refusal says it.
    h = Harness(tmp_path)
    h.updater.settings = dataclasses.replace(h.updater.settings, max_model_bytes=1000)
    h.updater.store.raise_floor(5, 0.0)
    (report,) = reports(h.updater.on_desired(envelope(b"x" * 300)))
    assert (report.state, report.reason) == (UpdateState.REJECTED, reason)
    assert (report.model_name, report.version) == ("m", 7 if reason != "rollback" else 3)
    assert (report.sha256 is None) == (reason == "accelerator")


def test_a_manifest_no_newer_than_the_active_model_changes_nothing(tmp_path: Path):
    h = Harness(tmp_path)
    deliver(h, b"a" * 300, 2)
    active = h.updater.last_report
    # the canary's model again (same version and file, e.g. the group copy): silently
    assert h.updater.on_desired(manifest(b"a" * 300, 2, targets=Targets(groups=["g"]))) == []
    assert h.updater.on_desired(manifest(b"a" * 300, 2, devices=("d1", "d2"))) == []
    assert h.updater.store.ignored()["count"] == 0
    # an older one replayed, and a conflicting copy of the active version: counted
    assert h.updater.on_desired(manifest(b"b" * 300, 1)) == []
    assert h.updater.on_desired(manifest(b"c" * 300, 2)) == []
    ignored = h.updater.store.ignored()
    assert ignored["count"] == 2
    assert (ignored["last"]["version"], ignored["last"]["active_version"]) == (2, 2)
    # the retained report still says active; nothing was downloaded or checked
    assert h.updater.last_report == active
    assert h.updater.state == UpdateState.ACTIVE
    assert h.activated == [2]
    assert len(h.checked) == 1
    # after a restart, the retained old manifest is ignored again (not reported)
    h2 = Harness(tmp_path)
    (start,) = reports(h2.updater.start())
    assert h2.updater.on_desired(manifest(b"b" * 300, 1)) == []
    assert h2.updater.last_report == start
    assert h2.updater.store.ignored()["count"] == 3


def test_health_check_failure_keeps_the_old_model(tmp_path: Path):
    h = Harness(tmp_path)
    deliver(h, b"a" * 300, 1)
    h.health_error = HealthCheckError("boom (SIGSEGV)", reason="crashed")
    actions = deliver(h, b"b" * 300, 2)
    last = reports(actions)[-1]
    assert (last.state, last.step, last.reason) == ("failed", "health_check", "health_check")
    assert "SIGSEGV" in last.message
    assert last.active_version == 1
    store = h.updater.store
    assert store.active().version == 1
    assert store.floor()[0] == 1
    assert not store.model_path(hashlib.sha256(b"b" * 300).hexdigest()).exists()


def test_a_model_that_failed_its_health_check_is_not_checked_again_after_a_restart(
    tmp_path: Path,
):
    h = Harness(tmp_path)
    deliver(h, b"a" * 300, 1)
    h.health_error = HealthCheckError(
        "the model crashed the interpreter (SIGSEGV)", reason="crashed"
    )
    deliver(h, b"b" * 300, 2)
    assert len(h.checked) == 2
    # a new process: the retained manifest of the crashing model arrives again
    h2 = Harness(tmp_path)
    h2.updater.start()
    actions = h2.updater.on_desired(manifest(b"b" * 300, 2))
    (report,) = reports(actions)
    assert (report.state, report.step, report.reason) == ("failed", "health_check", "health_check")
    assert (report.version, report.active_version) == (2, 1)
    assert "before" in report.message
    assert "SIGSEGV" in report.message
    assert h2.checked == []  # neither downloaded nor checked again
    assert not any(isinstance(a, Subscribe) for a in actions)
    # the same model under a newer manifest is a new decision: downloaded and checked
    deliver(h2, b"b" * 300, 3)
    assert len(h2.checked) == 1


def test_activation_hook_failure_reverts_the_pointer(tmp_path: Path):
    h = Harness(tmp_path)
    deliver(h, b"a" * 300, 1)
    h.activate_error = ModelLoadError("cannot load")
    last = reports(deliver(h, b"b" * 300, 2))[-1]
    assert (last.state, last.step) == ("failed", "activating")
    assert h.updater.store.active().version == 1


def test_integrity_failure_is_reported_and_download_dropped(tmp_path: Path):
    h = Harness(tmp_path)
    good, evil = b"g" * 300, b"e" * 300
    sha = hashlib.sha256(good).hexdigest()
    h.updater.on_desired(manifest(good, 1))
    actions = []
    for i in range(chunk_count(300, CHUNK)):
        payload = evil[i * CHUNK : (i + 1) * CHUNK]
        raw = encode_chunk(model_sha256=sha, index=i, count=3, total_size=300, payload=payload)
        actions += h.updater.on_chunk(raw)
    last = reports(actions)[-1]
    assert (last.state, last.step, last.reason) == ("failed", "verifying", "integrity")
    assert h.checked == []
    assert not (tmp_path / "downloads" / sha).exists()


def test_a_download_damaged_on_disk_after_its_chunks_arrived_is_refused(tmp_path: Path):
    h = Harness(tmp_path)
    data = bytes(range(250)) * 4  # 10 chunks
    sha = hashlib.sha256(data).hexdigest()
    chunks = split_model(data, chunk_size=CHUNK)
    h.updater.on_desired(manifest(data, 1))
    for raw in chunks[:-1]:
        h.updater.on_chunk(raw)
    part = tmp_path / "downloads" / sha / "model.part"
    with part.open("r+b") as f:
        f.seek(2 * CHUNK + 5)
        f.write(b"\xff")  # bit rot after the chunk's hash was taken
    last = reports(h.updater.on_chunk(chunks[-1]))[-1]
    assert (last.state, last.step, last.reason) == ("failed", "verifying", "integrity")
    assert "[2]" in last.message  # the damaged chunk is named
    assert h.checked == []
    assert not h.updater.store.model_path(sha).exists()
    assert not (tmp_path / "downloads" / sha).exists()


def test_restart_resumes_and_requests_only_missing_chunks(tmp_path: Path):
    h = Harness(tmp_path)
    data = bytes(range(250)) * 4  # 10 chunks
    chunks = split_model(data, chunk_size=CHUNK)
    envelope = manifest(data, 1)
    h.updater.on_desired(envelope)
    for raw in chunks[:4]:
        h.updater.on_chunk(raw)
    # a new process: same state dir, the retained manifest arrives again
    h2 = Harness(tmp_path)
    h2.now = h.now
    h2.updater.on_desired(envelope)
    assert h2.updater.tick() == []
    h2.now += 6
    (request,) = h2.updater.tick()
    body = ChunkRequest.model_validate_json(request.payload)
    assert body.indexes == list(range(4, 10))
    actions = []
    for raw in chunks[4:]:
        actions += h2.updater.on_chunk(raw)
    assert reports(actions)[-1].state == UpdateState.ACTIVE


def test_a_resumed_download_fetches_again_the_chunks_a_power_cut_lost(tmp_path: Path):
    # Chunks are not fsynced: after a power cut the saved state may list chunks whose
    # files are missing, empty or stale. They must be fetched again, never used.
    h = Harness(tmp_path)
    data = bytes(range(250)) * 4  # 10 chunks
    sha = hashlib.sha256(data).hexdigest()
    chunks = split_model(data, chunk_size=CHUNK)
    envelope = manifest(data, 1)
    h.updater.on_desired(envelope)
    for raw in chunks[:6]:
        h.updater.on_chunk(raw)
    part = tmp_path / "downloads" / sha / "model.part"
    with part.open("r+b") as f:
        f.seek(1 * CHUNK)
        f.write(bytes(CHUNK))  # never reached the disk: a hole
        f.seek(4 * CHUNK)
        f.write(b"x" * CHUNK)  # other bytes
        f.truncate(5 * CHUNK + 10)  # chunk 5 cut short
    h2 = Harness(tmp_path)
    h2.now = h.now
    h2.updater.on_desired(envelope)
    h2.now += 6
    (request,) = h2.updater.tick()
    assert ChunkRequest.model_validate_json(request.payload).indexes == [1, 4, 5, 6, 7, 8, 9]
    actions = []
    for raw in [chunks[i] for i in (1, 4, 5, 6, 7, 8, 9)]:
        actions += h2.updater.on_chunk(raw)
    assert reports(actions)[-1].state == UpdateState.ACTIVE
    assert h2.updater.store.model_path(sha).read_bytes() == data


def test_the_download_state_is_fsynced_once_per_checkpoint_not_per_chunk(
    tmp_path: Path, monkeypatch
):
    synced: list[str] = []
    real_fsync = store_mod.os.fsync

    def fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    h = Harness(tmp_path)
    data = bytes(range(250)) * 4  # 10 chunks
    chunks = split_model(data, chunk_size=CHUNK)
    h.updater.on_desired(manifest(data, 1))
    synced.clear()
    for raw in chunks[:5]:  # within one checkpoint interval
        h.updater.on_chunk(raw)
    assert not [p for p in synced if "reassembler.state" in p]  # saved, not fsynced
    assert not [p for p in synced if "model.part" in p]
    h.now += CHECKPOINT_S
    h.updater.on_chunk(chunks[5])
    assert len([p for p in synced if "reassembler.state" in p]) == 1  # the checkpoint
    # every save is complete on disk, fsynced or not (what a killed process leaves)
    saved = json.loads(
        (tmp_path / "downloads" / chunks_sha(data) / "reassembler.state").read_bytes()
    )
    assert [i for i, _ in saved["received"]] == list(range(6))


def chunks_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_check_is_prepared_when_a_download_begins(tmp_path: Path):
    h = Harness(tmp_path)
    prepared: list[int] = []
    h.updater.prepare_check = lambda: prepared.append(len(h.checked))
    data = b"p" * 300
    deliver(h, data, 1)
    assert prepared == [0]  # once, before the check
    assert len(h.checked) == 1


def test_known_model_file_is_reused_without_download(tmp_path: Path):
    h = Harness(tmp_path)
    a, b = b"a" * 300, b"b" * 300
    deliver(h, a, 1)
    deliver(h, b, 2)
    actions = h.updater.on_desired(manifest(a, 3))  # rollback = re-sign the previous model
    assert not any(isinstance(x, Subscribe) for x in actions)
    assert reports(actions)[-1].state == UpdateState.ACTIVE
    assert h.updater.store.active().version == 3


def test_start_reports_active_and_ignores_the_same_envelope(tmp_path: Path):
    h = Harness(tmp_path)
    envelope = manifest(b"a" * 300, 1)
    h.updater.on_desired(envelope)
    for raw in split_model(b"a" * 300, chunk_size=CHUNK):
        h.updater.on_chunk(raw)
    h2 = Harness(tmp_path)
    (start,) = reports(h2.updater.start())
    assert (start.state, start.version) == ("active", 1)
    assert h2.updater.on_desired(envelope) == []
    assert json.loads((tmp_path / "active.json").read_text())["version"] == 1


def test_the_health_check_runs_elsewhere_and_the_switch_waits_for_its_outcome(tmp_path: Path):
    h = Harness(tmp_path)
    deliver(h, b"a" * 300, 1)
    jobs: list = []
    h.updater.spawn = jobs.append  # a worker that has not run yet
    actions = deliver(h, b"b" * 300, 2)
    assert reports(actions)[-1].state == UpdateState.HEALTH_CHECK
    assert h.updater.store.active().version == 1  # v1 serves while v2 is checked
    assert h.updater.poll_health() == []
    assert h.updater.tick() == []
    assert h.activated == [1]
    (job,) = jobs
    job()  # the worker finishes
    assert [r.state for r in reports(h.updater.poll_health())] == ["activating", "active"]
    assert h.activated == [1, 2]
    assert h.updater.store.active().version == 2
    assert h.updater.poll_health() == []  # the outcome is used once


def test_a_newer_manifest_during_a_health_check_drops_the_old_outcome(tmp_path: Path):
    h = Harness(tmp_path)
    jobs: list = []
    h.updater.spawn = jobs.append
    deliver(h, b"a" * 300, 1)
    deliver(h, b"b" * 300, 2)  # arrives while v1 is still being checked
    first, second = jobs
    first()
    assert h.updater.poll_health() == []  # v1's outcome no longer matters
    second()
    assert reports(h.updater.poll_health())[-1].state == UpdateState.ACTIVE
    assert h.activated == [2]


def test_a_health_check_that_breaks_is_a_failed_check(tmp_path: Path):
    h = Harness(tmp_path)
    h.health_error = OSError("cannot start the child")
    last = reports(deliver(h, b"a" * 300, 1))[-1]
    assert (last.state, last.step, last.reason) == ("failed", "health_check", "health_check")
    assert "cannot start the child" in last.message
    assert h.updater.store.active() is None


def test_a_copy_of_the_manifest_under_check_does_not_restart_the_check(tmp_path: Path):
    h = Harness(tmp_path)
    jobs: list = []
    h.updater.spawn = jobs.append
    deliver(h, b"a" * 300, 1)
    group_copy = manifest(b"a" * 300, 1, targets=Targets(groups=["g"]))
    assert h.updater.on_desired(group_copy) == []
    (job,) = jobs
    job()
    assert reports(h.updater.poll_health())[-1].state == UpdateState.ACTIVE


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (HealthCheckError("did not finish in 60 s (killed)", reason="timeout"), "timeout"),
        (HealthCheckError("killed by SIGKILL", reason="killed"), "health_check"),
        (OSError("cannot start the child: out of memory"), "health_check"),
    ],
)
def test_a_check_without_verdict_is_not_remembered_and_is_retried(tmp_path: Path, error, reason):
    # A timeout or a SIGKILL (OOM killer) on a loaded box says nothing about the model.
    h = Harness(tmp_path)
    h.health_error = error
    data = b"a" * 300
    last = reports(deliver(h, data, 1))[-1]
    assert (last.state, last.step, last.reason) == ("failed", "health_check", reason)
    assert "again" in last.message
    assert h.updater.store.bad_models() == {}
    h.health_error = None
    # the same envelope delivered again (reconnect) is checked again, without a download
    actions = h.updater.on_desired(manifest(data, 1))
    assert not any(isinstance(a, Subscribe) for a in actions)
    assert reports(actions)[-1].state == UpdateState.ACTIVE
    assert len(h.checked) == 2
    # and after a restart too (a fresh harness on the same state dir)
    h2 = Harness(tmp_path / "other")
    h2.health_error = error
    deliver(h2, data, 1)
    h3 = Harness(tmp_path / "other")
    h3.updater.start()
    assert reports(h3.updater.on_desired(manifest(data, 1)))[-1].state == UpdateState.ACTIVE


@pytest.mark.parametrize("reason", ["crashed", "load", "spec_mismatch", "invoke"])
def test_a_real_verdict_is_remembered(tmp_path: Path, reason):
    h = Harness(tmp_path)
    h.health_error = HealthCheckError("bad model", reason=reason)
    deliver(h, b"a" * 300, 1)
    (record,) = h.updater.store.bad_models().values()
    assert record["version"] == 1


def test_the_seen_envelope_hashes_are_bounded(tmp_path: Path):
    # Each distinct envelope (even garbage) is remembered; a flood must not grow memory.
    h = Harness(tmp_path)
    for i in range(1000):
        h.updater.on_desired(b"not a manifest %d" % i)
    assert len(h.updater._seen) <= 256
