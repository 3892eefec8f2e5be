"""Wave plans and bytes sent (delta pushes) in the PostgreSQL push registry, as in SQLite.

The tables are part of the registry's baseline schema (``_pushes._SCHEMA``), so an existing
registry gains them on open; the same statements run on both backends (``_pgregistry.PgDb``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from edgefleet.host.fleet import PostgresRegistry, Registry, device_target, group_target
from edgefleet.host.fleet._plans import Transfer, WavePlan
from support.manifests import manifest

Row = TypeVar("Row", WavePlan, Transfer)


@dataclass(frozen=True)
class _Sent:
    sha256: str
    full_bytes: int
    send_bytes: int


def _untimed(row: Row | None) -> Row | None:
    return None if row is None else replace(row, created_at=0.0)


def _scenario(reg: Registry) -> dict[str, object]:
    m = manifest(7, b"seven")
    reg.record_plan(group_target("g"), 7, canary=1, max_failures=25.0, waves=[["a"], ["b", "c"]])
    reg.record_plan(group_target("h"), 7, canary=0, max_failures=None, waves=[])
    reg.record_aborted(group_target("g"), 7, "canary failed: a (failed: health_check)")
    canary = reg.record_push(target=device_target("a"), manifest=m, envelope=b"e", kind="canary")
    group = reg.record_push(target=group_target("h"), manifest=m, envelope=b"e", members=("x",))
    sent = _Sent(m.variants[0].sha256, 1000, 300)
    reg.record_transfer("a", "m", 7, sent)
    reg.record_transfer("b", "m", 7, sent)
    assert reg.record_resent("a", "m", 7, nbytes=40, chunks=1)
    assert reg.record_resent("a", "m", 7, nbytes=60, chunks=2)
    assert not reg.record_resent("a", "m", 8, nbytes=1, chunks=1)  # no such transfer
    return {
        "plans": [_untimed(p) for p in reg.wave_plans()],
        "canary_of": _untimed(reg.plan_of(canary)),
        "group_of": _untimed(reg.plan_of(group)),
        "transfers": [_untimed(t) for t in reg.transfer_records(name="m")],
        "sent": [t.sent_bytes for t in reg.transfer_records(device_id="a")],
    }


def test_plans_and_bytes_sent_read_the_same_from_postgres_as_from_sqlite(pg_url, tmp_path):
    sqlite_reg = Registry(tmp_path / "sqlite-state")
    pg_reg = PostgresRegistry(tmp_path / "pg-state", pg_url)
    try:
        on_sqlite, on_pg = _scenario(sqlite_reg), _scenario(pg_reg)
    finally:
        sqlite_reg.close()
        pg_reg.close()
    plan = on_pg["canary_of"]
    assert isinstance(plan, WavePlan)
    assert (plan.target, plan.step_of("c"), plan.describe()) == (
        "group:g",
        "wave 1",
        "canary 1; wave 2; max failures 25 %",
    )
    assert plan.aborted == "canary failed: a (failed: health_check)"
    assert on_pg["sent"] == [400]  # 300 planned + 100 sent again
    assert on_pg == on_sqlite
