"""The CLI end to end against real agents: push twice, roll back, rollout status, fleet status."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from fleet_helpers import AgentFleet, wait_online
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.fleet import close_fleet
from edgefleet.host.quantize import describe, embed_model_info
from support.agent import MNIST_LABELS, MNIST_PREPROCESS, Signer, shared_mnist_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def mnist_bundle_sha(bundle) -> str:
    return hashlib.sha256(bundle.path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory):
    return shared_mnist_model(tmp_path_factory)


def test_push_push_rollback_through_the_cli(broker, prefix, tmp_path, mnist_bundle):
    agents = AgentFleet(tmp_path / "agents", broker.url, prefix, Signer(tmp_path / "keys"))
    # a second, different build of the model: same weights, another embedded name
    second = tmp_path / "second.tflite"
    info = describe(
        mnist_bundle.data,
        name="mnist_second",
        mode="int8",
        labels=MNIST_LABELS,
        preprocess=MNIST_PREPROCESS,
    )
    second.write_bytes(embed_model_info(mnist_bundle.data, info))
    common = [
        "--broker",
        broker.url,
        "--prefix",
        prefix,
        "--state-dir",
        str(tmp_path / "state"),
        "--key",
        str(agents.key_file),
    ]
    runner = CliRunner()
    try:
        agents.start("cli-1", groups=["lab"])
        host = agents.host(tmp_path / "state")
        wait_online(host, ["cli-1"])
        close_fleet(host)

        first = runner.invoke(
            app, ["push", str(mnist_bundle.path), "--device", "cli-1", "--wait", "60", *common]
        )
        assert first.exit_code == 0, first.output + agents.logs()
        assert "1/1 active" in first.output
        again = runner.invoke(
            app, ["push", str(second), "--device", "cli-1", "--wait", "60", *common]
        )
        assert again.exit_code == 0, again.output + agents.logs()
        assert re.search(r"mnist_second v2 \(int8 [0-9a-f]{8}\): 1/1 active", again.output)

        back = runner.invoke(app, ["rollback", "--device", "cli-1", "--wait", "60", *common])
        assert back.exit_code == 0, back.output + agents.logs()
        # the old model, a higher version, and which build it is
        tiny = f"int8 {mnist_bundle_sha(mnist_bundle)[:8]}"
        assert f"rolling back to mnist_tiny {tiny}, first pushed as v1 (" in back.output
        assert f"mnist_tiny v3 ({tiny}): 1/1 active" in back.output

        status = runner.invoke(app, ["rollout", "status", "--device", "cli-1", *common[:6]])
        assert f"device:cli-1: mnist_tiny v3 ({tiny}) rollback at " in status.output, status.output
        assert status.output.splitlines()[0].endswith(", 1/1 active")
        table = runner.invoke(app, ["fleet", "status", "--json", *common[:6]])
        [row] = json.loads(table.output)
        assert (row["device_id"], row["online"], row["version"]) == ("cli-1", True, 3)
        assert row["model"] == "mnist_tiny"
    finally:
        agents.stop_all()


def test_an_unreachable_broker_fails_the_cli_with_a_clear_message(tmp_path, mnist_bundle):
    result = CliRunner().invoke(
        app, ["fleet", "status", "--broker", "mqtt://127.0.0.1:1", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "cannot reach broker at mqtt://127.0.0.1:1" in result.output
