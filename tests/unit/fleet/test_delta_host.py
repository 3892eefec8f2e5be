"""The host's side of delta pushes: who gets v2, bytes per device, what is published once."""

from __future__ import annotations

import hashlib
import random
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.cli.push import print_result
from edgefleet.host.fleet import Fleet, ModelFiles, PushPlan, open_registry, push
from edgefleet.host.fleet._delta import (
    as_delta,
    delta_capable,
    plan_transfers,
    publish_delta_chunks,
)
from edgefleet.host.fleet._push import RolloutResult
from edgefleet.shared.chunklist import make_chunk_list
from edgefleet.shared.connection import Message
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, key_id_for, open_envelope
from edgefleet.shared.messages import ChunkRequest, Reported, UpdateState, encode
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


# -- what the registry records, and the CLI -----------------------------------------------------

OLD_SHA = hashlib.sha256(OLD).hexdigest()


def _idle(broker: FakeBroker, device: str, held: list[str], **options):
    """A device's connection, its retained report saying which model files it holds."""
    conn = broker.connect(f"agent-{device}", **options)
    report = Reported(device_id=device, state=UpdateState.IDLE, held=held)
    conn.publish(T.reported(device), encode(report), retain=True)
    return conn


@pytest.fixture
def cli_host(tmp_path, monkeypatch):
    """``edgefleet`` commands on the fake broker: each opens its own fleet on ``state``."""
    broker, key, state = FakeBroker(), Ed25519PrivateKey.generate(), tmp_path / "state"
    registry = open_registry(state)
    registry.keep_model(OLD_SHA, OLD)  # v1, pushed before: the host knows its chunks
    registry.close()

    def open_fleet(*, read_only: bool = False, **_: object) -> Fleet:
        reg = open_registry(state, read_only=read_only)
        return Fleet(conn=broker.connect(), topics=T, registry=reg, signing_key=key)

    monkeypatch.setattr("edgefleet.host.fleet.open_fleet", open_fleet)
    monkeypatch.setattr("edgefleet.host.fleet.load_model", lambda *_, **__: files(NEW))
    return broker, key, state


def test_cli_push_full_sends_every_device_the_whole_model(cli_host):
    broker, _, state = cli_host
    _idle(broker, "has-old", [OLD_SHA])
    _idle(broker, "empty", [])
    devices = ["--device", "has-old", "--device", "empty"]
    runner = CliRunner()
    delta = runner.invoke(app, ["push", "model_int8.tflite", *devices])
    assert delta.exit_code == 0, delta.output
    full = runner.invoke(app, ["push", "model_int8.tflite", *devices, "--full"])
    assert full.exit_code == 0, full.output

    whole = f"{len(NEW) / 1024:.1f} KiB"
    assert f"to send  has-old  {whole} of {whole} (saving 0 %)" not in delta.output
    assert f"to send  has-old  {whole} of {whole} (saving 0 %)" in full.output
    assert f"to send  empty  {whole} of {whole} (saving 0 %)" in full.output
    registry = open_registry(state, read_only=True)
    try:
        records = registry.transfer_records(name="m")
    finally:
        registry.close()
    planned = {(t.version, t.device_id): t.send_bytes for t in records}
    assert planned[1, "has-old"] < 0.2 * len(NEW)  # without --full: only what it lacks
    assert planned[2, "has-old"] == planned[2, "empty"] == len(NEW)
    assert all(t.full_bytes == len(NEW) and t.resent_bytes == 0 for t in records)


def test_chunks_sent_again_on_request_count_as_sent_and_rollout_status_shows_it(cli_host):
    broker, key, state = cli_host
    trusted = {key_id_for(key.public_key()): key.public_key()}
    device: dict[str, object] = {}

    def on_message(msg: Message) -> None:
        """Takes the manifest, asks for chunks 0 and 1 again, then reports active."""
        if not msg.payload:
            return
        manifest = open_envelope(msg.payload, trusted_keys=trusted)
        sha = manifest.variants[0].sha256
        conn = device["conn"]
        request = ChunkRequest(device_id="pi-07", sha256=sha, indexes=[0, 1])
        conn.publish(T.chunk_request("pi-07"), encode(request))  # type: ignore[attr-defined]
        # A chunk request about another model is not this push's.
        other = ChunkRequest(device_id="pi-07", sha256=OLD_SHA, indexes=[0])
        conn.publish(T.chunk_request("pi-07"), encode(other))  # type: ignore[attr-defined]
        about = {"version": manifest.version, "sha256": sha, "held": [sha, OLD_SHA]}
        done = Reported(
            device_id="pi-07", state=UpdateState.ACTIVE, active_version=manifest.version, **about
        )
        conn.publish(T.reported("pi-07"), encode(done), retain=True)  # type: ignore[attr-defined]

    device["conn"] = conn = _idle(broker, "pi-07", [OLD_SHA], on_message=on_message)
    conn.subscribe(T.desired_device("pi-07"))
    registry = open_registry(state)
    host = Fleet(conn=broker.connect("host"), topics=T, registry=registry, signing_key=key)
    try:
        result = push(host, files(NEW), PushPlan(devices=("pi-07",), wait=5.0))
        assert result.exit_code == 0, result.progress
        chunks = make_chunk_list(NEW)
        again = chunks[0][2] + chunks[1][2]
        assert result.resent == {"pi-07": (again, 2)}
        resent = [p for p in broker.published("edgefleet/models/+/chunks/+") if not p.retain]
        assert sum(len(p.payload) for p in resent) == again  # what the wire carried
        [t] = registry.transfer_records(device_id="pi-07")
        assert (t.resent_bytes, t.resent_chunks) == (again, 2)
        assert t.sent_bytes == t.send_bytes + again
        assert registry.transfers("pi-07")[-1][3] == t.send_bytes  # the planned figure, as before
        # After the push returned, another host process (a `predictions listen` worker)
        # answers a re-request: counted in the same transfer. The rate limiter lets an
        # index go again only after its quiet time, so ask for chunk 2.
        late = ChunkRequest(device_id="pi-07", sha256=t.sha256, indexes=[2])
        listener = Fleet(conn=broker.connect("listener"), topics=T, registry=registry)
        assert listener.answer_chunk_request(late, device_id="pi-07") == 1
        [t2] = registry.transfer_records(device_id="pi-07")
        assert (t2.resent_bytes, t2.resent_chunks) == (again + chunks[2][2], 3)
    finally:
        registry.close()

    status = CliRunner().invoke(app, ["rollout", "status", "--device", "pi-07"])
    assert status.exit_code == 0, status.output
    line = next(x for x in status.output.splitlines() if x.startswith("  pi-07"))
    assert f"[{t2.describe()}]" in line
    assert line.endswith("in 3 chunks sent again)]")


def test_a_registry_from_before_plans_and_resends_gains_their_tables_on_open(tmp_path):
    state = tmp_path / "state"
    open_registry(state).close()
    with sqlite3.connect(state / "registry.sqlite") as db:  # as an older edgefleet left it
        db.execute("DROP TABLE rollout_plans")
        db.execute("DROP TABLE resent")
    registry = open_registry(state)
    try:
        registry.record_plan("group:g", 3, canary=1, max_failures=None, waves=[["a"], ["b"]])
        [plan] = registry.wave_plans()
        assert (plan.step_of("a"), plan.step_of("b"), plan.step_of("z")) == (
            "canary",
            "wave 1",
            "group",
        )
        assert not registry.record_resent("a", "m", 3, nbytes=10, chunks=1)  # v1: no transfer
    finally:
        registry.close()
