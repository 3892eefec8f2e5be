"""Issue 18, point 3 and 14 on the device: --state-dir / --watch-dir, --version, help examples,
and the broker outage said at the default log level at a bounded rate."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.device.cli import _run_options, app
from edgefleet.device.reachability import Reachability
from edgefleet.device.tools import agent_config
from edgefleet.shared import __version__

runner = CliRunner()
BUNDLE_TOML = """device_id = "pi-001"
groups = ["field"]
state_dir = "/var/lib/edgefleet"
[inference]
watch_dir = "/var/spool/edgefleet/inbox"
"""


@pytest.fixture
def bundle_config(tmp_path: Path) -> Path:
    path = tmp_path / "edgefleet-pi-001" / "agent.toml"
    path.parent.mkdir()
    path.write_text(BUNDLE_TOML)
    return path


def test_state_and_watch_dir_on_the_command_line_replace_the_configs(
    bundle_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    plain = agent_config(bundle_config)
    assert plain.state_dir == Path("/var/lib/edgefleet")
    config = agent_config(bundle_config, state_dir=Path("pi-001"), watch_dir=Path("in"))
    assert config.state_dir == tmp_path / "pi-001"  # relative to the working directory
    assert config.inference.watch_dir == tmp_path / "in"
    assert config.groups == ["field"]  # the rest is the file's
    assert agent_config(bundle_config, state_dir=Path("s")).inference.watch_dir == Path(
        "/var/spool/edgefleet/inbox"
    )


def test_status_reads_the_state_dir_given_on_the_command_line(
    bundle_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["status", "--config", str(bundle_config), "--state-dir", "pi-001"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["device_id"] == "pi-001"
    assert (tmp_path / "pi-001" / "models").is_dir()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--config", "a.toml"], {"config": "a.toml"}),
        (["run", "-c", "a.toml", "--state-dir", "s"], {"config": "a.toml", "state_dir": "s"}),
        (
            ["run", "--state-dir=s", "--watch-dir", "w", "--config=a.toml"],
            {"config": "a.toml", "state_dir": "s", "watch_dir": "w"},
        ),
        (["run", "--state-dir", "s"], None),  # no config: Typer says it is required
        (["run", "--config", "a", "--config", "b"], None),
        (["run", "--config", "a", "--help"], None),
        (["run", "--config", "--state-dir", "s"], None),
        (["status", "--config", "a"], None),
    ],
)
def test_the_fast_run_path_takes_only_plain_run_lines(argv, expected):
    got = _run_options(argv)
    assert (None if got is None else {k: str(v) for k, v in got.items()}) == expected


def test_version_flag_and_help_examples():
    result = runner.invoke(app, ["--version"])
    assert (result.exit_code, result.output.strip()) == (0, f"edgefleet-agent {__version__}")
    for command in ("run", "status", "predict", "version"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output, command
        assert f"edgefleet-agent {command}" in result.output, command
        assert "<bool>" not in result.output, command  # flags take no value
    assert "--state-dir" in runner.invoke(app, ["run", "--help"]).output


def test_version_flag_from_the_console_script():
    script = Path(sys.executable).with_name("edgefleet-agent")
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"edgefleet-agent {__version__}"


def test_an_unreachable_broker_is_a_warning_at_a_bounded_rate(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    reach = Reachability("mqtt://127.0.0.1:1", clock=lambda: now[0], warn_every_s=30)
    caplog.set_level(logging.INFO, logger="edgefleet")
    for _ in range(60):  # a failure a second for a minute
        reach.failed("[Errno 111] Connection refused", 1.0)
        now[0] += 1.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # at 0 s and 30 s; the other attempts are info
    assert "cannot reach the broker at mqtt://127.0.0.1:1" in warnings[0].getMessage()
    assert "Connection refused" in warnings[0].getMessage()
    assert "60 attempts" not in warnings[1].getMessage()
    assert "31 attempts, 30 s without a connection" in warnings[1].getMessage()
    caplog.clear()
    reach.connected()
    (back,) = caplog.records
    assert back.levelno == logging.WARNING
    assert "connected to the broker at mqtt://127.0.0.1:1 after 60 s" in back.getMessage()
    caplog.clear()
    reach.connected()  # an ordinary reconnect after no reported outage: quiet
    assert caplog.records == []
    reach.lost("Unspecified error")
    assert caplog.records[0].levelno == logging.WARNING
    assert "lost the connection" in caplog.records[0].getMessage()
