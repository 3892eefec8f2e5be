import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgefleet.host.quantize import describe, embed_model_info
from edgefleet.shared.errors import ModelFormatError
from edgefleet.shared.spec import PreprocessSpec
from edgefleet.shared.tflite_model import MODEL_INFO_KEY, read_flat_model, read_model_info

LABELS = ("a", "b", "c")


def _info(data: bytes, mode="int8"):
    spec = PreprocessSpec(height=8, width=8)
    return describe(data, name="tiny", mode=mode, labels=LABELS, preprocess=spec)


def test_reader_sees_ops_and_int8_tensors(tiny_int8):
    model = read_flat_model(tiny_int8)
    names = [op.name for op in model.main.operators]
    assert "CONV_2D" in names
    assert "FULLY_CONNECTED" in names
    inp = model.main.tensors[model.main.inputs[0]]
    assert inp.dtype == "int8"
    assert inp.shape == (1, 8, 8, 1)
    assert inp.quantization is not None
    assert len(inp.quantization.scale) == 1


def test_reader_agrees_with_litert(tiny_int8):
    interp = Interpreter(model_content=tiny_int8)
    details = interp.get_input_details()[0]
    model = read_flat_model(tiny_int8)
    inp = model.main.tensors[model.main.inputs[0]]
    assert inp.name == details["name"]
    assert pytest.approx(inp.quantization.scale[0]) == details["quantization"][0]
    assert inp.quantization.zero_point[0] == details["quantization"][1]


def test_float_model_has_float_io(tiny_float):
    model = read_flat_model(tiny_float)
    assert model.main.tensors[model.main.inputs[0]].dtype == "float32"
    assert read_model_info(tiny_float) is None


def test_embed_roundtrip_and_litert_still_runs(tiny_int8):
    info = _info(tiny_int8)
    embedded = embed_model_info(tiny_int8, info)
    assert read_model_info(embedded) == info
    assert info.input.dtype == "int8"
    assert info.labels == LABELS
    outputs = []
    for data in (tiny_int8, embedded):
        interp = Interpreter(model_content=data)
        interp.allocate_tensors()
        x = np.arange(64, dtype=np.int8).reshape(1, 8, 8, 1)
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        outputs.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_reembedding_replaces_the_entry(tiny_int8):
    once = embed_model_info(tiny_int8, _info(tiny_int8))
    twice = embed_model_info(once, _info(tiny_int8, mode="qat"))
    assert len(twice) == len(once)
    assert list(read_flat_model(twice).metadata).count(MODEL_INFO_KEY) == 1
    assert read_model_info(twice).mode == "qat"


def test_label_count_must_match_outputs(tiny_int8):
    with pytest.raises(Exception, match="3 classes but 2 labels"):
        describe(
            tiny_int8,
            name="t",
            mode="int8",
            labels=["a", "b"],
            preprocess=PreprocessSpec(height=8, width=8),
        )


def test_not_a_tflite_file():
    with pytest.raises(ModelFormatError, match="TFL3"):
        read_flat_model(b"PK\x03\x04 this is a zip, not a model")


def test_truncated_files_raise_model_format_error(tiny_int8):
    data = embed_model_info(tiny_int8, _info(tiny_int8))
    rejected = 0
    for cut in range(8, len(data), max(1, len(data) // 97)):
        try:
            read_model_info(data[:cut])
        except ModelFormatError:
            rejected += 1
    assert rejected > 50


def test_invalid_embedded_info_is_reported(tiny_int8):
    data = embed_model_info(tiny_int8, _info(tiny_int8))
    broken = data.replace(b'"mode":"int8"', b'"mode":123456')
    assert broken != data
    with pytest.raises(ModelFormatError, match="invalid"):
        read_model_info(broken)
