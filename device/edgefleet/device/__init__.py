"""Device side of edgefleet: the field agent on LiteRT / tflite-runtime (never TensorFlow)."""

__version__ = "0.2.0"
