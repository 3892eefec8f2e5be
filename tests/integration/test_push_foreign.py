"""Issue #18 point 11: `edgefleet push` of a .tflite made by another tool, to a real agent."""

from __future__ import annotations

import numpy as np
import pytest
from fleet_helpers import AgentFleet, wait_online
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.fleet import close_fleet
from support.agent import Signer

pytestmark = pytest.mark.integration


def _exported_elsewhere() -> bytes:
    """A full-int8 classifier as any TensorFlow user would export it: no edgefleet metadata."""
    import keras  # noqa: PLC0415 - TensorFlow loads only for this test
    import tensorflow as tf  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1), batch_size=1),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.random((1, 12, 12, 1), dtype=np.float32)] for _ in range(16)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def test_a_foreign_tflite_is_described_signed_and_activated(broker, prefix, tmp_path):
    model = tmp_path / "exported.tflite"
    original = _exported_elsewhere()
    model.write_bytes(original)
    labels = tmp_path / "labels.txt"
    labels.write_text("cable\npipe\nvoid\n")
    agents = AgentFleet(tmp_path / "agents", broker.url, prefix, Signer(tmp_path / "keys"))
    common = ["--broker", broker.url, "--prefix", prefix, "--state-dir", str(tmp_path / "state")]
    common += ["--key", str(agents.key_file)]
    runner = CliRunner()
    refused = runner.invoke(app, ["push", str(model), "--device", "ext-1", *common])
    assert refused.exit_code != 0
    assert "has no edgefleet metadata" in refused.output
    assert "--labels FILE --input-scale S --input-zero-point Z" in refused.output
    try:
        agents.start("ext-1")
        host = agents.host(tmp_path / "state")
        wait_online(host, ["ext-1"])
        close_fleet(host)
        foreign = ["--labels", str(labels), "--input-scale", "0.00392157"]
        foreign += ["--input-zero-point", "0"]
        pushed = runner.invoke(
            app, ["push", str(model), "--device", "ext-1", "--wait", "60", *foreign, *common]
        )
        assert pushed.exit_code == 0, pushed.output + agents.logs()
        assert "1/1 active" in pushed.output
        assert "exported" in pushed.output
    finally:
        agents.stop_all()
    assert model.read_bytes() == original  # the described copy was a temporary one
