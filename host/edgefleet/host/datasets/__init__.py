"""Data sets bundled with edgefleet (real MNIST digits, gprMax-simulated GPR B-scans) and user data.

``prepare`` turns a data-set argument (a bundled name, a class folder or an ``.npz``) into
model inputs; ``load_mnist`` and ``load_gpr`` read the bundled sets; ``export_pngs`` writes one
out as PNG files.
"""

from __future__ import annotations

from edgefleet.host.datasets._export import export_pngs
from edgefleet.host.datasets._folders import load_folder, load_npz
from edgefleet.host.datasets._gpr import CLASSES, load_gpr
from edgefleet.host.datasets._mnist import Dataset, load_mnist
from edgefleet.host.datasets._resolve import BUNDLED, Prepared, load_raw, prepare

__all__ = [
    "BUNDLED",
    "CLASSES",
    "Dataset",
    "Prepared",
    "export_pngs",
    "load_folder",
    "load_gpr",
    "load_mnist",
    "load_npz",
    "load_raw",
    "prepare",
]
