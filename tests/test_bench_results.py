"""`python -m bench.quality --write` updates its own tables and keeps the measured history."""

from __future__ import annotations

from pathlib import Path

from bench.quality import BEGIN, END, SECTION, write_section

HISTORY = "**Session 3: a change.** Kept by hand, with its table:\n\n| a | b |\n|---|---|\n"
OTHER = "## Video\n\nThe video figures.\n"


def test_write_keeps_the_section_history_and_the_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# Benchmark results\n\n{SECTION}\n\n{HISTORY}\n{OTHER}")
    write_section(["| run | 1 |", "", "`python -m bench.quality --write` (30 s)"], path)
    write_section(["| run | 2 |", "", "`python -m bench.quality --write` (31 s)"], path)
    text = path.read_text()
    assert text.count(BEGIN) == text.count(END) == 1
    assert "| run | 1 |" not in text
    assert "| run | 2 |" in text
    assert text.index(SECTION) < text.index("| run | 2 |") < text.index(HISTORY)
    assert text.endswith(OTHER)


def test_write_creates_the_section_where_there_is_none(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# Benchmark results\n\n{OTHER}")
    write_section(["| run | 1 |"], path)
    text = path.read_text()
    assert text.startswith(f"# Benchmark results\n\n{OTHER}")
    assert text.endswith(f"{SECTION}\n\n{BEGIN}\n| run | 1 |\n{END}\n")
    write_section(["| run | 2 |"], tmp_path / "new.md")
    assert (tmp_path / "new.md").read_text().count(SECTION) == 1
