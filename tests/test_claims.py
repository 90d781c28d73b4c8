"""The paper's three claims tested on a study's runs (analysis/claims.py): statistics worked by hand on hand-made
records, queries as clusters across draws, Holm within the study, and the verdict rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from handmade_results import make_record
from pydantic import ValidationError

from retrieval_icl.analysis.claims import Question, claim_tests, verdict
from retrieval_icl.record import RunRecord
from retrieval_icl.results_dir import Results
from retrieval_icl.stats import adjusted_interval, bootstrap_p, bootstrap_tost_p

BANDWIDTH = Question(claim="bandwidth", text="nearer helps?", statistic="similarity_slope", reference="random",
                     margin=0.01, n_resamples=2000)
FORMATS = Question(claim="label_format", text="natural words help?", statistic="reference_minus_contrast",
                   reference="default", margin=0.02, n_resamples=2000)
SELECTORS = [{"name": "knn", "label": "nearest", "params": {}}, {"name": "band", "label": "farthest",
              "params": {"position": 1.0}}, {"name": "random", "params": {}}]


def results(records: list, draw: int = 0, model: str = "m", task: str = "sst2", **config) -> Results:
    """A Results of hand-made records (no files): config names the model, task, draw and selectors."""
    return Results(Path(f"{model}-{task}-{draw}"), records,
                   {"model": model, "task": task, "query_seed": draw, "selectors": SELECTORS} | config)


def at(similarity: float, right: bool, selector: str, qid: int, k: int = 2, seed: int = 0, **fields) -> RunRecord:
    """A record of `selector` for query `qid` whose demonstrations have this mean cosine, right or wrong."""
    run = fields.pop("run", f"{selector}-seed{seed}")
    return RunRecord.model_validate(make_record(run, qid, 0, 0 if right else 1, [0] * k, [similarity] * k,
                                                selector=selector, seed=seed, k=k, **fields))


def bandwidth_draw() -> list:
    """Query 1: nearest 0.8 right, farthest 0.2 wrong, random 0.5 right; query 2: 0.6 wrong, 0.0 wrong, 0.3 right."""
    return [at(0.8, True, "nearest", 1), at(0.6, False, "nearest", 2), at(0.2, False, "farthest", 1),
            at(0.0, False, "farthest", 2), at(0.5, True, "random", 1), at(0.3, True, "random", 2)]


def test_the_similarity_slope_is_within_query_and_each_selection_is_paired_with_random():
    rows = {r["test"]: r for r in claim_tests(BANDWIDTH, [results(bandwidth_draw())])}
    # within query 1: x = (.3, -.3, 0), y = (1/3, -2/3, 1/3): sum xy = .3, sum xx = .18; query 2: xy = 0, xx = .18
    slope = rows["slope of accuracy per 0.1 mean cosine, within query"]
    assert slope["primary"] and slope["effect"] == pytest.approx(0.1 * 0.3 / 0.36)
    assert rows["nearest - random, k=2"]["effect"] == pytest.approx(-0.5)  # q1: 1 - 1, q2: 0 - 1
    assert rows["farthest - random, k=2"]["effect"] == pytest.approx(-1.0)
    assert rows["nearest - random, k=2"]["similarity"] == pytest.approx(0.7)
    assert rows["nearest - random, k=2"]["gold_label_share"] == 1.0  # every demonstration carries label 0 = gold
    assert {r["n_queries"] for r in rows.values()} == {2}


def test_a_query_drawn_twice_is_one_cluster_and_each_draw_is_reported():
    second = [at(0.9, False, "nearest", 1), at(0.1, True, "farthest", 1), at(0.5, True, "random", 1)]
    rows = claim_tests(BANDWIDTH, [results(bandwidth_draw()), results(second, draw=1)])
    slope = rows[0]
    assert slope["n_items"] == 3 and slope["n_queries"] == 2  # (draw 0, q1), (draw 0, q2), (draw 1, q1)
    assert slope["draw_0"] == pytest.approx(0.1 * 0.3 / 0.36)
    assert slope["draw_1"] == pytest.approx(0.1 * (0.4 * -1 / 3 - 0.4 * 2 / 3) / 0.32)  # x = (.4, -.4, 0)
    assert slope["effect"] == pytest.approx(0.1 * (0.3 - 0.4) / (0.36 + 0.32))


def test_a_label_format_is_paired_with_the_default_on_the_same_query_and_demonstrations():
    def fmt(name: str, right: bool, qid: int):
        return at(0.5, right, "random", qid, label_format=name, run=f"random-{name}-seed0")

    records = [fmt("default", True, 1), fmt("swapped", False, 1), fmt("symbols", True, 1),
               fmt("default", True, 2), fmt("swapped", False, 2), fmt("symbols", False, 2)]
    rows = {r["test"]: r for r in claim_tests(FORMATS, [results(records)])}
    primary = rows["default - mean(every other)"]
    assert primary["primary"] and primary["effect"] == pytest.approx((0.5 + 1.0) / 2)
    assert rows["swapped - default, random"]["effect"] == -1.0
    assert rows["symbols - default, random"]["effect"] == -0.5


def test_holm_runs_over_the_studys_tests_and_the_adjusted_interval_agrees_with_it():
    rng = np.random.default_rng(0)
    draws = []
    for model in ("a", "b"):  # model a: nearer is right far more often; model b: no relation at all
        recs = []
        for q in range(150):
            sims = {"nearest": 0.7, "farthest": 0.1, "random": 0.4}
            for sel, sim in sims.items():
                p = {"a": {"nearest": 0.9, "farthest": 0.3, "random": 0.6}[sel], "b": 0.6}[model]
                recs.append(at(sim + rng.normal(0, 0.02), rng.random() < p, sel, q))
        draws.append(results(recs, model=model))
    rows = claim_tests(BANDWIDTH, draws)
    rows = [r for r in rows if not r.get("exploratory")]
    assert all(r["p_holm"] >= r["p"] for r in rows) and max(r["p_holm"] for r in rows) <= 1
    for r in rows:
        excludes = r["holm_ci_low"] > 0 or r["holm_ci_high"] < 0
        assert excludes == (r["p_holm"] < BANDWIDTH.alpha), r
    verdicts = {r["model"]: r["verdict"] for r in rows if r["primary"]}
    assert verdicts["a"] == "supported"
    assert verdicts["b"] in ("not resolved at this n", "contradicted (no effect beyond +-0.01)")


def test_the_verdict_rule():
    row = {"effect": 0.05, "p_holm": 0.01, "tost_p_holm": 0.9}
    assert verdict(BANDWIDTH, row) == "supported"
    assert verdict(BANDWIDTH, row | {"effect": -0.05}) == "contradicted"
    assert verdict(BANDWIDTH.model_copy(update={"direction": "negative"}), row | {"effect": -0.05}) == "supported"
    assert verdict(BANDWIDTH, row | {"p_holm": 0.2, "tost_p_holm": 0.01}) == "contradicted (no effect beyond +-0.01)"
    assert verdict(BANDWIDTH, row | {"p_holm": 0.2}) == "not resolved at this n"


def test_a_question_names_its_claims_statistic():
    with pytest.raises(ValidationError, match="tested by statistic similarity_slope"):
        Question(claim="bandwidth", text="x", statistic="reference_minus_contrast", reference="random", margin=0.01)


def test_bootstrap_p_tost_and_the_adjusted_interval_by_hand():
    resampled = np.linspace(0.01, 0.2, 999)  # every resample above 0
    assert bootstrap_p(resampled) == pytest.approx(2 / 1000)
    assert bootstrap_p(np.linspace(-1, 1, 1001)) == 1.0
    assert bootstrap_tost_p(resampled, margin=0.3) == pytest.approx(1 / 1000)  # all inside (-0.3, 0.3)
    assert bootstrap_tost_p(resampled, margin=0.1) > 0.4  # about half beyond 0.1
    values = np.arange(1, 1001) / 1000.0
    assert adjusted_interval(values, 0.01, 0.01) == (np.quantile(values, 0.025), np.quantile(values, 0.975))
    low, high = adjusted_interval(values, 0.01, 0.05)  # Holm left the test alpha / 5: a 99% interval
    assert (low, high) == (np.quantile(values, 0.005), np.quantile(values, 0.995))


def test_the_label_share_control_removes_what_the_gold_labels_of_nearer_demonstrations_explain():
    def shown(similarity: float, gold_labelled: bool, selector: str, qid: int) -> RunRecord:
        labels = [0, 0] if gold_labelled else [1, 1]  # gold is 0: a label copier is right exactly when gold-labelled
        return RunRecord.model_validate(make_record(f"{selector}-seed0", qid, 0, 0 if gold_labelled else 1, labels,
                                                    [similarity] * 2, selector=selector, k=2))

    records = [shown(0.8, True, "nearest", 1), shown(0.2, False, "farthest", 1), shown(0.5, True, "random", 1),
               shown(0.6, True, "nearest", 2), shown(0.1, False, "farthest", 2), shown(0.3, False, "random", 2)]
    rows = claim_tests(BANDWIDTH, [results(records)])
    declared = rows[0]
    control = next(r for r in rows if r.get("exploratory"))
    assert declared["effect"] > 0.1  # nearer looks better ...
    assert control["effect"] == pytest.approx(0.0, abs=1e-12)  # ... only through the gold labels it brings
    assert "p_holm" not in control and "verdict" not in control  # declared after the run: outside Holm and verdict
