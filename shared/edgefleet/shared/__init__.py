"""What host and device must agree on, byte for byte: the wire protocol and the shared math.

Both the host (``edgefleet-host``) and the field agent (``edgefleet-device``) depend on this
distribution, and nothing here imports TensorFlow, MQTT or the other two packages. Most of
it is the sans-IO wire protocol: topic names (``topics``), messages (``messages``,
``wire``), signed manifests (``manifest``), model chunks (``chunks``), tensor specs
(``spec``) and the errors they raise (``errors``). Besides the protocol it holds code that
must compute the same result on both sides, so it exists once:

* ``preprocess``: the image -> tensor recipe; the host calibrates and evaluates a model
  with it, the device feeds the model with it, so an input quantizes the same on both.
  Reading files and decoding bytes is not here but in ``edgefleet.device.inputs``.
* ``gpr``: GPR B-scan conditioning (time zero, background removal, gain) and the PNG
  companding; ``preprocess`` runs it first for GPR models, on the host's training and
  calibration data as on the device's scans, and the host renders scans as PNGs with it.
* ``tflite_model``: a dependency-free ``.tflite`` flatbuffer reader; the host embeds
  ``ModelInfo`` in a model and the device, which has no TensorFlow, reads it back.
* ``atomic``: the crash-safe file write (temp file, fsync, rename) used where a reader must
  see the old file or the new one, never half; one implementation instead of one per side.
* ``broker_url``: the ``mqtt(s)://HOST[:PORT]`` value type that the host's fleet config and
  connection, the agent's config and the demo all parse broker URLs with.
"""

__version__ = "0.2.0"
