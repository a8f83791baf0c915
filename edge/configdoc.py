"""Writes the configuration reference (docs/config.md) from the config tree's own field
descriptions, so the documentation cannot drift from the schema.

    python -m edge.configdoc > docs/config.md
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge.config import Config


def _default(field: FieldInfo, given: Any = PydanticUndefined) -> str:
    """The field's default; `given` where the enclosing model's default sets it (a section
    whose default is a whole instance, like the violence smoothing)."""
    value = field.default if given is PydanticUndefined else given
    if given is PydanticUndefined and field.default_factory is not None:
        return "(computed)" if field.default is PydanticUndefined else repr(field.default)
    if value is PydanticUndefined:
        return "(required)"
    return "null" if value is None else f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def rows(model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _model_of(field.annotation)
        given = getattr(defaults, name) if defaults is not None else PydanticUndefined
        if getattr(field.annotation, "__origin__", None) is dict:
            key = f"{key}.<name>"
        description = (field.description or "").replace("|", "\\|")
        if nested is not None:
            inner = given if isinstance(given, BaseModel) else field.default
            out.append(f"| **`{key}`** | | | {description} |")
            out.extend(rows(nested, f"{key}.", inner if isinstance(inner, BaseModel) else None))
        else:
            out.append(f"| `{key}` | {_default(field, given)} | {_bounds(field)} | {description} |")
    return out


def render() -> str:
    head = [
        "# Configuration reference",
        "",
        "Generated from the schema in `edge/config.py` by `python -m edge.configdoc`; do not "
        "edit by hand. Unknown keys are rejected; an error names the key path and the line.",
        "",
        "| key | default | bounds | meaning |",
        "|---|---|---|---|",
    ]
    return "\n".join(head + rows(Config)) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
