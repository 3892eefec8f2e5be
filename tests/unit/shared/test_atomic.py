"""write_atomic: the new file or the old one, its mode from the start, fsyncs only when durable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgefleet.shared import atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_the_content_with_the_mode_and_creates_folders(tmp_path: Path):
    target = tmp_path / "a" / "b" / "key.pem"
    atomic.write_atomic(target, b"secret", mode=0o600)
    assert target.read_bytes() == b"secret"
    assert _mode(target) == 0o600
    atomic.write_atomic(target, b"public")
    assert (target.read_bytes(), _mode(target)) == (b"public", 0o644)


def test_the_mode_is_set_before_any_byte_is_written(tmp_path: Path, monkeypatch):
    seen: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic.write_atomic(tmp_path / "k", b"x", mode=0o600)
    assert seen == [0o600]


def test_the_hook_runs_between_fsync_and_rename_and_can_abort_it(tmp_path: Path):
    target = tmp_path / "state.json"
    atomic.write_atomic(target, b"old")
    seen: list[bytes] = []

    def hook() -> None:
        (temp,) = tmp_path.glob(".state.json.*.tmp")
        seen.append(temp.read_bytes())
        raise KeyboardInterrupt  # a BaseException: the temp file must still go

    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(target, b"new", before_replace=hook)
    assert seen == [b"new"]
    assert target.read_bytes() == b"old"
    assert list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 2), (False, 0)])
def test_durable_fsyncs_file_and_folder_and_only_then(tmp_path: Path, monkeypatch, durable, fsyncs):
    synced: list[int] = []
    monkeypatch.setattr(atomic.os, "fsync", synced.append)
    atomic.write_atomic(tmp_path / "f", b"data", durable=durable)
    assert len(synced) == fsyncs
    assert (tmp_path / "f").read_bytes() == b"data"


def test_without_overwrite_an_existing_file_is_kept_and_no_temp_file_is_left(tmp_path):
    path = tmp_path / "secret"
    atomic.write_atomic(path, b"first\n", mode=0o600, overwrite=False)
    atomic.write_atomic(path, b"second\n", mode=0o600, overwrite=False)
    assert path.read_bytes() == b"first\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]
