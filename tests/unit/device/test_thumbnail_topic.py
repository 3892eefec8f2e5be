"""Input thumbnails leave the agent on their own topic, never inside the prediction record.

docs/protocol.md 4.3.2: the record stays what every host accepts (no ``thumbnail`` key); the
picture goes to ``{p}/devices/{id}/thumbnails`` at QoS 0 once the record is committed, and
nothing that goes wrong with it costs the prediction.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgefleet.device.agent import Agent
from edgefleet.device.config import parse_config
from edgefleet.shared.messages import InputThumbnail, PredictionRecord, decode
from edgefleet.shared.spec import PreprocessSpec

# The fields of a PredictionRecord before thumbnails existed: what every host accepts.
PREVIOUS_RECORD_FIELDS = {
    "v",
    "device_id",
    "boot_id",
    "seq",
    "source",
    "label",
    "score",
    "topk",
    "latency_ms",
    "model_name",
    "model_version",
    "ts",
    "error",
}
IMAGE = PreprocessSpec.model_validate({"kind": "image", "height": 28, "width": 28, "channels": 1})


def _classify(_array: Any, *_a: Any, **_k: Any) -> SimpleNamespace:
    return SimpleNamespace(label="7", score=0.9, topk=[("7", 0.9)], latency_ms=0.5, error=None)


def _agent(tmp_path: Path, *, thumbnails: bool) -> tuple[Agent, list[tuple[str, bytes, int]]]:
    toml = (
        f'device_id = "b1"\nstate_dir = "state"\n[inference]\n'
        f"thumbnails = {str(thumbnails).lower()}\n"
    )
    agent = Agent(parse_config(toml, base=tmp_path))
    sent: list[tuple[str, bytes, int]] = []

    def publish(topic: str, payload: bytes, qos: int = 0, **_k: Any) -> SimpleNamespace:
        sent.append((topic, payload, qos))
        return SimpleNamespace(rc=0, mid=len(sent))

    agent.link.client.publish = publish  # type: ignore[method-assign,assignment]
    agent.link.connected.set()
    agent.classifier = SimpleNamespace(  # type: ignore[assignment] - a stand-in interpreter
        name="digits", version=3, preprocess_spec=IMAGE, classify=_classify
    )
    agent.telemetry.prediction = lambda _p: None  # type: ignore[method-assign]
    agent.shadow.offer = lambda *_a: None  # type: ignore[method-assign]
    return agent, sent


def _digit() -> np.ndarray:
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255
    return digit


def test_the_record_has_no_thumbnail_and_the_picture_follows_on_its_topic(tmp_path: Path):
    agent, sent = _agent(tmp_path, thumbnails=True)
    try:
        seq = agent.classify(_digit(), source="d.png")
        thumbs = [(p, q) for t, p, q in sent if t == agent.topics.thumbnails("b1")]
        records = [p for t, p, _ in sent if t == agent.topics.predictions("b1")]
        assert len(thumbs) == len(records) == 1
        # The record decodes under the previous schema rules: no field a host may not know.
        keys = set(json.loads(records[0]))
        assert "thumbnail" not in keys
        assert keys <= PREVIOUS_RECORD_FIELDS
        record = decode(PredictionRecord, records[0])
        payload, qos = thumbs[0]
        assert qos == 0  # best effort: no in-flight slot, never redelivered
        thumb = decode(InputThumbnail, payload)
        assert (thumb.device_id, thumb.boot_id, thumb.seq) == (
            record.device_id,
            record.boot_id,
            record.seq,
        )
        assert record.seq == seq
        assert (thumb.format, thumb.width, thumb.height) == ("png", 28, 28)
        assert agent.thumbs.sent == 1
    finally:
        agent.outbox.close()


def test_thumbnails_off_publish_nothing_on_the_topic(tmp_path: Path):
    agent, sent = _agent(tmp_path, thumbnails=False)
    try:
        agent.classify(_digit(), source="d.png")
        assert [t for t, _, _ in sent] == [agent.topics.predictions("b1")]
    finally:
        agent.outbox.close()


def test_a_thumbnail_that_cannot_be_drawn_or_sent_never_costs_the_prediction(tmp_path: Path):
    agent, sent = _agent(tmp_path, thumbnails=True)
    try:
        agent.classify(np.zeros((2, 2, 2, 2)), source="odd.npy")  # cannot be drawn
        assert [t for t, _, _ in sent] == [agent.topics.predictions("b1")]
        publish = agent.link.client.publish

        def refusing(topic: str, payload: bytes, *a: Any, **k: Any) -> Any:
            if topic.endswith("/thumbnails"):
                raise OSError("socket gone")
            return publish(topic, payload, *a, **k)

        agent.link.client.publish = refusing  # type: ignore[method-assign,assignment]
        sent.clear()
        seq = agent.classify(_digit(), source="d.png")
        assert seq is not None
        assert [t for t, _, _ in sent] == [agent.topics.predictions("b1")]
        assert agent.thumbs.failed == 1
        agent.link.client.publish = lambda *_a, **_k: SimpleNamespace(rc=4)  # type: ignore[method-assign,assignment]
        agent.classify(_digit(), source="e.png")  # paho: not connected, QoS 0 dropped
        assert agent.thumbs.failed == 2
        assert agent.outbox.depth() == 3
    finally:
        agent.outbox.close()


def test_a_failed_outbox_commit_sends_no_thumbnail(tmp_path: Path):
    agent, sent = _agent(tmp_path, thumbnails=True)
    append_many = agent.outbox.append_many

    def failing(boot_id: str, builds: Any) -> Any:
        for build in builds:
            build(1)  # the records were built (pictures noted), then the commit failed
        raise OSError("disk full")

    agent.outbox.append_many = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError, match="disk full"):
            agent.classify(_digit(), source="d.png")
        agent.outbox.append_many = append_many  # type: ignore[method-assign]
        agent.classify(_digit(), source="e.png")
        thumbs = [decode(InputThumbnail, p) for t, p, _ in sent if t.endswith("/thumbnails")]
        assert [t.seq for t in thumbs] == [1]  # only the committed record's picture
        assert agent.outbox.depth() == 1
    finally:
        agent.outbox.close()
