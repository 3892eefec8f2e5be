"""The PostgreSQL prediction store and push registry, and schema migrations, on real databases.

A throwaway PostgreSQL cluster (tests/support/postgres.py) serves every test; SQLite runs
beside it where the two backends must behave alike.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import (
    Fleet,
    Ingestor,
    PostgresRegistry,
    PostgresStore,
    Registry,
    SqliteStore,
    _pgstore,
    device_target,
    export,
    group_target,
    open_any_registry,
    open_registry,
    open_store,
)
from edgefleet.host.fleet._logs import _SCHEMA as LOGS_SCHEMA
from edgefleet.host.fleet._logs import LogStore
from edgefleet.host.fleet._migrations import Migration, migrate_postgres, migrate_sqlite
from edgefleet.host.fleet._pgregistry import to_postgres
from edgefleet.host.fleet._pgstore import PostgresLogStore, open_log_store, redact
from edgefleet.host.fleet._pushes import _SCHEMA as REGISTRY_SCHEMA
from edgefleet.host.fleet._store import _SCHEMA as PREDICTIONS_SCHEMA
from edgefleet.shared.messages import (
    Ack,
    DeviceLog,
    InputThumbnail,
    PredictionRecord,
    batch_payload,
    decode,
    encode,
)
from edgefleet.shared.topics import Topics
from support.broker import free_port, wait_for_port
from support.fakebroker import FakeBroker
from support.manifests import manifest

pytestmark = pytest.mark.integration


def record(seq: int, *, device: str = "d", boot: str = "b1", label: str = "7") -> PredictionRecord:
    return PredictionRecord(
        device_id=device,
        boot_id=boot,
        seq=seq,
        label=label,
        score=0.5,
        latency_ms=1.0,
        model_name="m",
        model_version=1,
        ts=1.0 + seq,
        source=f"scan-{seq}.npy",
    )


def test_store_ignores_duplicates_reads_in_order_and_exports(pg_url):
    a, b = PostgresStore(pg_url), open_store(pg_url)
    try:
        assert isinstance(b, PostgresStore)
        assert a.add([record(0), record(1)]) == 2
        assert b.add([record(1), record(2), record(0, boot="b2")]) == 2
        assert a.add([record(3), record(3)]) == 1  # twice in one batch: stored once
        assert a.add([]) == 0
        assert a.count() == 5
        rows = list(b.iter_records())
        assert [(r.boot_id, r.seq) for _, r in rows] == [
            ("b1", 0),
            ("b1", 1),
            ("b1", 2),
            ("b2", 0),
            ("b1", 3),
        ]
        ids = [i for i, _ in rows]
        assert ids == sorted(ids)
        assert [r.seq for _, r in b.iter_records(after_id=ids[2])] == [0, 3]
        a.add([record(9, device="other")])
        assert [r.device_id for _, r in a.iter_records(device_id="other")] == ["other"]
        out = io.StringIO()
        assert export(b, out, fmt="jsonl", device_id="d") == 5
        assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == [0, 1, 2, 0, 3]
    finally:
        a.close()
        b.close()


def test_thumbnails_are_kept_beside_the_records_bounded_per_device(pg_url, monkeypatch):
    monkeypatch.setattr(_pgstore, "THUMBNAILS_PER_DEVICE", 2)
    png = (  # a 2x2 PNG (docs/protocol.md, vector input-thumbnail)
        "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42gXBAQEAAACCIPs/mmAqQjkt7gb7C98nEwAAAABJRU5ErkJggg=="
    )

    def thumb(seq: int, device: str = "d") -> InputThumbnail:
        return InputThumbnail(
            device_id=device, boot_id="b1", seq=seq, format="png", data_b64=png, width=2, height=2
        )

    store = PostgresStore(pg_url)
    try:
        assert store.add_thumbnail(thumb(5), received_at=1.0)  # before (or without) its record
        assert not store.add_thumbnail(thumb(5), received_at=2.0)  # the first copy wins
        for seq in (6, 7):
            assert store.add_thumbnail(thumb(seq), received_at=1.0)
        assert store.add_thumbnail(thumb(1, device="other"), received_at=1.0)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT device_id, seq, format, width, height, image FROM thumbnails ORDER BY id"
            ).fetchall()
        assert [(r[0], r[1]) for r in rows] == [("d", 6), ("d", 7), ("other", 1)]
        assert bytes(rows[0][5]) == thumb(6).data()
        assert rows[0][2:5] == ("png", 2, 2)
    finally:
        store.close()


def test_records_survive_exactly_even_with_nul_and_formula_text(pg_url):
    store = PostgresStore(pg_url)
    try:
        odd = record(0, label="a\x00b")
        assert store.add([odd]) == 1
        [(_, back)] = list(store.iter_records())
        assert back == odd  # the full record keeps the NUL; only the flat column replaces it
        out = io.StringIO()
        store.add([record(1, label="=cmd()")])
        export(store, out, fmt="csv")
        assert "'=cmd()" in out.getvalue()
    finally:
        store.close()


def test_an_out_of_range_record_is_a_value_error_and_nothing_of_the_batch_is_stored(pg_url):
    store = PostgresStore(pg_url)
    try:
        bad = record(1).model_copy(update={"model_version": 2**63})
        with pytest.raises(ValueError, match="model_version"):
            store.add([record(0), bad])
        assert store.count() == 0
    finally:
        store.close()


def test_concurrent_writers_store_each_record_once(pg_url):
    stores = [PostgresStore(pg_url) for _ in range(3)]
    new = [0, 0, 0]
    records = [record(s, device=f"d{s % 7}") for s in range(600)]

    def write(i: int) -> None:
        # Every writer sends every record, in its own batch order and size.
        mine = records[i::1] if i == 0 else list(reversed(records))
        size = 50 + 37 * i
        for start in range(0, len(mine), size):
            new[i] += stores[i].add(mine[start : start + size])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(new) == len(records)
        assert stores[0].count() == len(records)
    finally:
        for s in stores:
            s.close()


def test_a_follower_reading_by_row_id_sees_every_row_while_two_workers_write(pg_url):
    """What `tail -f` does: row ids must grow in commit order, or it skips rows."""
    writers = [PostgresStore(pg_url) for _ in range(2)]
    reader = PostgresStore(pg_url)
    done = threading.Event()
    seen: list[int] = []

    def write(w: int) -> None:
        for b in range(30):
            writers[w].add([record(b * 40 + s, device=f"w{w}") for s in range(40)])

    def follow() -> None:
        after = 0
        while True:
            finished = done.is_set()
            for row_id, _ in reader.iter_records(after_id=after):
                seen.append(row_id)
                after = row_id
            if finished:
                return

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    follower = threading.Thread(target=follow)
    follower.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    follower.join()
    try:
        assert len(seen) == len(set(seen)) == reader.count() == 2 * 30 * 40
    finally:
        for s in (*writers, reader):
            s.close()


def test_a_lost_connection_is_a_fleet_error_and_the_next_add_reconnects(pg_url):
    store = PostgresStore(pg_url)
    try:
        store.add([record(0)])
        _terminate_edgefleet_sessions(pg_url)
        with pytest.raises(FleetError, match="storing 1 predictions"):
            store.add([record(1)])
        assert store.add([record(1), record(0)]) == 1
        assert store.count() == 2
        _terminate_edgefleet_sessions(pg_url)
        with pytest.raises(FleetError, match="reading postgresql://"):
            store.count()
        assert [r.seq for _, r in store.iter_records()] == [0, 1]
    finally:
        store.close()


def _terminate_edgefleet_sessions(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'edgefleet' AND pid <> pg_backend_pid()"
        )


def test_an_unreachable_server_is_a_clear_error_without_the_password():
    url = f"postgresql://edgefleet:s3cret-pw@127.0.0.1:{free_port()}/edgefleet"
    with pytest.raises(FleetError) as err:
        PostgresStore(url)
    text = str(err.value)
    assert "s3cret-pw" not in text
    assert "postgresql://edgefleet:***@127.0.0.1" in text
    assert "check the URL" in text
    with pytest.raises(FleetError, match="unknown store"):
        open_store("mysql://u:p@h/db")


def test_a_wrong_password_is_refused_clearly(postgres):
    url = postgres.url.replace(postgres.password, "wrong")
    with pytest.raises(FleetError, match="password authentication failed"):
        PostgresStore(url)


# -- schema migrations ----------------------------------------------------------------

BASE = "CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);"
STEPS = (
    Migration(2, "things get a size", "ALTER TABLE things ADD COLUMN size REAL NOT NULL DEFAULT 0"),
    Migration(3, "index on name", "CREATE INDEX things_name ON things(name)"),
)


def _pg_versions(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return [
            (str(c), int(v))
            for c, v in conn.execute("SELECT component, version FROM schema_version ORDER BY 2")
        ]


def test_migrations_apply_in_order_once_on_both_backends(pg_url, tmp_path):
    db = sqlite3.connect(tmp_path / "m.sqlite")
    assert migrate_sqlite(db, "things", BASE, STEPS[:1]) == 2
    db.execute("INSERT INTO things (name, size) VALUES ('a', 1.5)")
    db.commit()
    assert migrate_sqlite(db, "things", BASE, STEPS) == 3  # a newer version: only step 3 runs
    assert migrate_sqlite(db, "things", BASE, STEPS) == 3  # and nothing runs twice
    assert db.execute("SELECT name, size FROM things").fetchall() == [("a", 1.5)]
    assert db.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
        (1,),
        (2,),
        (3,),
    ]

    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate_postgres(conn, "things", BASE, STEPS[:1])
        conn.execute("INSERT INTO things (name, size) VALUES ('a', 1.5)")
        migrate_postgres(conn, "things", BASE, STEPS)
        migrate_postgres(conn, "things", BASE, STEPS)
        assert conn.execute("SELECT name, size FROM things").fetchall() == [("a", 1.5)]
    assert _pg_versions(pg_url) == [("things", 1), ("things", 2), ("things", 3)]


def test_workers_starting_together_migrate_once(pg_url):
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                migrate_postgres(conn, "things", BASE, STEPS)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _pg_versions(pg_url) == [("things", 1), ("things", 2), ("things", 3)]


def test_a_failing_migration_changes_nothing_and_a_newer_database_is_refused(pg_url, tmp_path):
    broken = (*STEPS, Migration(4, "broken", "ALTER TABLE nothing_here ADD COLUMN x TEXT"))
    db = sqlite3.connect(tmp_path / "m.sqlite")
    migrate_sqlite(db, "things", BASE, STEPS[:1])
    with pytest.raises(FleetError, match="no such table"):
        migrate_sqlite(db, "things", BASE, broken)
    assert db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (2,)
    assert "things_name" not in {r[1] for r in db.execute("PRAGMA index_list(things)")}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        migrate_postgres(conn, "things", BASE, STEPS[:1])
        with pytest.raises(psycopg.errors.UndefinedTable):
            migrate_postgres(conn, "things", BASE, broken)
    assert _pg_versions(pg_url) == [("things", 1), ("things", 2)]

    # An older edgefleet (knowing up to version 2) meets a database at version 3.
    migrate_sqlite(db, "things", BASE, STEPS)
    with pytest.raises(FleetError, match="newer edgefleet"):
        migrate_sqlite(db, "things", BASE, STEPS[:1], where="m.sqlite")


def test_a_store_made_before_schema_versions_is_adopted_with_its_records(tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(PREDICTIONS_SCHEMA)
    old.execute(
        "INSERT INTO predictions (device_id, boot_id, seq, ts, label, score, model_name,"
        " model_version, latency_ms, source, record) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        ("d", "b1", 0, 1.0, "7", 0.5, "m", 1, 1.0, "scan-0.npy", record(0).model_dump_json()),
    )
    old.commit()
    old.close()
    store = SqliteStore(path)
    try:
        assert store.count() == 1
        assert store.add([record(0), record(1)]) == 1
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT component, version FROM schema_version").fetchall() == [
            ("predictions", 1)
        ]


def _columns_sqlite(schema: str) -> dict[str, list[str]]:
    db = sqlite3.connect(":memory:")
    db.executescript(schema)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {
        t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")]
        for t in tables
        if not t.startswith("sqlite_")
    }


def _columns_pg(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(str(table), []).append(str(column))
    return out


def test_postgres_has_every_table_and_column_of_the_sqlite_stores(pg_url, tmp_path):
    PostgresStore(pg_url).close()
    PostgresRegistry(tmp_path / "state", pg_url).close()
    PostgresLogStore(pg_url).close()
    pg = _columns_pg(pg_url)
    for schema in (PREDICTIONS_SCHEMA, REGISTRY_SCHEMA, LOGS_SCHEMA):
        for table, columns in _columns_sqlite(schema).items():
            assert pg.get(table) == columns, table


# -- the push registry ----------------------------------------------------------------


def _scenario(reg: Registry) -> dict[str, object]:
    """Every registry operation; returns what the reads give (must match across backends)."""
    m1, m2, m3 = manifest(1, b"one"), manifest(2, b"two"), manifest(3, b"three")
    reg.keep_model(m1.variants[0].sha256, b"one")
    reg.keep_model(m1.variants[0].sha256, b"one")
    p1 = reg.record_push(target=group_target("g"), manifest=m1, envelope=b"e1", members=("a",))
    reg.record_push(target=device_target("d"), manifest=m1, envelope=b"e1")
    reg.record_push(target=group_target("g"), manifest=m2, envelope=b"e2", kind="canary")
    reg.record_push(target=group_target("h"), manifest=m3, envelope=b"e3")
    reg.record_cleared(group_target("h"))
    reg.remember_device("a", groups=["g"], status_json='{"x": 1}', seen=5.0)
    reg.remember_device("a", groups=None, status_json=None, seen=3.0)
    reg.remember_device("b", groups=[], status_json=None, seen=1.0)
    if hasattr(reg, "record_cancelled"):
        reg.record_cancelled([p1])

    def key(p: object) -> tuple[object, ...]:
        return tuple(
            getattr(p, f) for f in ("target", "name", "version", "shas", "envelope", "kind")
        )

    return {
        "first_id": p1.id,
        "max_version": reg.max_version(),
        "history": [key(p) for p in reg.history(group_target("g"))],
        "latest": key(reg.latest(group_target("g"))),
        "latest_pushes": sorted(key(p) for p in reg.latest_pushes()),
        "current": sorted(key(p) for p in reg.current_desired()),
        "cleared": reg.cleared_targets(),
        "all": [key(p) for p in reg.all_pushes()],
        "pushed": reg.pushed_shas(),
        "desired": reg.desired_shas(),
        "devices": reg.known_devices(),
        "model": reg.model_bytes(m1.variants[0].sha256),
        "missing": reg.model_bytes("0" * 64),
        "cancelled": [getattr(p, "cancelled_at", None) is not None for p in reg.all_pushes()],
    }


def test_the_postgres_registry_answers_exactly_as_the_sqlite_one(pg_url, tmp_path):
    sqlite_reg = Registry(tmp_path / "sqlite-state")
    pg_reg = PostgresRegistry(tmp_path / "pg-state", pg_url)
    try:
        assert _scenario(pg_reg) == _scenario(sqlite_reg)
    finally:
        sqlite_reg.close()
        pg_reg.close()


def test_another_host_reads_pushes_and_model_bytes_from_the_shared_registry(
    pg_url, tmp_path, monkeypatch
):
    m1 = manifest(1, b"model-bytes")
    sha = m1.variants[0].sha256
    pusher = PostgresRegistry(tmp_path / "office", pg_url)
    pusher.keep_model(sha, b"model-bytes")
    pusher.record_push(target=group_target("g"), manifest=m1, envelope=b"e1")
    pusher.close()
    # A worker on another machine: no local copy of anything, the URL from the environment.
    monkeypatch.setenv("EDGEFLEET_STORE", pg_url)
    worker = open_any_registry(tmp_path / "worker")
    try:
        assert isinstance(worker, PostgresRegistry)
        assert worker.max_version() == 1
        assert not worker.model_path(sha).exists()
        assert worker.model_bytes(sha) == b"model-bytes"
        assert worker.model_path(sha).read_bytes() == b"model-bytes"  # cached locally
    finally:
        worker.close()
    monkeypatch.setenv("EDGEFLEET_STORE", str(tmp_path / "p.sqlite"))
    local = open_any_registry(tmp_path / "local")
    assert not isinstance(local, PostgresRegistry)
    local.close()


def test_registry_statements_translate_to_postgres():
    assert to_postgres("INSERT OR IGNORE INTO cancels (a, b) VALUES (?, ?)") == (
        "INSERT INTO cancels (a, b) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        False,
    )
    sql, returns_id = to_postgres("INSERT INTO pushes (a) VALUES (?)")
    assert returns_id
    assert sql.endswith("RETURNING id")
    assert to_postgres("SELECT MAX(COALESCE(x, 0), y), MAX(id) FROM t WHERE a LIKE '5%'")[0] == (
        "SELECT GREATEST(COALESCE(x, 0), y), MAX(id) FROM t WHERE a LIKE '5%%'"
    )


def test_the_registry_reconnects_after_losing_its_connection(pg_url, tmp_path):
    reg = PostgresRegistry(tmp_path / "state", pg_url)
    try:
        reg.record_push(target=group_target("g"), manifest=manifest(1, b"one"), envelope=b"e")
        _terminate_edgefleet_sessions(pg_url)
        with pytest.raises(FleetError, match="host registry in postgresql://edgefleet:\\*\\*\\*@"):
            reg.max_version()
        assert reg.max_version() == 1  # a listener answering chunk requests recovers
    finally:
        reg.close()


def test_export_and_tail_read_a_postgres_store(pg_url, monkeypatch):
    store = PostgresStore(pg_url)
    store.add([record(s, device=f"d{s % 2}") for s in range(5)])
    store.close()
    runner = CliRunner()
    res = runner.invoke(app, ["predictions", "export", "--jsonl", "--store", pg_url])
    assert res.exit_code == 0, res.output
    # Within one batch, rows are inserted in key order (device, boot, seq).
    assert [json.loads(line)["seq"] for line in res.stdout.splitlines()] == [0, 2, 4, 1, 3]
    monkeypatch.setenv("EDGEFLEET_STORE", pg_url)
    res = runner.invoke(app, ["predictions", "tail", "-n", "2", "--device", "d0"])
    assert res.exit_code == 0, res.output
    shown = [w for line in res.stdout.splitlines() for w in line.split() if w.startswith("#")]
    assert shown == ["#2", "#4"], res.stdout
    bad = pg_url.rsplit(":", 1)[0] + f":{free_port()}/nothing"
    res = runner.invoke(app, ["predictions", "export", "--csv", "--store", bad])
    assert res.exit_code == 1
    assert "cannot connect to the prediction store at postgresql://edgefleet:***@" in res.output
    assert bad.split(":")[2].split("@")[0] not in res.output  # the password


def test_messages_show_store_urls_without_passwords():
    assert redact("postgresql://u:p%40ss@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("postgresql://u@db/x?password=pw&sslmode=require") == (
        "postgresql://u@db/x?password=***&sslmode=require"
    )
    assert redact("postgresql://db/x") == "postgresql://db/x"


def test_a_worker_rides_out_a_database_restart_without_losing_or_acking_early(
    postgres, pg_url, tmp_path
):
    broker = FakeBroker()
    topics = Topics("edgefleet")
    registry = open_registry(tmp_path / "state")
    store = PostgresStore(pg_url)
    conn = broker.connect("worker-1", clean_session=False)
    worker = Ingestor(conn, Fleet(conn=conn, topics=topics, registry=registry), store)
    worker.subscribe()
    acked: list[int] = []
    device = broker.connect(
        "agent-d", on_message=lambda m: acked.extend(decode(Ack, m.payload).seqs)
    )
    device.subscribe(topics.predictions_ack("d"))

    def send(*seqs: int) -> None:
        payload = batch_payload([encode(record(s)) for s in seqs])
        device.publish(topics.predictions("d"), payload)

    def wait(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        send(0, 1)
        wait(lambda: sorted(acked) == [0, 1], "first batch acked")
        postgres.stop("fast")  # the database server restarts
        send(2, 3)
        wait(lambda: worker.stats.failed_batches >= 1, "a failed batch")
        assert sorted(acked) == [0, 1]  # nothing acked that was not stored
        postgres.start()
        send(2, 3)  # the device's outbox sends them again
        wait(lambda: sorted(acked) == [0, 1, 2, 3], "second batch acked after the restart")
    finally:
        stop.set()
        thread.join(10)
        if not postgres.started:
            postgres.start()
        store.close()
        registry.close()
    check = PostgresStore(pg_url)
    try:
        assert sorted(r.seq for _, r in check.iter_records()) == [0, 1, 2, 3]
    finally:
        check.close()


# -- device log lines -----------------------------------------------------------------


def log_line(
    seq: int, *, ts: float, device: str = "d", boot: str = "b1", text: str = ""
) -> DeviceLog:
    return DeviceLog(
        device_id=device,
        boot_id=boot,
        seq=seq,
        ts=ts,
        level="WARNING",
        logger="edgefleet.device.agent",
        message=text or f"line {seq}",
        dropped=seq % 2,
    )


def test_log_lines_are_stored_once_and_read_back_in_order_on_both_backends(pg_url, tmp_path):
    for store in (open_log_store(pg_url), open_log_store(tmp_path / "p.sqlite")):
        other = open_log_store(pg_url) if isinstance(store, PostgresLogStore) else None
        try:
            assert isinstance(store, (PostgresLogStore, LogStore))
            assert store.add(log_line(0, ts=100.0), received_at=1.0)
            assert store.add(log_line(1, ts=90.0, text="nul \x00 here"), received_at=1.0)
            assert not store.add(log_line(1, ts=90.0), received_at=2.0)  # a duplicate
            if other is not None:  # a second worker sees the same line: stored once
                assert not other.add(log_line(0, ts=100.0), received_at=3.0)
            assert store.add(log_line(0, ts=95.0, boot="b2"), received_at=1.0)
            assert store.add(log_line(0, ts=99.0, device="e"), received_at=1.0)
            rows = store.lines("d")
            assert [(r.line.boot_id, r.line.seq) for r in rows] == [("b1", 0), ("b1", 1), ("b2", 0)]
            assert [r.id for r in rows] == sorted(r.id for r in rows)
            assert rows[0].line == log_line(0, ts=100.0)
            if isinstance(store, PostgresLogStore):  # PostgreSQL text cannot hold NUL
                assert rows[1].line.message == "nul \ufffd here"
            else:
                assert rows[1].line.message == "nul \x00 here"
            assert [r.line.ts for r in store.lines("d", since=95.0)] == [100.0, 95.0]
            assert [r.line.seq for r in store.lines("d", after_id=rows[1].id)] == [0]
            assert [r.line.device_id for r in store.lines("e")] == ["e"]
        finally:
            store.close()
            if other is not None:
                other.close()
    assert ("logs", 2) in _pg_versions(pg_url)
    with sqlite3.connect(tmp_path / "p.sqlite") as db:
        assert ("logs", 2) in db.execute("SELECT component, version FROM schema_version")


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def _listen_with_logs(broker, prefix: str, pg_url: str, state, metrics: int):
    """``predictions listen --logs --metrics`` on ``$EDGEFLEET_STORE``, started; its banner."""
    listener = subprocess.Popen(
        [sys.executable, "-c", "from edgefleet.host.cli import main; main()", "predictions",
         "listen", "--broker", broker.url, "--prefix", prefix, "--state-dir", str(state),
         "--logs", "--metrics", f"127.0.0.1:{metrics}"],
        stderr=subprocess.PIPE,
        env={**os.environ, "EDGEFLEET_STORE": pg_url},
    )  # fmt: skip
    assert listener.stderr is not None
    lines: list[str] = []
    while not any("listening on" in line for line in lines):
        line = listener.stderr.readline().decode()
        if not line:
            listener.wait(10)
            pytest.fail(f"listen ended early: {lines}")
        lines.append(line)
    return listener, "".join(lines)


def test_listen_logs_into_postgres_and_edgefleet_logs_reads_them(broker, prefix, pg_url, tmp_path):
    metrics = free_port()
    listener, banner = _listen_with_logs(broker, prefix, pg_url, tmp_path / "host", metrics)
    topics = Topics(prefix)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pg-logs-{os.getpid()}")
    host, port = broker.url.removeprefix("mqtt://").split(":")
    seen: dict[str, float] = {}
    try:
        assert "storing device logs in postgresql://edgefleet:***@" in banner
        assert pg_url.split(":")[2].split("@")[0] not in banner  # the password
        wait_for_port(metrics, timeout=30)
        client.connect(host, int(port))
        client.loop_start()
        now = time.time()
        for payload, device in (
            (encode(log_line(0, device="pi-7", ts=now - 3600, text="an hour ago")), "pi-7"),
            (encode(log_line(1, device="pi-7", ts=now - 60, text="disk \x1b[31m full")), "pi-7"),
            (encode(log_line(1, device="pi-7", ts=now - 60, text="disk full")), "pi-7"),  # again
            (b"\x1b[2J not json", "pi-7"),  # undecodable
            (encode(log_line(2, device="pi-8", ts=now, text="not mine")), "pi-7"),  # another's
            (encode(log_line(2, device="pi-7", ts=now - 1, text="restarting")), "pi-7"),
        ):
            client.publish(topics.logs(device), payload, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 30
        while not (
            seen.get("edgefleet_ingest_log_lines_stored_total") == 3
            and seen.get("edgefleet_ingest_log_lines_malformed_total") == 2
        ):
            assert time.monotonic() < deadline, f"lines not counted: {seen}"
            time.sleep(0.2)
            seen.update(_scrape(metrics))
    finally:
        client.loop_stop()
        client.disconnect()
        listener.send_signal(signal.SIGTERM)
        listener.wait(30)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM logs").fetchone() == (3,)

    runner = CliRunner()
    res = runner.invoke(app, ["logs", "pi-7", "--store", pg_url])
    assert res.exit_code == 0, res.output
    shown = res.stdout.splitlines()
    assert [ln.rsplit(": ", 1)[1] for ln in shown] == [
        "an hour ago",
        "disk \\x1b[31m full [1 line(s) dropped before this]",
        "restarting",
    ]
    assert all(" pi-7 WARNING  edgefleet.device.agent: " in ln for ln in shown)
    recent = runner.invoke(app, ["logs", "pi-7", "--since", "10m"], env={"EDGEFLEET_STORE": pg_url})
    assert recent.exit_code == 0, recent.output
    assert [ln.rsplit(": ", 1)[1] for ln in recent.stdout.splitlines()] == [
        "disk \\x1b[31m full [1 line(s) dropped before this]",
        "restarting",
    ]
    none = runner.invoke(app, ["logs", "pi-8", "--store", pg_url])
    assert none.exit_code == 0
    assert none.stdout == ""
