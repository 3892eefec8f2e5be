"""Resolve a data-set argument (bundled name, class folder or ``.npz``) into model inputs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgefleet.host.datasets._folders import load_folder, load_npz
from edgefleet.host.datasets._mnist import Dataset, load_mnist
from edgefleet.host.datasets._range import check_pixel_range
from edgefleet.host.errors import DatasetError
from edgefleet.shared.errors import InputError
from edgefleet.shared.preprocess import preprocess

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from edgefleet.shared.spec import PreprocessSpec

BUNDLED = ("mnist", "gpr")
Split = Literal["train", "eval"]


@dataclass(frozen=True)
class Prepared:
    """Preprocessed inputs ``(n, H, W, C)`` float32, labels as indices into ``labels``."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    labels: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.y)


def load_raw(source: str, split: Split) -> tuple[Sequence[npt.NDArray[np.generic]], Dataset]:
    """Load a bundled set's split, a class folder or an ``.npz`` without preprocessing.

    Raises:
        DatasetError: unknown name, missing path, empty or unreadable data.
    """
    if source == "mnist":
        ds = load_mnist(split)
        return list(ds.x), ds
    if source == "gpr":
        ds = _load_gpr(split)
        return list(ds.x), ds
    path = Path(source)
    if path.is_dir():
        return load_folder(path)
    if path.is_file() and path.suffix == ".npz":
        ds = load_npz(path)
        return list(ds.x), ds
    raise DatasetError(
        f"data set {source!r} not found: give a bundled name ({', '.join(BUNDLED)}), "
        "a folder with one subfolder per class, or an .npz with x and y"
    )


def _load_gpr(split: Split) -> Dataset:
    try:
        module = importlib.import_module("edgefleet.host.datasets._gpr")
        loader = module.load_gpr
    except (ImportError, AttributeError) as exc:
        raise DatasetError(f"the bundled GPR data set is not available: {exc}") from exc
    dataset: Dataset = loader(split)
    return dataset


def prepare(
    source: str, *, split: Split, spec: PreprocessSpec, labels: Sequence[str] | None = None
) -> Prepared:
    """Load ``source`` and run every input through :func:`edgefleet.shared.preprocess`.

    Args:
        source: bundled name, class folder or ``.npz``.
        split: which split of a bundled set (folders and ``.npz`` are used whole).
        spec: the model's preprocessing recipe.
        labels: the model's class names; the data's labels are mapped onto them.

    Raises:
        DatasetError: empty data, pixel values that are not 0-255 intensities (for
            example already normalised to [0, 1]), inputs that do not fit the spec, or
            unknown labels.
    """
    raw, ds = load_raw(source, split)
    if len(ds.y) == 0:
        raise DatasetError(f"data set {source!r} ({split}) is empty")
    check_pixel_range(raw, source=source, spec=spec)
    try:
        x = np.stack([preprocess(item, spec) for item in raw]).astype(np.float32)
    except InputError as exc:
        raise DatasetError(f"data set {source!r}: {exc}") from exc
    names, y = _map_labels(ds, labels, source)
    return Prepared(x=x, y=y, labels=names, source=source)


def _map_labels(
    ds: Dataset, labels: Sequence[str] | None, source: str
) -> tuple[tuple[str, ...], npt.NDArray[np.int64]]:
    names = ds.labels or tuple(str(i) for i in range(int(ds.y.max()) + 1))
    if int(ds.y.max()) >= len(names):
        raise DatasetError(f"data set {source!r} has class index {ds.y.max()} >= {len(names)}")
    if labels is None:
        return names, ds.y
    unknown = sorted({names[i] for i in np.unique(ds.y)} - set(labels))
    if unknown:
        raise DatasetError(
            f"data set {source!r} has labels {unknown} that the model does not know "
            f"(model labels: {list(labels)})"
        )
    index = {name: i for i, name in enumerate(labels)}
    return tuple(labels), np.asarray([index[names[i]] for i in ds.y], dtype=np.int64)
