"""Options shared by the fleet commands: push, rollback, rollout, fleet, predictions, send-image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.shared.errors import EdgefleetError

Broker = Annotated[
    str | None,
    typer.Option(
        "--broker",
        envvar="EDGEFLEET_BROKER",
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (overrides the fleet config).",
    ),
]
FleetDir = Annotated[
    Path | None,
    typer.Option(
        "--fleet",
        envvar="EDGEFLEET_FLEET",
        help="Fleet directory made by `edgefleet init` (broker, TLS, signing key).",
    ),
]
Prefix = Annotated[
    str | None, typer.Option("--prefix", help="Topic prefix (default: the fleet's, or edgefleet).")
]
StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="EDGEFLEET_STATE_DIR",
        help="Host registry of pushed models (default ~/.local/share/edgefleet).",
    ),
]
KeyFile = Annotated[
    Path | None, typer.Option("--key", help="Ed25519 signing key (PEM); default: the fleet's.")
]


def fail(exc: EdgefleetError | str) -> typer.Exit:
    """Print a clear error to stderr and return the Exit to raise."""
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)
