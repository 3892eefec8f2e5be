"""Every quantization mode on a ConvNet trained on real MNIST; the report's figures checked."""

import json

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from typer.testing import CliRunner

from edgefleet.host.cli import app
from edgefleet.host.datasets import load_mnist
from edgefleet.host.errors import DatasetError, ModelLoadError
from edgefleet.host.quantize import _measure as measure
from edgefleet.host.quantize import _report as report
from edgefleet.host.quantize import _run as q
from edgefleet.host.training import train_mnist_convnet
from edgefleet.shared.preprocess import preprocess, to_input_tensor
from edgefleet.shared.tflite_model import read_flat_model, read_model_info

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    model = train_mnist_convnet(root, epochs=1, limit=1000)
    ev = load_mnist("eval")
    np.savez(root / "eval.npz", x=ev.x[:300], y=ev.y[:300])
    tr = load_mnist("train")
    np.savez(root / "train.npz", x=tr.x[:500], y=tr.y[:500])
    return root, model


@pytest.fixture(scope="module")
def result(work):
    root, model = work
    inputs = q.load_inputs(
        model,
        modes=["all"],
        calibration="mnist",
        evaluation=str(root / "eval.npz"),
        train=str(root / "train.npz"),
    )
    out = root / "out"
    rep = q.quantize(inputs, modes=["all"], out_dir=out, latency_runs=20, run_edgetpu=True)
    report.write(rep, out)
    return out, rep


def test_every_mode_has_a_real_file(result):
    out, _ = result
    data = json.loads((out / "report.json").read_text())
    modes = [r["mode"] for r in data["results"]]
    assert modes == ["float32", "float16", "dynamic", "int8", "16x8", "qat"]
    for r in data["results"]:
        assert (out / r["path"]).stat().st_size == r["size_bytes"]
        assert r["latency_ms"] > 0
    sizes = {r["mode"]: r["size_bytes"] for r in data["results"]}
    assert sizes["int8"] < 0.3 * sizes["float32"]
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def _interpreter_accuracy(path, x_raw, y):
    blob = path.read_bytes()
    info = read_model_info(blob)
    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    hits = 0
    for image, label in zip(x_raw, y, strict=True):
        interp.set_tensor(
            inp["index"], to_input_tensor(preprocess(image, info.preprocess), info.input)
        )
        interp.invoke()
        hits += int(np.argmax(interp.get_tensor(outp["index"])[0]) == label)
    return hits / len(y)


def test_accuracies_are_recomputable_from_the_interpreter(result):
    out, rep = result
    ev = load_mnist("eval")
    for r in rep.results:
        assert _interpreter_accuracy(out / r.path, ev.x[:300], ev.y[:300]) == r.accuracy
    assert rep.eval_count == 300
    assert min(r.accuracy for r in rep.results) > 0.3  # a trained model, not chance


def test_interleaved_latency_uses_each_candidates_settings(result, monkeypatch):
    out, _ = result
    built = []
    real = measure.interpreter

    def spy(path, *, threads, xnnpack):
        built.append((path.name, threads, xnnpack))
        return real(path, threads=threads, xnnpack=xnnpack)

    monkeypatch.setattr(measure, "interpreter", spy)
    cands = {}
    for mode, overrides in (("float32", {}), ("int8", {"threads": 2, "xnnpack": False})):
        path = out / f"mnist_convnet_{mode}.tflite"
        info = read_model_info(path.read_bytes())
        sample = preprocess(load_mnist("eval").x[0], info.preprocess)
        cands[mode] = measure.Candidate(path, sample, info, **overrides)
    timed = measure.interleaved_latency_ms(cands, runs=12, rounds=3, threads=1)
    assert set(timed) == {"float32", "int8"}
    assert all(ms > 0 for ms in timed.values())
    assert built == [
        ("mnist_convnet_float32.tflite", 1, True),
        ("mnist_convnet_int8.tflite", 2, False),
    ]


def test_int8_model_is_really_int8(result):
    out, rep = result
    blob = (out / "mnist_convnet_int8.tflite").read_bytes()
    interp = Interpreter(model_content=blob)
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    graph = read_flat_model(blob).main
    for op in graph.operators:
        for index in (*op.inputs, *op.outputs):
            if index >= 0:
                assert graph.tensors[index].dtype in {"int8", "int32"}, op.name
    int8 = next(r for r in rep.results if r.mode == "int8")
    assert int8.edgetpu_precheck["compatible"]


def test_models_describe_themselves(result):
    out, rep = result
    for r in rep.results:
        info = read_model_info((out / r.path).read_bytes())
        assert info.mode == r.mode
        assert info.labels == tuple(str(d) for d in range(10))
        assert (info.preprocess.height, info.preprocess.width) == (28, 28)


def test_missing_compiler_is_a_note_not_a_failure(result):
    _, rep = result
    if rep.edgetpu["ok"]:
        pytest.skip("a real edgetpu_compiler is installed here")
    assert rep.edgetpu["missing"]
    assert any("apt" in n for n in rep.notes)


def test_table_shows_ratios(result):
    _, rep = result
    text = report.table(rep)
    assert "int8" in text
    assert "1.000" in text  # float32 against itself


# --- bad inputs -------------------------------------------------------------------------


def test_missing_model(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        q.load_inputs(
            tmp_path / "nope.keras", modes=["int8"], calibration="mnist", evaluation="mnist"
        )


def test_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(ModelLoadError, match=r"not a valid \.keras file"):
        q.load_inputs(bad, modes=["int8"], calibration="mnist", evaluation="mnist")


def test_dynamic_input_shape(tmp_path):
    import keras  # noqa: PLC0415 - TensorFlow only where needed

    model = keras.Sequential(
        [
            keras.Input((None, None, 1)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    path = tmp_path / "dyn.keras"
    model.save(path)
    with pytest.raises(ModelLoadError, match="cannot be made static"):
        q.load_inputs(path, modes=["int8"], calibration="mnist", evaluation="mnist")


def test_empty_and_mismatched_data(tmp_path, work):
    _, model = work
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        q.load_inputs(model, modes=["int8"], calibration=str(empty), evaluation="mnist")
    unknown = tmp_path / "unknown"
    (unknown / "cat").mkdir(parents=True)
    np.save(unknown / "cat" / "0.npy", np.zeros((28, 28), np.uint8))
    with pytest.raises(DatasetError, match="does not know"):
        q.load_inputs(model, modes=["int8"], calibration="mnist", evaluation=str(unknown))
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 5)), y=np.zeros(4, np.int64))
    with pytest.raises(DatasetError, match="shape"):
        q.load_inputs(
            model, modes=["int8"], calibration="mnist", evaluation=str(tmp_path / "flat.npz")
        )


def test_cli_bad_model_writes_nothing(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["quantize", str(tmp_path / "missing.keras"), "--out", str(out)])
    assert res.exit_code == 1
    assert "does not exist" in res.output
    assert not out.exists()


def test_cli_export_writes_label_folders(tmp_path):
    res = CliRunner().invoke(
        app, ["datasets", "export", "mnist", "--split", "eval", "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    files = sorted(tmp_path.glob("*/*.png"))
    assert len(files) == 2000
    assert {p.parent.name for p in files} == {str(d) for d in range(10)}
