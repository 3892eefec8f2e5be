"""Issue 18, CLI side: help with examples, flag rendering, --version, one fleet option name,
export/tail formats, broken pipes, read-only reading, distinct send-image sources, and the
broker account of an existing fleet.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.fleet import Fleet, SqliteStore, image_message, open_registry
from edgefleet.host.provision import init_fleet, set_broker_user
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets
from edgefleet.shared.messages import PredictionRecord
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker

EDGEFLEET = Path(sys.executable).with_name("edgefleet")
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _commands(group, prefix: tuple[str, ...] = ()):
    ctx = group.context_class(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if hasattr(command, "list_commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


ALL_COMMANDS = sorted(_commands(typer.main.get_command(app)))


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result.output


# -- point 14: help --------------------------------------------------------------------------


def test_there_are_commands_to_check():
    assert ("push",) in ALL_COMMANDS
    assert ("rollout", "cancel") in ALL_COMMANDS
    assert len(ALL_COMMANDS) > 20


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_every_command_has_an_example_and_shows_flags_without_a_type(command):
    text = _help(*command)
    assert "Examples:" in text
    example = text.split("Examples:", 1)[1]
    assert f"edgefleet {' '.join(command)}" in example
    assert "<bool>" not in text  # `--json`, not `--json <bool>`


def test_rollout_status_describes_its_device_option():
    line = next(x for x in _help("rollout", "status").splitlines() if "--device" in x)
    assert "rollout to this device" in line


def test_version_flag_and_command():
    runner = CliRunner()
    flag = runner.invoke(app, ["--version"])
    assert flag.exit_code == 0
    assert re.fullmatch(r"edgefleet \d+\.\d+\.\d+\S*\n", flag.output)
    assert runner.invoke(app, ["version"]).output.strip() in flag.output


# -- point 8: one option name for the fleet directory ----------------------------------------


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fleet") / "fleet"
    init_fleet(root, broker_url="mqtts://127.0.0.1:18883")
    return root


def test_fleet_commands_take_fleet_and_edgefleet_fleet_everywhere(fleet_dir):
    runner = CliRunner()
    by_flag = runner.invoke(app, ["keys", "list", "--fleet", str(fleet_dir)])
    assert by_flag.exit_code == 0, by_flag.output
    assert by_flag.output.startswith("* ")
    by_env = runner.invoke(app, ["keys", "list"], env={"EDGEFLEET_FLEET": str(fleet_dir)})
    assert by_env.output == by_flag.output
    for command in (("init",), ("provision",), ("revoke",), ("keys", "list"), ("push",)):
        text = _help(*command)
        assert "--fleet" in text
        assert "EDGEFLEET_FLEET]" in text
        assert "--dir" not in text
        assert "EDGEFLEET_FLEET_DIR" not in text


def test_the_old_dir_names_still_work_hidden(fleet_dir):
    runner = CliRunner()
    expected = runner.invoke(app, ["keys", "list", "--fleet", str(fleet_dir)]).output
    assert runner.invoke(app, ["keys", "list", "--dir", str(fleet_dir)]).output == expected
    old_env = runner.invoke(app, ["keys", "list"], env={"EDGEFLEET_FLEET_DIR": str(fleet_dir)})
    assert old_env.output == expected


def test_a_missing_fleet_names_the_fleet_option(tmp_path):
    result = CliRunner().invoke(app, ["keys", "list", "--fleet", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "edgefleet init --fleet DIR" in result.output


# -- point 2: the broker account of an existing fleet ----------------------------------------


def test_broker_user_can_be_set_on_an_existing_fleet(tmp_path):
    root = tmp_path / "fleet"
    init_fleet(root, broker_url="mqtts://127.0.0.1:18883")
    refused = CliRunner().invoke(app, ["init", "--fleet", str(root)])
    assert refused.exit_code == 1
    assert "already holds a fleet" in refused.output
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    result = CliRunner().invoke(app, ["init", "--fleet", str(root), "--broker-user", user])
    assert result.exit_code == 0, result.output
    conf = (root / "broker/mosquitto.conf").read_text()
    assert re.search(rf"^user {user}$", conf, re.MULTILINE)
    assert conf.count("\nuser ") == 1
    set_broker_user(root, "mosquitto" if os.geteuid() == 0 else user)  # again: one line
    assert (root / "broker/mosquitto.conf").read_text().count("\nuser ") == 1


# -- point 13: export and tail ----------------------------------------------------------------


def _record(seq: int, *, ts: float, device: str = "d1", version: int = 1) -> PredictionRecord:
    return PredictionRecord(
        device_id=device,
        boot_id="boot1",
        seq=seq,
        source=f"scan-{seq:04d}.png",
        label="cable",
        score=0.96,
        topk=[{"label": "cable", "score": 0.96}, {"label": "rebar", "score": 0.04}],
        latency_ms=2.5,
        model_name="gpr_convnet",
        model_version=version,
        ts=ts,
    )


@pytest.fixture
def state(tmp_path) -> Path:
    """A state dir with a prediction store and a push registry naming build v1."""
    store = SqliteStore(tmp_path / "predictions.sqlite")
    store.add([_record(i, ts=T0 + 3600 * i) for i in range(4)])
    store.close()
    registry = open_registry(tmp_path)
    sha = "ab" * 32
    manifest = Manifest(
        name="gpr_convnet",
        version=1,
        created_at=0,
        expires_at=1,
        targets=Targets(groups=["field"]),
        variants=[ModelVariant(accelerator="cpu", sha256=sha, size=10, chunk_count=1)],
        mode="int8",
        input=TensorSpec(shape=(1, 8, 8, 1), dtype="int8", scale=0.1, zero_point=0),
        output=TensorSpec(shape=(1, 3), dtype="int8", scale=0.1, zero_point=0),
        preprocess=PreprocessSpec(height=8, width=8),
        labels=["cable", "rebar", "void"],
    )
    registry.record_push(target="group:field", manifest=manifest, envelope=b"x")
    registry.close()
    return tmp_path


def _export(state: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["predictions", "export", "--state-dir", str(state), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_export_defaults_to_csv_with_iso_times_build_and_unpacked_topk(state):
    rows = list(csv.DictReader(io.StringIO(_export(state))))
    assert len(rows) == 4
    first = rows[0]
    assert first["time"] == "2027-01-15T08:00:00.000Z"
    assert "ts" not in first
    assert first["build"] == "int8 abababab"
    assert (first["top1_label"], first["top1_score"]) == ("cable", "0.9600")
    assert (first["top2_label"], first["top2_score"]) == ("rebar", "0.0400")
    assert "topk" not in first


def test_export_jsonl_keeps_the_record_and_adds_time_and_build(state):
    lines = _export(state, "--format", "jsonl").splitlines()
    doc = json.loads(lines[0])
    assert doc["ts"] == T0
    assert doc["time"] == "2027-01-15T08:00:00.000Z"
    assert doc["build"] == "int8 abababab"
    assert doc["topk"][1] == {"label": "rebar", "score": 0.04}
    assert _export(state, "--jsonl") == _export(state, "--format", "jsonl")
    out = state / "x.jsonl"
    _export(state, "-o", str(out))
    assert out.read_text().splitlines() == lines  # format from the file's suffix


def test_export_since_and_until_select_a_window(state):
    rows = list(
        csv.DictReader(
            io.StringIO(
                _export(state, "--since", "2027-01-15T09:00", "--until", "2027-01-15T10:00Z")
            )
        )
    )
    assert [r["seq"] for r in rows] == ["1", "2"]
    bad = CliRunner().invoke(
        app, ["predictions", "export", "--state-dir", str(state), "--since", "yesterday"]
    )
    assert bad.exit_code == 1
    assert "--since 'yesterday' is not a time" in bad.output
    conflict = CliRunner().invoke(
        app, ["predictions", "export", "--state-dir", str(state), "--csv", "--format", "jsonl"]
    )
    assert conflict.exit_code == 1
    assert "choose one format" in conflict.output


def test_export_piped_to_head_ends_quietly(state):
    store = SqliteStore(state / "predictions.sqlite")
    store.add([_record(i, ts=T0 + i) for i in range(10, 3000)])
    store.close()
    args = [str(EDGEFLEET), "predictions", "export", "--state-dir", str(state), "--jsonl"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"{")
        proc.stdout.close()  # what `| head -1` does
        err = proc.stderr.read().decode() if proc.stderr else ""
        rc = proc.wait(timeout=60)
    assert "Broken pipe" not in err
    assert "Traceback" not in err
    assert rc == 0


def test_tail_has_a_header_and_dates_in_utc(state):
    result = CliRunner().invoke(app, ["predictions", "tail", "--state-dir", str(state), "-n", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("4 record(s); times in UTC")
    assert lines[1].startswith("TIME (UTC)")
    assert lines[2].startswith("2027-01-15T10:00:00.000Z d1")
    assert "gpr_convnet v1 (int8 abababab)" in lines[2]
    assert len(lines) == 4


# -- point 15: reading never creates files ----------------------------------------------------


@pytest.mark.parametrize("command", [("tail",), ("export",)])
def test_reading_a_missing_store_is_an_error_and_creates_nothing(tmp_path, command):
    state = tmp_path / "state"
    result = CliRunner().invoke(app, ["predictions", *command, "--state-dir", str(state)])
    assert result.exit_code == 1
    assert "no prediction store at" in result.output
    assert "predictions listen" in result.output
    assert not state.exists()


def test_a_read_only_registry_creates_nothing(tmp_path):
    registry = open_registry(tmp_path / "state", read_only=True)
    registry.remember_device("d1", groups=["g"], status_json=None, seen=1.0)
    assert registry.latest_pushes() == []
    registry.close()
    assert not (tmp_path / "state").exists()


def test_rollout_status_shows_the_canary_the_waves_and_each_devices_step(state, monkeypatch):
    registry = open_registry(state)
    [pushed] = registry.latest_pushes()
    registry.record_plan(
        "group:field", 2, canary=1, max_failures=50, waves=[["d1"], ["d2", "d3"], ["d4"]]
    )
    group = pushed.manifest.model_copy(update={"version": 2})
    registry.record_push(
        target="group:field", manifest=group, envelope=b"y", members=("d1", "d2", "d3", "d4", "d5")
    )
    registry.close()
    broker = FakeBroker()

    def open_fleet(*, read_only: bool = False, **_: object) -> Fleet:
        reg = open_registry(state, read_only=read_only)
        return Fleet(conn=broker.connect(), topics=Topics("edgefleet"), registry=reg)

    monkeypatch.setattr("edgefleet.host.fleet.open_fleet", open_fleet)
    result = CliRunner().invoke(app, ["rollout", "status", "--group", "field"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("group:field: gpr_convnet v2 (int8 abababab) push at ")
    assert lines[0].endswith(", 0/5 active")
    assert lines[1] == "  plan: canary 1; waves 2, 1; max failures 50 %"
    steps = {line.split()[0]: line.split()[1:3] for line in lines[2:]}
    assert steps == {
        "d1": ["canary", "pending"],
        "d2": ["wave", "1"],
        "d3": ["wave", "1"],
        "d4": ["wave", "2"],
        "d5": ["group", "pending"],  # offline when planned: the group topic after the waves
    }


# -- point 13: send-image sources stay distinct ------------------------------------------------


def test_two_files_of_the_same_name_get_distinct_sources(tmp_path):
    a, b = tmp_path / "a" / "0010.png", tmp_path / "b" / "0010.png"
    for path, data in ((a, b"one"), (b, b"two")):
        path.parent.mkdir()
        path.write_bytes(data)
    names = {image_message(p).name for p in (a, b)}
    assert len(names) == 2
    assert all(n.endswith("0010.png#" + n[-8:]) for n in names)
