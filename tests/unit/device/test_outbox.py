import functools
import json
import sqlite3
from pathlib import Path

import pytest

from edgefleet.device.outbox import Outbox
from edgefleet.shared.messages import PredictionRecord, Status
from support.race import at_once


def _build(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_records_survive_reopen_and_leave_only_on_ack(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", max_records=10, when_full="drop_oldest")
    seqs = [box.append("boot-a", _build) for _ in range(3)]
    assert seqs == [1, 2, 3]
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_records=10, when_full="drop_oldest")
    assert [p.seq for p in box.pending()] == [1, 2, 3]
    assert json.loads(box.pending()[1].payload) == {"seq": 2}
    assert box.ack("boot-a", [2]) == 1
    assert box.ack("boot-b", [1]) == 0  # another run's seq 1 is a different record
    assert [p.seq for p in box.pending()] == [1, 3]
    # seqs keep growing across restarts so (boot, seq) never repeats
    assert box.append("boot-b", _build) == 4


def test_pending_pages_in_order(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", max_records=100, when_full="drop_oldest")
    for _ in range(7):
        box.append("b", _build)
    assert [p.seq for p in box.pending(after_seq=2, limit=3)] == [3, 4, 5]


@pytest.mark.parametrize(
    ("policy", "kept"), [("drop_oldest", [2, 3, 4]), ("drop_newest", [1, 2, 3])]
)
def test_full_outbox_policy_is_applied_and_counted(tmp_path: Path, policy, kept):
    box = Outbox(tmp_path / "o.sqlite", max_records=3, when_full=policy)
    results = [box.append("b", _build) for _ in range(4)]
    assert [p.seq for p in box.pending()] == kept
    assert box.dropped() == 1
    assert box.depth() == 3
    assert results[-1] == (4 if policy == "drop_oldest" else None)


def test_failed_build_leaves_nothing_behind(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", max_records=3, when_full="drop_oldest")

    def broken(seq: int) -> bytes:
        raise ValueError(seq)

    with pytest.raises(ValueError, match="1"):
        box.append("b", broken)
    assert box.depth() == 0
    assert box.append("b", _build) == 1  # the seq was not consumed either


def test_the_wire_descriptions_say_what_the_outbox_does(tmp_path: Path):
    # The schema text is what other implementers read: it must match the behaviour.
    box = Outbox(tmp_path / "o.sqlite", max_records=1, when_full="drop_oldest")
    assert box.append("run-1", _build) == 1  # starts at 1, not 0
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_records=1, when_full="drop_oldest")
    assert box.append("run-2", _build) == 2  # a new run keeps counting
    assert box.dropped() == 1  # run-1's record, dropped by the bound policy
    fields = PredictionRecord.model_fields
    seq_text = f"{fields['seq'].description} {fields['boot_id'].description}"
    assert "starts at 1" in seq_text
    assert "across runs" in seq_text
    assert "restarts" not in seq_text
    assert "outbox bound policy" in (Status.model_fields["dropped"].description or "")


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
@pytest.mark.parametrize(("before", "batch"), [(0, 5), (2, 2), (2, 3), (4, 3)])
def test_a_batch_commit_is_the_same_as_one_record_at_a_time(tmp_path: Path, policy, before, batch):
    one = Outbox(tmp_path / "one.sqlite", max_records=5, when_full=policy)
    many = Outbox(tmp_path / "many.sqlite", max_records=5, when_full=policy)
    for box in (one, many):
        for _ in range(before):
            box.append("b", _build)
    seqs_one = [one.append("b", _build) for _ in range(batch)]
    seqs_many = many.append_many("b", [_build] * batch)
    assert seqs_many == seqs_one
    assert [(p.seq, p.payload) for p in many.pending()] == [
        (p.seq, p.payload) for p in one.pending()
    ]
    assert (many.dropped(), many.depth()) == (one.dropped(), one.depth())
    assert many.append("b", _build) == one.append("b", _build)  # the counter moved alike


def test_a_failed_batch_build_leaves_nothing_behind(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", max_records=100, when_full="drop_oldest")

    def broken(seq: int) -> bytes:
        raise ValueError(seq)

    with pytest.raises(ValueError, match="3"):
        box.append_many("b", [_build, _build, broken])
    assert box.depth() == 0
    assert box.append("b", _build) == 1


def test_outboxes_opened_at_once_on_a_new_file_all_open(tmp_path: Path):
    # The agent and `edgefleet-agent status` can open a new outbox at the same moment; the
    # first switch to WAL takes an exclusive lock, and SQLite refuses it at once (no busy
    # wait) while another connection holds one. Without the retry some rounds failed.
    for i in range(60):
        path = tmp_path / f"r{i}.sqlite"
        opener = functools.partial(Outbox, path, max_records=10, when_full="drop_oldest")
        boxes, errors = at_once([opener] * 4)
        assert errors == [], f"round {i}"
        assert boxes[0].append("b", _build) == 1  # the counter was set up once
        for box in boxes:
            box.close()
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
