"""Errors raised by the host side.

Tree::

    EdgefleetError                 (edgefleet.shared.errors)
    └── HostError                  anything the host side reports to a user
        ├── DatasetError           a data set is missing, corrupt, empty or mismatched
        ├── ModelLoadError         a path is missing or is not a loadable Keras model
        ├── QuantizationError      the TFLite converter failed or left float ops in an int8 model
        ├── EdgeTPUError           edgetpu_compiler missing, failed or mapped nothing
        ├── ProvisionError         fleet directory, keys, certificates
        └── FleetError             broker unreachable, rollout failed
"""

from __future__ import annotations

from edgefleet.shared.errors import EdgefleetError


class HostError(EdgefleetError):
    """Root of every error the host side raises on purpose."""


class DatasetError(HostError):
    """A data set is missing, corrupt, empty or does not match the model."""


class ModelLoadError(HostError):
    """A model path is missing or does not hold a model Keras can load."""


class QuantizationError(HostError):
    """The TFLite converter failed, or full-int8 conversion left float ops behind."""


class EdgeTPUError(HostError):
    """The Edge TPU compiler is missing, failed, or mapped no operation to the TPU."""


class ProvisionError(HostError):
    """A fleet directory, key or certificate operation failed."""


class FleetError(HostError):
    """The broker cannot be reached or a rollout did not complete."""
