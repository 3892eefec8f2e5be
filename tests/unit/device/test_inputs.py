"""The device reads inputs from files and from bytes (PNG, JPEG, .npy) into arrays."""

import io

import numpy as np
import pytest
from PIL import Image

from edgefleet.device.inputs import INPUT_SUFFIXES, decode_input, load_input
from edgefleet.shared.errors import InputError


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_png_roundtrip_is_exact(tmp_path):
    digit = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28).astype(np.uint8)
    path = tmp_path / "d.png"
    path.write_bytes(_png(digit))
    loaded = load_input(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, digit)
    np.testing.assert_array_equal(decode_input(path.read_bytes(), "png"), digit)


def test_npy_is_returned_as_stored(tmp_path):
    arr = np.linspace(-1, 1, 60, dtype=np.float64).reshape(6, 10)
    path = tmp_path / "a.npy"
    np.save(path, arr)
    np.testing.assert_array_equal(load_input(path), arr)


def test_a_16_bit_png_is_kept_whole():
    scan = np.array([[0, 1, 65535], [300, 40000, 7]], dtype=np.uint16)
    decoded = decode_input(_png(scan), ".PNG")
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, scan)


def test_alpha_and_palette_images_become_plain_rgb_or_gray():
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    assert decode_input(_png(rgba), "png").shape == (2, 3, 3)
    gray_alpha = Image.new("LA", (3, 2), (90, 255))
    buf = io.BytesIO()
    gray_alpha.save(buf, format="PNG")
    decoded = decode_input(buf.getvalue(), "png")
    assert decoded.shape == (2, 3)
    assert (decoded == 90).all()


@pytest.mark.parametrize(
    ("name", "data"),
    [("bad.png", b"not a png"), ("bad.npy", b"\x93NUMPY garbage"), ("x.gif", b"GIF89a")],
)
def test_unreadable_inputs_raise_input_error(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError, match=name):
        load_input(path)


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        load_input(tmp_path / "absent.png")


def test_an_unknown_format_is_refused():
    with pytest.raises(InputError, match="unsupported input format 'gif'"):
        decode_input(b"GIF89a", "gif")


def test_a_non_numeric_npy_is_refused():
    with pytest.raises(InputError, match="numeric array"):
        decode_input(_npy(np.array(["a", "b"])), "npy")


def test_the_suffixes_are_what_load_input_reads():
    assert {".png", ".jpg", ".jpeg", ".npy"} == INPUT_SUFFIXES
