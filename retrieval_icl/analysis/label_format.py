"""Label format: the same queries and demonstrations written with different label words (natural, synonyms, swapped,
unrelated words, symbols, numbers): accuracy, attention on the label tokens, and how well one head reconstructs ICL.

The label tokens are the values the kernel averages (Han et al. 2023): a model that reads the mapping from the
demonstrations keeps its accuracy under swapped labels; one that falls back on the words' prior meaning keeps the
same *word* and so inverts its predictions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import RiclError
from ..record import RunRecord
from ..results_dir import Results, write_csv
from ..stats import mcnemar
from .attention import reconstruct_run
from .report import Section, new_figure, save_analysis, save_figure
from .votes import group_by, rate

METRICS = (("accuracy", "accuracy"), ("label_attention", "attention mass on label tokens"),
           ("reconstruction_agreement", "best head's agreement with ICL (held out)"))


def format_groups(results: Results) -> dict[tuple, dict[str, str]]:
    """(selector, seed, k, pool) -> {label format: run}, for the groups scored under two or more formats."""
    groups: dict[tuple, dict[str, str]] = {}
    for r in results.records:
        groups.setdefault((r.selector, r.seed, r.k, r.pool), {}).setdefault(r.label_format, r.run)
    varied = {key: runs for key, runs in groups.items() if len(runs) > 1}
    if not varied:
        formats = sorted({r.label_format for r in results.records})
        raise RiclError(f"no label-format variation in {results.directory}: every run uses label format(s) {formats} "
                        "alone; run `ricl compare` with label_formats: [default, symbols, ...]")
    return varied


def compare_formats(reference: Sequence[RunRecord], records: Sequence[RunRecord],
                    reference_words: Sequence[str] | None = None,
                    words: Sequence[str] | None = None) -> dict:
    """One format's records against the reference format's, paired by query: accuracy, agreement, McNemar.

    same_word: the predicted label *word* equals the reference's predicted word (a model following the words' prior
    meaning keeps the word under swapped labels, so its label ids, and its accuracy, invert); NaN when the two
    formats share no word.

    >>> from types import SimpleNamespace as Rec  # the RunRecord fields it reads
    >>> ref = [Rec(query_id=i, prediction=i % 2, gold=i % 2, correct=True, demo_ids=[1]) for i in range(4)]
    >>> swp = [Rec(**vars(r) | {"prediction": 1 - r.gold, "correct": False}) for r in ref]
    >>> out = compare_formats(ref, swp, ["negative", "positive"], ["positive", "negative"])
    >>> out["accuracy"]["value"], out["agreement_with_reference"], out["same_word_as_reference"]
    (0.0, 0.0, 1.0)
    """
    by_id = {r.query_id: r for r in reference}
    pairs = [(by_id[r.query_id], r) for r in records if r.query_id in by_id]
    if not pairs:
        raise RiclError("the two label formats share no queries; expected the same queries under every format")
    ref_pred = np.array([a.prediction for a, _ in pairs])
    pred = np.array([b.prediction for _, b in pairs])
    out = {"n": len(pairs), "accuracy": rate(np.array([b.correct for _, b in pairs])),
           "agreement_with_reference": float(np.mean(pred == ref_pred)),
           "same_demos": float(np.mean([a.demo_ids == b.demo_ids for a, b in pairs])),
           "mcnemar_p": mcnemar(np.array([b.correct for _, b in pairs]),
                                np.array([a.correct for a, _ in pairs]))["p_value"],
           "same_word_as_reference": float("nan")}
    if reference_words is not None and words is not None and set(words) & set(reference_words):
        out["same_word_as_reference"] = float(np.mean([words[p] == reference_words[q] for p, q in zip(pred, ref_pred)]))
    return out


def label_attention(records: Sequence[RunRecord]) -> float:
    """Mean over queries of the attention mass on all label tokens (layer- and head-averaged), NaN if not captured."""
    masses = [sum(r.attention.y_mass) for r in records if r.attention is not None]
    return float(np.mean(masses)) if masses else float("nan")


def format_rows(results: Results, key: tuple, runs: dict[str, str], selection_fraction: float,
                selection_n: int | None, seed: int) -> list[dict]:
    """One row per label format of a group, compared with the default format (or the group's first)."""
    ref_format = "default" if "default" in runs else next(iter(runs))
    by_run = results.runs(runs.values())
    ref_words = results.label_words_from_task_spec(ref_format)
    rows = []
    for fmt, run in runs.items():
        words = results.label_words_from_task_spec(fmt)
        cmp = compare_formats(by_run[runs[ref_format]], by_run[run], ref_words, words)
        agreement = float("nan")
        if results.has_attention(run):
            agreement = reconstruct_run(results, run, selection_fraction, selection_n,
                                        seed).heldout_["agreement"]["value"]
        rows.append({"group": "-".join(str(k) for k in key), "label_format": fmt, "words": "/".join(words or []),
                     "n": cmp["n"], "accuracy": cmp["accuracy"]["value"], "ci_low": cmp["accuracy"]["ci_low"],
                     "ci_high": cmp["accuracy"]["ci_high"], "label_attention": label_attention(by_run[run]),
                     "reconstruction_agreement": agreement,
                     f"same_prediction_as_{ref_format}": cmp["agreement_with_reference"],
                     f"same_word_as_{ref_format}": cmp["same_word_as_reference"], "mcnemar_p": cmp["mcnemar_p"],
                     "same_demos": cmp["same_demos"]})
    return rows


def plot_formats(rows: list[dict]):
    """Per label format, grouped bars per run group: accuracy (CI), label attention, reconstruction agreement."""
    fig = new_figure(12, 4)
    formats = list(dict.fromkeys(r["label_format"] for r in rows))
    groups = group_by(rows, lambda r: r["group"])
    width = 0.8 / len(groups)
    for ax, (metric, title) in zip(fig.subplots(1, 3), METRICS):
        for j, (group, grows) in enumerate(groups.items()):
            by_fmt = {r["label_format"]: r for r in grows}
            x = np.array([formats.index(f) for f in by_fmt]) + j * width
            y = np.array([r[metric] for r in by_fmt.values()])
            err = None
            if metric == "accuracy":
                err = np.abs(np.array([[r["ci_low"], r["ci_high"]] for r in by_fmt.values()]).T - y)
            ax.bar(x, np.nan_to_num(y), width, yerr=err, capsize=2, label=group)
        ax.set_xticks(np.arange(len(formats)) + 0.4 - width / 2, formats, rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def analyze_label_format(results: Results, selection_fraction: float = 0.7, selection_n: int | None = None,
                         seed: int = 0) -> dict:
    """Every group of runs scored under several label formats; table CSV and PNG in analysis/ (primary: accuracy)."""
    out = results.analysis_dir
    rows = [row for key, runs in format_groups(results).items()
            for row in format_rows(results, key, runs, selection_fraction, selection_n, seed)]
    write_csv(out / "label_format.csv", rows)
    figure = save_figure(plot_formats(rows), out / "label_format.png")
    intro = ("The same queries and the same demonstrations, written with different label words. Per format: "
             "accuracy (95% CI), the attention mass from the prediction position on the demonstrations' label "
             "tokens (averaged over layers and heads), the held-out agreement of the best single head's "
             "reconstruction with the ICL prediction, and, against the default format: how often the predicted "
             "label id and the predicted word stay the same, and an exact McNemar p-value. A model that follows the "
             "demonstrations keeps its accuracy under swapped labels; one that follows the words' prior meaning "
             "keeps the same word and inverts its accuracy.")
    sections = [Section("Accuracy, label attention and reconstruction per format", table=rows, figure=figure)]
    save_analysis(out, "label_format", "Label format", intro, sections)
    return {"primary_metric": "accuracy", "rows": rows}
