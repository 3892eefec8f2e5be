"""Options shared by the fleet commands: push, rollback, rollout, fleet, predictions, send-image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperOption

from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgefleet.host.fleet import Fleet

T = TypeVar("T")

# Exit codes shared by the fleet commands (docs/fleet.md, "Exit codes").
EXIT_FAILED = 1
EXIT_BROKER_LOST = 3


def _flag_type(self: TyperOption, ctx: object) -> str | None:
    """No ``<bool>`` after an on/off flag in --help: ``--json``, not ``--json <bool>``."""
    if self.is_flag:
        return None
    return _TYPE_OF(self, ctx)  # type: ignore[arg-type]


_TYPE_OF = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

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
# The names init/provision/revoke/keys used before 0.x: still accepted, no longer shown.
OldFleetDir = Annotated[
    Path | None,
    typer.Option("--dir", envvar="EDGEFLEET_FLEET_DIR", hidden=True, help="Old name of --fleet."),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Publish even to a group or device this fleet does not know (a typo is refused).",
    ),
]


def example(*lines: str) -> str:
    """An ``epilog`` for --help: the example command lines, one per line."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def fleet_dir_of(fleet: Path | None, old: Path | None, default: Path | None = None) -> Path | None:
    """``--fleet`` (or ``EDGEFLEET_FLEET``), else the old ``--dir``/``EDGEFLEET_FLEET_DIR``."""
    return fleet or old or default


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


def open_or_fail(
    *,
    broker: str | None,
    fleet: Path | None,
    prefix: str | None,
    state_dir: Path | None,
    **options: Any,  # noqa: ANN401 - open_fleet's other keywords (key_file, read_only, ...)
) -> Fleet:
    """``open_fleet`` from the CLI options; its error printed as :func:`fail` does."""
    from edgefleet.host.fleet import open_fleet

    try:
        return open_fleet(
            broker=broker, fleet_dir=fleet, prefix=prefix, state_dir=state_dir, **options
        )
    except EdgefleetError as exc:
        raise fail(exc) from exc


def on_fleet(fl: Fleet, job: Callable[[Fleet], T]) -> T:
    """Run ``job`` on an open fleet, close it, and print an error as :func:`fail` does."""
    from edgefleet.host.fleet import close_fleet

    try:
        try:
            return job(fl)
        finally:
            close_fleet(fl)
    except EdgefleetError as exc:
        raise fail(exc) from exc
