import os
import time
from pathlib import Path

from edgefleet.device.sources import FolderWatcher


def test_file_is_taken_only_once_stable_for_the_settle_time(tmp_path: Path):
    now = [0.0]
    watcher = FolderWatcher(tmp_path / "in", settle_s=5, monotonic=lambda: now[0])
    f = tmp_path / "in" / "scan.png"
    f.write_bytes(b"abc")
    assert watcher.poll() == []  # first sighting (its mtime is "now": maybe still copied)
    now[0] = 4.0
    f.write_bytes(b"abcdef")  # still growing
    assert watcher.poll() == []
    now[0] = 8.0
    assert watcher.poll() == []  # unchanged for 4 s only
    now[0] = 9.5
    assert watcher.poll() == [f]


def test_hidden_temp_and_unknown_files_are_ignored(tmp_path: Path):
    watcher = FolderWatcher(tmp_path)
    for name in (".scan.png.tmp", "notes.txt", "empty.npy"):
        (tmp_path / name).write_bytes(b"" if name == "empty.npy" else b"x")
    watcher.poll()
    assert watcher.poll() == []


def test_done_moves_to_processed_or_rejected_with_a_note(tmp_path: Path):
    watcher = FolderWatcher(tmp_path)
    good, bad = tmp_path / "a.png", tmp_path / "b.jpg"
    good.write_bytes(b"1")
    bad.write_bytes(b"2")
    watcher.done(good)
    watcher.done(bad, error="cannot decode")
    assert (tmp_path / "processed" / "a.png").exists()
    assert (tmp_path / "rejected" / "b.jpg.error.txt").read_text() == "cannot decode\n"
    again = tmp_path / "a.png"
    again.write_bytes(b"3")
    watcher.done(again)
    assert (tmp_path / "processed" / "a.1.png").read_bytes() == b"3"


def test_delete_mode(tmp_path: Path):
    watcher = FolderWatcher(tmp_path, after="delete")
    f = tmp_path / "a.npy"
    f.write_bytes(b"1")
    watcher.done(f)
    assert not f.exists()


def test_a_file_untouched_for_the_settle_time_is_taken_at_first_sight(tmp_path: Path):
    # Cold start: a scan already waiting (or renamed into place) need not wait a poll.
    watcher = FolderWatcher(tmp_path / "in", settle_s=60)
    old, fresh = tmp_path / "in" / "old.png", tmp_path / "in" / "fresh.png"
    old.write_bytes(b"abc")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    fresh.write_bytes(b"abc")  # just written: maybe still being copied
    assert watcher.poll() == [old]
