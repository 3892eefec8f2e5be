import json
from pathlib import Path

from typer.testing import CliRunner

from edgefleet.device.cli import app

runner = CliRunner()


def test_run_with_an_invalid_config_exits_1_naming_the_setting(tmp_path: Path):
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "d"\nstate_dir = "s"\n[mqtt]\nkeepalive = 5\n')
    result = runner.invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert "mqtt.keepalive: unknown setting" in result.output


def test_status_of_a_fresh_device(tmp_path: Path):
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "pi-9"\nstate_dir = "state"\n')
    result = runner.invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["device_id"] == "pi-9"
    assert status["active"] is None
    assert (status["outbox_depth"], status["antirollback_version"]) == (0, 0)


def test_predict_with_a_missing_model_is_a_clear_error(tmp_path: Path):
    result = runner.invoke(app, ["predict", "--model", str(tmp_path / "m.tflite"), "x.png"])
    assert result.exit_code == 1
    assert "cannot read model" in result.output
