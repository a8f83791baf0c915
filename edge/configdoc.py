"""Writes the configuration reference (docs/config.md) from the config tree's own field
descriptions, so the documentation cannot drift from the schema.

    python -m edge.configdoc > docs/config.md
"""

from __future__ import annotations

import sys
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge.categories import DEFAULT_CATEGORIES
from edge.config import Config


def _default(field: FieldInfo, given: Any = PydanticUndefined) -> str:
    """The field's default; `given` where the enclosing model's default sets it (a section
    whose default is a whole instance, like the violence smoothing)."""
    value = field.default if given is PydanticUndefined else given
    if given is PydanticUndefined and field.default_factory is not None:
        if field.default_factory in (list, dict):
            return f"`{field.default_factory()}`"
        return "(computed)" if field.default is PydanticUndefined else repr(field.default)
    if value is PydanticUndefined:
        return "(required)"
    return "null" if value is None else f"`{value}`"


def _choices(annotation: Any) -> list[str]:
    """The values of a Literal annotation (also inside `X | None`)."""
    if get_origin(annotation) is Literal:
        return [str(value) for value in get_args(annotation)]
    return [value for arg in get_args(annotation) for value in _choices(arg)]


def _bounds(field: FieldInfo) -> str:
    choices = _choices(field.annotation)
    parts = [" \\| ".join(f"`{value}`" for value in choices)] if choices else []
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
    builtin = [
        "",
        "## Built-in categories",
        "",
        "`detection.categories` starts from these; an entry of yours with the same name overrides "
        "them field by field (`smoothing` too), other names add categories. The `.<name>` rows "
        "above give the defaults of a category you add.",
        "",
        "| category | severity | score | classes | veto (ratio) | smoothing |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in DEFAULT_CATEGORIES.items():
        m = c.smoothing
        score = f"`{c.combine}`" + (f", head `{c.head}`" if c.head else "")
        fast = f"fast {m.fast}" if m.fast is not None else "no fast path"
        smoothing = f"on {m.on}, off {m.off}, {m.k} of {m.n}, {fast}"
        classes, veto = (", ".join(f"`{x}`" for x in names) for names in (c.classes, c.veto))
        builtin.append(
            f"| `{name}` | {c.severity} | {score} | {classes} | {veto} ({c.veto_ratio}) | "
            f"{smoothing} |"
        )
    return "\n".join(head + rows(Config) + builtin) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
