"""The `edgefleet-agent` command that runs on a field device (never imports TensorFlow).

``edgefleet-agent run --config PATH`` (how a service starts the agent) goes straight to the
agent without loading the CLI framework: Typer and Click cost the long-running process
resident memory and start-up time for nothing. Every other command line goes through the
Typer app in ``edgefleet.device._cli_app``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_RUN_FLAGS = ("--config", "-c")


def _run(argv: list[str]) -> int | None:
    """Run the agent for ``run --config PATH`` / ``run -c PATH``; None for anything else."""
    if len(argv) != 3 or argv[0] != "run" or argv[1] not in _RUN_FLAGS:  # noqa: PLR2004
        return None
    from edgefleet.device.errors import DeviceError
    from edgefleet.device.tools import run_agent

    try:
        return run_agent(Path(argv[2]))
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)  # as the Typer command reports it
        return 1


def main() -> None:
    """Console-script entry point."""
    code = _run(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    from edgefleet.device._cli_app import app

    app()


def __getattr__(name: str) -> Any:  # noqa: ANN401 - the Typer app, loaded on demand
    if name == "app":
        from edgefleet.device._cli_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
