"""The config reference (docs/config.md), generated from :class:`airrep.config.PipelineConfig`.

Every field's description is the string under it in airrep/config.py, so the reference, the
JSON schema and Prefect's parameter form say the same thing. Regenerate after changing a
field: ``python -m airrep.config_reference > docs/config.md`` (a test checks it is current).
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from airrep.config import PipelineConfig


def _type_name(annotation: Any) -> str:
    text = str(annotation) if typing.get_origin(annotation) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("NoneType", "None")


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return f"`{json.dumps(value)}`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, children = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            children.append((f"{prefix}{name}", annotation))
            continue
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        kind = _type_name(annotation).replace("|", "\\|")  # a union's bar would end the table cell
        rows.append(f"| `{prefix}{name}` | `{kind}` | {_default(field)} | {description} |")
    if rows:
        title = prefix.rstrip(".") or "top level"
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        out += [f"## `{title}`", "", doc, "", "| key | type | default | description |", "|---|---|---|---|",
                *rows, ""]
    for name, child in children:
        _section(child, f"{name}.", out)


def config_reference() -> str:
    """The whole reference as Markdown: one table per section, in the order of the YAML files."""
    out = ["# Configuration reference", "",
           "Generated from `airrep/config.py` by `python -m airrep.config_reference`; do not edit by hand. "
           "A value comes from the YAML file (`-c`, a path or a packaged name), then `AIRREP__SECTION__KEY` "
           "environment variables, then `--set section.key=value`; later sources win. Unknown keys and invalid "
           "values are errors that name the field.", ""]
    _section(PipelineConfig, "", out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
