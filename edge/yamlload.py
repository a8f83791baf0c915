"""YAML config files, for the daemon's and the listener's config alike: a safe loader that
refuses a key given twice in one mapping (YAML would keep the last silently), and one-line
error messages that say where (`line L, column C`)."""

from __future__ import annotations

from typing import Any

import yaml


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may bring in keys that this mapping overrides
            key = self.construct_object(key_node, deep=True)
            try:
                line = first.get(key)
            except TypeError:
                continue  # an unhashable key: PyYAML's own error follows
            if line is not None:
                raise yaml.constructor.ConstructorError(
                    problem=f"{key!r} is given twice (first on line {line + 1})",
                    problem_mark=key_node.start_mark,
                )
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def where(text: str, index: int) -> str:
    """`line L, column C` (1-based) of a character index into `text`."""
    line = text.count("\n", 0, index) + 1
    column = index - text.rfind("\n", 0, index)  # rfind: -1 on the first line
    return f"line {line}, column {column}"


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line for a YAML error: `line L, column C: PROBLEM (CONTEXT at line L, column C)`."""
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"{where(text, exc.position)}: character #x{char:04x} is not allowed in YAML"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    mark = exc.problem_mark or exc.context_mark
    out = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    out += exc.problem or exc.context or "syntax error"
    if exc.problem and exc.context:
        cmark = exc.context_mark
        at = f" at line {cmark.line + 1}, column {cmark.column + 1}" if cmark else ""
        out += f" ({exc.context}{at})"
    return out


def key_path(loc: tuple[Any, ...], top: str = "(top level)") -> str:
    """A validation error's location as the user writes it: `a.b[2].c`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or top
