"""Analyses on hand-made records whose answers are known (no model): reconstruction, kernels, bandwidth, label
format, distribution, the report, and the loader's errors."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from retrieval_icl.analysis import applicable, load_results, run_all, write_report
from retrieval_icl.analysis import attention, bandwidth, distribution, kernel, label_format, records, report, votes
from retrieval_icl.analysis.attention import (AttentionMap, HeadReconstruction, analyze_reconstruction,
                                              reconstruct_run, selection_split, span_max_weights)
from retrieval_icl.analysis.bandwidth import BinnedAccuracy, analyze_bandwidth, condition_rows, entropy
from retrieval_icl.analysis.distribution import analyze_distribution
from retrieval_icl.analysis.kernel import KernelRegression, head_kernel_predictions, kernel_weights
from retrieval_icl.analysis.votes import argmax_breaking_ties, class_votes
from retrieval_icl.analysis.label_format import analyze_label_format, compare_formats
from retrieval_icl.errors import RiclError

L, H, BEST = 3, 4, (1, 2)  # the synthetic model: 3 layers x 4 heads; head (1, 2) attends to the predicted label's demos
WORDS = {"default": ["negative", "positive"], "swapped": ["positive", "negative"], "symbols": ["A", "B"]}


def summary(demo_labels: list[int], target: int, rng: np.random.Generator) -> np.ndarray:
    """(L, H, D, 5): small random attention; head BEST puts its max and pre_label attention on demos labelled target."""
    s = rng.uniform(0.0, 0.05, size=(L, H, len(demo_labels), 5)).astype(np.float32)
    hit = np.array(demo_labels) == target
    s[BEST[0], BEST[1], hit, 2:] = 0.5
    s[BEST[0], BEST[1], ~hit, 2:] = 0.001
    return s


def profile(n_demos: int) -> np.ndarray:
    """(L, D, 24): attention per token, ten times higher on the label bins (20:22) than elsewhere."""
    p = np.full((L, n_demos, 24), 0.002, np.float32)
    p[:, :, 20:22] = 0.02
    return p


def make_record(run: str, qid: int, gold: int, prediction: int, demo_labels: list[int], scores: list[float],
                **fields) -> dict:
    base = {"task": "sst2", "selector": "knn", "seed": 0, "k": len(demo_labels), "label_format": "default",
            "pool": "in_distribution"}
    base.update(fields)
    n = len(demo_labels)
    return base | {"run": run, "query_id": qid, "query_text": f"query {qid}", "gold": gold, "prediction": prediction,
                   "correct": prediction == gold, "raw_prediction": prediction, "raw_correct": prediction == gold,
                   "label_log_probs": [-1.0, -0.5] if prediction else [-0.5, -1.0],
                   "demo_ids": [100 * qid + i for i in range(n)], "demo_labels": demo_labels, "demo_scores": scores,
                   "demo_score_kind": "cosine:minilm", "encoder_similarities": scores,
                   "n_demos_requested": n, "n_demos_used": n, "dropped_ids": [], "prompt_tokens": 10 * n + 1,
                   "preamble_span": [0, 1], "x_spans": [[10 * i + 1, 10 * i + 7] for i in range(n)],
                   "y_spans": [[10 * i + 9, 10 * i + 10] for i in range(n)], "query_span": [10 * n + 1, 10 * n + 6],
                   "attention": {"x_mass": [0.02] * n, "y_mass": [0.05 if fields.get("label_format", "default") == "default"
                                                                  else 0.03] * n}} | fields


def write_dir(directory: Path, recs: list[dict], config: dict, with_attention: bool = True, seed: int = 0) -> Path:
    """A results directory as `ricl compare` writes it, with attention made by `summary` for each record."""
    rng = np.random.default_rng(seed)
    (directory / "attention").mkdir(parents=True)
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "summary.md").write_text("# sst2: hand-made\n\n## Accuracy (95% bootstrap CI)\n\n| run |\n|---|\n| x |\n")
    if with_attention:
        by_run: dict[str, dict] = {}
        for r in recs:
            arrays = by_run.setdefault(r["run"], {})
            arrays[str(r["query_id"])] = summary(r["demo_labels"], r["prediction"], rng).astype(np.float16)
            arrays[f"{r['query_id']}/profile"] = profile(len(r["demo_labels"])).astype(np.float16)
            arrays[f"{r['query_id']}/preamble"] = np.tile(np.arange(H) * 0.1, (L, 1)).astype(np.float16)  # head h: 0.1 h
        for run, arrays in by_run.items():
            save_file(arrays, str(directory / "attention" / f"{run}.safetensors"))
    return directory


def queries(n: int = 40, seed: int = 0):
    """n queries: gold label, four demo labels (two of each) and cosines; the nearest demo has the gold label."""
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n):
        gold = int(q % 2)
        labels = [1 - gold, gold, 1 - gold, gold]
        scores = [0.2, 0.3, 0.25, 0.9]  # the gold-labelled last demo is the nearest
        out.append((q, gold, labels, [s + float(rng.uniform(0, 0.01)) for s in scores]))
    return out


SELECTORS = [{"name": "knn", "params": {}, "label": None}, {"name": "random", "params": {}, "label": None},
             {"name": "band", "params": {"position": 1.0}, "label": "far"},
             {"name": "kmeans", "params": {"budget": 16}, "label": None}]


@pytest.fixture()
def perfect(tmp_path):
    """One knn run whose ICL prediction is always gold and whose head BEST attends to the gold-labelled demos."""
    recs = [make_record("knn-seed0", q, g, g, labels, scores) for q, g, labels, scores in queries()]
    return write_dir(tmp_path / "perfect", recs, {"task": "sst2", "selectors": SELECTORS[:1]})


@pytest.fixture()
def study(tmp_path):
    """Every condition: selectors knn/random/far/kmeans, formats default/swapped, pools in_distribution/typos."""
    recs = []
    rng = np.random.default_rng(1)
    for pool in ("in_distribution", "typos"):
        for sel in ("knn", "random", "far", "kmeans"):
            for fmt in ("default", "swapped"):
                run = f"{sel}-{fmt}-{pool}-seed0"
                for q, g, labels, scores in queries(60):
                    sim_shift = {"knn": 0.3, "random": 0.0, "far": -0.3, "kmeans": 0.1}[sel]
                    right = rng.random() < {"knn": 0.9, "random": 0.7, "far": 0.5, "kmeans": 0.8}[sel] - 0.2 * (pool == "typos")
                    pred = g if right else 1 - g
                    if fmt == "swapped":
                        pred = 1 - pred  # follows the words' prior meaning: the same word, the other label id
                    recs.append(make_record(run, q, g, pred, labels, [s + sim_shift for s in scores], selector=sel,
                                            label_format=fmt, pool=pool))
    config = {"task": "sst2", "selectors": SELECTORS, "label_formats": ["default", "swapped"],
              "pools": [{"name": "in_distribution"}, {"name": "typos", "perturb": "typos", "rate": 0.3}]}
    return write_dir(tmp_path / "study", recs, config)


# --- records ---------------------------------------------------------------------------------------------------

def test_constants_mirror_capture():
    from retrieval_icl import capture

    assert records.SUMMARY_COLUMNS == capture.SUMMARY_COLUMNS and records.PROFILE_REGIONS == capture.PROFILE_REGIONS
    assert records.PRE_LABEL == capture.PRE_LABEL


def test_loader_reads_records_config_and_attention(perfect):
    results = load_results(perfect)
    assert len(results.records) == 40 and list(results.runs()) == ["knn-seed0"] and results.n_labels == 2
    assert results.label_names() == ["negative", "positive"] and results.label_words("swapped") == WORDS["swapped"]
    assert results.summaries("knn-seed0")[0].shape == (L, H, 4, 5) and results.profiles("knn-seed0")[0].shape == (L, 4, 24)


@pytest.mark.parametrize("line, message", [
    ("{not json", r"records.jsonl:2: not valid JSON"),
    ('{"run": "x"}', r"records.jsonl:2: missing keys"),
])
def test_loader_names_file_and_line_of_a_bad_record(perfect, line, message):
    path = perfect / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], line, *lines[2:]]) + "\n")
    with pytest.raises(RiclError, match=message):
        load_results(perfect)


def test_loader_rejects_misaligned_demos_and_out_of_range_labels(perfect):
    path = perfect / "records.jsonl"
    rec = json.loads(path.read_text().splitlines()[0])
    for bad, message in [({"demo_scores": [0.1]}, "expected equal lengths"), ({"gold": 5}, r"label ids in 0\.\.1")]:
        path.write_text(json.dumps(rec | bad) + "\n")
        with pytest.raises(RiclError, match=message):
            load_results(perfect)


def test_missing_directory_and_missing_attention_are_clear_errors(perfect, tmp_path):
    with pytest.raises(RiclError, match="no such results directory"):
        load_results(tmp_path / "nowhere")
    (perfect / "attention" / "knn-seed0.safetensors").unlink()
    results = load_results(perfect)
    with pytest.raises(RiclError, match="no attention captured"):
        results.runs_with_attention()
    with pytest.raises(RiclError, match="no attention captured for run 'knn-seed0'"):
        results.summaries("knn-seed0")
    with pytest.raises(RiclError, match="no run named 'nope'"):
        results.runs(["nope"])


def test_attention_with_the_wrong_shape_names_the_file_and_entry(perfect):
    save_file({"0": np.zeros((L, H, 3, 5), np.float16)}, str(perfect / "attention" / "knn-seed0.safetensors"))
    with pytest.raises(RiclError, match=r"knn-seed0.safetensors: entry 0 has shape \(3, 4, 3, 5\), expected"):
        load_results(perfect).summaries("knn-seed0")


# --- kernel regression -----------------------------------------------------------------------------------------

def test_kernel_with_tau_to_zero_returns_the_nearest_neighbours_label():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, size=(50, 6))
    labels = rng.integers(0, 3, size=(50, 6))
    nearest = labels[np.arange(50), sims.argmax(1)]
    for tau in (0.0, 1e-6):
        assert np.array_equal(KernelRegression(tau).fit(sims, labels, 3).predictions_, nearest)


def test_kernel_with_a_wide_bandwidth_is_the_majority_vote():
    sims, labels = [[0.9, 0.1, 0.2]], [[1, 0, 0]]
    assert KernelRegression(tau=1e4).fit(sims, labels, 2).predictions_.tolist() == [0]
    assert KernelRegression(tau=0.01).fit(sims, labels, 2).predictions_.tolist() == [1]
    w = kernel_weights([0.5, 0.5, 0.1], 0.0)
    assert w.tolist() == [0.5, 0.5, 0.0]  # ties share the weight
    with pytest.raises(RiclError, match="tau must be >= 0"):
        kernel_weights([0.1], -1)


def test_class_votes_sum_weights_per_label_over_any_leading_axes():
    w = np.arange(2 * 3, dtype=float).reshape(2, 3)  # (heads, demos)
    votes = class_votes([w], [[0, 1, 1]], 2)
    assert votes.shape == (1, 2, 2) and votes[0].tolist() == [[0, 3], [3, 9]]


def test_head_kernel_reads_the_pre_label_attention_of_the_chosen_head():
    s = np.zeros((L, H, 3, 5))
    s[1, 2, 2, records.PRE_LABEL] = 0.7  # the head looks at demo 2's "Output:" position
    s[0, 0, 0, records.PRE_LABEL] = 0.9  # another head looks elsewhere
    assert head_kernel_predictions([s], [[0, 0, 1]], 2, (1, 2)).tolist() == [1]
    assert head_kernel_predictions([s], [[0, 0, 1]], 2, (0, 0)).tolist() == [0]


# --- attention and reconstruction ------------------------------------------------------------------------------

def test_attention_all_on_one_label_reconstructs_that_label():
    labels = [0, 1, 1, 0]
    s = np.zeros((L, H, 4, 5))
    s[..., [1, 2], records.Y_MAX] = 0.4  # every head: all mass on the label-1 demonstrations
    votes = class_votes([span_max_weights(s)], [labels], 2)
    assert (votes.argmax(-1) == 1).all()


def test_span_max_covers_x_y_and_the_output_token():
    s = np.zeros((1, 1, 3, 5))
    s[0, 0, 0, records.X_MAX], s[0, 0, 1, records.Y_MAX], s[0, 0, 2, records.PRE_LABEL] = 0.1, 0.2, 0.3
    s[0, 0, :, records.X_MASS] = 5  # masses are not maxima: ignored
    assert span_max_weights(s)[0, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_reconstruction_finds_the_planted_head_and_reports_it_held_out(perfect):
    rec = reconstruct_run(load_results(perfect), "knn-seed0", selection_fraction=0.7)
    assert rec.best_head_ == BEST and rec.agreement_[BEST] == 1.0 and rec.accuracy_[BEST] == 1.0
    assert rec.selection_.sum() == 28 and rec.heldout_["n"] == 12
    assert rec.heldout_["agreement"]["value"] == 1.0 and rec.heldout_["icl_accuracy"]["value"] == 1.0
    assert rec.top_heads(3)[0] | {} == {"layer": 1, "head": 2, "selection_agreement": 1.0, "heldout_agreement": 1.0,
                                        "heldout_accuracy": 1.0, "ties": 0}
    row = analyze_reconstruction(load_results(perfect))["runs"]["knn-seed0"]
    assert row["best_head_preamble_mass"] == pytest.approx(0.2, abs=1e-3)  # head 2 of the planted (1, 2)
    assert row["preamble_mass"] == pytest.approx(0.15, abs=1e-3)
    assert row["heads_following_demo_1"] == 0  # demo 1 holds the gold label on half of the queries only


def test_heads_following_a_position_are_counted():
    reconstructed = np.zeros((10, 2, 3), dtype=int)
    labels = [1, 0, 1, 1, 0, 1, 1, 0, 1, 0]
    reconstructed[:, 0, 0] = labels  # head (0, 0) follows them on every query
    reconstructed[:, 1, 2] = labels[:9] + [1]  # head (1, 2) on 9 of 10; the other heads (all 0) on 4 of 10
    assert attention.heads_following(reconstructed, labels) == 2
    assert attention.heads_following(reconstructed, labels, share=0.95) == 1


def test_best_head_is_chosen_on_the_selection_split_only():
    ids = ["a", "b", "c", "d", "e", "f"]
    chosen = selection_split(ids, n=3, seed=0)
    votes = np.zeros((6, 1, 2, 2))
    votes[chosen, 0, 0, 1] = 1  # head 0 matches the prediction (1) on the selection queries only
    votes[~chosen, 0, 0, 0] = 1
    votes[~chosen, 0, 1, 1] = 1  # head 1 on the held-out queries only
    votes[chosen, 0, 1, 0] = 1
    rec = HeadReconstruction(selection_n=3, seed=0).fit(votes, [1] * 6, [1] * 6, ids)
    assert rec.best_head_ == (0, 0) and rec.heldout_["agreement"]["value"] == 0.0
    assert rec.agreement_.tolist() == [[0.5, 0.5]] and rec.heldout_agreement_.tolist() == [[0.0, 1.0]]
    assert rec.ties_.tolist() == [[0, 0]]


def test_tied_and_all_zero_votes_are_counted_and_favour_no_label():
    votes = np.zeros((400, 1, 2, 3))
    votes[:, 0, 1, :2] = 0.5  # head 1: labels 0 and 1 tie, label 2 has nothing
    rec = HeadReconstruction(selection_n=200).fit(votes, [2] * 400, [2] * 400)
    assert rec.ties_.tolist() == [[400, 400]]
    zero, tied = rec.reconstructed_[:, 0, 0], rec.reconstructed_[:, 0, 1]
    assert np.bincount(zero, minlength=3).min() > 100  # all-zero votes: each of 3 labels about a third
    assert set(tied.tolist()) == {0, 1} and abs(float(np.mean(tied)) - 0.5) < 0.1
    predictions, ties = argmax_breaking_ties(np.array([[0.2, 0.2 + 1e-15, 0.1], [0.3, 0.1, 0.2]]))
    assert ties.tolist() == [True, False] and predictions[1] == 0 and predictions[0] in (0, 1)


def test_selection_split_depends_on_query_ids_not_their_order():
    ids = list(range(30))
    a = dict(zip(ids, selection_split(ids, 0.5, seed=3)))
    shuffled = ids[::-1]
    b = dict(zip(shuffled, selection_split(shuffled, 0.5, seed=3)))
    assert a == b and sum(a.values()) == 15
    with pytest.raises(RiclError, match="selection split needs 1..29"):
        selection_split(ids, 1.0)


def test_attention_map_averages_the_most_common_demo_count_and_splits_the_mass():
    profiles = [profile(4), profile(4), profile(2)]
    rng = np.random.default_rng(0)
    summaries = [summary([0, 1, 0, 1], 1, rng), summary([0, 1, 0, 1], 0, rng), summary([0, 1], 1, rng)]
    preambles = [np.full((L, H), 0.4), np.full((L, H), 0.2), np.zeros((L, H))]
    am = AttentionMap().fit(profiles, summaries, preambles)
    assert am.n_demos_ == 4 and am.n_queries_ == 2 and am.map_.shape == (L, 4, 24)
    assert am.region_density_[:, 2] == pytest.approx(0.02) and am.region_density_[:, 0] == pytest.approx(0.002)
    assert am.mass_.shape == (L, 5) and am.mass_.sum(-1) == pytest.approx(1.0)
    assert am.mass_[:, 0] == pytest.approx(0.3)  # the preamble's own mass, averaged over the two 4-demo queries
    x_mass = np.mean([s.mean(1)[..., 0].sum(-1) for s in summaries[:2]], axis=0)
    assert am.mass_[:, 1] == pytest.approx(x_mass)  # demo inputs keep all their mass: the sink is not inside them


# --- bandwidth -------------------------------------------------------------------------------------------------

def test_binned_accuracy_rises_with_similarity_when_correctness_does():
    rng = np.random.default_rng(0)
    sims = rng.uniform(0, 1, 2000)
    correct = rng.random(2000) < sims  # P(correct) = similarity
    b = BinnedAccuracy(n_bins=4).fit(sims, correct)
    assert np.all(np.diff(b.accuracy_) > 0) and b.correlation_ > 0.3 and b.p_value_ < 1e-6
    assert b.counts_.sum() == 2000 and all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in b.rows())


def test_entropy_is_zero_for_one_demo_and_one_for_uniform_weights():
    assert entropy(np.array([0.0, 1.0, 0.0])) == 0.0
    assert entropy(np.ones(8)) == pytest.approx(1.0)


def test_bandwidth_conditions_are_named_by_selector_parameters(study):
    results = load_results(study)
    rows = {r["selector"]: r for r in condition_rows(results)}
    assert rows["far"]["description"] == "band(position=1.0)" and rows["knn"]["description"] == "knn"
    assert rows["knn"]["mean_similarity"] > rows["random"]["mean_similarity"] > rows["far"]["mean_similarity"]
    assert rows["knn"]["accuracy"] > rows["far"]["accuracy"] and rows["knn"]["n"] == 60  # first format and pool only
    out = analyze_bandwidth(results, n_bins=3)
    assert out["entropy"] and (study / "analysis" / "bandwidth_conditions.png").exists()
    assert set(out["random_bins"]) == {4}


# --- label format ----------------------------------------------------------------------------------------------

def test_swapped_labels_invert_a_perfect_predictor(tmp_path):
    recs = []
    for q, g, labels, scores in queries(20):
        recs.append(make_record("knn-default-seed0", q, g, g, labels, scores))
        recs.append(make_record("knn-swapped-seed0", q, g, 1 - g, labels, scores, label_format="swapped"))
    results = load_results(write_dir(tmp_path / "swap", recs, {"task": "sst2", "selectors": SELECTORS[:1]}))
    rows = {r["label_format"]: r for r in analyze_label_format(results, selection_n=10)["rows"]}
    assert rows["default"]["accuracy"] == 1.0 and rows["swapped"]["accuracy"] == 0.0
    assert rows["swapped"]["same_prediction_as_default"] == 0.0 and rows["swapped"]["same_word_as_default"] == 1.0
    assert rows["swapped"]["mcnemar_p"] < 1e-4 and rows["swapped"]["same_demos"] == 1.0
    assert rows["swapped"]["reconstruction_agreement"] == 1.0  # the planted head follows the prediction
    assert rows["swapped"]["label_attention"] < rows["default"]["label_attention"]


def test_label_format_needs_several_formats(perfect):
    with pytest.raises(RiclError, match="no label-format variation"):
        analyze_label_format(load_results(perfect))


def test_compare_formats_leaves_same_word_undefined_without_shared_words():
    ref = [{"query_id": 0, "prediction": 1, "gold": 1, "correct": True, "demo_ids": [1]}]
    out = compare_formats(ref, ref, WORDS["default"], WORDS["symbols"])
    assert np.isnan(out["same_word_as_reference"]) and out["agreement_with_reference"] == 1.0


# --- distribution ----------------------------------------------------------------------------------------------

def test_shifted_pool_and_representative_selection_are_compared_by_query(study):
    out = analyze_distribution(load_results(study))
    typos = [r for r in out["pools"] if r["pool"] == "typos" and r["label_format"] == "default"]
    assert {r["pool_made_from"] for r in typos} == {"typos (rate 0.3)"}
    assert np.mean([r["diff_vs_in_distribution"] for r in typos]) < 0  # the synthetic typos pool costs 20 points
    rep = out["representative"]
    assert {r["run"].split("-")[0] for r in rep} == {"kmeans"} and len(rep) == 4
    assert all(r["versus"].startswith("random-") and 0 <= r["p_vs_random"] <= 1 for r in rep)


def test_distribution_needs_two_pools_or_a_representative_selector(perfect):
    with pytest.raises(RiclError, match="nothing to compare"):
        analyze_distribution(load_results(perfect))


# --- everything, and the report --------------------------------------------------------------------------------

def test_table2_on_a_perfect_head_and_a_gold_nearest_neighbour(perfect):
    out = kernel.analyze_kernel(load_results(perfect), tau=0.01)
    col = out["runs"]["knn-seed0"]
    for metric in ("icl_accuracy", "reconstruction_agreement", "reconstructed_accuracy", "encoder_kernel_accuracy",
                   "head_kernel_accuracy"):
        assert col[metric]["value"] == 1.0, metric
    text = (perfect / "analysis" / "kernel.json").read_text()
    assert "paper (GPT-J-6B (28 layers x 16 heads), Table 2)" in text and "0.503" in text


def test_run_all_and_report_cover_every_analysis(study):
    results = load_results(study)
    assert all(v is None for v in applicable(results).values())
    done = run_all(results, selection_fraction=0.5)
    assert all(isinstance(v, dict) for v in done.values())
    assert analyze_reconstruction(results, ["knn-default-in_distribution-seed0"])["runs"][
        "knn-default-in_distribution-seed0"]["best_layer"] == BEST[0]
    md, html = write_report(study)
    text = md.read_text()
    for title in ("Figure 2", "Section 5", "Table 2", "Bandwidth", "Label format", "In-distribution"):
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


def test_report_without_analyses_is_an_error(perfect):
    with pytest.raises(RiclError, match="no analyses saved"):
        report.write_report(perfect)


@pytest.mark.parametrize("module", [records, votes, kernel, attention, bandwidth, label_format, distribution])
def test_doctests(module):
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_encoder_kernel_reads_the_experiments_encoder_not_the_selectors_scores(tmp_path):
    recs = []
    for q, g, labels, scores in queries():
        own = [1.0 - s for s in scores]  # the selector's own kernel ranks the other label's demos nearest
        recs.append(make_record("lm-seed0", q, g, g, labels, own, selector="lm", demo_score_kind="cosine:lm:x",
                                encoder_similarities=scores))
    results = load_results(write_dir(tmp_path / "own", recs, {"task": "sst2", "selectors": SELECTORS[:1]}))
    column = kernel.table2_column(results, "lm-seed0", tau=0.01)
    assert column["encoder_kernel_accuracy"]["value"] == 1.0


def test_calibrated_records_are_reconstructed_against_the_raw_prediction(tmp_path):
    recs = []
    for q, g, labels, scores in queries():
        recs.append(make_record("knn-seed0", q, g, 1 - g, labels, scores) | {"raw_prediction": g, "correct": False,
                                                                            "calibrated_log_probs": [-0.5, -1.0]})
    results = load_results(write_dir(tmp_path / "cal", recs, {"task": "sst2", "selectors": SELECTORS[:1]}))
    # write_dir plants head BEST on the demos of each record's `prediction`; here that is the calibrated one
    rec = reconstruct_run(results, "knn-seed0", selection_n=20)
    assert rec.agreement_[BEST] == 0.0 and rec.heldout_["icl_accuracy"]["value"] == 1.0
    column = kernel.table2_column(results, "knn-seed0", tau=0.1, reconstruction=rec)
    assert column["icl_accuracy"]["value"] == 1.0 and column["calibrated_icl_accuracy"]["value"] == 0.0
