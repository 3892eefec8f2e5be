"""Bounded integers on the wire, and a host store and Ingestor that no record can stop.

Issue 16, attack 1: a record with ``seq`` or ``model_version`` of 2^64 killed the listener
with an ``OverflowError`` from SQLite. The schema now refuses integers outside 0 .. 2^63-1
with the field's name; the store refuses them itself (with a ValueError, never an
OverflowError); and the Ingestor survives any record the store cannot take.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading

import pytest

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import Fleet, Ingestor, SqliteStore, export, open_registry
from edgefleet.host.fleet._ingest import WarningBudget
from edgefleet.host.fleet._store import check_record, csv_safe
from edgefleet.shared.errors import DecodeError
from edgefleet.shared.messages import (
    MAX_COUNT,
    Ack,
    ChunkRequest,
    PredictionRecord,
    Reported,
    Status,
    decode,
    decode_predictions,
    encode,
)
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker

T = Topics("edgefleet")
HUGE = [2**63, 2**64, 2**70, 10**30]


def record(seq: int = 1, **kw) -> PredictionRecord:
    fields = {
        "device_id": "d1",
        "boot_id": "boot1",
        "seq": seq,
        "label": "7",
        "score": 0.9,
        "latency_ms": 2.0,
        "model_name": "digits",
        "model_version": 1,
        "ts": 1_800_000_000.0,
    }
    fields.update(kw)
    return PredictionRecord(**fields)


def raw(**overrides) -> bytes:
    doc = json.loads(encode(record()))
    doc.update(overrides)
    return json.dumps(doc).encode()


# -- the schema -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["seq", "model_version"])
def test_the_largest_signed_64_bit_integer_is_accepted(field):
    [rec] = decode_predictions(raw(**{field: MAX_COUNT}))
    assert getattr(rec, field) == 2**63 - 1


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("field", ["seq", "model_version"])
def test_a_record_integer_past_2_63_is_refused_naming_the_field(field, value):
    with pytest.raises(DecodeError, match=rf"{field}: out of range: integers on the wire are 0"):
        decode_predictions(raw(**{field: value}))


def test_a_batch_with_one_huge_seq_is_refused_whole():
    good = encode(record(1)).decode()
    bad = raw(seq=2**64).decode()
    with pytest.raises(DecodeError, match=r"records\.1\.seq: out of range"):
        decode_predictions(f'{{"v":1,"records":[{good},{bad}]}}'.encode())


@pytest.mark.parametrize(
    ("model", "doc", "field"),
    [
        (Ack, {"device_id": "d", "boot_id": "b", "seqs": [1, 2**64]}, "seqs.1"),
        (ChunkRequest, {"device_id": "d", "sha256": "a" * 64, "indexes": [2**70]}, "indexes.0"),
        (Reported, {"device_id": "d", "state": "active", "active_version": 2**64}, "active_ver"),
        (Reported, {"device_id": "d", "state": "idle", "version": 2**63}, "version"),
        (Status, {"device_id": "d", "online": True, "model_version": 2**64}, "model_version"),
        (Status, {"device_id": "d", "online": True, "outbox_depth": 2**70}, "outbox_depth"),
    ],
)
def test_every_counter_a_peer_sends_is_bounded(model, doc, field):
    with pytest.raises(DecodeError, match=rf"{field}\w*: out of range"):
        decode(model, json.dumps({"v": 1, **doc}).encode())


def test_negative_counters_are_refused():
    with pytest.raises(DecodeError, match="seq: Input should be greater than or equal to 0"):
        decode_predictions(raw(seq=-1))


# -- the store ----------------------------------------------------------------------------


def smuggled(**kw) -> PredictionRecord:
    """A record that skipped validation (a buggy decoder, another PredictionStore caller)."""
    return record().model_copy(update=kw)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "p.sqlite")
    yield s
    s.close()


@pytest.mark.parametrize("field", ["seq", "model_version"])
def test_the_store_refuses_an_out_of_range_integer_with_a_value_error(store, field):
    bad = smuggled(**{field: 2**64})
    with pytest.raises(ValueError, match=rf"{field} 18446744073709551616 is outside 0 .. 2\^63-1"):
        check_record(bad)
    with pytest.raises(ValueError, match="outside"):  # not an OverflowError from sqlite3
        store.add([record(1), bad])
    assert store.count() == 0  # nothing of the call was committed
    assert store.add([record(1)]) == 1


def test_the_store_stores_the_largest_counters(store):
    assert store.add([record(MAX_COUNT, model_version=MAX_COUNT)]) == 1
    [(_, back)] = store.iter_records()
    assert back.seq == back.model_version == MAX_COUNT


# -- the Ingestor -------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path):
    r = open_registry(tmp_path / "state")
    yield r
    r.close()


def make_worker(broker, registry, store) -> Ingestor:
    conn = broker.connect(None)
    worker = Ingestor(conn, Fleet(conn=conn, topics=T, registry=registry), store)
    worker.subscribe()
    return worker


def acks_of(broker) -> list[int]:
    return sorted(
        s for p in broker.published(T.predictions_ack("d1")) for s in json.loads(p.payload)["seqs"]
    )


def test_an_unstorable_record_is_counted_logged_acked_and_the_rest_stored(
    broker_fixture, registry, store, caplog
):
    worker = make_worker(broker_fixture, registry, store)
    batch = [record(1), smuggled(seq=2, model_version=2**64), record(3)]
    with caplog.at_level(logging.WARNING):
        worker.commit_and_ack(batch)
    assert sorted(r.seq for _, r in store.iter_records()) == [1, 3]
    assert acks_of(broker_fixture) == [1, 2, 3]  # acked: no host can ever store it
    s = worker.stats
    assert (s.stored, s.duplicates, s.malformed, s.unstorable) == (2, 0, 1, 1)
    assert "cannot store record d1/boot1 seq 2 (ValueError: record d1/boot1 seq 2:" in caplog.text


def test_a_record_whose_seq_an_ack_cannot_carry_is_dropped_without_an_ack(
    broker_fixture, registry, store
):
    worker = make_worker(broker_fixture, registry, store)
    worker.commit_and_ack([smuggled(seq=2**64), record(5)])
    assert acks_of(broker_fixture) == [5]
    assert worker.stats.unstorable == 1


class OverflowStore(SqliteStore):
    """A store that dies like the old one did on any record with seq 13."""

    def add(self, records):
        records = list(records)
        if any(r.seq == 13 for r in records):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return super().add(records)


def test_any_exception_but_a_database_failure_is_the_records_own(
    broker_fixture, registry, tmp_path
):
    store = OverflowStore(tmp_path / "o.sqlite")
    worker = make_worker(broker_fixture, registry, store)
    worker.commit_and_ack([record(12), record(13), record(14)])
    assert sorted(r.seq for _, r in store.iter_records()) == [12, 14]
    assert acks_of(broker_fixture) == [12, 13, 14]
    store.close()


class FullDisk(SqliteStore):
    def add(self, records):  # noqa: ARG002 - fails whatever it is given
        raise FleetError("storing predictions failed: database or disk is full")


def test_a_database_failure_acks_nothing_even_in_the_one_by_one_pass(
    broker_fixture, registry, tmp_path
):
    store = FullDisk(tmp_path / "f.sqlite")
    worker = make_worker(broker_fixture, registry, store)
    with pytest.raises(FleetError):
        worker.commit_and_ack([record(1)])
    assert acks_of(broker_fixture) == []
    store.close()


class Flaky:
    """A connection whose next_message blows up once, then behaves."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def next_message(self, timeout):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug somewhere below")
        return self.conn.next_message(timeout)


def test_the_worker_loop_survives_an_unexpected_exception(broker_fixture, registry, store):
    conn = broker_fixture.connect(None)
    fleet = Fleet(conn=conn, topics=T, registry=registry)
    worker = Ingestor(Flaky(conn), fleet, store)  # type: ignore[arg-type]
    worker.subscribe()
    device = broker_fixture.connect("agent-d1")
    device.publish(T.predictions("d1"), encode(record(1)))
    stop = threading.Event()
    worker.run(stop=stop, on_batch=lambda _s: stop.set())
    assert worker.stats.errors == 1
    assert store.count() == 1


def test_a_huge_seq_on_the_wire_is_malformed_and_the_next_record_is_stored(
    broker_fixture, registry, store
):
    worker = make_worker(broker_fixture, registry, store)
    device = broker_fixture.connect("agent-d1")
    device.publish(T.predictions("d1"), raw(seq=2**64))
    device.publish(T.predictions("d1"), raw(model_version=2**70))
    device.publish(T.predictions("d1"), encode(record(7)))
    stop = threading.Event()
    worker.run(stop=stop, on_batch=lambda _s: stop.set())
    assert worker.stats.malformed == 2
    assert [r.seq for _, r in store.iter_records()] == [7]
    assert acks_of(broker_fixture) == [7]


def test_warnings_are_rate_limited_per_device(caplog):
    budget = WarningBudget(per_window=3, window_s=60)
    with caplog.at_level(logging.WARNING):
        allowed = [budget.allow("d1", now=float(i)) for i in range(10)]
    assert allowed == [True] * 3 + [False] * 7
    assert "not logging them" in caplog.text
    assert budget.allow("d2", now=5.0)  # another device has its own budget
    assert budget.allow("d1", now=61.0)  # a new window


@pytest.fixture
def broker_fixture() -> FakeBroker:
    return FakeBroker()


# -- CSV ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("cat", "cat"),
        ("", ""),
        (-0.5, -0.5),
        (3, 3),
    ],
)
def test_csv_safe_prefixes_formula_starts_only(cell, safe):
    assert csv_safe(cell) == safe


def test_the_csv_export_neutralises_device_supplied_text(store):
    store.add(
        [
            record(
                1,
                label='=HYPERLINK("http://evil","x")',
                source="=cmd|' /C calc'!A0",
                model_name="@x",
                topk=[{"label": "-1+1", "score": 0.5}],
            )
        ]
    )
    out = io.StringIO()
    export(store, out, fmt="csv")
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["label"] == '\'=HYPERLINK("http://evil","x")'
    assert row["source"] == "'=cmd|' /C calc'!A0"
    assert row["model_name"] == "'@x"
    assert row["top1_label"] == "'-1+1"
    assert row["top1_score"] == "0.5000"
    assert row["seq"] == "1"
    out = io.StringIO()
    export(store, out, fmt="jsonl")  # JSON is data, not formulas: unchanged
    assert json.loads(out.getvalue())["label"].startswith("=HYPERLINK")
