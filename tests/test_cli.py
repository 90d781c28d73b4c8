"""The `ricl` command on bad input: one line naming the problem, exit code 2, nothing half-written."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval_icl.cli import app
from retrieval_icl.data.tasks import TASKS_DIR

TINY = Path(__file__).resolve().parent / "data"  # 40 hand-made SST-2 train lines
runner = CliRunner()


def ricl(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert pytest.importorskip("re").search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    data = folder / "reviews.jsonl"
    rows = [("a gorgeous, witty film", "pos"), ("dull and far too long", "neg"), ("I loved every minute", "pos"),
            ("a tedious mess", "neg"), ("warm and funny", "pos")]
    data.write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in rows))
    out = folder / "index"
    result = ricl("index", "build", "--file", data, "--text-field", "review", "--label-field", "sentiment",
                  "--labels", "neg,pos", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_index_build_info_and_select_work_on_a_users_file(small_index):
    info = ricl("index", "info", small_index)
    assert info.exit_code == 0 and "sentence-transformers/all-MiniLM-L6-v2" in info.output and "384" in info.output
    chosen = ricl("select", "--index", small_index, "-k", "2", "--order", "nearest_first", "a witty and gorgeous movie")
    assert chosen.exit_code == 0, chosen.output
    rows = [line for line in chosen.output.splitlines() if line.startswith("│")]
    assert "gorgeous, witty" in rows[0] and "pos" in rows[0]


def test_existing_index_is_not_overwritten_without_the_flag(small_index):
    before = (small_index / "manifest.json").read_text()
    result = ricl("index", "build", "--task", "sst2", "--data-dir", TINY, "--out", small_index)
    assert_one_line_error(result, "exists; pass --overwrite")
    assert (small_index / "manifest.json").read_text() == before


@pytest.mark.parametrize("row, pattern", [
    ({"text": "fine", "label": 7}, r"bad\.jsonl:2: label=7 is outside the label set"),
    ({"text": "", "label": 0}, r"bad\.jsonl:2: text is empty"),
    ({"body": "fine", "label": 0}, r"bad\.jsonl:2: no column 'text'"),
])
def test_bad_rows_fail_and_write_nothing(tmp_path, row, pattern):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "good", "label": 1}) + "\n" + json.dumps(row) + "\n")
    out = tmp_path / "index"
    result = ricl("index", "build", "--file", data, "--text-field", "text", "--labels", "neg,pos", "--out", out)
    assert_one_line_error(result, pattern)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]


def test_missing_file_and_unknown_task(tmp_path):
    assert_one_line_error(ricl("index", "build", "--file", tmp_path / "nope.csv", "--text-field", "t",
                               "--labels", "a,b", "--out", tmp_path / "i"), "nope.csv: no such file")
    assert_one_line_error(ricl("index", "build", "--task", "sst3", "--out", tmp_path / "i"), "unknown task 'sst3'")
    assert_one_line_error(ricl("compare", tmp_path / "missing.yaml"), "missing.yaml: no such file")


def test_k_larger_than_the_pool(small_index):
    assert_one_line_error(ricl("select", "--index", small_index, "-k", "9", "good"),
                          r"k=9 is larger than the pool without the query \(5")


def test_corrupt_and_missing_index(small_index, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in small_index.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "index.faiss").write_bytes(b"not a faiss index")
    assert_one_line_error(ricl("index", "info", broken), "corrupt")
    assert_one_line_error(ricl("select", "--index", broken, "good"), "corrupt")
    assert_one_line_error(ricl("index", "info", tmp_path / "none"), "none")


def test_bad_experiment_config_names_the_field(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("task: sst2\nk: 0\n")
    assert_one_line_error(ricl("compare", cfg), r"exp\.yaml: k: Input should be greater than 0")
    cfg.write_text("task: sst2\nselectors: [{name: knn, label: a}, {name: random, label: a}]\n")
    assert_one_line_error(ricl("validate", cfg), "selector labels must be unique")
    cfg.write_text("task: sst2\nbatchsize: 3\n")
    assert_one_line_error(ricl("validate", cfg), "batchsize: Extra inputs are not permitted")


def test_validate_accepts_the_shipped_configs():
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in [*root.glob("experiments/*.yaml"), *root.glob("studies/*.yaml"), TASKS_DIR / "sst2.yaml"]:
        result = ricl("validate", path)
        assert result.exit_code == 0, (path, result.output)


def test_select_help_lists_every_registered_strategy():
    from retrieval_icl.selectors.base import SELECTORS

    result = ricl("select", "--help")
    assert result.exit_code == 0
    assert all(f"{name}:" in result.output for name in SELECTORS) and len(SELECTORS) >= 8


def test_select_takes_selector_parameters(small_index):
    result = ricl("select", "--index", small_index, "-k", "2", "--selector", "mmr", "--param", "lambda_mult=0.2",
                  "a moving film")
    assert result.exit_code == 0, result.output
    assert_one_line_error(ricl("select", "--index", small_index, "--selector", "mmr", "--param", "lambda_mult",
                               "a film"), "KEY=VALUE")
    assert_one_line_error(ricl("select", "--index", small_index, "--selector", "mmr", "--param", "lambda_mult=7",
                               "a film"), "lambda_mult")


def table_rows(output: str) -> list[list[str]]:
    """The cells of each body row of a printed rich table: rank, id, score, label, text."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in output.splitlines() if line.startswith("│")]


@pytest.mark.lm  # loads the packaged SmolLM2 tokenizer, as tests/test_budget.py does
def test_select_with_a_token_budget_keeps_what_the_application_api_keeps(small_index):
    from retrieval_icl.serving.demo_selector import DemoSelector

    query = "a witty and gorgeous movie"
    full = table_rows(ricl("select", "--index", small_index, "-k", "4", query).output)
    demos = DemoSelector.load(small_index, tokenizer="smollm2-135m")
    everything = demos.prompt_tokens(query, demos.select(query, k=4))
    for budget in (everything, everything - 1, 40, 10**6):
        result = ricl("select", "--index", small_index, "-k", "4", "--max-tokens", budget, "--tokenizer",
                      "smollm2-135m", query)
        assert result.exit_code == 0, result.output
        kept = demos.select(query, k=4, max_tokens=budget)
        rows = table_rows(result.output)
        assert [int(r[1]) for r in rows] == [d.id for d in kept] and 1 <= len(rows) <= 4
        assert {r[1] for r in rows} <= {r[1] for r in full}  # a subset of the unbudgeted k, none cut
        assert f"prompt tokens: {demos.prompt_tokens(query, kept)} of {budget}" in result.output
        assert demos.prompt_tokens(query, kept) <= budget
        assert (len(rows) == 4) == (budget >= everything)


@pytest.mark.lm
def test_a_budget_too_small_for_one_demonstration_is_one_error_line(small_index):
    result = ricl("select", "--index", small_index, "-k", "4", "--max-tokens", "12", "a witty and gorgeous movie")
    assert_one_line_error(result, r"^error: max_tokens=12 leaves no room for a demonstration: the prompt without "
                                  r"demonstrations takes \d+ tokens")


def test_a_budget_below_one_is_one_error_line(small_index):
    assert_one_line_error(ricl("select", "--index", small_index, "--max-tokens", "0", "a film"),
                          r"max_tokens must be a positive integer, got 0")


def test_compare_summary_stays_readable_at_80_columns():
    from rich.console import Console

    from retrieval_icl.cli import print_summary

    rows = [{"run": "knn-k16-synonyms-in_distribution-seed0", "selector": "knn", "pool": "in_distribution", "k": 16,
             "label_format": "synonyms", "seed": 0, "n": 200, "accuracy": 0.7712, "ci_low": 0.7103, "ci_high": 0.8254,
             "mean_similarity": 0.5123, "label_attention": 0.0931, "preamble_attention": 0.2301}]
    tests = [{"comparison": "knn-k16-synonyms-in_distribution-seed0 vs random-k16-synonyms-in_distribution-seed0",
              "n": 200, "accuracy_diff": 0.14, "only_a_right": 40, "only_b_right": 12, "p_value": 0.00012}]
    console = Console(width=80, record=True, color_system=None)
    print_summary(rows, tests, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert "0.771 [0.710, 0.825]" in text and "+0.140" in text and "0.093" in text
    console = Console(width=80, record=True, color_system=None)
    print_summary([{k: v for k, v in rows[0].items() if "attention" not in k}], [], console)
    assert "label attn" not in console.export_text() and "nan" not in console.export_text()


@pytest.mark.parametrize("backend", ["bfloat16", "onnx"])
def test_index_build_with_a_fast_backend_records_it(backend, tmp_path, monkeypatch):
    from retrieval_icl.retrieval.index import DemoIndex

    monkeypatch.setenv("RICL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("torch", backend):
        result = ricl("index", "build", "--task", "sst2", "--split", "train", "--data-dir", TINY,
                      "--encoder-backend", name, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / backend / "manifest.json").read_text())
    assert manifest["encoder_backend"] == backend and manifest["count"] == 40
    fast, plain = DemoIndex.load(tmp_path / backend), DemoIndex.load(tmp_path / "torch")
    assert fast.encoder.backend == backend and plain.manifest.encoder_backend == "torch"
    cosine = (fast.embeddings(fast.ids) * plain.embeddings(fast.ids)).sum(1)  # both unit rows, same ids
    assert cosine.shape == (40,) and cosine.min() >= 0.99


def test_a_bad_encoder_backend_is_one_clear_error(tmp_path):
    result = ricl("index", "build", "--task", "sst2", "--data-dir", TINY, "--encoder-backend", "tflite",
                  "--out", tmp_path / "i")
    assert_one_line_error(result, r"unknown encoder backend 'tflite'; expected one of \['torch', 'bfloat16', "
                                  r"'onnx'\]")
    assert not (tmp_path / "i").exists()
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("task: sst2\nencoder_backend: tflite\n")
    assert_one_line_error(ricl("validate", cfg), r"exp\.yaml: encoder_backend: Input should be 'torch', 'bfloat16' "
                                                 r"or 'onnx'")
    cfg.write_text("task: sst2\nencoder_backend: bfloat16\nselectors: [{name: knn, encoder: 'lm:smollm2-135m'}]\n")
    assert_one_line_error(ricl("validate", cfg), r"'lm:smollm2-135m' is an LM encoder; use backend 'torch'")
    cfg.write_text("task: sst2\nencoder_backend: bfloat16\n")
    assert ricl("validate", cfg).exit_code == 0


def test_index_fit_fits_adaptive_to_the_named_lm_and_select_reuses_it_without_one(small_index, tmp_path):
    import shutil

    index = shutil.copytree(small_index, tmp_path / "index")
    assert_one_line_error(ricl("index", "fit", index, "-k", "2", "--param", "fit_depth=2"),
                          r"ricl index fit INDEX --model NAME")
    fitted = ricl("index", "fit", index, "-k", "2", "--model", "smollm2-135m", "--param", "fit_depth=2",
                  "--param", "n_fit=2")
    assert fitted.exit_code == 0, fitted.output
    fit = json.loads((index / "manifest.json").read_text())["fits"]["adaptive"]
    assert fit["fit_on"] == "lm" and fit["settings"]["lm"] == "smollm2-135m" and list(fit["thresholds"]) == ["1", "2"]
    assert fit["n_fit_queries"] == 2 and fit["fit_accuracy"]["2"]["mean_count"] == 2  # 2 queries show nothing
    chosen = ricl("select", "--index", index, "-k", "2", "--selector", "adaptive", "--param", "fit_depth=2",
                  "--param", "n_fit=2", "a witty film")
    assert chosen.exit_code == 0, chosen.output
    assert len([line for line in chosen.output.splitlines() if line.startswith("│")]) == 2


def test_index_fit_calibrates_adaptive_on_the_users_own_queries(small_index, tmp_path):
    import shutil

    index = shutil.copytree(small_index, tmp_path / "index")
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"review": "was it any good?", "sentiment": "pos"}) + "\n"
                    + json.dumps({"review": "why so boring?", "sentiment": "neg"}) + "\n")
    args = ("index", "fit", index, "-k", "2", "--model", "smollm2-135m", "--param", "fit_depth=2",
            "--calibration", mine)
    fitted = ricl(*args, "--label-field", "sentiment")
    assert fitted.exit_code == 0, fitted.output
    fit = json.loads((index / "manifest.json").read_text())["fits"]["adaptive"]
    assert fit["n_fit_queries"] == 2 and fit["settings"]["calibration"].startswith("2 queries, fingerprint ")
    assert fit["n_shape_queries"] == 5  # the whole pool shapes the candidates; none of it calibrates
    before = (index / "manifest.json").read_bytes()
    assert_one_line_error(ricl(*args), r"mine\.jsonl:1: no column 'label'")  # the label is in `sentiment`, not `label`
    (tmp_path / "bad.jsonl").write_text(json.dumps({"review": "was it good?", "sentiment": "great"}) + "\n")
    assert_one_line_error(ricl(*args[:-1], tmp_path / "bad.jsonl", "--label-field", "sentiment"),
                          r"bad\.jsonl:1.*great")
    assert_one_line_error(ricl("index", "fit", index, "--selector", "knn", "--calibration", mine),
                          r"--calibration is for adaptive")
    assert (index / "manifest.json").read_bytes() == before  # refused fits write nothing
