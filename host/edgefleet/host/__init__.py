"""Host side of edgefleet: quantize, sign, publish, provision, watch the fleet (uses TensorFlow)."""

__version__ = "0.2.0"
