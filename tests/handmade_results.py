"""Hand-made results directories whose answers are known (no model), as `ricl compare` writes them.

The synthetic model has L layers x H heads; head BEST attends to the demonstrations labelled with the record's
prediction, so a reconstruction must find it. Used by the analysis tests (tests/test_analysis_*.py, the CLI and
cross-run tests); conftest.py wraps `perfect_dir` and `study_dir` as the `perfect` and `study` fixtures.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import yaml
from safetensors.numpy import save_file

from retrieval_icl.record import RunRecord

L, H, BEST = 3, 4, (1, 2)  # the synthetic model: 3 layers x 4 heads; head (1, 2) attends to the predicted label's demos
WORDS = {"default": ["negative", "positive"], "swapped": ["positive", "negative"], "symbols": ["A", "B"]}


def summary(demo_labels: list[int], target: int, rng: np.random.Generator) -> np.ndarray:
    """(L, H, D, 5): small random attention; head BEST puts its max and pre_label attention on demos labelled target."""
    s = rng.uniform(0.0, 0.05, size=(L, H, len(demo_labels), 5)).astype(np.float32)
    hit = np.array(demo_labels) == target
    s[BEST[0], BEST[1], hit, 1:] = 0.5  # y_mass (the label weight), x_max, y_max, pre_label
    s[BEST[0], BEST[1], ~hit, 1:] = 0.001
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
                   "attention": {"preamble_mass": 0.1, "x_mass": [0.02] * n,
                                 "y_mass": [0.05 if fields.get("label_format", "default") == "default" else 0.03] * n}
                   } | fields


def run_record(demo_labels: list[int], similarities: list[float], qid: int = 0, gold: int = 0, prediction: int = 0,
               **fields) -> RunRecord:
    """A checked RunRecord shaped by make_record, for the analyses' functions that take records rather than a
    directory."""
    return RunRecord.model_validate(make_record("knn-seed0", qid, gold, prediction, demo_labels, similarities,
                                                **fields))


def write_dir(directory: Path, recs: list[dict], config: dict, with_attention: bool = True, seed: int = 0) -> Path:
    """A results directory as `ricl compare` writes it, with attention made by `summary` for each record."""
    rng = np.random.default_rng(seed)
    (directory / "attention").mkdir(parents=True)
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "summary.md").write_text("# sst2: hand-made\n\n## Accuracy (95% bootstrap CI)\n\n"
                                          "| run |\n|---|\n| x |\n")
    if with_attention:
        by_run: dict[str, dict] = {}
        for r in recs:
            arrays = by_run.setdefault(r["run"], {})
            arrays[str(r["query_id"])] = summary(r["demo_labels"], r["prediction"], rng).astype(np.float16)
            arrays[f"{r['query_id']}/profile"] = profile(len(r["demo_labels"])).astype(np.float16)
            # head h: 0.1 h
            arrays[f"{r['query_id']}/preamble"] = np.tile(np.arange(H) * 0.1, (L, 1)).astype(np.float16)
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


def perfect_dir(directory: Path) -> Path:
    """One knn run whose ICL prediction is always gold and whose head BEST attends to the gold-labelled demos."""
    recs = [make_record("knn-seed0", q, g, g, labels, scores) for q, g, labels, scores in queries()]
    return write_dir(directory, recs, {"task": "sst2", "selectors": SELECTORS[:1]})


def study_dir(directory: Path, n_queries: int = 60, selectors: tuple[str, ...] = ("knn", "random", "far", "kmeans")
              ) -> Path:
    """Every condition: selectors knn/random/far/kmeans, formats default/swapped, pools in_distribution/typos."""
    recs = []
    rng = np.random.default_rng(1)
    for pool in ("in_distribution", "typos"):
        for sel in selectors:
            for fmt in ("default", "swapped"):
                run = f"{sel}-{fmt}-{pool}-seed0"
                for q, g, labels, scores in queries(n_queries):
                    sim_shift = {"knn": 0.3, "random": 0.0, "far": -0.3, "kmeans": 0.1}[sel]
                    right = rng.random() < ({"knn": 0.9, "random": 0.7, "far": 0.5, "kmeans": 0.8}[sel] -
                                            0.2 * (pool == "typos"))
                    pred = g if right else 1 - g
                    if fmt == "swapped":
                        pred = 1 - pred  # follows the words' prior meaning: the same word, the other label id
                    recs.append(make_record(run, q, g, pred, labels, [s + sim_shift for s in scores], selector=sel,
                                            label_format=fmt, pool=pool))
    config = {"task": "sst2", "selectors": SELECTORS, "label_formats": ["default", "swapped"],
              "pools": [{"name": "in_distribution"}, {"name": "typos", "perturb": "typos", "rate": 0.3}]}
    return write_dir(directory, recs, config)


def doctest_failures(module: ModuleType) -> int:
    """How many of the module's doctest examples fail."""
    return doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed
