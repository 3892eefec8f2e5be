"""The host's record of pushed models and manifests (for rollback, rollout status, versions).

Layout of the state directory (``--state-dir``, default ``~/.local/share/edgefleet``)::

    models/{sha256}.tflite     every variant ever pushed, written atomically
    registry.sqlite            pushes (one row per published manifest), devices seen, wave
                               plans of group rollouts, bytes sent per device (delta pushes)

A push row remembers the signed envelope, the target (``device:ID`` or ``group:NAME``), the
variant hashes and whether it superseded, so that rollback can re-sign the model a target
ran before, chunk retention can tell which models are still desired, and
``edgefleet rollout status`` can say where each device stands. A ``cleared`` row per target
remembers that the host emptied the target's retained desired topic (an aborted group push,
a canary covered by its group), so nothing re-asserts a manifest the host withdrew.

Group rollouts' wave plans and delta pushes' bytes sent are in :mod:`._plans` (tables
``rollout_plans``, ``transfers``, ``resent``): part of the baseline schema, additive, so an
existing registry gains them on open, in SQLite and PostgreSQL alike.

Versions: the registry's own record of what this host signed is the source of truth for the
next version to sign (:func:`choose_version`); what devices claim to run counts only within
``MAX_VERSION_STEP`` above it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._migrations import Migration, migrate_sqlite
from edgefleet.host.fleet._plans import PlanStore
from edgefleet.host.fleet._sqlite import open_wal
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.manifest import Manifest

DEFAULT_STATE_DIR = Path.home() / ".local" / "share" / "edgefleet"
# How long an opener or writer waits for another connection's lock on registry.sqlite.
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pushes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    shas TEXT NOT NULL,
    manifest TEXT NOT NULL,
    envelope BLOB NOT NULL,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'push',
    members TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS pushes_target ON pushes(target, version);
CREATE TABLE IF NOT EXISTS cleared (
    target TEXT PRIMARY KEY,
    up_to_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cancels (
    push_id INTEGER PRIMARY KEY,
    cancelled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    full_bytes INTEGER NOT NULL,
    send_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS resent (
    transfer_id INTEGER PRIMARY KEY,
    bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_plans (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    version INTEGER NOT NULL,
    canary INTEGER NOT NULL,
    max_failures REAL,
    waves TEXT NOT NULL,
    created_at REAL NOT NULL,
    aborted TEXT
);
CREATE INDEX IF NOT EXISTS rollout_plans_version ON rollout_plans(version);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    groups TEXT NOT NULL DEFAULT '[]',
    last_status TEXT,
    last_seen REAL
);
"""

# Changes to the schema after _SCHEMA (the baseline), applied on open (see _migrations).
REGISTRY_MIGRATIONS: tuple[Migration, ...] = ()

_PUSH_COLUMNS = (
    "id, target, name, version, shas, manifest, envelope, created_at, kind, members,"
    " (SELECT k.cancelled_at FROM cancels k WHERE k.push_id = pushes.id)"
)
_CURRENT = (
    "WHERE id IN (SELECT MAX(p.id) FROM pushes p GROUP BY p.target)"
    " AND id > COALESCE((SELECT c.up_to_id FROM cleared c WHERE c.target = pushes.target), 0)"
)

# The highest version a manifest can carry (the protocol's integers are 0 .. 2**63-1).
MAX_VERSION = 2**63 - 1
# A device's claimed version counts for the next version only up to this far above the
# highest version this host signed (a host whose state directory was lost still signs above
# what its devices run); a claim beyond it is ignored and reported.
MAX_VERSION_STEP = 1000


@dataclass(frozen=True)
class VersionChoice:
    """The version to sign and the device claims that were not believed."""

    version: int
    ignored: dict[str, int]

    def warnings(self, signed: int) -> list[str]:
        """One line per ignored claim, for the operator."""
        return [
            f"{device} claims model version {claim}, more than {MAX_VERSION_STEP} above the "
            f"highest version this host signed ({signed}): claim ignored (pass --version to "
            "sign above it if that device really runs it)"
            for device, claim in sorted(self.ignored.items())
        ]


def choose_version(signed: int, claims: dict[str, int], requested: int | None) -> VersionChoice:
    """The version to sign, from this host's record first and device claims within a bound.

    Args:
        signed: The highest version this host ever signed (``Registry.max_version``).
        claims: Device id -> the highest version it claims to run (status, reported).
        requested: ``--version``, if given.

    Returns:
        ``requested`` if it is above every believed claim; otherwise one above the highest
        of ``signed`` and the believed claims. A claim more than ``MAX_VERSION_STEP`` above
        ``signed`` is not believed (a device reporting 2**63-2 must not make the host sign
        2**63-1, after which no update could ever follow).

    Raises:
        FleetError: ``requested`` is out of range or not above a believed claim, or the
            next version would pass ``MAX_VERSION``.
    """
    limit = signed + MAX_VERSION_STEP
    believed = {d: v for d, v in claims.items() if 0 <= v <= limit}
    ignored = {d: v for d, v in claims.items() if d not in believed}
    seen = max(believed.values(), default=0)
    if requested is not None:
        if not 1 <= requested <= MAX_VERSION:
            raise FleetError(f"--version {requested} is outside 1..{MAX_VERSION}")
        if requested <= seen:
            raise FleetError(
                f"--version {requested} is not above version {seen} that a target already "
                "runs; devices would refuse it (anti-rollback): omit --version or pass a "
                "higher one"
            )
        return VersionChoice(requested, ignored)
    version = max(signed, seen) + 1
    if version > MAX_VERSION:
        raise FleetError(
            f"the next version would be {version}, above the protocol's limit {MAX_VERSION}"
        )
    return VersionChoice(version, ignored)


def device_target(device_id: str) -> str:
    """The registry key of a device target."""
    return f"device:{device_id}"


def group_target(group: str) -> str:
    """The registry key of a group target."""
    return f"group:{group}"


@dataclass(frozen=True)
class PushRecord:
    """One published manifest."""

    id: int
    target: str
    name: str
    version: int
    shas: tuple[str, ...]
    manifest: Manifest
    envelope: bytes
    created_at: float
    kind: str
    members: tuple[str, ...]
    cancelled_at: float | None = None

    @property
    def build(self) -> str:
        """The build id: quantization mode and short sha of the CPU variant (``int8 3f2a9c1b``)."""
        return build_id(self.manifest)


def build_id(manifest: Manifest) -> str:
    """``MODE SHORTSHA`` of a manifest: tells int8, QAT and dynamic builds of one name apart."""
    cpu = [v for v in manifest.variants if v.accelerator == "cpu"] or manifest.variants
    sha = cpu[0].sha256[:8] if cpu else "?"
    return f"{manifest.mode} {sha}"


class Registry(PlanStore):
    """The host-side registry in one state directory (see the module docstring).

    Args:
        state_dir: Where models and ``registry.sqlite`` live; created if missing.

    Raises:
        FleetError: The directory or database cannot be opened.
    """

    def __init__(self, state_dir: Path, *, read_only: bool = False) -> None:
        self.state_dir = state_dir
        # Read-only (status commands): never create the directory or database, never record
        # devices seen; a missing registry reads as an empty one, in memory.
        self.read_only = read_only
        if read_only and not (state_dir / "registry.sqlite").is_file():
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
            self._db.executescript(_SCHEMA)
            return
        try:
            if not read_only:
                (state_dir / "models").mkdir(parents=True, exist_ok=True)
            self._db = open_wal(state_dir / "registry.sqlite", BUSY_TIMEOUT_S)
            migrate_sqlite(self._db, "registry", _SCHEMA, REGISTRY_MIGRATIONS, where=str(state_dir))
        except (OSError, sqlite3.Error) as exc:
            raise FleetError(
                f"cannot open the host registry in {state_dir}: {exc}; pass --state-dir "
                "to a writable directory"
            ) from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- models -----------------------------------------------------------------------

    def model_path(self, sha256: str) -> Path:
        """Where a model variant's bytes are kept."""
        return self.state_dir / "models" / f"{sha256}.tflite"

    def keep_model(self, sha256: str, data: bytes) -> None:
        """Store a variant's bytes (once; the name is their hash)."""
        path = self.model_path(sha256)
        if not path.exists():
            write_atomic(path, data)

    def model_bytes(self, sha256: str) -> bytes | None:
        """A stored variant's bytes, or None if this host never pushed it."""
        try:
            return self.model_path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    # -- pushes -----------------------------------------------------------------------

    def record_push(
        self,
        *,
        target: str,
        manifest: Manifest,
        envelope: bytes,
        kind: str = "push",
        members: tuple[str, ...] = (),
    ) -> PushRecord:
        """Remember a published manifest."""
        shas = tuple(v.sha256 for v in manifest.variants)
        now = time.time()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO pushes (target, name, version, shas, manifest, envelope, created_at,"
                " kind, members) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    target,
                    manifest.name,
                    manifest.version,
                    json.dumps(shas),
                    manifest.model_dump_json(),
                    envelope,
                    now,
                    kind,
                    json.dumps(members),
                ),
            )
        row_id = cur.lastrowid or 0
        return PushRecord(
            row_id,
            target,
            manifest.name,
            manifest.version,
            shas,
            manifest,
            envelope,
            now,
            kind,
            members,
        )

    def _rows(self, where: str = "", args: tuple[object, ...] = ()) -> list[PushRecord]:
        # `where` is always one of this module's constant clauses, never user text.
        sql = f"SELECT {_PUSH_COLUMNS} FROM pushes {where} ORDER BY id"  # noqa: S608
        rows = self._db.execute(
            sql,
            args,
        ).fetchall()
        return [
            PushRecord(
                r[0],
                r[1],
                r[2],
                r[3],
                tuple(json.loads(r[4])),
                Manifest.model_validate_json(r[5]),
                bytes(r[6]),
                r[7],
                r[8],
                tuple(json.loads(r[9])),
                r[10],
            )
            for r in rows
        ]

    def history(self, target: str) -> list[PushRecord]:
        """Every push to ``target``, oldest first."""
        return self._rows("WHERE target = ?", (target,))

    def latest(self, target: str) -> PushRecord | None:
        """The manifest currently desired for ``target`` (its last push), if any."""
        history = self.history(target)
        return history[-1] if history else None

    def max_version(self) -> int:
        """The highest version this host ever signed (0 if none)."""
        row = self._db.execute("SELECT MAX(version) FROM pushes").fetchone()
        return int(row[0] or 0)

    def desired_shas(self) -> set[str]:
        """Hashes of the variants some target's current (not withdrawn) push still wants."""
        return {sha for record in self.current_desired() for sha in record.shas}

    def record_cleared(self, target: str) -> None:
        """Forget that ``target`` desires anything (its retained desired was cleared)."""
        with self._db:
            self._db.execute("DELETE FROM pushes WHERE target = ? AND kind = 'canary'", (target,))
            self._db.execute(
                "INSERT INTO cleared (target, up_to_id) SELECT ?, COALESCE(MAX(id), 0)"
                " FROM pushes WHERE target = ? ON CONFLICT(target) DO UPDATE SET"
                " up_to_id = excluded.up_to_id",
                (target, target),
            )

    def record_cancelled(self, records: list[PushRecord]) -> float:
        """Mark ``records`` cancelled (``edgefleet rollout cancel``); returns the time."""
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO cancels (push_id, cancelled_at) VALUES (?, ?)",
                [(r.id, now) for r in records],
            )
        return now

    def latest_pushes(self) -> list[PushRecord]:
        """The latest push of every target."""
        return self._rows("WHERE id IN (SELECT MAX(id) FROM pushes GROUP BY target)")

    def current_desired(self) -> list[PushRecord]:
        """The latest push of every target whose retained desired the host did not clear.

        What the broker should be retaining on the desired topics right now (and the chunks
        of their variants): the input of ``edgefleet fleet reassert``.
        """
        return self._rows(_CURRENT)

    def cleared_targets(self) -> list[str]:
        """Targets whose retained desired the host cleared (they may have pushes since)."""
        return [r[0] for r in self._db.execute("SELECT target FROM cleared ORDER BY target")]

    def all_pushes(self) -> list[PushRecord]:
        """Every push row, oldest first."""
        return self._rows()

    def pushed_shas(self) -> set[str]:
        """Every variant hash this host ever pushed (and still has a push row for)."""
        rows = self._db.execute("SELECT shas FROM pushes").fetchall()
        return {sha for (shas,) in rows for sha in json.loads(shas)}

    # -- devices ----------------------------------------------------------------------

    def remember_device(
        self, device_id: str, *, groups: list[str] | None, status_json: str | None, seen: float
    ) -> None:
        """Update what the host knows about a device from a status message it saw."""
        if self.read_only:
            return
        with self._db:
            self._db.execute(
                "INSERT INTO devices (device_id, groups, last_status, last_seen)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET"
                " groups = CASE WHEN ? IS NULL THEN devices.groups ELSE excluded.groups END,"
                " last_status = COALESCE(excluded.last_status, devices.last_status),"
                " last_seen = MAX(COALESCE(devices.last_seen, 0), excluded.last_seen)",
                (
                    device_id,
                    json.dumps(groups or []),
                    status_json,
                    seen,
                    None if groups is None else 1,
                ),
            )

    def known_devices(self) -> dict[str, tuple[list[str], str | None, float | None]]:
        """Device id -> (groups, last online status JSON, last seen unix time)."""
        rows = self._db.execute(
            "SELECT device_id, groups, last_status, last_seen FROM devices"
        ).fetchall()
        return {r[0]: (json.loads(r[1]), r[2], r[3]) for r in rows}


def open_registry(state_dir: Path | None, *, read_only: bool = False) -> Registry:
    """Open the registry in ``state_dir`` or the default location (read-only: see Registry)."""
    return Registry(state_dir or DEFAULT_STATE_DIR, read_only=read_only)
