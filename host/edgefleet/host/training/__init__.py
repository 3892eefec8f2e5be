"""Example architectures and their training: the seed's MNIST ConvNet and the GPR ConvNet.

TensorFlow is imported inside the functions that need it, never at import time.
"""

from __future__ import annotations

from edgefleet.host.training._example import MNIST_SPEC, run_mnist_example, train_mnist_convnet
from edgefleet.host.training._gpr import GprEvaluation, evaluate, gpr_spec, train_gpr_convnet
from edgefleet.host.training._models import build_gpr_convnet, build_seed_convnet, train
from edgefleet.host.training._radar import (
    RadarEvaluation,
    evaluate_radars,
    radar_spec,
    train_radar_convnet,
)

__all__ = [
    "MNIST_SPEC",
    "GprEvaluation",
    "RadarEvaluation",
    "build_gpr_convnet",
    "build_seed_convnet",
    "evaluate",
    "evaluate_radars",
    "gpr_spec",
    "radar_spec",
    "run_mnist_example",
    "train",
    "train_gpr_convnet",
    "train_mnist_convnet",
    "train_radar_convnet",
]
