"""The [limits] checks, the inbox rules and per-input containment, as pure logic."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefleet.device.config import LimitsConfig, parse_config
from edgefleet.device.errors import ConfigError, InputLimitError
from edgefleet.device.inputs import decode_input, load_input
from edgefleet.device.intake import Intake
from edgefleet.device.sources import FolderWatcher
from edgefleet.shared.errors import InputError
from edgefleet.shared.messages import ImageMessage, encode


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header for width x height, with a few compressed rows (a few KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# -- configuration ----------------------------------------------------------------------


def test_limits_have_pi_sized_defaults_and_unknown_keys_are_refused(tmp_path: Path):
    config = parse_config('device_id = "d"\nstate_dir = "s"', base=tmp_path)
    assert config.limits == LimitsConfig()
    assert config.limits.max_pixels == 2**20
    assert config.inference.settle_s == 1.0
    with pytest.raises(ConfigError, match=r"limits\.max_pixel: unknown setting"):
        parse_config('device_id = "d"\nstate_dir = "s"\n[limits]\nmax_pixel = 1', base=tmp_path)
    for field in LimitsConfig.model_fields.values():
        assert field.description


# -- images -----------------------------------------------------------------------------


@pytest.mark.parametrize(("w", "h"), [(20000, 20000), (12000, 12000), (9000, 9000)])
def test_an_image_over_max_pixels_is_refused_from_its_header(w: int, h: int):
    data = bomb_png(w, h)
    assert len(data) < 200_000
    with pytest.raises(InputLimitError, match=r"limits\.max_pixels") as info:
        decode_input(data, "png")
    assert f"({w}x{h})" in str(info.value)
    assert info.value.key == "limits.max_pixels"


def test_the_pixel_limit_is_per_call_not_pillows_global(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow's global would refuse 64x64
    image = np.full((64, 64), 7, dtype=np.uint8)
    assert decode_input(png(image), "png", LimitsConfig(max_pixels=4096)).shape == (64, 64)
    with pytest.raises(InputLimitError, match="4,096 pixels, over the limit of 4,095"):
        decode_input(png(image), "png", LimitsConfig(max_pixels=4095))


def test_a_jpeg_header_is_checked_too():
    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, format="JPEG")
    assert decode_input(buf.getvalue(), "jpg").shape == (200, 300, 3)
    with pytest.raises(InputLimitError, match=r"\(300x200\)"):
        decode_input(buf.getvalue(), "jpg", LimitsConfig(max_pixels=50_000))


def test_bytes_that_are_neither_png_nor_jpeg_are_refused():
    with pytest.raises(InputError, match="not a PNG or JPEG"):
        decode_input(b"GIF89a" + b"\0" * 100, "png")


def test_a_truncated_png_is_an_input_error_not_a_limit():
    data = png(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    with pytest.raises(InputError) as info:
        decode_input(data[: len(data) // 2], "png")
    assert not isinstance(info.value, InputLimitError)


# -- .npy ---------------------------------------------------------------------------------


def test_a_tiny_npy_claiming_8_tb_is_refused_from_its_header():
    data = npy_header((1_000_000, 1_000_000))  # 8 TB of float64, in 128 bytes
    assert len(data) <= 192
    with pytest.raises(InputLimitError, match=r"limits\.max_array_elements"):
        decode_input(data, "npy")


def test_npy_bytes_limit_and_exact_length():
    arr = np.zeros((1000, 1000), dtype=np.float64)  # 1e6 elements, 8 MB
    limits = LimitsConfig(max_array_bytes=4_000_000)
    with pytest.raises(InputLimitError, match=r"limits\.max_array_bytes"):
        decode_input(npy_header(arr.shape), "npy", limits)
    short = npy_header((10, 10)) + b"\0" * 799
    with pytest.raises(InputError, match=r"announces 800 bytes of data .* holds 799"):
        decode_input(short, "npy")
    with pytest.raises(InputError, match="numeric array"):
        decode_input(npy(np.array([{"a": 1}], dtype=object)), "npy")
    with pytest.raises(InputError, match="no elements"):
        decode_input(npy(np.zeros((0, 5))), "npy")


def test_npy_roundtrip_keeps_values_and_order():
    arr = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    out = decode_input(npy(arr), "npy")
    np.testing.assert_array_equal(out, arr)
    out[0, 0] = 5  # writable, like np.load's


# -- files --------------------------------------------------------------------------------


def test_a_big_file_is_refused_before_it_is_read(tmp_path: Path):
    path = tmp_path / "huge.npy"
    with path.open("wb") as fh:  # sparse: 300 MB that take no disk
        fh.write(npy_header((300_000_000 // 8,)))
        fh.truncate(300_000_000)
    with pytest.raises(InputLimitError, match=r"300,000,000 bytes.*limits\.max_input_bytes"):
        load_input(path)
    with pytest.raises(InputLimitError, match=r"limits\.max_input_bytes"):
        decode_input(b"\0" * 101, "npy", LimitsConfig(max_input_bytes=100))


def test_links_and_fifos_are_refused_without_opening(tmp_path: Path):
    target = tmp_path / "real.npy"
    target.write_bytes(npy(np.ones((2, 2))))
    link = tmp_path / "link.npy"
    link.symlink_to(target)
    with pytest.raises(InputError, match="a symbolic link, not a regular file"):
        load_input(link, follow_symlinks=False)
    assert load_input(link).shape == (2, 2)  # a command-line argument may be a link
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for follow in (True, False):  # never blocks waiting for a writer
        with pytest.raises(InputError, match=r"named pipe \(fifo\)"):
            load_input(fifo, follow_symlinks=follow)


# -- the watched folder ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_links_fifos_and_directories_go_to_rejected_unopened(tmp_path: Path):
    inbox = tmp_path / "in"
    watcher = FolderWatcher(inbox)
    secret = tmp_path / "secret.npy"
    secret.write_bytes(b"top secret")
    (inbox / "shadow.npy").symlink_to(secret)
    os.mkfifo(inbox / "pipe.png")
    (inbox / "dir.png").mkdir()
    assert watcher.poll() == []
    rejected = inbox / "rejected"
    assert (rejected / "shadow.npy").is_symlink()  # the link itself, not a copy of the target
    assert secret.read_bytes() == b"top secret"
    assert "symbolic link" in (rejected / "shadow.npy.error.txt").read_text()
    assert "secret" not in (rejected / "shadow.npy.error.txt").read_text()
    assert "named pipe" in (rejected / "pipe.png.error.txt").read_text()
    assert "a directory" in (rejected / "dir.png.error.txt").read_text()
    assert watcher.rejected == 3
    assert sorted(p.name for p in inbox.iterdir()) == ["processed", "rejected"]


def test_an_oversized_file_is_refused_unread(tmp_path: Path):
    watcher = FolderWatcher(tmp_path, max_bytes=10)
    (tmp_path / "big.png").write_bytes(b"x" * 11)
    assert watcher.poll() == []
    note = (tmp_path / "rejected" / "big.png.error.txt").read_text()
    assert "limits.max_input_bytes" in note


def test_empty_files_wait_then_are_rejected(tmp_path: Path):
    clock = Clock()
    watcher = FolderWatcher(tmp_path, settle_s=1, incomplete_timeout_s=10, monotonic=clock)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert watcher.poll() == []
    clock.now += 9
    assert watcher.poll() == []
    assert empty.exists()
    clock.now += 1
    assert watcher.poll() == []
    assert (
        "empty file (0 bytes), unchanged for 10 s"
        in (tmp_path / "rejected" / "empty.png.error.txt").read_text()
    )


def test_an_empty_file_that_gets_content_is_taken(tmp_path: Path):
    clock = Clock()
    watcher = FolderWatcher(tmp_path, settle_s=1, incomplete_timeout_s=10, monotonic=clock)
    f = tmp_path / "late.png"
    f.write_bytes(b"")
    watcher.poll()
    clock.now += 9
    f.write_bytes(b"data")
    assert watcher.poll() == []
    clock.now += 1
    assert watcher.poll() == [f]


def test_a_failed_file_is_retried_after_it_changes_and_rejected_once_it_stops(tmp_path: Path):
    clock = Clock()
    watcher = FolderWatcher(tmp_path, settle_s=1, incomplete_timeout_s=10, monotonic=clock)
    f = tmp_path / "half.png"
    f.write_bytes(b"half")
    watcher.poll()
    clock.now += 1
    assert watcher.poll() == [f]
    watcher.retry(f, "half.png: cannot decode")
    clock.now += 5
    assert watcher.poll() == []  # not offered again while unchanged
    f.write_bytes(b"half and the rest")  # the writer resumed
    assert watcher.poll() == []  # changed: settles again
    clock.now += 1
    assert watcher.poll() == [f]  # then tried again
    watcher.retry(f, "half.png: cannot decode")
    clock.now += 10
    assert watcher.poll() == []
    note = (tmp_path / "rejected" / "half.png.error.txt").read_text()
    assert "cannot decode (unchanged for 10 s" in note


def test_a_renamed_file_is_taken_at_once(tmp_path: Path):
    watcher = FolderWatcher(tmp_path, settle_s=3600)
    tmp = tmp_path / ".scan.png.tmp"
    tmp.write_bytes(b"abc")
    st = tmp.stat()
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000))  # a later inode change
    tmp.rename(tmp_path / "scan.png")
    assert watcher.poll() == [tmp_path / "scan.png"]


def test_the_note_is_never_written_through_a_planted_link(tmp_path: Path):
    watcher = FolderWatcher(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "rejected" / "x.png.error.txt").symlink_to(victim)
    (tmp_path / "x.png").write_bytes(b"1")
    watcher.done(tmp_path / "x.png", error="bad")
    assert victim.read_text() == "keep"
    assert (tmp_path / "rejected" / "x.1.png.error.txt").read_text() == "bad\n"


# -- per-input containment ------------------------------------------------------------------


def _message(data: bytes, fmt: str = "png", name: str = "m") -> bytes:
    return encode(
        ImageMessage(name=name, format=fmt, data_b64=base64.b64encode(data).decode())  # type: ignore[arg-type]
    )


def test_any_exception_in_classifying_is_contained_to_the_input(tmp_path: Path):
    failures: list[BaseException] = []
    errors = iter([RuntimeError("gather index out of range"), MemoryError()])

    def predict(_array, *, source, meta=None):
        raise next(errors)

    watcher = FolderWatcher(tmp_path, settle_s=0)
    intake = Intake(LimitsConfig(), predict, failures.append, watcher)
    f = tmp_path / "a.png"
    f.write_bytes(png(np.zeros((4, 4), dtype=np.uint8)))
    assert intake.folder_file(f) is None
    assert "RuntimeError: gather index" in (tmp_path / "rejected" / "a.png.error.txt").read_text()
    assert intake.image_message(_message(png(np.zeros((4, 4), dtype=np.uint8)))) is None
    assert [type(e) for e in failures] == [RuntimeError, MemoryError]
    assert intake.rejected_total == 2


def test_image_messages_over_a_limit_are_counted_not_classified(tmp_path: Path):
    def predict(_array, *, source, meta=None):
        raise AssertionError("never classified")

    intake = Intake(LimitsConfig(max_image_message_bytes=5000), predict, print)
    assert intake.image_message(_message(bomb_png(20000, 20000))) is None
    assert intake.image_message(_message(npy_header((10**6, 10**6)), "npy")) is None
    assert intake.image_message(b"x" * 5001) is None
    assert intake.rejected == 3


def test_a_record_that_cannot_be_built_is_caught_per_input(tmp_path: Path):
    failures: list[BaseException] = []

    def predict(_array, *, source, meta=None):
        def build(seq: int) -> bytes:
            raise ValueError("score: NaN")

        return build

    intake = Intake(LimitsConfig(), predict, failures.append, FolderWatcher(tmp_path))
    f = tmp_path / "n.npy"
    f.write_bytes(npy(np.ones((4, 4))))
    assert intake.folder_file(f) is None
    assert (tmp_path / "rejected" / "n.npy").exists()
    assert len(failures) == 1
