"""Example architectures and their training: the seed's MNIST ConvNet and the GPR ConvNet.

TensorFlow is imported inside the functions that need it, never at import time.
"""

from __future__ import annotations

from edgefleet.host.training._example import MNIST_SPEC, run_mnist_example, train_mnist_convnet
from edgefleet.host.training._gpr import GprEvaluation, evaluate, gpr_spec, train_gpr_convnet
from edgefleet.host.training._models import build_gpr_convnet, build_seed_convnet, train

__all__ = [
    "MNIST_SPEC",
    "GprEvaluation",
    "build_gpr_convnet",
    "build_seed_convnet",
    "evaluate",
    "gpr_spec",
    "run_mnist_example",
    "train",
    "train_gpr_convnet",
    "train_mnist_convnet",
]
