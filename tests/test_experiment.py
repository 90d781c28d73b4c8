"""End to end: `ricl compare` on a small SST-2 slice with the packaged model and encoder (the pipeline's logic on
tiny data with a stand-in scorer is in test_pipeline.py)."""

import csv
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file
from shared_data import SHARED_DATA

from retrieval_icl.experiment.compare_config import CompareConfig
from retrieval_icl.lm.models import cpu_bfloat16_flags
from retrieval_icl.retrieval.faiss_support import faiss_distributions

pytestmark = [pytest.mark.lm, pytest.mark.shared_data]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory, smollm2):  # smollm2: the model is converted into the cache once per session
    tmp = tmp_path_factory.mktemp("compare")
    config = {"task": "sst2", "data_dir": str(SHARED_DATA), "pool_size": 400, "n_queries": 60, "k": 4,
              "index_root": str(tmp / "index"), "output_dir": str(tmp / "out"), "batch_size": 8}
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "retrieval_icl", "compare", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "out", proc, path


def test_records_one_per_query_and_selector(results):
    out, _, _ = results
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 120
    assert {r["selector"] for r in records} == {"random", "knn"}
    for r in records:
        assert len(r["demo_ids"]) == len(r["demo_labels"]) == len(r["demo_scores"]) == r["n_demos_used"] == 4
        assert (r["prediction"] == int(np.argmax(r["label_log_probs"])) and
                r["correct"] == (r["prediction"] == r["gold"]))
        assert all(lp < 0 for lp in r["label_log_probs"])
        assert len(r["attention"]["y_mass"]) == 4 and 0 < sum(r["attention"]["y_mass"]) < 1
        assert r["raw_prediction"] == r["prediction"] and "calibrated_log_probs" not in r
        assert r["preamble_span"] == [0, 1] and r["x_spans"][0][0] == 1 and 0 < r["attention"]["preamble_mass"] < 1
        # one encoder here, so the experiment's similarities are the selector's own scores
        assert r["demo_score_kind"] == "cosine:sentence-transformers/all-MiniLM-L6-v2"
        assert np.allclose(r["encoder_similarities"], r["demo_scores"], atol=1e-5)
    knn = [r for r in records if r["selector"] == "knn"]
    assert all(r["demo_scores"] == sorted(r["demo_scores"]) for r in knn)  # most similar nearest the query
    rnd = {r["query_id"]: r for r in records if r["selector"] == "random"}
    assert {r["query_id"] for r in knn} == set(rnd)  # the same queries for both selectors


def test_accuracy_above_chance_and_summary_files(results):
    out, proc, _ = results
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["selector"] for r in rows] == ["random", "knn"]
    for row in rows:
        assert float(row["ci_low"]) <= float(row["accuracy"]) <= float(row["ci_high"])
    assert max(float(r["accuracy"]) for r in rows) > 0.6  # chance is 0.5 on SST-2
    assert float(rows[1]["mean_similarity"]) > float(rows[0]["mean_similarity"])
    tests = list(csv.DictReader((out / "mcnemar.csv").open()))
    assert tests[0]["comparison"] == "knn-seed0 vs random-seed0" and 0 <= float(tests[0]["p_value"]) <= 1
    assert "Accuracy (95% bootstrap CI)" in (out / "summary.md").read_text()
    assert "knn" in proc.stdout and "results in" in proc.stdout


def test_attention_summaries_are_saved_compactly(results):
    out, _, _ = results
    attention = load_file(str(out / "attention" / "knn-seed0.safetensors"))
    summary = next(iter(attention.values()))
    assert len(attention) == 180  # a summary, a profile and the preamble's mass per query
    key = next(k for k in attention if "/" not in k)
    summary, profile, preamble = attention[key], attention[f"{key}/profile"], attention[f"{key}/preamble"]
    assert preamble.shape == (30, 9) and np.all((preamble >= 0) & (preamble <= 1)) and preamble.mean() > 0.05
    assert summary.shape == (30, 9, 4, 5) and summary.dtype == np.float16  # layers, heads, demos, columns
    assert np.all(summary[..., 2] <= summary[..., 0] + 1e-3) and np.all(summary[..., 3] <= summary[..., 1] + 1e-3)
    assert profile.shape == (30, 4, 24) and np.isfinite(profile.astype(np.float32)).all()


def test_analyses_run_on_the_real_records_and_label_tokens_draw_more_attention(results):
    """Figure 2's claim holds for SmolLM2 too: per token, the demonstrations' labels draw more attention than their
    inputs; and the reconstruction finds a head among SmolLM2's 30 x 9."""
    from typer.testing import CliRunner

    from retrieval_icl.cli import app

    out, _, _ = results
    result = CliRunner().invoke(app, ["analyze", "all", str(out), "--selection-n", "30"])
    assert result.exit_code == 0, result.output
    attention = list(csv.DictReader((out / "analysis" / "attention.csv").open()))
    assert attention and all(float(r["label/input attention per token"]) > 1 for r in attention)
    recon = list(csv.DictReader((out / "analysis" / "reconstruction.csv").open()))
    assert all(0 <= int(r["best_layer"]) < 30 and 0 <= int(r["best_head"]) < 9 for r in recon)
    assert all(r["n_heldout"] == "30" and 0.5 <= float(r["agreement"]) <= 1 for r in recon)


def test_resolved_config_and_versions_are_saved(results):
    out, _, _ = results
    saved = CompareConfig(**{k: v for k, v in yaml.safe_load((out / "config.yaml").read_text()).items()})
    assert saved.pool_split == "train" and saved.query_split == "validation" and saved.k == 4
    info = json.loads((out / "run_info.json").read_text())
    assert {"torch", "transformers"} <= set(info["versions"]) and info["n_queries"] == 60
    # the installed FAISS build and no other: faiss-cpu, or faiss-gpu after `scripts/install.sh --gpu`
    builds = faiss_distributions()
    assert len(builds) == 1 and {name for name in info["versions"] if name.startswith("faiss")} == set(builds)
    assert info["versions"][builds[0]] == metadata.version(builds[0])
    assert info["pools"]["in_distribution"]["size"] == 400
    # what the weights ran in, though config says auto (bfloat16 on a CPU that computes it natively, float32 on one
    # that would emulate it), why, and the batch limits they scored with
    dtype = "bfloat16" if cpu_bfloat16_flags() else "float32"
    assert info["model"] == {"device": "cpu", "dtype": dtype, "dtype_reason": f"auto: {dtype}, this CPU " + (
        f"computes it natively ({', '.join(cpu_bfloat16_flags())})" if cpu_bfloat16_flags() else
        "has no native bfloat16 (no amx_bf16 or avx512_bf16 flag), where bfloat16 is emulated and about 5x slower"),
        "batch_rows": 8, "batch_tokens": None}
    assert len(info["config_fingerprint"]) == 16


def test_rerun_refuses_to_overwrite_and_reuses_the_index(results):
    out, _, path = results
    before = (out / "records.jsonl").read_text()
    proc = subprocess.run([sys.executable, "-m", "retrieval_icl", "compare", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "exists; pass --overwrite" in proc.stderr
    assert (out / "records.jsonl").read_text() == before


def test_calibrated_run_records_both_predictions_and_reconstruction_uses_the_raw_one(tmp_path, smollm2):
    from retrieval_icl.analysis.attention import reconstruct_run
    from retrieval_icl.experiment.compare import run_compare
    from retrieval_icl.results_dir import load_results

    config = CompareConfig(task="sst2", data_dir=str(SHARED_DATA), pool_size=150, n_queries=16, k=2,
                           calibrate=True, selectors=[{"name": "random"}], index_root=str(tmp_path / "idx"),
                           output_dir=str(tmp_path / "out"))
    _, _, out = run_compare(config)
    results = load_results(out)
    records = results.records
    raw = np.array([int(np.argmax(r.label_log_probs)) for r in records])
    assert [r.raw_prediction for r in records] == raw.tolist()
    assert [r.prediction for r in records] == [int(np.argmax(r.calibrated_log_probs)) for r in records]
    assert all(r.raw_correct == (r.raw_prediction == r.gold) for r in records)
    assert any(r.prediction != r.raw_prediction for r in records)  # calibration moved at least one
    rec = reconstruct_run(results, "random-seed0", selection_n=8)
    assert np.array_equal(rec.agreement_, (rec.reconstructed_ == raw[:, None, None]).mean(0))
