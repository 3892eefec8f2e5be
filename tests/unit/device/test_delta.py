"""DeltaDownload: fill the new file from what the device holds, fetch only the rest."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import pytest

from edgefleet.device.delta import DeltaDownload, held_models
from edgefleet.device.store import Pointer, StateStore
from edgefleet.shared.chunklist import make_chunk_list
from edgefleet.shared.errors import IntegrityError
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics

BASE = random.Random(1).randbytes(300_000)
# v2: 2000 bytes rewritten in the middle, 500 inserted further on (every later byte shifts)
NEW = BASE[:100_000] + bytes(2000) + BASE[102_000:200_000] + b"z" * 500 + BASE[200_000:]


def manifest_for(data: bytes, version: int, *, v2: bool = True) -> Manifest:
    variant = ModelVariant.for_bytes(data, accelerator="cpu")
    if v2:
        chunks = make_chunk_list(data)
        variant = ModelVariant(
            accelerator="cpu",
            sha256=variant.sha256,
            size=len(data),
            chunk_size=max(c[2] for c in chunks),
            chunk_count=len(chunks),
            chunks=chunks,
        )
    return Manifest(
        v=2 if v2 else 1,
        name="m",
        version=version,
        created_at=1,
        expires_at=2,
        targets=Targets(all_devices=True),
        variants=[variant],
        mode="int8",
        input=TensorSpec(shape=(1, 28, 28, 1), dtype="int8", scale=0.0039, zero_point=-128),
        output=TensorSpec(shape=(1, 10), dtype="int8", scale=0.00390625, zero_point=-128),
        preprocess=PreprocessSpec(height=28, width=28),
        labels=[str(i) for i in range(10)],
    )


def install(store: StateStore, data: bytes, *, v2: bool = True) -> None:
    manifest = manifest_for(data, 1, v2=v2)
    sha = hashlib.sha256(data).hexdigest()
    store.stage_model(sha, data)
    store.activate(Pointer(sha, "m", 1, manifest.model_dump(mode="json")))


def start(store: StateStore) -> DeltaDownload:
    manifest = manifest_for(NEW, 2)
    variant = manifest.variants[0]
    return DeltaDownload.start(
        manifest, variant, b"envelope", "e" * 64,
        directory=store.download_dir(variant.sha256), now=0.0, store=store,
    )  # fmt: skip


def feed_missing(job: DeltaDownload) -> int:
    sent = 0
    for sha, offset, length in job.entries:
        if sha in job.missing:
            assert job.add(NEW[offset : offset + length], 1.0)
            sent += length
    return sent


@pytest.fixture
def store(tmp_path) -> StateStore:
    return StateStore(tmp_path / "state")


@pytest.mark.parametrize("v2_base", [True, False], ids=["base-from-v2", "base-from-v1"])
def test_only_the_changed_chunks_are_fetched(store, v2_base):
    install(store, BASE, v2=v2_base)
    assert held_models(store) == [hashlib.sha256(BASE).hexdigest()]
    job = start(store)
    assert 0 < len(job.missing) < 10
    assert job.filters(Topics("t")) == [f"t/models/{s}/chunks/0" for s in sorted(job.missing)]
    sent = feed_missing(job)
    assert sent < 0.1 * len(NEW)  # two edits: a few 1-16 KiB chunks around each
    assert job.complete
    job.verify()
    assert job.part.read_bytes() == NEW


def test_no_previous_model_means_every_chunk_is_fetched(store):
    job = start(store)
    assert job.local_bytes == 0
    assert feed_missing(job) == len(NEW)
    job.verify()


def test_a_damaged_local_chunk_is_fetched_and_the_others_still_used(store):
    install(store, BASE)
    path = store.model_path(hashlib.sha256(BASE).hexdigest())
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 1
    path.write_bytes(bytes(damaged))
    job = start(store)
    first = make_chunk_list(NEW)[0][0]
    assert first in job.missing
    assert feed_missing(job) < 0.1 * len(NEW)
    job.verify()
    assert job.part.read_bytes() == NEW


def test_a_restart_resumes_from_the_part_file(store):
    job = start(store)  # nothing held: everything missing
    entries = job.entries
    for _, offset, length in entries[: len(entries) // 2]:
        job.add(NEW[offset : offset + length], 1.0)
    again = start(store)  # as after kill -9: only the part file is left
    assert len(again.missing) == len({s for s, _, _ in entries[len(entries) // 2 :]})
    feed_missing(again)
    again.verify()


def test_unknown_and_duplicate_payloads_are_ignored(store):
    job = start(store)
    assert not job.add(b"not a chunk of this file", 1.0)
    _, offset, length = job.entries[0]
    assert job.add(NEW[offset : offset + length], 1.0)
    assert not job.add(NEW[offset : offset + length], 1.0)


def test_a_part_file_changed_behind_its_back_fails_verification_naming_chunks(store):
    job = start(store)
    feed_missing(job)
    with job.part.open("r+b") as f:
        f.seek(5)
        f.write(b"\xff\xff")
    with pytest.raises(IntegrityError) as err:
        job.verify()
    assert err.value.indexes == (0,)
    assert not job.complete  # that chunk is wanted again


def test_memory_stays_bounded_by_a_chunk_not_a_model(store):
    install(store, BASE)
    manifest = manifest_for(NEW, 2)
    variant = manifest.variants[0]
    directory = store.download_dir(variant.sha256)
    payloads = [NEW[o : o + n] for _, o, n in variant.chunks or []]
    tracemalloc.start()
    try:
        job = DeltaDownload.start(
            manifest, variant, b"e", "e" * 64, directory=directory, now=0.0, store=store
        )
        for payload in payloads:
            job.add(payload, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert job.complete
    assert peak < len(NEW) // 3, peak  # chunks one at a time, never a whole model
