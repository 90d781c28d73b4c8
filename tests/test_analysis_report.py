"""report.py: what analyses write (sections, tables) and the report gathering them, in the registry's order."""

from __future__ import annotations

import pytest

from retrieval_icl.analysis import write_report
from retrieval_icl.analysis.registry import names
from retrieval_icl.analysis.report import Section, save_analysis
from retrieval_icl.errors import RiclError
from retrieval_icl.results_dir import load_results


def test_report_without_analyses_is_an_error(perfect):
    with pytest.raises(RiclError, match="no analyses saved"):
        write_report(perfect)


def test_report_follows_the_registry_order_whatever_was_saved_first(perfect):
    folder = load_results(perfect).analysis_dir
    for name in reversed(names()):
        save_analysis(folder, name, f"Title {name}", "Intro.", [Section("Part", "Text.", table=[{"a": 0.5}])])
    save_analysis(folder, "unregistered", "Title unregistered", "Intro.", [])
    [md] = write_report(perfect, html=False)
    text = md.read_text()
    positions = [text.index(f"## Title {n}\n") for n in names()]
    assert positions == sorted(positions) and "Title unregistered" not in text
    assert "| a |\n|---|\n| 0.500 |\n" in text
