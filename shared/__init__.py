"""The edgefleet wire protocol shared by host and device: sans-IO, no MQTT, no TensorFlow."""
