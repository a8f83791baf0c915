"""The configuration reference in docs/ is generated from the schema and kept current."""

from __future__ import annotations

from edge.configdoc import render
from tests.helpers import ROOT


def test_docs_config_md_is_current() -> None:
    current = (ROOT / "docs" / "config.md").read_text()
    assert current == render(), (
        "docs/config.md is stale: run `python -m edge.configdoc > docs/config.md`"
    )


def test_every_field_has_a_description() -> None:
    missing = [
        line for line in render().splitlines() if line.startswith("| `") and line.endswith("|  |")
    ]
    assert not missing, missing
