"""The agent configuration reference in docs/protocol.md (section 14) is the config model's."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from edgefleet.device.config import AgentConfig, parse_config
from edgefleet.device.config_doc import BEGIN, END, reference, replace_block

ROOT = Path(__file__).parents[3]
DOC = (ROOT / "docs" / "protocol.md").read_text()


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys += _leaves(kind, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_the_documented_reference_is_generated_from_the_config_model():
    assert BEGIN in DOC
    assert END in DOC
    documented = DOC[DOC.index(BEGIN) + len(BEGIN) : DOC.index(END)].strip()
    assert documented == reference(), (
        "docs/protocol.md section 14 is out of date with device/edgefleet/device/config.py: "
        "run `.venv/bin/python -m edgefleet.device.config_doc --write docs/protocol.md`"
    )


def test_every_setting_has_a_row_with_type_and_default():
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^\| `([a-z_.]+)` \|[^|]+\|[^|]+\|", reference(), re.MULTILINE)
    }
    assert sorted(rows) == sorted(_leaves(AgentConfig))
    assert "| `device_id` | string | required |" in rows["device_id"]
    assert "| `mqtt.keepalive_s` | integer >= 5, <= 3,600 | `30` |" in rows["mqtt.keepalive_s"]
    assert "| `update.health_timeout_s` | number > 0 | `60.0` |" in rows["update.health_timeout_s"]


def test_the_documented_defaults_are_the_ones_a_minimal_config_gets(tmp_path: Path):
    # Write every documented default out as TOML: the agent must read back the same config.
    config = parse_config('device_id = "d"\nstate_dir = "s"\n', base=tmp_path)
    sections: dict[str, list[str]] = {"": ['device_id = "d"', 'state_dir = "s"']}
    for match in re.finditer(r"^\| `([a-z_.]+)` \| [^|]+ \| `([^`]*)`", reference(), re.MULTILINE):
        key, value = match.groups()
        section, _, name = key.rpartition(".")
        sections.setdefault(section, []).append(f"{name} = {value}")
    text = "\n".join(
        (f"[{name}]\n" if name else "") + "\n".join(lines) for name, lines in sections.items()
    )
    assert parse_config(text, base=tmp_path) == config


def test_replace_block_rewrites_only_between_the_markers():
    doc = f"before\n{BEGIN}\nold\n{END}\nafter\n"
    assert replace_block(doc, "new") == f"before\n{BEGIN}\nnew\n{END}\nafter\n"
