"""The bundled radar model across radars: int8 floors in and out of distribution, native scans.

docs/gpr.md ("Across radars") gives the figures these floors guard. A change to the
conditioning, the common scale, the data or the converter that costs accuracy on scans from
other radars than the training set's shows up here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.datasets import CLASSES
from edgefleet.host.datasets._radar import load_radar, radar_dir
from edgefleet.host.demo._data import bundled_radar_model
from edgefleet.host.training._radar import evaluate_radars

pytestmark = pytest.mark.slow

# Regression floors under the measured 89.4 % (in) and 81.7 % (out of distribution), int8
# (2026-11-29, two batch-normalised ConvNets on 3,600 scans, averaged). The target is
# 90 % on both; it is not met (docs/gpr.md, "The radar model").
FLOOR_IN, FLOOR_OOD = 0.86, 0.78
# Native survey lines classified window by window: 7 of 8 right on 2026-11-29 with the
# averaged model, as with the single one before it (6 of 8 with the one before that; 2 of 8
# with the one strongest-echo window, before line windows), so a change that breaks the
# windows or the frequency plane on the device shows here. The floor leaves one line room
# to fall either way on another CPU's int8.
NATIVE_RIGHT_FLOOR = 6
AGENT = Path(sys.executable).parent / "edgefleet-agent"  # the device's console script


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory):
    model = bundled_radar_model()
    assert model is not None, "the radar model ships with the host package"
    out = tmp_path_factory.mktemp("radar-eval")
    return out, evaluate_radars(model, out, calibration=100, without_metadata=False)


def test_int8_holds_the_regression_floor_in_and_out_of_distribution(evaluation):
    _, result = evaluation
    by_name = {s.name: s for s in result.splits}
    ind, ood = by_name["in-distribution"], by_name["out-of-distribution"]
    assert ind.count == len(load_radar("heldout"))
    assert ood.count == len(load_radar("ood"))
    assert ind.accuracy["int8"] >= FLOOR_IN
    assert ood.accuracy["int8"] >= FLOOR_OOD
    for split in (ind, ood):  # int8 tracks float32
        assert abs(split.accuracy["int8"] - split.accuracy["float32"]) <= 0.04
    assert result.edgetpu_precheck_compatible is True
    saved = json.loads((evaluation[0] / "gpr_radars_evaluation.json").read_text())
    assert saved["splits"][1]["accuracy"] == ood.accuracy


def _agent_predict(model: Path, files: list[Path]) -> list[dict]:
    # The device's own command, as a field engineer runs it (no TensorFlow in it).
    out = subprocess.run(
        [str(AGENT), "predict", "--model", str(model), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_agent_predict_takes_native_size_scans_with_and_without_metadata(evaluation, tmp_path):
    model = evaluation[0] / "gpr_radars_int8.tflite"
    native = sorted((radar_dir() / "native").glob("*/*.npy"))
    assert len(native) >= 8
    with_meta, without = tmp_path / "with", tmp_path / "without"
    with_meta.mkdir()
    without.mkdir()
    for scan in native:
        assert np.load(scan).shape[0] >= 150  # a whole survey line: hundreds of traces
        shutil.copy(scan, with_meta / scan.name)
        shutil.copy(scan.with_suffix(".json"), with_meta / scan.with_suffix(".json").name)
        shutil.copy(scan, without / scan.name)
    lines = _agent_predict(model, sorted(with_meta.glob("*.npy")))
    lines_bare = _agent_predict(model, sorted(without.glob("*.npy")))
    for line, bare in zip(lines, lines_bare, strict=True):
        assert line["label"] in CLASSES
        assert bare["label"] in CLASSES
        # The sidecar gave the whole scale; the line is longer than one window, so it was
        # classified window by window and the note says where the reported window lies.
        assert "no scan metadata" not in line["note"]
        assert "windows; the reported one is centred on trace" in line["note"]
        assert "no scan metadata" in bare["note"]
        assert "docs/gpr.md" in bare["note"]
    assert [Path(line["source"]).name for line in lines] == [
        s.name for s in sorted(native, key=lambda p: p.name)
    ]
    truth = {scan.name: scan.parent.name for scan in native}
    right = sum(line["label"] == truth[Path(line["source"]).name] for line in lines)
    assert right >= NATIVE_RIGHT_FLOOR, [(line["source"], line["label"]) for line in lines]


def test_the_shipped_radar_scans_are_what_the_generator_makes(tmp_path):
    # Two training scans (a plastic pipe and a hollow concrete one) regenerated with the
    # documented command are the shipped files, bit for bit, sidecars included: the data
    # set is the code's, not a one-off.
    res = CliRunner().invoke(
        app,
        [
            "gpr",
            "generate",
            "--out",
            str(tmp_path),
            "--n",
            "2",
            "--seed",
            "20001",
            "--split",
            "train",
        ],
    )
    assert res.exit_code == 0, res.output
    made = sorted(tmp_path.glob("*/*.npy"), key=lambda p: p.name)
    assert [(p.parent.name, p.name) for p in made] == [
        ("plastic", "0020001.npy"),
        ("concrete", "0020002.npy"),
    ]
    for scan_path in made:
        shipped = radar_dir() / "train" / scan_path.parent.name / scan_path.name
        assert scan_path.read_bytes() == shipped.read_bytes()
        sidecar = scan_path.with_suffix(".json")
        assert sidecar.read_bytes() == shipped.with_suffix(".json").read_bytes()
        scan = np.load(scan_path)
        assert scan.dtype == np.float16
        assert 16 <= scan.shape[0] <= 20
        assert 256 <= scan.shape[1] <= 512
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["split"]) for r in rows] == [(20001, "train"), (20002, "train")]
    assert rows[1]["pipe_wall"] > 0.015  # the concrete pipe's wall around its air bore
