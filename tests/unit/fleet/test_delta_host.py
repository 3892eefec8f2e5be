"""The host's side of delta pushes: who gets v2, bytes per device, what is published once."""

from __future__ import annotations

import hashlib
import random

import pytest

from edgefleet.host.cli.push import print_result
from edgefleet.host.fleet import Fleet, ModelFiles, open_registry
from edgefleet.host.fleet._delta import (
    as_delta,
    delta_capable,
    plan_transfers,
    publish_delta_chunks,
)
from edgefleet.host.fleet._push import RolloutResult
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets
from edgefleet.shared.messages import Reported, UpdateState
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker

T = Topics("edgefleet")
OLD = random.Random(3).randbytes(120_000)
NEW = OLD[:60_000] + bytes(3000) + OLD[63_000:]


def files(data: bytes) -> ModelFiles:
    template = Manifest(
        name="m",
        version=1,
        created_at=0,
        expires_at=1,
        targets=Targets(),
        variants=[ModelVariant.for_bytes(data, accelerator="cpu")],
        mode="int8",
        input=TensorSpec(shape=(1, 28, 28, 1), dtype="int8", scale=0.0039, zero_point=-128),
        output=TensorSpec(shape=(1, 10), dtype="int8", scale=0.00390625, zero_point=-128),
        preprocess=PreprocessSpec(height=28, width=28),
        labels=[str(i) for i in range(10)],
    )
    return ModelFiles("m", {"cpu": data}, template)


@pytest.fixture
def fleet(tmp_path):
    broker = FakeBroker()
    registry = open_registry(tmp_path / "state")
    registry.keep_model(hashlib.sha256(OLD).hexdigest(), OLD)
    fl = Fleet(conn=broker.connect("host"), topics=T, registry=registry)
    fl.broker = broker  # type: ignore[attr-defined]
    yield fl
    registry.close()


def report(fleet: Fleet, device: str, held: list[str] | None) -> None:
    fleet.view.reports[device] = Reported(device_id=device, state=UpdateState.IDLE, held=held)


def test_v2_only_when_every_target_says_it_takes_it(fleet):
    report(fleet, "new", [])
    report(fleet, "old", None)  # an agent from before delta updates
    assert delta_capable(fleet, ["new"])
    assert not delta_capable(fleet, ["new", "old"])
    assert not delta_capable(fleet, ["never-seen"])
    assert not delta_capable(fleet, [])


def test_bytes_per_device_and_the_union_published_once(fleet):
    manifest = as_delta(files(NEW).template, {"cpu": NEW})
    assert manifest.v == 2
    report(fleet, "has-old", [hashlib.sha256(OLD).hexdigest()])
    report(fleet, "empty", [])
    report(fleet, "unknown-file", ["ab" * 32])  # a file this host never pushed
    transfers, wanted = plan_transfers(
        fleet, manifest, ["has-old", "empty", "unknown-file"], full=False
    )
    by = {t.device_id: t for t in transfers}
    assert by["has-old"].known
    assert by["has-old"].send_bytes < 0.2 * len(NEW)
    assert by["has-old"].saving > 0.8
    assert by["empty"].send_bytes == by["unknown-file"].send_bytes == len(NEW)
    assert not by["empty"].known
    sent, messages = publish_delta_chunks(fleet, {"cpu": NEW}, manifest, wanted)
    assert sent == len(NEW)
    assert messages == len({c[0] for c in manifest.variants[0].chunks or []})
    published = fleet.broker.published("edgefleet/models/+/chunks/+")  # type: ignore[attr-defined]
    assert all(p.retain for p in published)
    assert {hashlib.sha256(p.payload).hexdigest() for p in published} == wanted


def test_full_sends_everything_even_to_a_device_holding_the_old_file(fleet):
    manifest = as_delta(files(NEW).template, {"cpu": NEW})
    report(fleet, "has-old", [hashlib.sha256(OLD).hexdigest()])
    [t], _ = plan_transfers(fleet, manifest, ["has-old"], full=True)
    assert t.send_bytes == len(NEW)


def test_push_prints_the_bytes_to_send_and_the_saving(fleet, capsys):
    manifest = as_delta(files(NEW).template, {"cpu": NEW})
    report(fleet, "pi-07", [hashlib.sha256(OLD).hexdigest()])
    transfers, _ = plan_transfers(fleet, manifest, ["pi-07"], full=False)
    result = RolloutResult("m", 2, ["pi-07"], [], transfers=transfers)
    print_result(result)
    out = capsys.readouterr().out
    assert "to send  pi-07" in out
    assert f"of {len(NEW) / 1024:.1f} KiB (saving" in out
