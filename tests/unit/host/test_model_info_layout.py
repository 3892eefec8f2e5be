"""docs/protocol.md 5.4: the edgefleet.model_info layout, read as the document describes it.

The document is read independently of edgefleet's own flatbuffer reader: through the
TFLite schema's generated Python classes (Model.metadata -> Buffer.data -> JSON).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from edgefleet.host.quantize import describe, embed_model_info
from edgefleet.shared.spec import ModelInfo, PreprocessSpec
from edgefleet.shared.tflite_model import read_model_info

DOC = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()
SECTION = DOC[DOC.index("### 5.4 ") : DOC.index("## 6. ")]


def _tables(text: str) -> list[list[str]]:
    """Each table's first-column names, in order."""
    tables: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("| `"):
            if current is None:
                current = []
                tables.append(current)
            current += re.findall(r"`([a-z_]+)`", line.split("|")[1])
        elif not line.startswith("|"):
            current = None
    return tables


def _metadata_by_the_document(data: bytes) -> dict[str, object]:
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"edgefleet.model_info":
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            return json.loads(raw.decode("utf-8"))
    raise AssertionError("no edgefleet.model_info metadata entry")


def test_the_documented_layout_is_what_quantize_embeds(tiny_int8):
    labels = ("a", "b", "c")
    info = describe(
        tiny_int8,
        name="tiny",
        mode="int8",
        labels=labels,
        preprocess=PreprocessSpec(height=8, width=8),
    )
    data = embed_model_info(tiny_int8, info)
    doc = _metadata_by_the_document(data)
    info_table, spec_table, preprocess_table = _tables(SECTION)
    assert list(doc) == info_table == list(ModelInfo.model_fields)
    assert list(doc["input"]) == spec_table
    assert list(doc["preprocess"]) == preprocess_table
    assert doc["labels"] == list(labels)
    # the tensor specs are the model's tensors, as the interpreter sees them
    details = Interpreter(model_content=data).get_input_details()[0]
    assert doc["input"]["name"] == details["name"]
    assert doc["input"]["shape"] == details["shape"].tolist()
    assert doc["input"]["dtype"] == "int8"
    assert doc["input"]["zero_point"] == details["quantization"][1]
    assert abs(doc["input"]["scale"] - details["quantization"][0]) <= 1e-7
    assert read_model_info(data) == info  # what edgefleet's own reader (push, predict) gets


def test_the_documented_example_is_a_valid_model_info():
    (example,) = re.findall(r"```\n(\{\"schema_version\".*?)\n```", SECTION, re.DOTALL)
    info = ModelInfo.model_validate_json(example)
    assert info.model_dump_json() == example  # and spelt the way the writer spells it
