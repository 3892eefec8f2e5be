"""`edgefleet dashboard`: the web dashboard, and its operator accounts (`--add-user`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.host.cli._options import Broker, FleetDir, KeyFile, Prefix, StateDir, fail
from edgefleet.shared.errors import EdgefleetError


def dashboard(  # noqa: PLR0917 - a typer command: its parameters are the CLI options
    fleet: FleetDir = None,
    listen: Annotated[
        str,
        typer.Option(
            help="HOST:PORT to serve on. Loopback: read-only without login. Any other "
            "address needs TLS (--tls or --tls-cert/--tls-key) and an operator account."
        ),
    ] = "127.0.0.1:8080",
    ingest: Annotated[
        bool,
        typer.Option(
            "--ingest",
            help="Also store and ack predictions (as `edgefleet predictions listen` does); "
            "leave it off when a listener runs already.",
        ),
    ] = False,
    metrics: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Also serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9100: the fleet "
            "figures, and with --ingest the ingest counters, as `predictions listen --metrics`. "
            "No login there: keep it on loopback or a private network.",
        ),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            envvar="EDGEFLEET_DB",
            help="Prediction store (default STATE_DIR/predictions.sqlite).",
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="Serve HTTPS with a certificate from the fleet CA (needs --fleet)."
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(help="HTTPS certificate (PEM) of your own.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    add_user: Annotated[
        str | None,
        typer.Option(
            "--add-user",
            metavar="NAME",
            help="Add (or reset) an operator account: asks for the password, then exits.",
        ),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="With --add-user: read the password from stdin."),
    ] = False,
    broker: Broker = None,
    prefix: Prefix = None,
    state_dir: StateDir = None,
    key: KeyFile = None,
) -> None:
    """Serve the web dashboard: fleet, devices, rollouts and live predictions."""
    from edgefleet.host.dashboard import (
        Settings,
        Tls,
        Users,
        fleet_ca_certificate,
        serve,
        users_path,
    )
    from edgefleet.shared.listen import split_listen

    try:
        if add_user is not None:
            path = users_path(fleet, state_dir)
            if password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = typer.prompt(
                    f"password for {add_user}", hide_input=True, confirmation_prompt=True
                )
            Users(path).add(add_user, password)
            typer.echo(f"operator {add_user} saved in {path} (mode 0600)")
            return
        chosen: Tls | None = None
        if tls_cert is not None or tls_key is not None:
            if tls_cert is None or tls_key is None:
                raise fail("give both --tls-cert FILE and --tls-key FILE")
            chosen = Tls(cert=tls_cert, key=tls_key)
        elif tls:
            if fleet is None:
                raise fail("--tls issues the certificate from the fleet CA: pass --fleet DIR")
            chosen = fleet_ca_certificate(fleet, split_listen(listen)[0])
        settings = Settings(
            fleet_dir=fleet,
            broker=broker,
            prefix=prefix,
            state_dir=state_dir,
            db=db,
            ingest=ingest,
            key_file=key,
        )
        serve(
            settings,
            listen=listen,
            tls=chosen,
            metrics=metrics,
            say=lambda line: typer.echo(line, err=True),
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    except EdgefleetError as exc:
        raise fail(exc) from exc
    except KeyboardInterrupt:
        return
