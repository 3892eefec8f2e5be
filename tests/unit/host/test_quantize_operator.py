"""Issue #18, the quantizer's side: each friction a new user hit, checked as fixed.

Points: 1 (normalised data), 5 (QAT without training data), 8 (data required for own
models; class count), 10 (report.png), 11 (foreign .tflite), 12 (progress, TensorFlow's
noise), 14 (corrupt .keras). Real TensorFlow, LiteRT and matplotlib on an 8x8 model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.cli.quantize import example_data
from edgefleet.host.datasets import prepare
from edgefleet.host.errors import DatasetError, ModelLoadError, QuantizationError
from edgefleet.host.quantize import describe_foreign, described_copy, embed_model_info
from edgefleet.host.quantize._foreign import input_mapping
from edgefleet.shared.spec import PreprocessSpec
from edgefleet.shared.tflite_model import read_flat_model, read_model_info

SPEC = PreprocessSpec(height=8, width=8, channels=1)
LABELS = np.array(["cable", "pipe", "void"])
EDGEFLEET = Path(sys.executable).with_name("edgefleet")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Data sets of the same 24 images stored four ways, and three classes."""
    path = tmp_path_factory.mktemp("operator")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 8, 8), dtype=np.uint8)
    x[0, 0, 0], x[1, 0, 0] = 0, 255  # the full range, so the ranges printed are exact
    y = np.arange(24) % 3
    np.savez(path / "u8.npz", x=x, y=y, labels=LABELS)
    np.savez(path / "float255.npz", x=x.astype(np.float32), y=y, labels=LABELS)
    np.savez(path / "unit.npz", x=(x / 255.0).astype(np.float32), y=y, labels=LABELS)
    np.savez(path / "signed.npz", x=(x / 127.5 - 1.0).astype(np.float32), y=y, labels=LABELS)
    np.savez(path / "ten.npz", x=x, y=np.arange(24) % 10)
    return path


@pytest.fixture(scope="module")
def tiny_keras(root):
    """An untrained 3-class Keras ConvNet on 8x8 grayscale, saved as .keras."""
    import keras  # noqa: PLC0415 - TensorFlow loads only when a test needs it

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    path = root / "tiny.keras"
    model.save(path)
    return path


# -- 1: data already normalised to [0, 1] is refused, raw pixels are used as given ----------


def test_data_normalised_to_unit_is_refused_naming_the_range_seen_and_expected(root):
    with pytest.raises(DatasetError) as err:
        prepare(str(root / "unit.npz"), split="train", spec=SPEC)
    text = str(err.value)
    assert "holds values in [0, 1] (float32)" in text
    assert "looks normalised to [0, 1]" in text
    assert "0-255" in text
    assert "model's input range [0, 1]" in text
    assert "x * 255" in text


def test_the_command_stops_on_normalised_data_and_writes_nothing(root, tiny_keras):
    out = root / "never"
    unit = str(root / "unit.npz")
    args = ["quantize", str(tiny_keras), "--calibration", unit, "--eval", unit, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: data set '{unit}' holds values in [0, 1]")
    assert not out.exists()


def test_data_normalised_to_minus_one_one_is_refused(root):
    with pytest.raises(DatasetError, match=r"holds values in \[-1, 1\].*negative values"):
        prepare(str(root / "signed.npz"), split="eval", spec=SPEC)


def test_a_class_folder_of_normalised_npy_files_is_refused_too(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        np.save(tmp_path / label / "0.npy", np.full((8, 8), 0.5, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"looks normalised to \[0, 1\]"):
        prepare(str(tmp_path), split="train", spec=SPEC)


def test_raw_pixels_as_uint8_or_float_are_used_as_given(root):
    as_uint8 = prepare(str(root / "u8.npz"), split="train", spec=SPEC)
    as_float = prepare(str(root / "float255.npz"), split="train", spec=SPEC)
    np.testing.assert_array_equal(as_uint8.x, as_float.x)
    assert as_uint8.x.min() == 0.0
    assert as_uint8.x.max() == 1.0  # the model's [0, 1], made from 0-255


# -- 8: own models need their data named; the class count is checked first -----------------


def test_quantize_refuses_to_guess_the_data_of_a_model_that_is_not_an_example(tmp_path):
    model = tmp_path / "my_net.keras"
    model.write_bytes(b"not read: the options are checked first")
    result = CliRunner().invoke(app, ["quantize", str(model)])
    assert result.exit_code == 2, result.output
    assert "--calibration and --eval required" in result.output
    only_eval = CliRunner().invoke(app, ["quantize", str(model), "--calibration", "x.npz"])
    assert only_eval.exit_code == 2
    assert "--eval required" in only_eval.output


def test_example_models_keep_their_bundled_data():
    assert example_data(Path("out/mnist_convnet.keras"), None, None) == ("mnist", "mnist")
    assert example_data(Path("gpr_convnet.keras"), None, "mine.npz") == ("gpr", "mine.npz")
    assert example_data(Path("any.keras"), "a.npz", "b.npz") == ("a.npz", "b.npz")


def test_a_data_set_with_other_classes_than_the_model_is_refused_before_converting(
    root, tiny_keras
):
    from edgefleet.host.quantize import _run as q  # noqa: PLC0415 - loads TensorFlow

    with pytest.raises(DatasetError, match=r"model outputs 3 classes but data set .* 10 labels"):
        q.load_inputs(tiny_keras, modes=["int8"], calibration=str(root / "ten.npz"), evaluation="x")


# -- 14: a corrupt model file says so --------------------------------------------------------


def test_a_corrupt_or_truncated_keras_file_is_not_reported_as_missing(tmp_path, tiny_keras):
    from edgefleet.host.quantize import _convert as convert  # noqa: PLC0415

    truncated = tmp_path / "cut.keras"
    truncated.write_bytes(tiny_keras.read_bytes()[:3000])
    garbage = tmp_path / "junk.h5"
    garbage.write_bytes(b"<html>404</html>")
    for path, kind in ((truncated, ".keras"), (garbage, ".h5")):
        with pytest.raises(ModelLoadError) as err:
            convert.load_model(path)
        assert f"is not a valid {kind} file" in str(err.value)
        assert "not found" not in str(err.value).lower()


# -- 5: QAT is not run on calibration data silently -------------------------------------------


def test_explicit_qat_without_training_data_warns_and_with_it_does_not(root, tiny_keras):
    from edgefleet.host.quantize import _run as q  # noqa: PLC0415

    npz = str(root / "u8.npz")
    warned = q.load_inputs(tiny_keras, modes=["qat"], calibration=npz, evaluation=npz)
    assert warned.skipped == ()
    assert warned.train is warned.calibration
    [note] = warned.notes
    assert note.startswith("WARNING: qat is fine-tuned on the 24 calibration inputs")
    given = q.load_inputs(tiny_keras, modes=["all"], calibration=npz, evaluation=npz, train=npz)
    assert (given.skipped, given.notes) == ((), ())


def test_a_qat_that_lost_accuracy_gets_a_note():
    from edgefleet.host.quantize import _run as q  # noqa: PLC0415

    report = _report([("float32", 1000, 0.98, 0.1), ("qat", 260, 0.78, 0.1)])
    [note] = q._qat_loss_note(report)
    assert note.startswith("qat is 20.00 pp below float32")
    assert q._qat_loss_note(_report([("float32", 1000, 0.98, 0.1), ("qat", 260, 0.97, 0.1)])) == []


# -- 12: the command itself: a line per mode, none of TensorFlow's noise ---------------------


def test_all_skips_qat_without_training_data_and_says_why(root, tiny_keras):
    from edgefleet.host.quantize import _run as q  # noqa: PLC0415

    npz = str(root / "u8.npz")
    inputs = q.load_inputs(tiny_keras, modes=["all"], calibration=npz, evaluation=npz)
    assert inputs.skipped == ("qat",)
    [note] = inputs.notes
    assert note.startswith("qat skipped: QAT retrains the model and needs its training data")


def test_quantize_prints_progress_per_mode_and_none_of_tensorflows_noise(root, tiny_keras):
    out = root / "cli-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    npz = str(root / "u8.npz")
    args = ["quantize", str(tiny_keras), "-m", "int8", "--calibration", npz, "--eval", npz]
    run = subprocess.run(
        [str(EDGEFLEET), *args, "--out", str(out), "--runs", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""  # no oneDNN, cuInit, absl or converter lines
    for word in ("cuInit", "oneDNN", "absl", "Saved artifact"):
        assert word not in run.stdout
    lines = run.stdout.splitlines()
    assert lines[0] == f"tiny: quantizing on 24 {npz} inputs"
    assert lines[1].startswith("  [1/2] float32 ")
    assert lines[2].startswith("  [2/2] int8 ")
    assert lines[3] == "  timing 2 model(s): 5 invokes each, interleaved"
    report = json.loads((out / "report.json").read_text())
    assert [r["mode"] for r in report["results"]] == ["float32", "int8"]
    assert "cuInit" in (out / "tensorflow.log").read_text()  # kept for whoever needs it


# -- 10: the report picture ----------------------------------------------------------------


def _report(rows):
    from edgefleet.host.quantize._run import ModeResult, Report  # noqa: PLC0415

    report = Report(
        model="net",
        created="",
        machine="",
        eval_source="x",
        eval_count=400,
        threads=1,
        preprocess={},
        labels=[],
    )
    for mode, kib, accuracy, latency_ms in rows:
        result = ModeResult(mode, f"{mode}.tflite", kib * 1024, accuracy, latency_ms, "", "", [])
        report.results.append(result)
    return report


SPREAD = [
    ("float32", 1689, 0.9875, 0.1486),
    ("float16", 848, 0.9875, 0.1377),
    ("dynamic", 431, 0.9875, 0.1116),
    ("int8", 436, 0.9880, 0.1666),
    ("16x8", 440, 0.9875, 3.8019),
    ("qat", 430, 0.9865, 0.1717),
]
SAME_SPOT = [(mode, 4, 0.3667, 0.0021) for mode, *_ in SPREAD]


@pytest.mark.parametrize("rows", [SPREAD, SAME_SPOT], ids=["spread", "same-spot"])
def test_report_png_labels_every_mode_without_overlap_on_a_log_latency_axis(rows, tmp_path):
    from edgefleet.host.quantize import _report as report  # noqa: PLC0415

    rep = _report(rows)
    fig = report.figure(rep)
    renderer = FigureCanvasAgg(fig).get_renderer()
    plot, table = fig.axes
    assert plot.get_xscale() == "log"
    labels = {t.get_text(): Text.get_window_extent(t, renderer) for t in plot.texts}
    assert set(labels) == {mode for mode, *_ in rows}
    for (a, box_a), (b, box_b) in combinations(labels.items(), 2):
        assert not box_a.overlaps(box_b), (a, b)
    cells = [c.get_text().get_text() for c in table.tables[0].get_celld().values()]
    assert {mode for mode, *_ in rows} <= set(cells)
    report.plot(rep, tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_title_gives_int8s_ratios_to_float32():
    from edgefleet.host.quantize import _report as report  # noqa: PLC0415

    fig = report.figure(_report(SPREAD))
    title = fig.get_suptitle()
    assert "int8 vs float32: 0.26x the size, 1.12x the latency, +0.05 pp accuracy" in title


# -- 11: a .tflite made elsewhere gets edgefleet's description -------------------------------


def test_a_foreign_int8_model_is_described_from_its_tensors_and_the_users_words(tiny_int8):
    data = describe_foreign(
        tiny_int8,
        name="exported model!",
        labels=list(LABELS),
        input_scale=1 / 255,
        input_zero_point=0,
    )
    info = read_model_info(data)
    assert info is not None
    graph = read_flat_model(tiny_int8).main
    tensor = graph.tensors[graph.inputs[0]]
    assert (info.name, info.mode, info.labels) == ("exported_model", "int8", tuple(LABELS))
    assert info.preprocess == PreprocessSpec(height=8, width=8, channels=1, scale="unit")
    assert info.input.dtype == "int8"
    assert info.input.scale == pytest.approx(tensor.quantization.scale[0])
    assert info.input.zero_point == tensor.quantization.zero_point[0]


def test_input_mappings_the_device_can_perform_and_one_it_cannot(tiny_float):
    assert input_mapping(1 / 127.5, 127.5) == "minus_one_one"
    assert input_mapping(1 / 128, 128) == "minus_one_one"  # what many exporters write
    assert input_mapping(1.0, 0.0) == "raw"
    data = describe_foreign(
        tiny_float, name="f", labels=list(LABELS), input_scale=1.0, input_zero_point=0.0
    )
    assert read_model_info(data).mode == "float32"
    with pytest.raises(QuantizationError) as err:
        input_mapping(0.5, 0.0)
    assert "map pixels 0-255 to [0, 127.5]" in str(err.value)
    assert "[0, 1]: --input-scale 0.0039215686 --input-zero-point 0" in str(err.value)


def test_a_foreign_model_with_wrong_labels_or_edgefleet_metadata_is_refused(tiny_int8):
    with pytest.raises(QuantizationError, match="outputs 3 classes but 4 labels"):
        describe_foreign(
            tiny_int8,
            name="m",
            labels=["a", "b", "c", "d"],
            input_scale=1 / 255,
            input_zero_point=0,
        )
    described = describe_foreign(
        tiny_int8, name="m", labels=list(LABELS), input_scale=1 / 255, input_zero_point=0
    )
    with pytest.raises(QuantizationError, match="already carries edgefleet metadata"):
        describe_foreign(
            described, name="m", labels=list(LABELS), input_scale=1 / 255, input_zero_point=0
        )
    assert embed_model_info  # re-exported beside describe_foreign


def test_described_copy_needs_all_three_options_and_leaves_the_file_alone(tmp_path, tiny_int8):
    model = tmp_path / "exported.tflite"
    model.write_bytes(tiny_int8)
    labels = tmp_path / "labels.txt"
    labels.write_text("cable\npipe\n\nvoid\n")
    with (
        pytest.raises(QuantizationError, match="missing --input-zero-point"),
        described_copy(model, labels=labels, input_scale=1 / 255, input_zero_point=None),
    ):
        pass
    with described_copy(model, labels=labels, input_scale=1 / 255, input_zero_point=0) as copy:
        assert copy.name == "exported.tflite"
        assert read_model_info(copy.read_bytes()).labels == tuple(LABELS)
    assert not copy.exists()
    assert model.read_bytes() == tiny_int8


def test_a_json_sidecar_gives_labels_and_mapping_and_the_options_override_it(tmp_path, tiny_int8):
    model = tmp_path / "exported.tflite"
    model.write_bytes(tiny_int8)
    sidecar = tmp_path / "exported.json"
    body = {"labels": list(LABELS), "input_scale": 1 / 127.5, "input_zero_point": 127.5}
    sidecar.write_text(json.dumps(body))
    none = {"input_scale": None, "input_zero_point": None}
    with described_copy(model, labels=sidecar, **none) as copy:
        info = read_model_info(copy.read_bytes())
    assert (info.labels, info.preprocess.scale) == (tuple(LABELS), "minus_one_one")
    with described_copy(model, labels=sidecar, input_scale=1.0, input_zero_point=0) as copy:
        assert read_model_info(copy.read_bytes()).preprocess.scale == "raw"
    sidecar.write_text(json.dumps({"labels": list(LABELS), "scale": 1}))
    with (
        pytest.raises(QuantizationError, match="must be a JSON object with 'labels'"),
        described_copy(model, labels=sidecar, **none),
    ):
        pass
    sidecar.write_text(json.dumps({"labels": list(LABELS)}))
    with (
        pytest.raises(QuantizationError, match="missing --input-scale, --input-zero-point"),
        described_copy(model, labels=sidecar, **none),
    ):
        pass
