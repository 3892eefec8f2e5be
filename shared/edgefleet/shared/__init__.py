"""The edgefleet wire protocol shared by host and device: sans-IO, no MQTT, no TensorFlow."""

__version__ = "0.2.0"
