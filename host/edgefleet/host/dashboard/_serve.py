"""Serving the dashboard: the listen-address policy, TLS from the fleet CA, uvicorn.

On a loopback address anyone on this machine may read without logging in. Any other address
must have TLS and at least one operator account, and then every page needs a login; without
them :func:`check_listen` refuses with what to do. ``--tls`` has the fleet CA issue the
dashboard's certificate (``FLEET_DIR/dashboard/tls.crt``, key 0600, reused while it lasts);
``--tls-cert``/``--tls-key`` use certificates of your own.

``--metrics HOST:PORT`` serves Prometheus metrics on an address of their own, with the code
and metric names of ``predictions listen --metrics`` (``fleet._metrics``): the fleet figures
always, the ingest counters and store histograms when the dashboard ingests (``--ingest``).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography import x509

from edgefleet.host.dashboard._app import Dashboard, Policy
from edgefleet.host.dashboard._auth import USERS_FILE, Users
from edgefleet.host.dashboard._live import LiveFleet, Settings
from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    PredictionStore,
    SqliteStore,
)
from edgefleet.host.fleet._metrics import IngestMetrics, ingest_metrics
from edgefleet.host.fleetdir import load_fleet_config
from edgefleet.host.provision._pki import (
    cert_pem,
    issue_certificate,
    key_pem,
    load_ca,
    load_certificate,
    new_tls_key,
)
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.listen import is_loopback, split_listen

log = logging.getLogger(__name__)

CERT_DAYS = 397  # what browsers accept for a server certificate
RENEW_DAYS = 30


@dataclass(frozen=True)
class Tls:
    """Certificate and key files for HTTPS."""

    cert: Path
    key: Path


def users_path(fleet_dir: Path | None, state_dir: Path | None) -> Path:
    """Where the accounts are: the fleet directory, else the host state directory."""
    return (fleet_dir or Settings(state_dir=state_dir).state) / USERS_FILE


def check_listen(listen: str, *, tls: Tls | None, users: Users) -> tuple[str, int, Policy]:
    """Host, port and policy for ``listen``.

    Raises:
        FleetError: Not HOST:PORT, or a non-loopback address without TLS or accounts.
    """
    try:
        host, port = split_listen(listen)
    except ValueError as exc:
        raise FleetError(str(exc)) from exc
    loopback = is_loopback(host)
    if not loopback and tls is None:
        raise FleetError(
            f"refusing to serve the dashboard on {listen}: it is not a loopback address, and "
            "beyond this machine the dashboard needs TLS. Add --tls (the fleet CA issues a "
            "certificate) or --tls-cert FILE --tls-key FILE, or listen on 127.0.0.1"
        )
    if not loopback and not users:
        raise FleetError(
            f"refusing to serve the dashboard on {listen}: beyond this machine every page "
            "needs a login, and there is no operator account yet; add one with "
            "`edgefleet dashboard --add-user NAME`"
        )
    return host, port, Policy(login_to_view=not loopback, tls=tls is not None)


def fleet_ca_certificate(fleet_dir: Path, host: str) -> Tls:
    """The dashboard's server certificate from the fleet CA (issued now if missing or due).

    Raises:
        FleetError: No fleet directory or its CA cannot be loaded.
        ProvisionError: The CA files are not a usable CA.
    """
    config = load_fleet_config(fleet_dir)
    out = fleet_dir / "dashboard"
    tls = Tls(cert=out / "tls.crt", key=out / "tls.key")
    names = sorted({host, "localhost", "127.0.0.1", socket.gethostname()} - {"0.0.0.0", "::"})  # noqa: S104 - names, not binds
    if tls.cert.is_file() and tls.key.is_file():
        cert = load_certificate(tls.cert)
        left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
        if left > dt.timedelta(days=RENEW_DAYS) and _covers(cert, names):
            return tls
    ca = load_ca(
        cert_path=config.resolve(config.ca_file), key_path=config.resolve(config.ca_key_file)
    )
    key = new_tls_key()
    cert = issue_certificate(
        ca,
        common_name="edgefleet-dashboard",
        public_key=key.public_key(),
        server=True,
        sans=names,
        days=CERT_DAYS,
    )
    write_atomic(tls.key, key_pem(key), mode=0o600)
    write_atomic(tls.cert, cert_pem(cert))
    return tls


def _covers(cert: object, names: list[str]) -> bool:
    assert isinstance(cert, x509.Certificate)  # noqa: S101
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    have |= set(san.get_values_for_type(x509.DNSName))
    return set(names) <= have


def _open_metrics(
    settings: Settings, stop: threading.Event
) -> tuple[IngestMetrics, PredictionStore | None]:
    """The dashboard's metrics, and the prediction store it ingests into (``--ingest``)."""
    store = SqliteStore(settings.db_path) if settings.ingest else None
    metrics = ingest_metrics(
        store,
        stop=stop,
        broker=settings.broker,
        fleet_dir=settings.fleet_dir,
        prefix=settings.prefix,
        state_dir=settings.state_dir,
    )
    return metrics, store


def serve(
    settings: Settings,
    *,
    listen: str,
    tls: Tls | None = None,
    metrics: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Run the dashboard until Ctrl-C / SIGTERM.

    ``metrics`` (``HOST:PORT``, used as given) also serves Prometheus metrics there, as
    ``predictions listen --metrics`` does.

    Raises:
        FleetError: Refused listen address, metrics address in use, broker or store
            trouble at start.
    """
    users = Users(users_path(settings.fleet_dir, settings.state_dir))
    host, port, policy = check_listen(listen, tls=tls, users=users)
    stop = threading.Event()
    measured: IngestMetrics | None = None
    store: PredictionStore | None = None
    if metrics is not None:
        measured, store = _open_metrics(settings, stop)
    live = LiveFleet(
        settings,
        render=lambda _name, _ctx: "",
        stop=stop,
        ingest_store=measured.store if measured is not None else None,
    )
    dashboard = Dashboard(live, users, policy)
    live.render = dashboard.render
    try:
        if measured is not None and metrics is not None:
            url = measured.serve(metrics, live.ingest_stats if settings.ingest else None)
            say(f"dashboard: Prometheus metrics on {url}")
        live.start()
    except BaseException:
        _close(live, dashboard, measured, store)
        raise
    try:
        config = uvicorn.Config(
            dashboard.app,
            host=host,
            port=port,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        scheme = "https" if tls else "http"
        shown = f"[{host}]" if ":" in host else host
        mode = "login required" if policy.login_to_view else "read-only without login"
        say(f"dashboard: {scheme}://{shown}:{port}/ ({mode}; Ctrl-C to stop)")
        if not users:
            say("dashboard: no operator account yet: `edgefleet dashboard --add-user NAME`")
        server.run()
        if not server.started:
            raise FleetError(f"the dashboard could not listen on {listen} (address in use?)")
    finally:
        _close(live, dashboard, measured, store)


def _close(
    live: LiveFleet,
    dashboard: Dashboard,
    metrics: IngestMetrics | None,
    store: PredictionStore | None,
) -> None:
    live.close()  # sets ``stop``: the ingestor and the metrics' fleet watcher end
    if metrics is not None:
        metrics.close()
    if store is not None:
        store.close()
    dashboard.audit.close()


def serve_demo(
    workdir: Path, broker: str, *, listen: str, say: Callable[[str], None] = print
) -> None:
    """Serve the dashboard on the fleet ``edgefleet demo`` made in ``workdir``, until Ctrl-C.

    The demo's host state (push registry, prediction store) is ``workdir/host-state``; the
    dashboard ingests predictions itself, so scans dropped into an agent's inbox show up live.

    Raises:
        KeyboardInterrupt: When the dashboard stops (Ctrl-C), so the demo cleans up.
        FleetError: The address is refused or in use.
    """
    own_tls = broker.startswith("mqtts://")
    settings = Settings(
        fleet_dir=workdir / "fleet",
        broker=None if own_tls else broker,
        state_dir=workdir / "host-state",
        ingest=True,
    )
    say(
        f"dashboard: the demo fleet; for more predictions copy scans into {workdir}/devices/*/inbox"
    )
    serve(settings, listen=listen, say=say)
    raise KeyboardInterrupt
