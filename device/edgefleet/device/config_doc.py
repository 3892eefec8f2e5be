"""The agent configuration reference of docs/protocol.md, generated from the config model.

``python -m edgefleet.device.config_doc`` prints the reference (a Markdown table per
section of agent.toml: every setting, its type, default and description);
``--write docs/protocol.md`` replaces the block between :data:`BEGIN` and :data:`END` in
that file. ``tests/unit/device/test_config_doc.py`` fails when the document and
:class:`~edgefleet.device.config.AgentConfig` disagree, so they cannot drift apart.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from edgefleet.device.config import AgentConfig

BEGIN = "<!-- agent-config:begin (generated: python -m edgefleet.device.config_doc) -->"
END = "<!-- agent-config:end -->"
_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _type_name(annotation: Any) -> str:  # noqa: ANN401 - any annotation
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in kept) + ", optional"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attr):,}")
    return f" {', '.join(parts)}" if parts else ""


def _value(field: Any) -> object:  # noqa: ANN401 - a pydantic FieldInfo
    if field.default_factory is not None:
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


def _default(field: Any) -> str:  # noqa: ANN401 - a pydantic FieldInfo
    if field.is_required():
        return "required"
    value = _value(field)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = f'"{value}"'
    elif isinstance(value, int) and value >= 10_000:  # noqa: PLR2004
        return f"`{value}` ({value:,})"
    else:
        text = str(value)
    return f"`{text}`"


def _rows(model: type[BaseModel], section: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{section}.{name}" if section else name
        kind = _type_name(field.annotation) + _bounds(field.metadata)
        text = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {kind} | {_default(field)} | {text} |")
    return rows


def reference() -> str:
    """The reference block (without the markers), as it stands in docs/protocol.md."""
    top, sections = [], []
    for name, field in AgentConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((name, annotation, field.description or ""))
        else:
            top.append(name)
    header = ["| key | type | default | what |", "|---|---|---|---|"]
    lines = ["Top level:", "", *header]
    lines += [r for r in _rows(AgentConfig, "") if r.split("`")[1] in top]
    for name, model, description in sections:
        summary = (model.__doc__ or description).strip().splitlines()[0]
        lines += ["", f"`[{name}]`: {summary}", "", *header, *_rows(model, name)]
    return "\n".join(lines)


def replace_block(document: str, block: str) -> str:
    """``document`` with the text between :data:`BEGIN` and :data:`END` replaced by ``block``.

    Raises:
        ValueError: the markers are not in the document.
    """
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        msg = f"the markers {BEGIN!r} and {END!r} are not in the document"
        raise ValueError(msg)
    return document[: start + len(BEGIN)] + "\n" + block + "\n" + document[end:]


def main(argv: list[str]) -> int:
    """Print the reference, or ``--write FILE`` it into FILE between the markers."""
    if argv[:1] == ["--write"] and len(argv) == 2:  # noqa: PLR2004
        path = Path(argv[1])
        path.write_text(replace_block(path.read_text(encoding="utf-8"), reference()))
        return 0
    if argv:
        print("usage: python -m edgefleet.device.config_doc [--write docs/protocol.md]")
        return 2
    try:
        print(reference(), flush=True)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        # no flush at exit into the closed pipe
        sys.stdout = None
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
