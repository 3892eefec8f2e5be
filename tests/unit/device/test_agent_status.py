"""The agent's status message carries the persisted counters."""

from __future__ import annotations

from pathlib import Path

from edgefleet.device.agent import Agent
from edgefleet.device.config import parse_config
from edgefleet.shared.messages import Status, decode, encode


def test_status_reports_the_ignored_manifest_count(tmp_path: Path):
    config = parse_config('device_id = "s1"\nstate_dir = "state"', base=tmp_path)
    agent = Agent(config)
    try:
        assert agent.status().ignored_manifests == 0
        for version in (1, 2):
            agent.store.note_ignored({"name": "m", "version": version})
        status = decode(Status, encode(agent.status()))
        assert status.ignored_manifests == 2
    finally:
        agent.outbox.close()
