"""The `edgefleet-agent` command that runs on a field device (never imports TensorFlow).

``edgefleet-agent run --config PATH [--state-dir DIR] [--watch-dir DIR]`` (how a service
starts the agent) goes straight to the agent without loading the CLI framework: Typer and
Click cost the long-running process resident memory and start-up time for nothing. Every
other command line goes through the Typer app in ``edgefleet.device._cli_app``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_RUN_FLAGS = {
    "--config": "config",
    "-c": "config",
    "--state-dir": "state_dir",
    "--watch-dir": "watch_dir",
}


def _run_options(argv: list[str]) -> dict[str, Path] | None:
    """The options of ``run FLAG VALUE ...`` (also ``--flag=VALUE``); None for anything else."""
    if not argv or argv[0] != "run":
        return None
    words: list[str] = []
    for word in argv[1:]:
        flag, eq, value = word.partition("=")
        words += [flag, value] if eq and flag.startswith("--") else [word]
    if len(words) % 2:
        return None
    options: dict[str, Path] = {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        name = _RUN_FLAGS.get(flag)
        if name is None or name in options or not value or value.startswith("-"):
            return None  # Typer explains what is wrong (or prints --help)
        options[name] = Path(value)
    return options if "config" in options else None


def _run(argv: list[str]) -> int | None:
    """Run the agent for a plain ``run --config PATH ...`` line; None for anything else."""
    options = _run_options(argv)
    if options is None:
        return None
    from edgefleet.device.errors import DeviceError
    from edgefleet.device.tools import run_agent

    try:
        return run_agent(
            options["config"],
            state_dir=options.get("state_dir"),
            watch_dir=options.get("watch_dir"),
        )
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
