"""The bundled MNIST test set (10,000 real digits), split 8,000 train / 2,000 eval."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edgefleet.host.errors import DatasetError

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
TRAIN_SIZE = 8000
LABELS = tuple(str(d) for d in range(10))

Split = Literal["train", "eval", "all"]


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 ``(n, height, width)`` or float arrays, with integer labels."""

    x: npt.NDArray[np.generic]
    y: npt.NDArray[np.int64]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


def default_dir() -> Path:
    """Where the bundled MNIST files live inside the installed package."""
    return Path(str(resources.files("edgefleet.host.datasets") / "data" / "mnist"))


def _expected_sums(directory: Path) -> dict[str, str]:
    sums_path = directory / "SHA256SUMS"
    if not sums_path.is_file():
        raise DatasetError(
            f"MNIST checksum file {sums_path} is missing; reinstall edgefleet "
            "or copy SHA256SUMS back next to the MNIST files."
        )
    sums: dict[str, str] = {}
    for line in sums_path.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name] = digest
    return sums


def _read_verified(directory: Path, name: str, sums: dict[str, str]) -> bytes:
    path = directory / name
    if not path.is_file():
        raise DatasetError(f"MNIST file {path} is missing; reinstall edgefleet to restore it.")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sums.get(name):
        raise DatasetError(
            f"MNIST file {path} is corrupt (sha256 {digest[:12]}... does not match "
            "SHA256SUMS); reinstall edgefleet to restore it."
        )
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"MNIST file {path} is not valid gzip: {exc}") from exc


def _parse_idx(data: bytes, magic: int, name: str) -> npt.NDArray[np.uint8]:
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DatasetError(f"MNIST file {name} has magic {got}, expected {magic}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise DatasetError(f"MNIST file {name} is truncated: {len(data) - offset} of {count} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_mnist(split: Split = "all", directory: Path | None = None) -> Dataset:
    """Load the real MNIST test set and return one split of it.

    Args:
        split: ``"train"`` (first 8,000), ``"eval"`` (last 2,000) or ``"all"``.
        directory: where the IDX files and SHA256SUMS are; the bundled copy by default.

    Returns:
        uint8 images of shape ``(n, 28, 28)`` and their labels 0-9.

    Raises:
        DatasetError: a file is missing, corrupt or not in IDX format.
    """
    directory = directory or default_dir()
    sums = _expected_sums(directory)
    images = _parse_idx(_read_verified(directory, IMAGES_FILE, sums), IMAGES_MAGIC, IMAGES_FILE)
    labels = _parse_idx(_read_verified(directory, LABELS_FILE, sums), LABELS_MAGIC, LABELS_FILE)
    if len(images) != len(labels):
        raise DatasetError(f"MNIST has {len(images)} images but {len(labels)} labels")
    sl = {"train": slice(0, TRAIN_SIZE), "eval": slice(TRAIN_SIZE, None), "all": slice(None)}
    if split not in sl:
        raise DatasetError(f"unknown MNIST split {split!r}; use train, eval or all")
    part = sl[split]
    return Dataset(x=images[part], y=labels[part].astype(np.int64), labels=LABELS)
