"""The bundled MNIST loader returns the real data, split 8,000 / 2,000, and refuses bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefleet.host.datasets._mnist import default_dir, load_mnist
from edgefleet.host.errors import DatasetError

KNOWN_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_split_sizes_and_known_label_counts():
    train, ev = load_mnist("train"), load_mnist("eval")
    assert train.x.shape == (8000, 28, 28)
    assert ev.x.shape == (2000, 28, 28)
    assert train.x.dtype == np.uint8
    counts = np.bincount(np.concatenate([train.y, ev.y]), minlength=10)
    assert counts.tolist() == KNOWN_COUNTS
    # The documented mean pixel value of the real test set.
    assert abs(float(np.concatenate([train.x, ev.x]).mean()) - 33.79) < 0.01


def test_eval_split_is_the_last_2000(tmp_path: Path):
    everything = load_mnist("all")
    assert np.array_equal(everything.x[8000:], load_mnist("eval").x)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    shutil.copytree(default_dir(), tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="missing"):
        load_mnist("eval", tmp_path / "m")


def test_corrupt_file_is_detected_by_checksum(tmp_path: Path):
    shutil.copytree(default_dir(), tmp_path / "m")
    f = tmp_path / "m" / "t10k-images-idx3-ubyte.gz"
    data = bytearray(f.read_bytes())
    data[1000] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="corrupt"):
        load_mnist("train", tmp_path / "m")
