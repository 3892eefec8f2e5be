"""The agent batches: one outbox transaction per drained batch, records sent in batches."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from edgefleet.device.agent import FOLDER_BATCH, Agent
from edgefleet.device.config import parse_config
from edgefleet.shared.messages import (
    Ack,
    ImageMessage,
    PredictionRecord,
    decode,
    decode_predictions,
    encode,
)


def _image(name: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((28, 28), dtype=np.uint8))
    return encode(ImageMessage.from_bytes(name=name, format="npy", data=buf.getvalue()))


def test_image_messages_are_committed_once_per_drained_batch(tmp_path: Path):
    config = parse_config('device_id = "b1"\nstate_dir = "state"', base=tmp_path)
    agent = Agent(config)
    # A stand-in for the interpreter (this test is about the outbox transactions).
    agent._predict = lambda _a, *, source, **_k: lambda seq: f"{source}:{seq}".encode()  # type: ignore[method-assign]
    commits: list[int] = []
    append_many = agent.outbox.append_many

    def counting(boot_id, builds):
        commits.append(len(builds))
        return append_many(boot_id, builds)

    agent.outbox.append_many = counting  # type: ignore[method-assign]
    try:
        topic = agent.topics.images("b1")
        for i in range(10):
            agent._dispatch(topic, _image(f"s{i}"))
        assert agent.outbox.depth() == 0  # nothing committed while events keep coming
        agent._idle()
        assert commits == [10]
        assert [r.payload for r in agent.outbox.pending(after_seq=0, limit=100)] == [
            f"mqtt:s{i}:{r.seq}".encode()
            for i, r in enumerate(agent.outbox.pending(after_seq=0, limit=100))
        ]
    finally:
        agent.outbox.close()


def _record_builder(source: str):
    def build(seq: int) -> bytes:
        return encode(
            PredictionRecord(
                device_id="b1", boot_id="boot", seq=seq, source=source, label="7", score=0.5,
                latency_ms=0.1, model_name="m", model_version=1, ts=1.0,
            )
        )  # fmt: skip

    return build


def _publishing_agent(tmp_path: Path, outbox: str) -> tuple[Agent, list[tuple[str, bytes]]]:
    toml = f'device_id = "b1"\nstate_dir = "state"\n[outbox]\n{outbox}\n'
    agent = Agent(parse_config(toml, base=tmp_path))
    sent: list[tuple[str, bytes]] = []
    agent.link.client.publish = lambda topic, payload, *_a, **_k: sent.append((topic, payload))  # type: ignore[method-assign,assignment]
    agent.link.connected.set()
    agent.boot_id = "boot"  # the outbox keys records by the agent's boot id
    return agent, sent


def test_records_go_out_in_batches_and_leave_the_outbox_only_when_acked(tmp_path: Path):
    agent, sent = _publishing_agent(tmp_path, "batch_records = 4\nmax_in_flight = 10")
    try:
        agent._commit([_record_builder(f"f{i}") for i in range(13)])
        topic = agent.topics.predictions("b1")
        assert {t for t, _ in sent} == {topic}
        batches = [decode_predictions(p) for _, p in sent]
        assert [len(b) for b in batches] == [4, 4, 2]  # max_in_flight counts records
        assert [r.seq for b in batches for r in b] == list(range(1, 11))
        sent.clear()
        ack = Ack(device_id="b1", boot_id="boot", seqs=[1, 2, 3, 4, 5])
        agent._dispatch(agent.topics.predictions_ack("b1"), encode(ack))
        assert agent.outbox.depth() == 13  # acks are applied when the queue runs dry
        agent._idle()
        assert agent.outbox.depth() == 8
        assert [[r.seq for r in decode_predictions(p)] for _, p in sent] == [[11, 12, 13]]
    finally:
        agent.outbox.close()


def test_stale_records_are_sent_again_in_batches_and_a_lone_record_goes_plain(tmp_path: Path):
    agent, sent = _publishing_agent(tmp_path, "batch_records = 2\nresend_after_s = 0.001")
    try:
        agent._commit([_record_builder("a")])
        assert decode(PredictionRecord, sent[0][1]).seq == 1  # one record: the plain form
        agent._commit([_record_builder("b"), _record_builder("c")])
        for seq in agent.inflight.sent:
            agent.inflight.sent[seq] -= 1.0  # every record is overdue for an ack
        sent.clear()
        agent.inflight.drain()
        assert [[r.seq for r in decode_predictions(p)] for _, p in sent] == [[1, 2], [3]]
    finally:
        agent.outbox.close()


def test_acks_are_handled_between_folder_batches(tmp_path: Path):
    inbox = tmp_path / "inbox"
    agent, _sent = _publishing_agent(
        tmp_path,
        f'batch_records = 50\n[inference]\nwatch_dir = "{inbox}"\npoll_s = 0.001\nsettle_s = 0.001',
    )
    agent.classifier = object()  # type: ignore[assignment] - _predict is stubbed below
    agent._predict = lambda _a, *, source, **_k: _record_builder(source)  # type: ignore[method-assign]
    try:
        agent._commit([_record_builder(f"early{i}") for i in range(3)])
        ack = Ack(device_id="b1", boot_id="boot", seqs=[1, 2, 3])
        agent.events.offer(agent.topics.predictions_ack("b1"), encode(ack), kind="ack")
        buf = io.BytesIO()
        np.save(buf, np.zeros((28, 28), dtype=np.uint8))
        for i in range(FOLDER_BATCH + 5):
            (inbox / f"f{i:04d}.npy").write_bytes(buf.getvalue())
        depths: list[int] = []
        classify_files = agent._classify_files

        def recording(paths):
            depths.append(agent.outbox.depth())
            classify_files(paths)

        agent._classify_files = recording  # type: ignore[method-assign]
        time.sleep(0.01)  # older than settle_s: taken at the first poll
        agent._poll_folder()
        # the ack that waited in the queue was applied before the second batch, not after all
        assert depths == [3, FOLDER_BATCH]
        assert agent.outbox.depth() == FOLDER_BATCH + 5
    finally:
        agent.outbox.close()
