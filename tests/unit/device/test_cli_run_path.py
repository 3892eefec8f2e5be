"""`edgefleet-agent run --config PATH` starts the agent without loading Typer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgefleet.shared import __version__

PROBE = """
import sys
from edgefleet.device import cli
sys.argv = ["edgefleet-agent", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as exc:
    print("exit", exc.code, "typer" in sys.modules)
"""


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False
    )


def test_run_goes_to_the_agent_without_the_cli_framework(tmp_path: Path):
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "d"\nstate_dir = "s"\n[mqtt]\nkeepalive = 5\n')
    for flag in ("--config", "-c"):
        result = _probe("run", flag, str(config))
        assert result.stdout.split() == ["exit", "1", "False"], result.stderr
        assert "mqtt.keepalive: unknown setting" in result.stderr


def test_other_command_lines_still_go_through_typer():
    result = _probe("version")
    assert result.stdout.split()[-3:] == ["exit", "0", "True"], result.stderr
    assert result.stdout.split()[0] == __version__
