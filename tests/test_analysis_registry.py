"""registry.py: each analysis declared once, and what is made from it: `applicable`, `run_all`, the report's order,
the `ricl analyze` subcommands and their help (hand-made records, no model)."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest
import typer
from handmade_results import BEST, doctest_failures
from typer.testing import CliRunner

from retrieval_icl.analysis import applicable, registry, run_all, write_report
from retrieval_icl.analysis.attention import analyze_reconstruction
from retrieval_icl.analysis.cli import OPTIONS, analyze_app
from retrieval_icl.analysis.registry import ANALYSES, OPTION_NAMES, Analysis, Options, get, names
from retrieval_icl.cli import app
from retrieval_icl.errors import RiclError
from retrieval_icl.results_dir import load_results

NO_ATTENTION = "no attention captured (capture_attention: false)"


def test_every_analysis_has_a_command_with_its_options_and_a_report_slot():
    commands = typer.main.get_command(analyze_app).commands
    assert list(commands) == [a.command for a in ANALYSES] + ["all"]
    for a in ANALYSES:
        assert [p.name for p in commands[a.command].params] == ["results_dir", *a.takes]
        assert commands[a.command].help == a.description
    assert [p.name for p in commands["all"].params] == ["results_dir", *OPTION_NAMES]
    assert set(OPTIONS) == set(OPTION_NAMES)  # every option has its CLI flag
    assert names() == ["attention", "reconstruction", "kernel", "surrogate", "bandwidth", "label_format",
                       "distribution", "frontier"]


def test_each_function_takes_the_arguments_it_is_given():
    for a in ANALYSES:
        inspect.signature(a.load()).bind(None, **a.arguments(Options()))  # raises TypeError on a mismatch
    assert get("bandwidth").arguments(Options(bins=3, seed=2, bandwidth=9.0)) == {
        "n_bins": 3, "selection_fraction": 0.7, "selection_n": None, "seed": 2}
    assert get("distribution").arguments(Options(runs=["x"])) == {}
    assert get("frontier").arguments(Options(reference="knn-k4-seed0", seed=3)) == {"reference": "knn-k4-seed0",
                                                                                     "seed": 3}


def test_applicable_names_the_reason_an_analysis_is_skipped(perfect, study):
    assert applicable(load_results(study)) == dict.fromkeys(names())
    (perfect / "attention" / "knn-seed0.safetensors").unlink()
    assert applicable(load_results(perfect)) == {
        "attention": NO_ATTENTION, "reconstruction": NO_ATTENTION, "kernel": None, "surrogate": None,
        "bandwidth": None, "label_format": "every run uses a single label format",
        "distribution": "one demonstration pool and no representative (kmeans/votek) selector",
        "frontier": "only 1 run; the frontier compares two or more"}
    with pytest.raises(RiclError, match="no run named 'nope'"):
        applicable(load_results(perfect), ["nope"])


def test_get_by_name_or_command_and_an_unknown_name_lists_the_valid_ones():
    assert get("reconstruct") is get("reconstruction") and get("label-format").name == "label_format"
    with pytest.raises(RiclError, match="unknown analysis 'nope'; known: attention, reconstruction, kernel"):
        get("nope")


def test_a_declaration_with_an_unknown_option_or_no_function_path_is_refused():
    with pytest.raises(ValueError, match="takes must be among"):
        Analysis("x", "x", "X.", "x:f", ("alpha",))
    with pytest.raises(ValueError, match="'module:function' path"):
        Analysis("x", "x", "X.", "analyze_x")


def test_analyze_help_lists_every_analysis_with_its_description():
    result = CliRunner().invoke(app, ["analyze", "--help"])
    assert result.exit_code == 0, result.output
    text = re.sub(r"[\s│]+", " ", result.output)  # undo rich's box and line wrapping
    for a in ANALYSES:
        assert f" {a.command} {a.description}" in text


def test_the_cli_imports_no_analysis_until_one_runs():
    code = ("import sys, retrieval_icl.cli; print(' '.join(m for m in sys.modules if m.startswith(('matplotlib', "
            "'scipy', 'retrieval_icl.analysis.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(loaded) <= {f"retrieval_icl.analysis.{m}" for m in ("cli", "records", "registry", "report")}, loaded


def test_run_all_and_report_cover_every_analysis(study):
    results = load_results(study)
    assert all(v is None for v in applicable(results).values())
    done = run_all(results, selection_fraction=0.5)
    assert all(isinstance(v, dict) for v in done.values())
    assert list(done) == names() and all((study / "analysis" / f"{n}.json").exists() for n in names())
    assert analyze_reconstruction(results, ["knn-default-in_distribution-seed0"])["runs"][
        "knn-default-in_distribution-seed0"]["best_layer"] == BEST[0]
    md, html = write_report(study)
    text = md.read_text()
    for title in ("Figure 2", "Section 5", "Table 2", "Kernel surrogate", "Bandwidth", "Label format",
                  "In-distribution", "Accuracy against prompt tokens"):
        assert title in text
    for image in (study / "analysis").glob("*.png"):
        assert image.stat().st_size > 1000
    assert "data:image/png;base64," in html.read_text() and "<table>" in html.read_text()


def test_run_all_skips_what_the_records_do_not_allow(perfect):
    (perfect / "attention" / "knn-seed0.safetensors").unlink()
    results = load_results(perfect)
    done = run_all(results)
    assert "no attention captured" in done["attention"] and isinstance(done["kernel"], dict)
    assert "reconstruction_agreement" not in done["kernel"]["runs"]["knn-seed0"]
    write_report(perfect, html=False)
    assert "Not run on these records" in (perfect / "report.md").read_text()


def test_doctests():
    assert doctest_failures(registry) == 0
