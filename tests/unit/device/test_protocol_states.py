"""The update reports say what docs/protocol.md 4.2 and 8.1 promise (issue 18), without MQTT.

The same statements are checked against the real agent and Mosquitto in
tests/integration/test_agent_protocol.py; here every path of the state machine is cheap.
"""

import hashlib
from pathlib import Path

from test_updater import Harness, deliver, manifest, reports, tamper_signature

from edgefleet.device.errors import HealthCheckError
from edgefleet.shared.chunks import encode_chunk, split_model
from edgefleet.shared.messages import UpdateState

S = UpdateState


def test_an_update_reports_verifying_with_the_whole_file_before_the_health_check(
    tmp_path: Path,
):
    h = Harness(tmp_path)
    got = reports(deliver(h, bytes(range(256)) * 4, 1))  # 11 chunks of 100 bytes
    states = [r.state for r in got]
    downloading = [r for r in got if r.state is S.DOWNLOADING]
    assert states == [S.DOWNLOADING] * len(downloading) + [
        S.VERIFYING,
        S.HEALTH_CHECK,
        S.ACTIVATING,
        S.ACTIVE,
    ]
    progress = [r.progress for r in got]
    assert progress == sorted(progress)  # never goes back
    assert progress[0] == 0.0
    assert all(p < 1.0 for p in progress[: len(downloading)])
    # from verifying on, the whole file is on the device: progress 1.0
    assert progress[len(downloading) :] == [1.0] * 4
    assert {(r.model_name, r.version) for r in got} == {("m", 1)}


def test_a_model_already_on_the_device_goes_through_the_same_states(tmp_path: Path):
    h = Harness(tmp_path)
    a = b"a" * 300
    deliver(h, a, 1)
    deliver(h, b"b" * 300, 2)
    got = reports(h.updater.on_desired(manifest(a, 3)))  # a rollback: no download
    assert [r.state for r in got] == [S.VERIFYING, S.HEALTH_CHECK, S.ACTIVATING, S.ACTIVE]
    assert [r.progress for r in got] == [1.0] * 4


def test_failures_after_the_download_carry_the_whole_file_progress(tmp_path: Path):
    h = Harness(tmp_path, health_error=HealthCheckError("bad", reason="spec_mismatch"))
    got = reports(deliver(h, b"a" * 300, 1))
    assert (got[-1].state, got[-1].step, got[-1].progress) == (S.FAILED, "health_check", 1.0)
    (rej,) = reports(h.updater.on_desired(tamper_signature(manifest(b"r" * 300, 2))))
    assert (rej.state, rej.progress) == (S.REJECTED, 0.0)  # a refusal concerns no file


def test_a_whole_file_mismatch_waits_for_the_next_delivery_of_the_envelope(tmp_path: Path):
    # docs/protocol.md 7.2 / 8.2: failed/verifying/integrity, the chunks are discarded, no
    # chunk requests follow; the same envelope delivered again starts the download over.
    h = Harness(tmp_path)
    good, evil = b"g" * 300, b"e" * 300
    sha = hashlib.sha256(good).hexdigest()
    envelope = manifest(good, 1)
    h.updater.on_desired(envelope)
    actions = []
    for i in range(3):
        payload = evil[i * 100 : (i + 1) * 100]
        raw = encode_chunk(model_sha256=sha, index=i, count=3, total_size=300, payload=payload)
        actions += h.updater.on_chunk(raw)
    got = reports(actions)
    assert [r.state for r in got[-2:]] == [S.VERIFYING, S.FAILED]
    assert (got[-1].step, got[-1].reason, got[-1].progress) == ("verifying", "integrity", 1.0)
    h.now += 60
    assert h.updater.tick() == []  # no chunk requests: nothing is being downloaded
    again = h.updater.on_desired(envelope)
    assert reports(again)[0].state == S.DOWNLOADING
    assert reports(again)[0].progress == 0.0


def test_an_ignored_older_manifest_brings_back_active_after_a_refusal(tmp_path: Path):
    # issue 18: the retained report kept saying rejected/bad_signature of an earlier envelope
    h = Harness(tmp_path)
    deliver(h, b"a" * 300, 2)
    (rej,) = reports(h.updater.on_desired(tamper_signature(manifest(b"z" * 300, 3))))
    assert (rej.state, rej.reason) == (S.REJECTED, "bad_signature")
    (now,) = reports(h.updater.on_desired(manifest(b"b" * 300, 1)))  # older: not news
    assert (now.state, now.version, now.active_version, now.progress) == (S.ACTIVE, 2, 2, 1.0)
    assert (now.step, now.reason) == (None, None)
    assert h.updater.last_report == now
    assert h.updater.store.ignored()["count"] == 1
    # once active is what the retained report says, nothing more is published
    assert h.updater.on_desired(manifest(b"c" * 300, 1)) == []


def test_an_ignored_manifest_during_a_download_brings_back_downloading(tmp_path: Path):
    h = Harness(tmp_path)
    deliver(h, b"a" * 300, 2)
    new = b"n" * 1000
    h.updater.on_desired(manifest(new, 5))
    chunks = split_model(new, chunk_size=100)
    h.updater.on_chunk(chunks[0])
    h.updater.on_desired(tamper_signature(manifest(new, 6)))  # rejected, download goes on
    (now,) = reports(h.updater.on_desired(manifest(b"b" * 300, 1)))
    assert (now.state, now.version, now.progress) == (S.DOWNLOADING, 5, 0.1)
    got = reports([a for raw in chunks[1:] for a in h.updater.on_chunk(raw)])
    assert got[-1].state == S.ACTIVE
    assert got[-1].version == 5
