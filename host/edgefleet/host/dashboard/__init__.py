"""The web dashboard (``edgefleet dashboard``): fleet, device, rollouts and predictions pages.

- ``_live``: ``LiveFleet``, one MQTT connection watching status and reported topics, polling
  the prediction store, publishing changes as server-sent events through a ``Hub``;
- ``_views``: the rows and rollout progress the pages show (pure functions of a Fleet);
- ``_queries``: read-only queries on the prediction store, and the audit log;
- ``_auth``: operator accounts (scrypt), sessions and CSRF tokens;
- ``_actions``: push, roll back and cancel from the browser;
- ``_app``: the Starlette application; ``templates/`` and ``static/`` ship with it;
- ``_serve``: the listen policy (loopback, or TLS + login), TLS from the fleet CA, uvicorn.
"""

from __future__ import annotations

from edgefleet.host.dashboard._app import Dashboard, Policy
from edgefleet.host.dashboard._auth import Users, hash_password
from edgefleet.host.dashboard._live import Hub, LiveFleet, Settings
from edgefleet.host.dashboard._render import make_templates
from edgefleet.host.dashboard._serve import (
    Tls,
    check_listen,
    fleet_ca_certificate,
    serve,
    serve_demo,
    users_path,
)

__all__ = [
    "Dashboard",
    "Hub",
    "LiveFleet",
    "Policy",
    "Settings",
    "Tls",
    "Users",
    "check_listen",
    "fleet_ca_certificate",
    "hash_password",
    "make_templates",
    "serve",
    "serve_demo",
    "users_path",
]
