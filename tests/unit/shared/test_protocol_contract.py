"""docs/protocol.md's statements on bytes hold (issue 18): key order, float spelling, fields.

The independent implementation written from the document found places where the text and
the agent differed; these tests compare each such statement with what the code writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.shared.manifest import Manifest, canonical_bytes, sign_manifest
from edgefleet.shared.messages import (
    Ack,
    ChunkRequest,
    ImageMessage,
    PredictionRecord,
    Reported,
    Status,
    TopK,
    UpdateState,
    encode,
)
from edgefleet.shared.spec import GprOptions, PreprocessSpec, TensorSpec

DOC = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()


def section(title: str) -> str:
    """The text of the section whose heading starts with ``title``, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}.*?$(.*?)(?=^#+ )", DOC, re.DOTALL | re.MULTILINE)
    assert match, f"no section {title!r} in docs/protocol.md"
    return match.group(1)


def table_fields(text: str) -> list[str]:
    """The first column's backquoted names of the first table in ``text`` (split on ', ')."""
    names: list[str] = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            if names:
                break
            continue
        names += re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])
    return names


MESSAGE_SECTIONS = [
    ("4.1 Status", Status),
    ("4.2 Reported", Reported),
    ("4.3 PredictionRecord", PredictionRecord),
    ("4.4 Ack", Ack),
    ("4.5 ChunkRequest", ChunkRequest),
    ("4.6 ImageMessage", ImageMessage),
]


@pytest.mark.parametrize(("title", "model"), MESSAGE_SECTIONS)
def test_message_tables_list_the_fields_in_the_order_the_encoder_writes_them(title, model):
    documented = table_fields(section(title))
    fields = [f for f in model.model_fields if f != "v"]
    assert documented, title
    assert set(documented) <= set(fields), f"{title}: documented but not sent"
    # the table's order is the wire order (3.1); fields documented elsewhere may be added
    assert [f for f in fields if f in documented] == documented, title
    for name in set(fields) - set(documented):
        assert f"`{name}`" in DOC, f"{model.__name__}.{name} is not documented anywhere"


def test_v_comes_first_and_absent_fields_are_left_out():
    record = PredictionRecord(
        device_id="pi-07",
        boot_id="b",
        seq=1,
        label="7",
        score=1.0,
        topk=[TopK(label="7", score=1.0)],
        latency_ms=0.5,
        model_name="m",
        model_version=7,
        ts=1_800_000_000.0,
    )
    text = encode(record).decode()
    assert text.startswith('{"v":1,"device_id":"pi-07","boot_id":"b","seq":1,')
    assert "error" not in text
    assert " " not in text


@pytest.mark.parametrize(
    ("value", "spelt"),
    [
        (1.0, "1.0"),
        (0.0, "0.0"),
        (86400.0, "86400.0"),
        (1_800_000_000.0, "1800000000.0"),
        (0.5, "0.5"),
        (1e-5, "0.00001"),
        (1e-7, "1e-7"),
        (2.5e-6, "2.5e-6"),
        (1.25e16, "1.25e+16"),
        (9999999999999998.0, "9999999999999998.0"),
    ],
)
def test_message_floats_are_spelt_as_documented(value, spelt):
    status = Status(device_id="d", online=True, uptime_s=value)
    assert f'"uptime_s":{spelt}' in encode(status).decode()
    assert json.loads(spelt) == value


def test_a_whole_progress_is_written_with_a_fraction():
    text = encode(Reported(device_id="d", state=UpdateState.ACTIVE, progress=1.0)).decode()
    assert '"progress":1.0' in text
    assert '"progress":0.0' in encode(Reported(device_id="d", state=UpdateState.IDLE)).decode()


def test_manifest_floats_are_the_documented_fields_spelt_by_python_repr():
    text = section("3.1 Numbers")
    assert "`input.scale`, `output.scale` and `preprocess.gpr.gain_factor`" in text
    floats = set()

    def walk(obj: object, path: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, path)
        elif isinstance(obj, float):
            floats.add(path)

    manifest = _manifest(
        preprocess=PreprocessSpec(kind="gpr", height=8, width=8, gpr=GprOptions()),
        input=TensorSpec(shape=(1, 8, 8, 1), dtype="float32"),
        output=TensorSpec(shape=(1, 3), dtype="int8", scale=1e-5, zero_point=-128),
    )
    raw = canonical_bytes(manifest).decode()
    walk(json.loads(raw), "")
    assert floats == {"input.scale", "output.scale", "preprocess.gpr.gain_factor"}
    assert '"scale":0.0' in raw  # unquantized input
    assert '"gain_factor":1.0' in raw
    assert '"scale":1e-05' in raw  # Python repr, unlike the messages' 0.00001


def test_an_integer_field_refuses_a_whole_float_and_a_float_field_takes_an_integer():
    manifest = json.loads(canonical_bytes(_manifest()))
    manifest["output"]["scale"] = 1
    assert Manifest.model_validate_json(json.dumps(manifest), strict=True).output.scale == 1.0
    manifest["version"] = 7.0
    with pytest.raises(ValueError, match="valid integer"):
        Manifest.model_validate_json(json.dumps(manifest), strict=True)


def test_the_envelope_keys_are_in_the_documented_order():
    envelope = sign_manifest(_manifest(), Ed25519PrivateKey.generate()).decode()
    assert list(json.loads(envelope)) == ["v", "key_id", "payload", "signature"]
    assert envelope.startswith('{"v":1,"key_id":"')
    assert '`{"v":1,"key_id":...,"payload":...,"signature":...}`' in section("3.1 Numbers")


def test_the_example_reports_have_the_fields_the_agent_sends():
    examples = re.findall(r"```json\n(.*?)\n```", section("4.2 Reported"), re.DOTALL)
    by_state = {json.loads(e)["state"]: json.loads(e) for e in examples}
    expired = by_state["rejected"]
    # a refusal of a signed manifest names its variant, and every rejection its step
    assert expired["reason"] == "expired"
    assert expired["step"] == "verifying"
    assert re.fullmatch(r"[0-9a-f]{64}", expired["sha256"])
    assert by_state["failed"]["progress"] == 1.0  # failed at health_check: whole file
    for example in examples:
        assert list(json.loads(example)) == [
            k for k in Reported.model_fields if k in json.loads(example)
        ]


def test_the_example_record_source_is_what_the_agent_writes():
    (example,) = re.findall(r"```json\n(.*?)\n```", section("4.3 PredictionRecord"), re.DOTALL)
    source = json.loads(example)["source"]
    assert "/" not in source  # the bare file name, as the watched folder gives it
    assert ":" not in source


def _manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "m",
        "version": 7,
        "created_at": 1_800_000_000,
        "expires_at": 1_802_592_000,
        "targets": {"groups": ["field"]},
        "variants": [
            {
                "accelerator": "cpu",
                "sha256": "0" * 64,
                "size": 10,
                "chunk_size": 10,
                "chunk_count": 1,
            }
        ],
        "mode": "int8",
        "input": TensorSpec(shape=(1, 8, 8, 1), dtype="int8", scale=0.5, zero_point=-128),
        "output": TensorSpec(shape=(1, 3), dtype="int8", scale=0.00390625, zero_point=-128),
        "preprocess": PreprocessSpec(height=8, width=8),
        "labels": ["a", "b", "c"],
    }
    return Manifest.model_validate(fields | changes)


def test_every_example_message_lists_its_keys_in_the_order_the_encoder_writes_them():
    examples = re.findall(r"```json\n(.*?)\n```", DOC[DOC.index("## 4. ") : DOC.index("## 5. ")])
    checked = 0
    for example in examples:
        if "<" in example:
            continue
        doc = json.loads(example)
        for _title, model in MESSAGE_SECTIONS:
            try:
                message = model.model_validate_json(example)
            except ValueError:
                continue
            assert list(doc) == [k for k in model.model_fields if k in doc], example
            # and the reference encoder writes exactly these bytes
            assert encode(message).decode() == example, example
            checked += 1
    assert checked >= 8
