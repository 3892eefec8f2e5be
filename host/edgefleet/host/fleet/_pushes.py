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

A group rollout's plan (canary size, the devices of each wave, the failure limit) is kept in
``rollout_plans`` (:class:`WavePlan`), recorded before the first wave, so it outlives the
per-device canary rows that are cleared once the group manifest covers them. For a delta
push, ``transfers`` holds each device's planned bytes and ``resent`` the bytes of the chunks
the host sent that device again on its request (:meth:`Registry.record_resent`); together
they are what was sent (:class:`Transfer`). Both tables are part of the baseline schema
(additive: an existing registry gains them on open, in SQLite and PostgreSQL alike).

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
from typing import TYPE_CHECKING, Protocol

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet._migrations import Migration, migrate_sqlite
from edgefleet.shared.atomic import write_atomic
from edgefleet.shared.manifest import Manifest

if TYPE_CHECKING:
    from collections.abc import Collection


class Sent(Protocol):
    """What ``record_transfer`` stores of one device's share of a push."""

    @property
    def sha256(self) -> str:
        """The variant sent."""

    @property
    def full_bytes(self) -> int:
        """Its size."""

    @property
    def send_bytes(self) -> int:
        """Bytes the device needed sent."""


DEFAULT_STATE_DIR = Path.home() / ".local" / "share" / "edgefleet"

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


@dataclass(frozen=True)
class WavePlan:
    """How a group rollout was split (``--canary N``, ``--max-failures P``), as planned.

    ``waves`` are the device lists published on device topics one after the other (see
    :func:`edgefleet.host.fleet._rollout.plan_waves`); the first is the canary when
    ``canary`` (the number asked for) is above 0. Members in no wave (offline when the
    rollout was planned, or joining later) get the group topic published after the waves.
    """

    target: str
    version: int
    canary: int
    max_failures: float | None
    waves: tuple[tuple[str, ...], ...]
    created_at: float = 0.0
    aborted: str | None = None  # why the rollout stopped before its group topic, if it did

    @property
    def canary_devices(self) -> tuple[str, ...]:
        """The devices of the canary wave (none without ``--canary``)."""
        return self.waves[0] if self.canary > 0 and self.waves else ()

    @property
    def later_waves(self) -> tuple[tuple[str, ...], ...]:
        """The waves after the canary (numbered from 1 in :meth:`step_of`)."""
        return self.waves[1:] if self.canary_devices else self.waves

    def step_of(self, device_id: str) -> str:
        """``canary``, ``wave K`` (K from 1, after the canary) or ``group`` (the group topic)."""
        if device_id in self.canary_devices:
            return "canary"
        for k, wave in enumerate(self.later_waves, start=1):
            if device_id in wave:
                return f"wave {k}"
        return "group"

    def describe(self) -> str:
        """``canary 1; waves 2, 4; max failures 50 %``, or ``no canary, no waves``."""
        parts = []
        if self.canary > 0:
            size = len(self.canary_devices)
            parts.append(f"canary {size}" + ("" if size == self.canary else f" of {self.canary}"))
        if self.later_waves:
            sizes = ", ".join(str(len(w)) for w in self.later_waves)
            parts.append(f"{'waves' if len(self.later_waves) > 1 else 'wave'} {sizes}")
        if self.max_failures is not None:
            parts.append(f"max failures {self.max_failures:g} %")
        return "; ".join(parts) or "no canary, no waves"


@dataclass(frozen=True)
class Transfer:
    """One device's share of a delta push as recorded: planned bytes, and bytes sent again."""

    device_id: str
    name: str
    version: int
    sha256: str
    full_bytes: int
    send_bytes: int  # planned: the chunks the device lacked when the push was planned
    resent_bytes: int = 0  # chunks the host sent again on the device's requests
    resent_chunks: int = 0
    created_at: float = 0.0

    @property
    def sent_bytes(self) -> int:
        """What was sent for this device: the planned bytes plus the bytes sent again."""
        return self.send_bytes + self.resent_bytes

    def describe(self) -> str:
        """``41.2 KiB of 271.5 KiB sent (40.0 KiB planned + 1.2 KiB in 1 chunk sent again)``."""
        text = f"{_kib(self.sent_bytes)} of {_kib(self.full_bytes)} sent"
        if self.resent_chunks:
            chunks = "chunk" if self.resent_chunks == 1 else "chunks"
            text += (
                f" ({_kib(self.send_bytes)} planned + {_kib(self.resent_bytes)} in "
                f"{self.resent_chunks} {chunks} sent again)"
            )
        return text


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def find_plan(record: PushRecord, plans: list[WavePlan]) -> WavePlan | None:
    """The plan of ``plans`` a push belongs to: its group's, or the one whose waves hold it.

    A device row of kind ``canary`` is one wave's manifest of a group rollout (kept while
    the rollout runs, and after it stopped before its group topic). A push to listed
    devices, and a group push made before plans were recorded, have none.
    """
    kind, _, name = record.target.partition(":")
    same = [p for p in plans if p.version == record.version]
    if kind != "device":
        found = [p for p in same if p.target == record.target]
    elif record.kind == "canary":
        found = [p for p in same if any(name in wave for wave in p.waves)]
    else:
        found = []
    return found[-1] if found else None


def build_id(manifest: Manifest) -> str:
    """``MODE SHORTSHA`` of a manifest: tells int8, QAT and dynamic builds of one name apart."""
    cpu = [v for v in manifest.variants if v.accelerator == "cpu"] or manifest.variants
    sha = cpu[0].sha256[:8] if cpu else "?"
    return f"{manifest.mode} {sha}"


class Registry:
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
            self._db = sqlite3.connect(
                state_dir / "registry.sqlite", timeout=30.0, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
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

    def record_transfer(self, device_id: str, name: str, version: int, t: Sent) -> None:
        """Remember the bytes a push sends one device (its whole file, or a delta)."""
        with self._db:
            self._db.execute(
                "INSERT INTO transfers (device_id, name, version, sha256, full_bytes, send_bytes,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device_id, name, version, t.sha256, t.full_bytes, t.send_bytes, time.time()),
            )

    def transfers(self, device_id: str) -> list[tuple[str, int, int, int]]:
        """(name, version, full bytes, bytes sent) of each push to ``device_id``, oldest first."""
        rows = self._db.execute(
            "SELECT name, version, full_bytes, send_bytes FROM transfers WHERE device_id = ?"
            " ORDER BY id",
            (device_id,),
        ).fetchall()
        return [(str(r[0]), int(str(r[1])), int(str(r[2])), int(str(r[3]))) for r in rows]

    def record_resent(
        self, device_id: str, name: str, version: int, *, nbytes: int, chunks: int
    ) -> bool:
        """Add chunks sent again on ``device_id``'s request to its transfer of ``name`` vN.

        Returns:
            False (nothing recorded) when no transfer of that push to the device is recorded
            (a whole-file v1 push records none).
        """
        with self._db:
            row = self._db.execute(
                "SELECT MAX(id) FROM transfers WHERE device_id = ? AND name = ? AND version = ?",
                (device_id, name, version),
            ).fetchone()
            if row is None or row[0] is None:
                return False
            self._db.execute(
                "INSERT INTO resent (transfer_id, bytes, chunks) VALUES (?, ?, ?)"
                " ON CONFLICT(transfer_id) DO UPDATE SET bytes = resent.bytes + excluded.bytes,"
                " chunks = resent.chunks + excluded.chunks",
                (int(str(row[0])), nbytes, chunks),
            )
        return True

    def transfer_records(
        self, *, device_id: str | None = None, name: str | None = None, version: int | None = None
    ) -> list[Transfer]:
        """Recorded transfers (planned and sent-again bytes), oldest first, optionally filtered."""
        where, args = [], []
        for column, value in (("device_id", device_id), ("name", name), ("version", version)):
            if value is not None:
                where.append(f"t.{column} = ?")
                args.append(value)
        # The clauses are built from this method's constant column names, never user text.
        sql = (
            "SELECT t.device_id, t.name, t.version, t.sha256, t.full_bytes, t.send_bytes,"  # noqa: S608
            " COALESCE(r.bytes, 0), COALESCE(r.chunks, 0), t.created_at FROM transfers t"
            " LEFT JOIN resent r ON r.transfer_id = t.id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY t.id"
        )
        return [
            Transfer(
                str(r[0]),
                str(r[1]),
                int(str(r[2])),
                str(r[3]),
                int(str(r[4])),
                int(str(r[5])),
                int(str(r[6])),
                int(str(r[7])),
                float(str(r[8])),
            )
            for r in self._db.execute(sql, args).fetchall()
        ]

    # -- wave plans -------------------------------------------------------------------

    def record_plan(
        self,
        target: str,
        version: int,
        *,
        canary: int,
        max_failures: float | None,
        waves: list[list[str]],
    ) -> WavePlan:
        """Remember how a group rollout is split, before its first wave is published."""
        plan = WavePlan(
            target, version, canary, max_failures, tuple(tuple(w) for w in waves), time.time()
        )
        with self._db:
            self._db.execute(
                "INSERT INTO rollout_plans (target, version, canary, max_failures, waves,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (target, version, canary, max_failures, json.dumps(waves), plan.created_at),
            )
        return plan

    def record_aborted(self, target: str, version: int, reason: str) -> None:
        """Note on a rollout's plan why it stopped (``edgefleet push`` printed it as ABORTED)."""
        with self._db:
            self._db.execute(
                "UPDATE rollout_plans SET aborted = ? WHERE id = (SELECT MAX(p.id) FROM"
                " rollout_plans p WHERE p.target = ? AND p.version = ?)",
                (reason, target, version),
            )

    def wave_plans(
        self, *, version: int | None = None, versions: Collection[int] | None = None
    ) -> list[WavePlan]:
        """Every recorded wave plan (of one version, or of some), oldest first."""
        wanted = sorted({*(versions or ()), *(() if version is None else (version,))})
        sql = (
            "SELECT target, version, canary, max_failures, waves, created_at, aborted"
            " FROM rollout_plans"
        )
        if version is not None or versions is not None:
            if not wanted:
                return []
            sql += f" WHERE version IN ({', '.join('?' * len(wanted))})"
        rows = self._db.execute(sql + " ORDER BY id", wanted).fetchall()
        return [
            WavePlan(
                str(r[0]),
                int(str(r[1])),
                int(str(r[2])),
                None if r[3] is None else float(str(r[3])),
                tuple(tuple(str(d) for d in wave) for wave in json.loads(str(r[4]))),
                float(str(r[5])),
                None if r[6] is None else str(r[6]),
            )
            for r in rows
        ]

    def wave_plan(self, target: str, version: int) -> WavePlan | None:
        """The latest plan of the rollout of ``version`` to ``target`` (a group), if recorded."""
        plans = [p for p in self.wave_plans(version=version) if p.target == target]
        return plans[-1] if plans else None

    def plan_of(self, record: PushRecord) -> WavePlan | None:
        """The wave plan ``record`` belongs to (see :func:`find_plan`)."""
        return find_plan(record, self.wave_plans(version=record.version))

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
