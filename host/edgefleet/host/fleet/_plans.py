"""Rollout plans and bytes sent: the registry's ``rollout_plans``, ``transfers`` and ``resent``.

A group rollout's plan (canary size, the devices of each wave, the failure limit) is recorded
before the first wave (:class:`WavePlan`), so it outlives the per-device canary rows that
are cleared once the group manifest covers them. For a delta push, ``transfers`` holds each
device's planned bytes and ``resent`` the bytes of the chunks a host sent that device again
on its request; together they are what was sent (:class:`Transfer`). :class:`PlanStore` is
the part of :class:`edgefleet.host.fleet._pushes.Registry` that reads and writes them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Collection

    from edgefleet.host.fleet._pushes import PushRecord


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


class PlanStore:
    """Wave plans and transfers of a registry (``_db`` is its open database)."""

    _db: sqlite3.Connection

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
