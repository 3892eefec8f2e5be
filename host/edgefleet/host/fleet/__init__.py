"""The fleet: connect, push and roll out signed models, watch status, ingest predictions.

The data flow through this package, in the order a model travels:

- ``_connection``: ``PahoConnection``, the real MQTT connection (TLS from the fleet config,
  connect deadline); push, status and ingest take the ``Connection`` protocol
  (``edgefleet.shared.connection``), so unit tests run them on an in-memory broker;
- ``_fleet``: ``Fleet`` (connection + topics + push registry + what devices retain), ``open_fleet``;
- ``_push``: sign a manifest, publish chunks once, roll out in waves or as a canary, roll back;
- ``_history``: rollback and rollout status, from the push registry;
- ``_checks``: refuse unknown targets (typos), notice a lost broker during a wait;
- ``_rollout``: the rollout decisions as pure functions (phases, waves, abort rules);
- ``_pushes``: the push registry (what was pushed where, for rollback and versions);
- ``_status``: the ``fleet status`` table (groups and revocation from provisioning);
- ``_cancel``: cancel a rollout (retract its retained desired manifests);
- ``_reassert``: put back retained desired state and chunks a broker crash lost;
- ``_clientid``: host client ids a device cannot predict (random, or stable via an HMAC);
- ``_ratelimit``: limits on what devices can make the host do (chunk re-requests, status);
- ``_ingest`` and ``_store``: prediction ingestion with acks into the prediction store;
- ``_pgstore``, ``_pgregistry``: the prediction store and push registry in PostgreSQL;
- ``_migrations``: schema versions of both stores, applied on open;
- ``_export``: reading it out (CSV, JSON lines, ``tail`` lines; ISO 8601 UTC times);
- ``_images``: remote input to a device's image topic.
"""

from __future__ import annotations

from edgefleet.host.fleet._cancel import CancelResult, cancel_rollout
from edgefleet.host.fleet._clientid import random_client_id, stable_client_id
from edgefleet.host.fleet._connection import (
    BrokerSettings,
    PahoConnection,
    connect,
    settings_from,
)
from edgefleet.host.fleet._export import Selection, export, iso, parse_time
from edgefleet.host.fleet._fleet import Fleet, FleetView, OnProgress, close_fleet, open_fleet
from edgefleet.host.fleet._history import rollback, rollout_status
from edgefleet.host.fleet._images import image_message, send_images
from edgefleet.host.fleet._ingest import Ingestor, IngestStats
from edgefleet.host.fleet._pgregistry import PostgresRegistry, open_any_registry
from edgefleet.host.fleet._pgstore import PostgresStore, open_store
from edgefleet.host.fleet._pgstore import describe as describe_store
from edgefleet.host.fleet._push import (
    ModelFiles,
    PushPlan,
    RolloutResult,
    load_model,
    push,
)
from edgefleet.host.fleet._pushes import (
    DEFAULT_STATE_DIR,
    MAX_VERSION_STEP,
    PushRecord,
    Registry,
    choose_version,
    device_target,
    group_target,
    open_registry,
)
from edgefleet.host.fleet._reassert import (
    DEFAULT_REASSERT_INTERVAL_S,
    ReassertReport,
    reassert,
)
from edgefleet.host.fleet._rollout import Phase, Progress, Verdict
from edgefleet.host.fleet._status import DeviceRow, device_rows, format_table, format_warnings
from edgefleet.host.fleet._store import PredictionStore, SqliteStore
from edgefleet.shared.connection import Connection, Message, PublishHandle

__all__ = [
    "DEFAULT_REASSERT_INTERVAL_S",
    "DEFAULT_STATE_DIR",
    "MAX_VERSION_STEP",
    "BrokerSettings",
    "CancelResult",
    "Connection",
    "DeviceRow",
    "Fleet",
    "FleetView",
    "IngestStats",
    "Ingestor",
    "Message",
    "ModelFiles",
    "OnProgress",
    "PahoConnection",
    "Phase",
    "PostgresRegistry",
    "PostgresStore",
    "PredictionStore",
    "Progress",
    "PublishHandle",
    "PushPlan",
    "PushRecord",
    "ReassertReport",
    "Registry",
    "RolloutResult",
    "Selection",
    "SqliteStore",
    "Verdict",
    "cancel_rollout",
    "choose_version",
    "close_fleet",
    "connect",
    "describe_store",
    "device_rows",
    "device_target",
    "export",
    "format_table",
    "format_warnings",
    "group_target",
    "image_message",
    "iso",
    "load_model",
    "open_any_registry",
    "open_fleet",
    "open_registry",
    "open_store",
    "parse_time",
    "push",
    "random_client_id",
    "reassert",
    "rollback",
    "rollout_status",
    "send_images",
    "settings_from",
    "stable_client_id",
]
