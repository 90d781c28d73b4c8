"""plan -> score -> assemble on tiny data with the stand-in scorer (no model weights): the compare pipeline's logic.
The same pipeline with the packaged model is tested end to end in test_experiment.py."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file
from standin import TINY_DATA, VoteScorer, tiny_tokenizer

from retrieval_icl.data.examples import fingerprint
from retrieval_icl.errors import RiclError
from retrieval_icl.experiment.assemble import Run, summarise
from retrieval_icl.experiment.compare import build_indexes, prepare_inputs, run_compare
from retrieval_icl.experiment.compare_config import CompareConfig, PoolConfig, SelectorConfig
from retrieval_icl.experiment.plan import RunId, plan_compare, score_requests
from retrieval_icl.record import RunRecord
from retrieval_icl.results_dir import load_results


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def config(tmp_path, **changes) -> CompareConfig:
    base = {"task": "sst2", "data_dir": str(TINY_DATA), "k": 4, "index_root": str(tmp_path / "idx"),
            "output_dir": str(tmp_path / "out")}
    return CompareConfig(**(base | changes))


def read_records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def majority(labels: list[int]) -> int:
    """The most frequent label, ties to the lowest id (the stand-in's argmax)."""
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


def test_labels_are_single_tokens_of_the_stand_in(tokenizer):
    scorer = VoteScorer(tokenizer)
    assert all(len(c) == 1 for c in scorer.label_continuations(["negative", "positive"]))


def test_compare_with_the_stand_in_writes_checked_records_and_attention(tmp_path, tokenizer):
    scorer = VoteScorer(tokenizer)
    rows, tests, out = run_compare(config(tmp_path), scorer=scorer)
    records = read_records(out)
    assert len(records) == 16 and [r["run"] for r in rows] == ["random-seed0", "knn-seed0"]
    for i, r in enumerate(records):
        RunRecord.check(r, f"record {i}")
        assert r["prediction"] == majority(r["demo_labels"]) == r["raw_prediction"]
        assert r["correct"] == (r["prediction"] == r["gold"]) and len(r["demo_ids"]) == 4
        assert r["preamble_span"] == [0, 1] and len(r["attention"]["y_mass"]) == 4
    attention = load_file(str(out / "attention" / "knn-seed0.safetensors"))
    assert attention[str(records[8]["query_id"])].shape == (2, 3, 4, 5)  # layers, heads, demos, columns
    assert scorer.many_calls == [2]  # all requests in one call: one per run
    assert tests[0]["comparison"] == "knn-seed0 vs random-seed0"
    assert load_results(out).runs().keys() == {"random-seed0", "knn-seed0"}


def test_knn_beats_random_on_the_hand_made_reviews(tmp_path, tokenizer):
    rows, _, _ = run_compare(config(tmp_path), scorer=VoteScorer(tokenizer))
    accuracy = {r["selector"]: r["accuracy"] for r in rows}
    assert accuracy["knn"] >= 0.75 and accuracy["knn"] > accuracy["random"]


def test_plan_is_deterministic_and_covers_every_condition(tmp_path, tokenizer):
    cfg = config(tmp_path, k_values=[1, 3], label_formats=["default", "swapped"],
                 pools=[PoolConfig(), PoolConfig(name="typos", perturb="typos", rate=0.5)])
    inputs = prepare_inputs(cfg)
    indexes, _ = build_indexes(cfg, inputs)
    scorer = VoteScorer(tokenizer)
    first, second = (plan_compare(cfg, inputs, indexes, scorer) for _ in range(2))
    assert len(first) == 2 * 2 * 2 * 2  # pools x ks x selectors x formats
    assert [p.id.name for p in first] == [p.id.name for p in second]
    assert [[q.token_ids for q in p.prompts] for p in first] == [[q.token_ids for q in p.prompts] for p in second]
    assert first[0].id.name == "random-k1-default-in_distribution-seed0" and scorer.score_calls == []
    default, swapped = first[0], first[1]
    assert [s.demo_ids for s in default.selections] == [s.demo_ids for s in swapped.selections]
    assert default.continuations == swapped.continuations[::-1]  # swapped label words, same tokens
    texts = {pool: [json.loads(line)["texts"][0] for line in next((tmp_path / "idx").glob(f"sst2-train-{pool}-*"))
                    .joinpath("examples.jsonl").read_text().splitlines()] for pool in ("orig", "typos")}
    assert sum(a != b for a, b in zip(texts["orig"], texts["typos"])) > 10  # the typos pool is perturbed


def test_calibration_adds_content_free_requests_and_both_predictions(tmp_path, tokenizer):
    cfg = config(tmp_path, calibrate=True, selectors=[SelectorConfig(name="random")])
    inputs = prepare_inputs(cfg)
    indexes, _ = build_indexes(cfg, inputs)
    plans = plan_compare(cfg, inputs, indexes, VoteScorer(tokenizer))
    requests = score_requests(plans, cfg)
    assert len(requests) == 2 and not requests[1].capture_attention
    assert all("N/A" in p.text for p in plans[0].calibration_prompts)
    _, _, out = run_compare(cfg, scorer=VoteScorer(tokenizer))
    for r in read_records(out):
        assert r["prediction"] == int(np.argmax(r["calibrated_log_probs"]))
        assert r["raw_prediction"] == int(np.argmax(r["label_log_probs"]))


def test_users_own_files_without_a_task_yaml(tmp_path, tokenizer):
    rows = [("a gorgeous, witty film", "positive"), ("dull and far too long", "negative"),
            ("I loved every minute", "positive"), ("a tedious mess", "negative"), ("warm and funny", "positive"),
            ("an ugly, boring slog", "negative")]
    (tmp_path / "train.csv").write_text("review,sentiment\n" + "".join(f'"{t}",{s}\n' for t, s in rows))
    (tmp_path / "test.jsonl").write_text('{"review": "funny and warm", "sentiment": "positive"}\n'
                                         '{"review": "boring and ugly", "sentiment": "negative"}\n')
    cfg = CompareConfig(columns={"text_fields": ["review"], "label_field": "sentiment",
                                 "label_names": ["negative", "positive"]},
                        pool_split=str(tmp_path / "train.csv"), query_split=str(tmp_path / "test.jsonl"), k=4,
                        capture_attention=False, index_root=str(tmp_path / "idx"), output_dir=str(tmp_path / "out"))
    summary, _, out = run_compare(cfg, scorer=VoteScorer(tokenizer))
    records = read_records(out)
    assert len(records) == 4 and {r["gold"] for r in records} == {0, 1}
    knn = [r for r in records if r["selector"] == "knn"]
    assert all(set(r["demo_labels"][-2:]) == {r["gold"]} for r in knn)  # the two nearest share the query's label
    assert "label_attention" not in summary[0]  # no capture: no attention columns (not nan)
    assert not (out / "attention").exists() or not any((out / "attention").iterdir())


def record(correct: bool, seed: int = 0, k: int = 2) -> RunRecord:
    """A minimal valid record for summary tests."""
    return RunRecord(task="t", selector="s", seed=seed, k=k, label_format="default", pool="p", run="r", query_id=0,
                     gold=0, prediction=0 if correct else 1, correct=correct, raw_prediction=0,
                     label_log_probs=[-0.1, -2.0], demo_ids=[1], demo_labels=[0], demo_scores=[0.5],
                     encoder_similarities=[0.5], preamble_span=(0, 1))


def test_mcnemar_pairs_seeded_runs_by_seed():
    runs = [Run(RunId("random", s), records=[record(c, s) for c in [True, False]]) for s in (0, 1)]
    runs += [Run(RunId("knn", 0), records=[record(True)] * 2)]
    runs += [Run(RunId("random", 0, k=2, name="random-k2-seed0"), records=[record(True)] * 2)]
    _, tests = summarise(runs)
    assert [t["comparison"] for t in tests] == ["knn-seed0 vs random-seed0", "knn-seed0 vs random-seed1"]


def test_a_failed_write_keeps_the_previous_results_whole(tmp_path, tokenizer, monkeypatch):
    import retrieval_icl.results_dir as results_dir

    cfg = config(tmp_path, selectors=[SelectorConfig(name="knn")], capture_attention=False)
    _, _, out = run_compare(cfg, scorer=VoteScorer(tokenizer))
    before = (out / "records.jsonl").read_bytes()

    def half_written(tmp, *args):
        (tmp / "records.jsonl").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(results_dir, "write_files", half_written)
    with pytest.raises(OSError, match="disk full"):
        run_compare(cfg, overwrite=True, scorer=VoteScorer(tokenizer))
    assert (out / "records.jsonl").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["idx", "out"]  # no temporary folder left


def test_selectors_with_their_own_k_a_token_budget_and_adaptive_state_reported(tmp_path, tokenizer):
    selectors = [SelectorConfig(name="knn", k=2, label="knn-k2"), SelectorConfig(name="knn", k=6, label="knn-k6"),
                 SelectorConfig(name="knn", k=6, max_tokens=60, label="budget-60"),
                 SelectorConfig(name="knn", k=6, max_tokens=1, label="budget-1"),
                 SelectorConfig(name="adaptive", k=6, params={"n_fit": 30, "fit_depth": 8, "fit_on": "kernel"},
                                calibration="pool", label="adaptive-k6")]
    rows, _, out = run_compare(config(tmp_path, k_values=[3, 4], selectors=selectors, capture_attention=False),
                               scorer=VoteScorer(tokenizer))
    assert [r["run"] for r in rows] == ["knn-k2-k2-seed0", "knn-k6-k6-seed0", "budget-60-k6-seed0",
                                        "budget-1-k6-seed0", "adaptive-k6-k6-seed0"]  # each runs once, at its own k
    by_run: dict[str, list[dict]] = {}
    for r in read_records(out):
        by_run.setdefault(r["selector"], []).append(r)
    assert all(len(r["demo_ids"]) == 2 for r in by_run["knn-k2"])
    budget, full = by_run["budget-60"], by_run["knn-k6"]
    assert all(r["prompt_tokens"] <= 60 and r["n_demos_requested"] == 6 for r in budget)
    assert any(r["prompt_tokens"] > 60 for r in full)  # the budget bit
    for b, f in zip(budget, full):
        assert set(b["demo_ids"]) <= set(f["demo_ids"]) and set(b["dropped_ids"]) == set(f["demo_ids"]) - set(
            b["demo_ids"])
        assert [i for i in f["demo_ids"] if i in b["demo_ids"]] == b["demo_ids"]  # kept ones keep their order
    for none, f in zip(by_run["budget-1"], full):  # no room for any: each query runs without demonstrations
        assert none["demo_ids"] == [] and sorted(none["dropped_ids"]) == sorted(f["demo_ids"])
        assert none["prompt_tokens"] < min(b["prompt_tokens"] for b in budget) and none["prediction"] in (0, 1)
    assert all(1 <= len(r["demo_ids"]) <= 6 and r["k"] == 6 for r in by_run["adaptive-k6"])
    fits = json.loads((out / "run_info.json").read_text())["selector_fits"]
    assert list(fits) == ["adaptive-k6-k6-seed0"] and fits["adaptive-k6-k6-seed0"]["n_fit_queries"] == 20  # half of 40
    assert set(fits["adaptive-k6-k6-seed0"]["thresholds"]["6"]) == {"1", "2", "4"}


def test_adaptive_fitted_to_the_lm_gets_the_runs_scorer(tmp_path, tokenizer):
    scorer = VoteScorer(tokenizer)
    selectors = [SelectorConfig(name="adaptive", k=4, params={"fit_on": "lm", "n_fit": 10, "fit_depth": 4},
                                calibration="pool")]
    _, _, out = run_compare(config(tmp_path, selectors=selectors, capture_attention=False), scorer=scorer)
    fit = json.loads((out / "run_info.json").read_text())["selector_fits"]["adaptive-seed0"]
    assert fit["fit_on"] == "lm" and fit["settings"]["lm"] == "smollm2-135m"
    assert list(fit["thresholds"]) == ["1", "2", "4"]
    assert scorer.score_calls[0] == 10 * 3  # the fit: ten pool queries at 1, 2 and 4 demonstrations, one call
    assert all(1 <= len(r["demo_ids"]) <= 4 for r in read_records(out))


def test_adaptive_cross_fitted_calibrates_each_fold_on_the_other_queries_only(tmp_path, tokenizer):
    scorer = VoteScorer(tokenizer)
    params = {"fit_on": "lm", "n_fit": 10, "fit_depth": 4}
    selectors = [SelectorConfig(name="adaptive", k=4, params=params, calibration_folds=2, label="cross"),
                 SelectorConfig(name="adaptive", k=4, params=params, calibration="pool", label="pool")]
    cfg = config(tmp_path, selectors=selectors, capture_attention=False, seeds=[0, 1])
    _, _, out = run_compare(cfg, scorer=scorer)
    fits = json.loads((out / "run_info.json").read_text())["selector_fits"]
    assert sorted(fits) == ["cross-seed0", "cross-seed1", "pool-seed0", "pool-seed1"]  # the seed draws the fit
    queries = {q.id: q for q in prepare_inputs(cfg).queries}
    for run in ("cross-seed0", "cross-seed1"):
        folds = fits[run]["folds"]
        assert fits[run]["calibration_folds"] == 2 and [f["fold"] for f in folds] == [0, 1]
        assert sorted(i for f in folds for i in f["query_ids"]) == sorted(queries)
        assert all(f["query_ids"] for f in folds)
        for f in folds:  # calibrated on exactly the queries of the other fold
            others = [q for i, q in queries.items() if i not in f["query_ids"]]
            assert f["settings"]["calibration"] == f"{len(others)} queries, fingerprint {fingerprint(others)}"
            assert f["n_fit_queries"] == len(others)
    assert fits["cross-seed0"]["folds"][0]["query_ids"] != fits["cross-seed1"]["folds"][0]["query_ids"]
    assert scorer.score_calls[:6] == [4 * 3] * 4 + [10 * 3] * 2  # each fold's 4 others at 1, 2, 4; then the pool's
    assert "calibration" not in fits["pool-seed0"]["settings"] and fits["pool-seed0"]["n_fit_queries"] == 10
    records = read_records(out)
    assert sorted(r["query_id"] for r in records if r["run"] == "cross-seed1") == sorted(queries)
    with pytest.raises(ValueError, match="calibration_folds is for a selector that calibrates"):
        config(tmp_path, selectors=[SelectorConfig(name="knn", calibration_folds=2)])


def test_adaptive_in_compare_cross_fits_on_the_runs_queries_by_default_and_refuses_what_cannot_apply(tmp_path,
                                                                                                     tokenizer):
    selectors = [SelectorConfig(name="adaptive", k=4, params={"fit_on": "lm", "fit_depth": 4})]
    run = config(tmp_path, selectors=selectors, capture_attention=False)
    _, _, out = run_compare(run, scorer=VoteScorer(tokenizer))
    fit = json.loads((out / "run_info.json").read_text())["selector_fits"]["adaptive-seed0"]
    assert fit["calibration_folds"] == 5 and [len(f["query_ids"]) for f in fit["folds"]] == [2, 2, 2, 1, 1]
    assert yaml.safe_load((out / "config.yaml").read_text())["selectors"][0]["calibration"] == "folds"
    given = {"thresholds": {1: 0.9, 2: 0.8}, "bandwidth": 0.1}  # nothing to calibrate: chosen as given, no fit
    for bad, message in [(SelectorConfig(name="knn", calibration="pool"), "calibration is for a selector that"),
                         (SelectorConfig(name="adaptive", params=given, calibration_folds=3), "calibration_folds is"),
                         (SelectorConfig(name="adaptive", calibration="pool", calibration_folds=3), "not pool")]:
        with pytest.raises(ValueError, match=message):
            config(tmp_path, selectors=[bad])
    with pytest.raises(RiclError, match=r"at least 5 queries, got 3: give fewer folds or `calibration: pool`"):
        run_compare(config(tmp_path, selectors=selectors, n_queries=3, capture_attention=False), overwrite=True,
                    scorer=VoteScorer(tokenizer))


def test_a_cross_fitted_lm_fit_scores_each_query_once_per_level_whatever_the_folds(tmp_path, tokenizer):
    scorer = VoteScorer(tokenizer)
    selectors = [SelectorConfig(name="adaptive", k=4, params={"fit_on": "lm", "fit_depth": 4}, calibration_folds=4)]
    _, _, out = run_compare(config(tmp_path, selectors=selectors, capture_attention=False), scorer=scorer)
    folds = json.loads((out / "run_info.json").read_text())["selector_fits"]["adaptive-seed0"]["folds"]
    assert [f["n_fit_queries"] for f in folds] == [6, 6, 6, 6]  # each fold calibrates on the other 6 of 8 queries
    # Fold 0 scores its 6 at 1, 2 and 4 demos, fold 1 the 2 not seen yet, folds 2 and 3 nothing new; then the run:
    # 8 x 3 fit prompts, each scored once (not once per fold that calibrates on it), and 8 run prompts.
    assert scorer.score_calls == [6 * 3, 2 * 3, 8]
