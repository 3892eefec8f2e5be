"""A failing shadow candidate is reported ``failed`` and never activated (issue #22).

A real :class:`~edgefleet.device.agent.Agent` (no broker: its MQTT actions are returned,
not sent) with an active model serving, and a signed shadow manifest fed to its
:class:`~edgefleet.device.shadow.Shadow` with the candidate's chunks, as the agent's
network loop would. The candidate either fails the real child-process health check (its
bytes are not a model), or passes it and then gives NaN scores on every input, until
``FAIL_LIMIT`` inputs failed. Either way: the report says ``failed``, the active model keeps
answering every input, and nothing the update state machine keeps changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from edgefleet.device.actions import Publish
from edgefleet.device.agent import Agent
from edgefleet.device.config import parse_config
from edgefleet.device.health import stop_running_checks
from edgefleet.device.inference import Classifier
from edgefleet.device.runtime import Model
from edgefleet.device.shadow import FAIL_LIMIT, REPORT_S, Shadow
from edgefleet.shared.chunks import split_model
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, sign_manifest
from edgefleet.shared.messages import PredictionRecord, decode
from edgefleet.shared.shadow import ShadowReport, ShadowSpec
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from support.agent import Signer

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.device.actions import Action

pytestmark = pytest.mark.slow  # a real health check forks a child with the interpreter

CANDIDATE = b"not a tflite model, but signed and sha256-checked like one " * 40
SPEC = PreprocessSpec(height=4, width=4)
ARRAY = np.full((4, 4), 7, np.uint8)


@dataclass
class _Interpreter:
    """The interpreter API :class:`Model` drives: one float input, fixed float scores."""

    scores: list[float]

    def get_input_details(self) -> list[dict[str, Any]]:
        return [{"index": 0, "name": "in", "shape": [1, 4, 4, 1], "dtype": np.float32}]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [{"index": 1, "name": "out", "shape": [1, 2], "dtype": np.float32}]

    def set_tensor(self, index: int, x: np.ndarray) -> None:
        assert index == 0
        assert x.shape == (1, 4, 4, 1)

    def invoke(self) -> None:
        pass

    def get_tensor(self, index: int) -> np.ndarray:
        assert index == 1
        return np.asarray([self.scores], np.float32)


def _classifier(name: str, version: int, scores: list[float]) -> Classifier:
    model = Model(_Interpreter(scores), accelerator="cpu")
    return Classifier(model, name=name, version=version, labels=["a", "b"], preprocess_spec=SPEC)


@pytest.fixture
def agent(tmp_path: Path):
    signer = Signer(tmp_path / "keys")
    text = (
        'device_id = "d1"\ngroups = ["g"]\nstate_dir = "state"\n'
        f'[trust]\nsigning_keys = ["{signer.public_path}"]\n'
        "[shadow]\nquiet_ms = 0\n"  # the candidate takes inputs at once: a quick test
    )
    agent = Agent(parse_config(text, base=tmp_path))
    agent.classifier = _classifier("active", 1, [0.9, 0.1])  # what serves: always "a"
    agent.signer = signer  # type: ignore[attr-defined]
    try:
        yield agent
    finally:
        agent.shadow.close()
        agent.outbox.close()
        stop_running_checks()


def _envelope(signer: Signer) -> bytes:
    now = int(time.time())
    manifest = Manifest(
        name="cand",
        version=2,
        created_at=now,
        expires_at=now + 3600,
        targets=Targets(groups=["g"]),
        variants=[ModelVariant.for_bytes(CANDIDATE, accelerator="cpu", chunk_size=1024)],
        mode="int8",
        input=TensorSpec(shape=(1, 4, 4, 1), dtype="int8"),
        output=TensorSpec(shape=(1, 2), dtype="int8"),
        preprocess=SPEC,
        labels=["a", "b"],
        shadow=ShadowSpec(sample=1.0),
    )
    return sign_manifest(manifest, signer.key)


def _start(agent: Agent) -> list[Action]:
    """The shadow manifest, then every chunk, as the network loop hands them over."""
    shadow = agent.shadow
    actions = shadow.on_manifest(agent.topics.shadow_group("g"), _envelope(agent.signer))  # type: ignore[attr-defined]
    for chunk in split_model(CANDIDATE, chunk_size=1024):
        actions += shadow.on_chunk(chunk)
    return actions


def _wait_state(shadow: Shadow, *states: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert shadow.run is not None
        if shadow.run.state in states:
            return
        time.sleep(0.01)
    raise TimeoutError(f"shadow still {shadow.run.state if shadow.run else None}")


def _published_report(agent: Agent, actions: list[Action]) -> ShadowReport:
    """The report the next tick publishes (``REPORT_S`` after the last one)."""
    agent.shadow.reported_at -= REPORT_S
    actions = actions + agent.shadow.tick()
    publishes = [a for a in actions if isinstance(a, Publish)]
    topic = agent.topics.shadow_report("d1")
    assert {p.topic for p in publishes} == {topic}  # nothing on reported, desired, status
    assert all(p.retain for p in publishes)
    return ShadowReport.model_validate_json(publishes[-1].payload)


def _records(agent: Agent) -> list[PredictionRecord]:
    rows = agent.outbox.pending(after_seq=0, limit=1000)
    return [decode(PredictionRecord, r.payload) for r in rows]


def _assert_never_activated(agent: Agent, floor: tuple[int, float], models: list[Path]) -> None:
    assert agent.classifier is not None
    assert (agent.classifier.name, agent.classifier.version) == ("active", 1)
    assert agent.store.floor() == floor  # the anti-rollback floor did not move
    assert sorted((agent.store.root / "models").glob("*")) == models
    for i in range(5):  # the active model keeps answering, the candidate is asked nothing
        agent.classify(ARRAY, source=f"after-{i}.npy")
    records = _records(agent)
    assert [r.source for r in records][-5:] == [f"after-{i}.npy" for i in range(5)]
    assert {(r.model_name, r.model_version, r.label, r.error) for r in records} == {
        ("active", 1, "a", None)
    }


def test_a_candidate_failing_its_health_check_is_reported_failed_never_activated(agent):
    floor, models = agent.store.floor(), sorted((agent.store.root / "models").glob("*"))
    actions = _start(agent)
    _wait_state(agent.shadow, "failed", "running")
    run = agent.shadow.run
    assert run.state == "failed", run.reason
    assert run.reason.startswith("health check: cannot load model")  # the real check said so
    offered = run.stats.offered
    _assert_never_activated(agent, floor, models)
    assert run.stats.offered == offered == 0  # a failed candidate is offered nothing
    report = _published_report(agent, actions)
    assert (report.state, report.name, report.version) == ("failed", "cand", 2)
    assert report.reason is not None
    assert report.reason.startswith("health check:")
    assert report.compared == 0


def test_a_candidate_failing_on_fail_limit_inputs_is_reported_failed_never_activated(
    agent, monkeypatch
):
    floor, models = agent.store.floor(), sorted((agent.store.root / "models").glob("*"))
    checked: list[Path] = []
    monkeypatch.setattr(agent, "_health_check", lambda path, _m: checked.append(path))
    candidate = _classifier("cand", 2, [float("nan"), 0.5])  # NaN scores on every input
    monkeypatch.setattr(agent.shadow, "_load", lambda _run, _path: candidate)
    actions = _start(agent)
    _wait_state(agent.shadow, "running", "failed")
    assert [p.name for p in checked] == [f"{agent.shadow.run.variant.sha256}.tflite"]
    for i in range(FAIL_LIMIT + 5):  # the active path, as the agent runs it
        agent.classify(ARRAY, source=f"in-{i}.npy")
    _wait_state(agent.shadow, "failed")
    run = agent.shadow.run
    assert run.stats.failures == FAIL_LIMIT  # the thread stopped at the limit
    assert run.reason.startswith(f"the candidate failed on {FAIL_LIMIT} inputs")
    offered = run.stats.offered
    _assert_never_activated(agent, floor, models)
    assert run.stats.offered == offered  # nothing offered once it failed
    records = _records(agent)
    assert len(records) == FAIL_LIMIT + 5 + 5  # one record per input, none lost
    report = _published_report(agent, actions)
    assert report.state == "failed"
    assert report.failures == FAIL_LIMIT
    assert (report.compared, report.agreed) == (0, 0)
    assert report.active_name == "active"
