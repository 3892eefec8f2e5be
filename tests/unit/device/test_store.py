import hashlib
from pathlib import Path

import pytest

import edgefleet.device.store as store_mod
from edgefleet.device.store import PartFileChunkStore, Pointer, StateStore, atomic_write


def _pointer(sha: str, version: int) -> Pointer:
    return Pointer(sha256=sha, name="m", version=version, manifest={"name": "m"})


def test_activate_keeps_previous_and_prunes_the_rest(tmp_path: Path):
    store = StateStore(tmp_path)
    for sha in ("a" * 64, "b" * 64, "c" * 64):
        store.stage_model(sha, sha.encode())
    store.activate(_pointer("a" * 64, 1))
    store.activate(_pointer("b" * 64, 2))
    assert store.active().sha256 == "b" * 64
    assert store.previous().sha256 == "a" * 64
    assert not store.model_path("c" * 64).exists()
    store.activate(_pointer("c" * 64, 3))  # c was pruned: caller restages before activating
    assert store.previous().version == 2
    assert not store.model_path("a" * 64).exists()


def test_floor_never_goes_down_and_follows_the_pointer(tmp_path: Path):
    store = StateStore(tmp_path)
    assert store.floor() == (0, 0.0)
    store.raise_floor(5, 100.0)
    store.raise_floor(3, 50.0)
    assert store.floor() == (5, 100.0)
    store.activate(_pointer("a" * 64, 7))  # crash before raise_floor: the pointer wins
    assert store.floor() == (7, 100.0)


def test_has_model_checks_the_content(tmp_path: Path):
    store = StateStore(tmp_path)
    data = b"model bytes"
    sha = hashlib.sha256(data).hexdigest()
    store.stage_model(sha, data)
    assert store.has_model(sha)
    store.model_path(sha).write_bytes(b"tampered")
    assert not store.has_model(sha)


def test_interrupted_write_leaves_the_old_file_and_temp_is_cleaned(tmp_path: Path):
    target = tmp_path / "active.json"
    atomic_write(target, b"old")

    class BoomError(Exception):
        pass

    original = store_mod.fault
    store_mod.fault = lambda _point: (_ for _ in ()).throw(BoomError())
    try:
        with pytest.raises(BoomError):
            atomic_write(target, b"new", fault_point="x")
    finally:
        store_mod.fault = original
    assert target.read_bytes() == b"old"
    assert list(tmp_path.glob(".*.tmp")) == []


def test_part_file_chunk_store_round_trip(tmp_path: Path):
    part = tmp_path / "d" / "model.part"
    chunks = PartFileChunkStore(part, size=10, chunk_size=4)  # chunks of 4, 4 and 2 bytes
    chunks.put(2, b"89")
    chunks.put(0, b"0123")
    reopened = PartFileChunkStore(part, size=10, chunk_size=4)
    assert (reopened.get(0), reopened.get(2)) == (b"0123", b"89")
    assert reopened.get(1) == bytes(4)  # never written: a hole, which fails its hash
    with pytest.raises(ValueError, match="its place"):
        chunks.put(1, b"toolong")
    chunks.clear()
    assert chunks.get(0) == b""
    part.unlink()
    with pytest.raises(KeyError):
        chunks.get(0)


def test_a_chunk_is_written_in_place_without_an_fsync(tmp_path: Path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(store_mod.os, "fsync", synced.append)
    chunks = PartFileChunkStore(tmp_path / "model.part", size=8, chunk_size=4)
    chunks.put(1, b"4567")
    assert synced == []
    assert chunks.matches(1, hashlib.sha256(b"4567").digest())
    assert not chunks.matches(1, hashlib.sha256(b"other").digest())
    assert not chunks.matches(0, hashlib.sha256(b"0123").digest())  # not stored
    atomic_write(tmp_path / "durable", b"x")
    assert len(synced) == 2  # the file and its directory


def test_stage_part_moves_the_verified_file_into_models(tmp_path: Path):
    store = StateStore(tmp_path / "state")
    data = b"model bytes"
    sha = hashlib.sha256(data).hexdigest()
    part = store.download_dir(sha) / "model.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data + b"stale tail")
    path = store.stage_part(sha, part, len(data))
    assert path.read_bytes() == data  # cut to the size
    assert store.has_model(sha)
    assert not part.exists()


def test_grow_in_place_keeps_the_inode_and_refuses_to_shrink(tmp_path: Path):
    path = tmp_path / "state"
    path.write_bytes(b'{"received":[1]}')
    inode = path.stat().st_ino
    store_mod.grow_in_place(path, b'{"received":[1,2]}')
    assert path.read_bytes() == b'{"received":[1,2]}'
    assert path.stat().st_ino == inode
    with pytest.raises(ValueError, match="longer"):
        store_mod.grow_in_place(path, b"{}")
    assert path.read_bytes() == b'{"received":[1,2]}'
