"""Host side of edgefleet: quantize, sign, publish, provision, watch the fleet (uses TensorFlow)."""
