"""Device side of edgefleet: the field agent on LiteRT / tflite-runtime (never TensorFlow)."""
