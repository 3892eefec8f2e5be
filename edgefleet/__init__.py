"""edgefleet: quantized ConvNets on field devices, pushed and kept there over MQTT."""

__version__ = "0.1.0"
