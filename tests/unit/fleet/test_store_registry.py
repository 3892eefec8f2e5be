"""The SQLite prediction store and the host registry, on real SQLite files."""

from __future__ import annotations

import io
import json

from edgefleet.host.fleet import Registry, SqliteStore, device_target, export, group_target
from edgefleet.shared.messages import PredictionRecord
from support.manifests import manifest


def record(seq: int, boot: str = "b1") -> PredictionRecord:
    return PredictionRecord(
        device_id="d",
        boot_id=boot,
        seq=seq,
        label="7",
        score=0.5,
        latency_ms=1.0,
        model_name="m",
        model_version=1,
        ts=1.0,
    )


def test_store_ignores_duplicates_across_two_handles_of_one_file(tmp_path):
    a, b = SqliteStore(tmp_path / "p.sqlite"), SqliteStore(tmp_path / "p.sqlite")
    assert a.add([record(0), record(1)]) == 2
    assert b.add([record(1), record(2), record(0, boot="b2")]) == 2
    assert a.count() == 4
    out = io.StringIO()
    assert export(b, out, fmt="jsonl") == 4
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == [0, 1, 2, 0]


def test_registry_tracks_versions_and_which_models_are_still_desired(tmp_path):
    reg = Registry(tmp_path)
    m1, m2 = manifest(1, b"one"), manifest(2, b"two")
    reg.keep_model(m1.variants[0].sha256, b"one")
    reg.record_push(target=group_target("g"), manifest=m1, envelope=b"e1")
    reg.record_push(target=device_target("d"), manifest=m1, envelope=b"e1")
    reg.record_push(target=group_target("g"), manifest=m2, envelope=b"e2")
    assert reg.max_version() == 2
    assert [p.version for p in reg.history(group_target("g"))] == [1, 2]
    assert reg.desired_shas() == {m1.variants[0].sha256, m2.variants[0].sha256}
    assert reg.model_bytes(m1.variants[0].sha256) == b"one"
    reopened = Registry(tmp_path)
    assert reopened.latest(group_target("g")).envelope == b"e2"
