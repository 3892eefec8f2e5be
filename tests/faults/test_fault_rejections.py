"""Bad manifests and crafted chunk sequences against one long-lived agent: each refused, v1 serves.

Every test runs against the same agent process (``module_rig``), which serves v1 of the
tiny MNIST model from the start; after each fault the whole invariant must hold.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from edgefleet.shared.chunks import chunk_at, chunk_count
from edgefleet.shared.manifest import ModelVariant, sign_manifest
from edgefleet.shared.spec import TensorSpec
from support.agent import ModelBundle, Signer, crash_model
from support.faults import CHUNK, RawClient, Rig, variant_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_versions = iter(range(10, 10_000))
SMALL = 1024  # bytes per chunk where a test needs many chunks


def new_report(rig: Rig, since: int, **fields):
    """Wait for a report of the device, newer than ``since`` reports, matching ``fields``."""

    def match(host):
        for report in host.reports[since:]:
            if report.device_id == rig.device_id and all(
                getattr(report, k) == v for k, v in fields.items()
            ):
                return report
        return None

    return rig.host.wait(match, timeout=90)


def refused(rig: Rig, envelope: bytes, **fields):
    """Publish ``envelope`` as the desired state; return the report that refuses it."""
    since = len(rig.host.reports)
    served = rig.invariant().version
    rig.host.push(envelope, device=rig.device_id)
    report = new_report(rig, since, **fields)
    assert report.active_version == served
    assert rig.invariant().version == served  # still the same model, still serving
    return report


# -- manifests ----------------------------------------------------------------------------


def test_a_replayed_older_manifest_is_ignored_counted_and_changes_nothing(module_rig, mnist_bundle):
    rig = module_rig
    # Another TTL than the installed v1's, so the bytes differ from its envelope even when
    # both are signed within the same second (the agent skips envelopes it has seen).
    _, old = rig.signer.manifest(mnist_bundle, version=1, devices=[rig.device_id], ttl_s=7200)
    newer = next(_versions)
    rig.push(variant_of(mnist_bundle, b"r"), newer)
    rig.wait_report(state="active", version=newer)
    since = len(rig.host.reports)
    rig.host.push(old, device=rig.device_id)
    # Not news (older than the active model): logged and counted, never reported as a
    # rejection that would overwrite the retained "active" (docs/agent.md).
    ignored = wait_until(
        lambda: (i := _ignored(rig)) and i["count"] >= 1 and i, what="replay counted"
    )
    assert ignored["last"]["version"] == 1
    assert rig.invariant().version == newer
    later = [r for r in rig.host.reports[since:] if r.device_id == rig.device_id]
    assert all(r.state not in {"rejected", "failed"} for r in later), later


def _ignored(rig: Rig) -> dict | None:
    path = rig.state_dir / "ignored.json"
    return json.loads(path.read_bytes()) if path.exists() else None


def test_a_manifest_for_another_device_is_refused(module_rig, mnist_bundle):
    _, env = module_rig.signer.manifest(mnist_bundle, version=next(_versions), devices=["pi-x"])
    refused(module_rig, env, state="rejected", reason="not_targeted")


def test_a_model_signed_with_an_unknown_key_is_refused(module_rig, mnist_bundle, tmp_path):
    stranger = Signer(tmp_path / "stranger")
    _, env = stranger.manifest(
        mnist_bundle, version=next(_versions), devices=[module_rig.device_id]
    )
    refused(module_rig, env, state="rejected", reason="unknown_key")


def test_a_tampered_manifest_is_refused_as_bad_signature(module_rig, mnist_bundle):
    _, env = module_rig.signer.manifest(
        mnist_bundle, version=next(_versions), devices=[module_rig.device_id]
    )
    envelope = json.loads(env)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["version"] += 1000  # a bigger version than the signer signed
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    refused(module_rig, json.dumps(envelope).encode(), state="rejected", reason="bad_signature")


def test_an_expired_manifest_is_refused(module_rig, mnist_bundle):
    _, env = module_rig.signer.manifest(
        mnist_bundle,
        version=next(_versions),
        devices=[module_rig.device_id],
        created_at=int(time.time()) - 7200,
        ttl_s=60,
    )
    refused(module_rig, env, state="rejected", reason="expired")


def test_a_declared_size_over_the_limit_is_refused_before_any_download(module_rig, mnist_bundle):
    manifest, _ = module_rig.signer.manifest(
        mnist_bundle, version=next(_versions), devices=[module_rig.device_id]
    )
    size = 64 * 2**20 + 1  # the agent's default max_model_bytes is 64 MiB
    huge = ModelVariant(
        accelerator="cpu",
        sha256=hashlib.sha256(b"huge").hexdigest(),
        size=size,
        chunk_size=CHUNK,
        chunk_count=chunk_count(size, CHUNK),
    )
    env = sign_manifest(manifest.model_copy(update={"variants": [huge]}), module_rig.signer.key)
    refused(module_rig, env, state="rejected", reason="too_large")
    assert not (module_rig.state_dir / "downloads" / huge.sha256).exists()


def test_a_signed_model_that_crashes_the_interpreter_is_refused(module_rig, mnist_bundle):
    crash = crash_model(mnist_bundle)
    module_rig.host.offer(crash.data, chunk_size=CHUNK)
    _, env = module_rig.signer.manifest(
        crash, version=next(_versions), devices=[module_rig.device_id]
    )
    report = refused(module_rig, env, state="failed", step="health_check")
    assert "SIGSEGV" in report.message
    assert not (module_rig.state_dir / "models" / f"{crash.sha256}.tflite").exists()


def test_a_signed_model_with_the_wrong_input_shape_is_refused(module_rig, mnist_bundle):
    wrong = ModelBundle(
        mnist_bundle.path,
        variant_of(mnist_bundle, b"shape").data,
        TensorSpec.model_validate(mnist_bundle.input.model_dump() | {"shape": [1, 32, 32, 1]}),
        mnist_bundle.output,
    )
    module_rig.host.offer(wrong.data, chunk_size=CHUNK)
    _, env = module_rig.signer.manifest(
        wrong, version=next(_versions), devices=[module_rig.device_id]
    )
    report = refused(module_rig, env, state="failed", step="health_check")
    assert "shape" in report.message


# -- chunks -------------------------------------------------------------------------------


def _received(rig: Rig, sha: str) -> set[int]:
    state = rig.state_dir / "downloads" / sha / "reassembler.state"
    if not state.exists():
        return set()
    return {index for index, _ in json.loads(state.read_bytes())["received"]}


def test_truncated_corrupt_foreign_duplicate_and_reordered_chunks(module_rig, mnist_bundle):
    rig = module_rig
    target = variant_of(mnist_bundle, b"chunks")
    other = variant_of(mnist_bundle, b"other")
    count = chunk_count(len(target.data), SMALL)
    assert count >= 4
    chunks = [chunk_at(target.data, i, chunk_size=SMALL) for i in range(count)]
    version = next(_versions)
    rig.push(target, version, chunk_size=SMALL, offer=False)  # nobody answers its chunk requests
    rig.wait_report(state="downloading", version=version)
    topic = rig.host.topics.chunk
    raw = RawClient(rig.url)
    try:
        flipped = bytearray(chunks[1])
        flipped[-1] ^= 0xFF
        raw.publish(topic(target.sha256, 0), chunks[0][:-10])  # truncated
        raw.publish(topic(target.sha256, 1), bytes(flipped))  # corrupted
        raw.publish(topic(target.sha256, 2), chunk_at(other.data, 2, chunk_size=SMALL))  # foreign
        raw.publish(topic(target.sha256, 0), b"\x00" * 200)  # junk
        raw.publish(topic(target.sha256, 3), chunks[3])
        raw.publish(topic(target.sha256, 3), chunks[3])  # duplicate
        wait_until(lambda: _received(rig, target.sha256) == {3}, what="only chunk 3 kept")
        for index in reversed(range(count)):  # the rest, in reverse order, 3 a third time
            raw.publish(topic(target.sha256, index), chunks[index])
    finally:
        raw.close()
    report = rig.wait_report(state="active", version=version)
    assert report.sha256 == target.sha256
    assert rig.invariant().sha256 == target.sha256


def test_chunks_of_a_different_file_under_the_signed_hash_fail_integrity(module_rig, mnist_bundle):
    rig = module_rig
    target = variant_of(mnist_bundle, b"integrity")
    forged = bytes(reversed(target.data))  # same size, other bytes, headers claim the signed hash
    rig.host.offer(forged, chunk_size=CHUNK, sha256=target.sha256)
    rig.signed.add(target.sha256)
    _, env = rig.signer.manifest(target, version=next(_versions), devices=[rig.device_id])
    refused(rig, env, state="failed", reason="integrity")
    assert not (rig.state_dir / "downloads" / target.sha256).exists()
