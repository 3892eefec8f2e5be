"""The agent's image-topic path commits one outbox transaction per drained batch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgefleet.device.agent import Agent
from edgefleet.device.config import parse_config
from edgefleet.shared.messages import ImageMessage, encode


def _image(name: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((28, 28), dtype=np.uint8))
    return encode(ImageMessage.from_bytes(name=name, format="npy", data=buf.getvalue()))


def test_image_messages_are_committed_once_per_drained_batch(tmp_path: Path):
    config = parse_config('device_id = "b1"\nstate_dir = "state"', base=tmp_path)
    agent = Agent(config)
    # A stand-in for the interpreter (this test is about the outbox transactions).
    agent._predict = lambda _a, *, source: lambda seq: f"{source}:{seq}".encode()  # type: ignore[method-assign]
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
