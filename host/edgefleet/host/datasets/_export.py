"""Export a bundled data set as ``DIR/<label>/<index>.png`` for other tools."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from edgefleet.host.datasets._resolve import load_raw
from edgefleet.host.errors import DatasetError

if TYPE_CHECKING:
    from pathlib import Path


def export_pngs(name: str, *, split: str, out_dir: Path) -> int:
    """Write each image of ``name``'s ``split`` as 8-bit PNG; returns the count.

    Float images (e.g. GPR B-scans) are scaled to 0-255 by their own min and max.

    Raises:
        DatasetError: unknown data set or split.
    """
    if split not in {"train", "eval"}:
        raise DatasetError(f"unknown split {split!r}; use train or eval")
    raw, ds = load_raw(name, split)  # type: ignore[arg-type]
    labels = ds.labels or tuple(str(i) for i in range(int(ds.y.max()) + 1))
    for label in labels:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
    for index, (image, y) in enumerate(zip(raw, ds.y, strict=True)):
        path = out_dir / labels[int(y)] / f"{index}.png"
        tmp = path.with_suffix(".tmp")
        Image.fromarray(_to_uint8(np.asarray(image))).save(tmp, format="PNG")
        tmp.replace(path)
    return len(ds.y)


def _to_uint8(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if image.dtype == np.uint8:
        return image
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) * 255 if high > low else np.zeros_like(image)
    return np.asarray(np.round(scaled), dtype=np.uint8)
