"""User data: a folder with one subfolder per class (the Keras convention), or an ``.npz``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgefleet.device.inputs import INPUT_SUFFIXES, load_input
from edgefleet.host.datasets._mnist import Dataset
from edgefleet.host.errors import DatasetError
from edgefleet.shared.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt


def load_folder(directory: Path) -> tuple[list[npt.NDArray[np.generic]], Dataset]:
    """Read ``DIR/<label>/*.png|jpg|npy``; labels are the sorted subfolder names.

    Returns:
        The decoded inputs (sizes may differ, so a list) and a Dataset whose ``x`` is empty
        until :mod:`registry` preprocesses the list.

    Raises:
        DatasetError: no class subfolders, an empty class, or an unreadable file.
    """
    classes = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(
            f"{directory} has no class subfolders; lay images out as {directory}/<label>/*.png"
        )
    inputs: list[npt.NDArray[np.generic]] = []
    ys: list[int] = []
    for index, folder in enumerate(classes):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_SUFFIXES)
        if not files:
            raise DatasetError(f"class folder {folder} holds no .png, .jpg or .npy files")
        for path in files:
            try:
                inputs.append(load_input(path))
            except InputError as exc:
                raise DatasetError(f"cannot use {path}: {exc}") from exc
            ys.append(index)
    labels = tuple(p.name for p in classes)
    empty = np.zeros((0,), dtype=np.uint8)
    return inputs, Dataset(x=empty, y=np.asarray(ys, dtype=np.int64), labels=labels)


def load_npz(path: Path) -> Dataset:
    """Read an ``.npz`` with ``x`` (n, H, W[, C]) and integer ``y``; optional ``labels``.

    Raises:
        DatasetError: missing arrays, mismatched lengths, non-integer or negative labels.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable .npz file: {exc}") from exc
    missing = {"x", "y"} - arrays.keys()
    if missing:
        raise DatasetError(f"{path} lacks array(s) {sorted(missing)}; it needs 'x' and 'y'")
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y) or len(x) == 0:
        raise DatasetError(f"{path}: x has {len(x)} items and y {len(y)}; need equal, non-zero")
    if y.dtype.kind not in "iu" or (y < 0).any():
        raise DatasetError(f"{path}: y must hold non-negative integer class indices")
    labels = arrays.get("labels")
    names = tuple(str(s) for s in labels) if labels is not None else ()
    return Dataset(x=x, y=y.astype(np.int64), labels=names)
