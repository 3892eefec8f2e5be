"""Errors raised by the host side.

Tree::

    EdgefleetError                 (edgefleet.shared.errors)
    ├── HostError                  anything the host side reports to a user
    │   ├── DatasetError           a data set is missing, corrupt, empty or mismatched
    │   ├── QuantizationError      the TFLite converter failed or left float ops in an int8 model
    │   ├── EdgeTPUError           edgetpu_compiler missing, failed or mapped nothing
    │   ├── ProvisionError         fleet directory, keys, certificates
    │   ├── FleetError             broker unreachable, rollout failed
    │   │   └── UnsupportedProtocolError  the broker refused MQTT 5 (the connection retries 3.1.1)
    │   └── DemoError              ``edgefleet demo`` could not run or did not complete
    │       └── BrokerError        the demo's local broker (mosquitto, amqtt) did not start
    └── DeviceError                (edgefleet.device.errors)
        └── ModelLoadError         a model file cannot be loaded: a Keras model here

There is one ``ModelLoadError``, the device's (the device must not import the host, the host
may import the device); it is re-exported here. It is not a ``HostError``, so the commands
that load a Keras model (quantize, example, gpr evaluate, demo) catch it beside
``HostError``. ``BrokerUrlError`` (edgefleet.shared.errors) reaches a user as a
``ProvisionError``, ``FleetError`` or ``DemoError`` carrying its message.
"""

from __future__ import annotations

from edgefleet.device.errors import ModelLoadError
from edgefleet.shared.errors import EdgefleetError

__all__ = [
    "BrokerError",
    "DatasetError",
    "DemoError",
    "EdgeTPUError",
    "FleetError",
    "HostError",
    "ModelLoadError",
    "ProvisionError",
    "QuantizationError",
]


class HostError(EdgefleetError):
    """Root of every error the host side raises on purpose."""


class DatasetError(HostError):
    """A data set is missing, corrupt, empty or does not match the model."""


class QuantizationError(HostError):
    """The TFLite converter failed, or full-int8 conversion left float ops behind."""


class EdgeTPUError(HostError):
    """The Edge TPU compiler is missing, failed, or mapped no operation to the TPU."""


class ProvisionError(HostError):
    """A fleet directory, key or certificate operation failed."""


class FleetError(HostError):
    """The broker cannot be reached or a rollout did not complete."""


class UnsupportedProtocolError(FleetError):
    """The broker refused the MQTT protocol version asked for; the caller falls back to 3.1.1."""


class DemoError(HostError):
    """The demo could not run or did not complete (the message says which step)."""


class BrokerError(DemoError):
    """A local broker for the demo could not be started."""
