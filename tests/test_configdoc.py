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


def test_choices_and_the_built_in_categories_are_documented() -> None:
    """The reference gave no allowed values for choice keys, "(computed)" for empty lists, and
    generic defaults where the built-in categories have their own."""
    text = render()
    assert "| `audio.model` | `yamnet_spectra_in` | `yamnet` \\| `yamnet_spectra_in` |" in text
    assert "| `alerts.email.security` | `starttls` | `starttls` \\| `ssl` \\| `none` |" in text
    assert "| `alerts.sms.to` | `[]` |" in text
    assert "| `glass_break` | warning | `head`, head `glass_break.npz` |" in text
    assert "on 0.7, off 0.6, 2 of 3, fast 0.85 |" in text
