"""benchmarks/gpu_check.py and faiss_support.py: the CPU self-test passes, the comparisons flag planted mismatches,
the script stops cleanly without CUDA, and the main-job step reads a results directory right (no GPU, no packaged
model: the tiny GPT-J only)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml

from retrieval_icl.experiment.compare_config import load_compare_config
from retrieval_icl.retrieval.faiss_support import faiss_build

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = ROOT / "tests" / "data"


def load_script(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their class's module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = load_script("gpu_check")


def test_cpu_selftest_passes(capsys):
    assert gpu_check.main(["--cpu-selftest"]) == 0
    out = capsys.readouterr().out
    assert "7 of 7 checks passed" in out and "FAIL" not in out
    assert "tiny-gptj: max captured row diff vs eager" in out and "smollm2" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_script_without_cuda_exits_2_with_a_message():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == gpu_check.EXIT_NO_CUDA == 2
    assert "no CUDA device available, nothing was checked" in proc.stderr and "--cpu-selftest" in proc.stderr
    assert proc.stdout == ""


def test_search_comparison_tolerates_ties_and_flags_planted_errors():
    scores = np.array([[0.9, 0.8, 0.7], [0.5, 0.4, 0.4]], dtype=np.float32)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    assert gpu_check.search_mismatches((scores, ids), (scores, ids), 1e-5) == (0, 0.0)
    tie_swapped = np.array([[1, 2, 3], [4, 6, 5]])  # ids 5 and 6 both score 0.4: either order is right
    assert gpu_check.search_mismatches((scores, ids), (scores, tie_swapped), 1e-5) == (0, 0.0)
    perturbed = scores.copy()
    perturbed[0, 1] += 1e-3  # a score off by 1e-3, same ids: caught by the 1e-4 score limit
    wrong, gap = gpu_check.search_mismatches((scores, ids), (perturbed, ids), 1e-5)
    assert wrong == 0 and gap == pytest.approx(1e-3, abs=1e-6)
    assert not gpu_check.Check("score", gap, 1e-4).ok
    other_id = ids.copy()
    other_id[0, 1], perturbed[0, 1] = 9, 0.75  # a different neighbour with a lower score: not a tie
    wrong, gap = gpu_check.search_mismatches((scores, ids), (perturbed, other_id), 1e-5)
    assert wrong == 1 and gap == pytest.approx(0.05, abs=1e-6)


def test_exact_scores_recompute_the_returned_ids():
    xb = np.eye(4, dtype=np.float32)
    xq = np.array([[0.6, 0.8, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(gpu_check.exact_scores(xb, xq, np.array([[1, 0, 3]])), [[0.8, 0.6, 0.0]], atol=1e-7)


def test_prediction_flips_count_only_clear_margins():
    ref = np.array([[0.0, -1.0], [-0.50, -0.49], [-2.0, -0.1]])
    got = np.array([[-1.0, 0.0], [-0.49, -0.50], [-2.0, -0.1]])  # a clear flip, a near-tie flip, an agreement
    share, flips = gpu_check.prediction_flips(ref, got, clear_margin=0.2)
    assert share == pytest.approx(1 / 3) and flips == 1
    assert gpu_check.prediction_flips(ref, ref, 0.2) == (1.0, 0)


def test_row_difference_finds_a_planted_error():
    rows = [np.full((2, 4, 5), 0.2, np.float32), np.full((2, 4, 3), 1 / 3, np.float32)]  # (layers, heads, T_i)
    planted = [r.copy() for r in rows]
    planted[1][1, 2, 0] += 0.03
    assert gpu_check.max_row_difference(rows, rows) == 0.0
    assert gpu_check.max_row_difference(rows, planted) == pytest.approx(0.03, abs=1e-6)
    with pytest.raises(ValueError):  # unpaired rows are an error, not a silent partial comparison
        gpu_check.max_row_difference(rows, planted[:1])


def test_check_limits_and_nan():
    assert gpu_check.Check("share", 0.97, 0.95, at_least=True).ok
    assert not gpu_check.Check("share", 0.90, 0.95, at_least=True).ok
    assert not gpu_check.Check("diff", float("nan"), 1.0).ok  # nothing compared never passes


def test_main_config_sets_device_and_dtype(tmp_path):
    wrapper = gpu_check.write_main_config(gpu_check.MAIN_CONFIG, tmp_path, "cuda", "float16")
    config = load_compare_config(wrapper)
    assert (config.device, config.dtype) == ("cuda", "float16")
    assert (config.task, config.model, config.n_queries, config.k) == ("sst2", "smollm2-135m", 200, 8)


def write_results(directory: Path, predictions: list[int], device: str) -> None:
    """A results directory with what main_job_checks reads: run_info.json, summary.csv, records.jsonl."""
    directory.mkdir(parents=True)
    (directory / "run_info.json").write_text(json.dumps(
        {"wall_seconds": 12.5, "timings": {"score": 10.0}, "model": {"device": device, "dtype": "float16"}}))
    (directory / "summary.csv").write_text("run,accuracy\nknn-seed0,0.75\n")
    records = [{"run": "knn-seed0", "pool": "in_distribution", "k": 8, "label_format": "default", "query_id": q,
                "prediction": p} for q, p in enumerate(predictions)]
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_main_job_checks_read_the_results(tmp_path, monkeypatch, capsys):
    write_results(tmp_path / "cpu", [0, 1, 1, 0], "cpu")
    device = {"value": "cuda:0"}

    def fake_run(config, out, device_asked, dtype, **overrides):  # stands in for the subprocess: writes its files
        write_results(out, [0, 1, 0, 1], device["value"])
        return 0, 3.0

    monkeypatch.setattr(gpu_check, "run_main_job", fake_run)
    args = gpu_check.parse_args(["--output-dir", str(tmp_path / "gpu"), "--cpu-results", str(tmp_path / "cpu"),
                                 "--dtype", "float16"])
    checks = {c.name: c for c in gpu_check.main_job_checks(args)}
    assert checks["main job: exit status"].ok
    assert checks["main job: weights on cuda in the dtype asked (1 = not)"].ok
    agreement = checks["main job: predictions agreeing with the CPU run"]
    assert agreement.value == 0.5 and not agreement.ok  # 2 of 4 predictions as on CPU, below 0.95
    assert "knn-seed0: accuracy 0.750 (CPU run: 0.750)" in capsys.readouterr().out
    device["value"] = "cpu"  # a run that silently stayed on the CPU fails
    args.output_dir = tmp_path / "gpu-again"
    checks = {c.name: c for c in gpu_check.main_job_checks(args)}
    assert not checks["main job: weights on cuda in the dtype asked (1 = not)"].ok


def test_faiss_build_reports_one_distribution():
    build = faiss_build()
    assert build.single and build.distributions[0] in ("faiss-cpu", "faiss-gpu")
    assert build.describe().startswith(f"faiss {build.version} from {build.distributions[0]}, ")
    if not torch.cuda.is_available():
        assert build.gpus == 0


def test_torch_search_is_exact_top_k():
    xb, xq = gpu_check.unit_vectors(500, 16, 0), gpu_check.unit_vectors(20, 16, 1)
    ref = gpu_check.brute_force(xb, xq, 7)
    got = gpu_check.torch_search(xb, xq, 7, "cpu")
    assert gpu_check.search_mismatches(ref, got, 1e-6)[0] == 0
    np.testing.assert_allclose(got[0], gpu_check.exact_scores(xb, xq, got[1]), atol=1e-6)


def test_cpu_selftest_with_random_weights_prints_the_throughput_table(capsys):
    assert gpu_check.main(["--cpu-selftest", "--random-weights"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out and "7 of 7 checks passed" in out
    table = [line for line in out.splitlines() if line.startswith("| tiny-gptj |")]
    assert [line.split(" | ")[1] for line in table] == [
        "runner, 8 rows a batch", "runner, token budget", "runner, token budget + capture",
        "plain forward, 32 x mean length"]
    assert all(float(line.split(" | ")[2]) > 0 for line in table)  # prompts/s measured


def test_main_config_takes_random_weight_overrides(tmp_path):
    wrapper = gpu_check.write_main_config(gpu_check.MAIN_CONFIG, tmp_path, "cuda", "bfloat16",
                                          model=str(tmp_path / "lm dir"), encoder_backend="torch")
    config = load_compare_config(wrapper)
    assert (config.model, config.encoder_backend, config.dtype) == (str(tmp_path / "lm dir"), "torch", "bfloat16")


@pytest.mark.lm
def test_main_job_runs_with_random_weights(tmp_path):
    """The random-weight main job end to end on CPU, on a tiny pool: the packaged tokenizers, random weights."""
    config = tmp_path / "tiny.yaml"
    config.write_text(f"include: {json.dumps(str(gpu_check.MAIN_CONFIG))}\ndata_dir: {json.dumps(str(TINY_DATA))}\n"
                      "n_queries: 6\nk: 2\nencoder_backend: torch\n")
    overrides = gpu_check.random_main_overrides(None, tmp_path / "random")
    status, _ = gpu_check.run_main_job(config, tmp_path / "out", "cpu", "float32", **overrides)
    assert status == 0
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["model"]["device"] == "cpu" and info["n_queries"] == 6
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["model"] == overrides["model"] and saved["encoder"] == overrides["encoder"]
