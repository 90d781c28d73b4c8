"""Adaptive's promise against what the run realised: for each run whose selector fit declares a `tolerance` (adaptive),
the accuracy drop against the frontier's reference on the evaluated queries beside the drop the fit measured on its
calibration queries.

The fit promises that, for queries drawn like its calibration queries, the drop against knn with all k exceeds
`tolerance` with probability at most `alpha`. The realised drop is the reference's accuracy minus the run's on the
queries both ran, with its paired bootstrap 95% CI (from the frontier rows). A breach is shown when the CI's lower end
is above the tolerance, the drop shown within it when the CI's upper end is below; otherwise the queries cannot tell
(the point estimate is then reported as within or over, not as evidence). Only a reference that is knn at the run's
own k is what the promise is about; other references are reported as such.
"""

from __future__ import annotations

from typing import Any

FOLDS = "folds"  # a cross-fitted run's fit: one fit per fold (ricl compare's calibration_folds)


def fold_fits(fit: dict) -> list[dict]:
    """The fits a run's selections came from: its folds' when cross-fitted, else the one."""
    return list(fit[FOLDS]) if FOLDS in fit else [fit]


def calibration_source(fit: dict) -> str:
    """Where a run's fit drew its calibration queries from, in words."""
    fits = fold_fits(fit)
    sizes = "/".join(str(f.get("n_fit_queries", "?")) for f in fits)
    if FOLDS in fit:
        return f"cross-fitted on the run's own queries, {len(fits)} folds ({sizes} queries each)"
    if fit.get("settings", {}).get("calibration"):
        return f"{sizes} given queries"
    return f"{sizes} queries drawn from the pool"


def verdict(drop: float, low: float, high: float, tolerance: float) -> str:
    """What the realised drop's 95% CI says about the tolerance."""
    if low > tolerance:
        return "breach shown"
    if high < tolerance:
        return "within, shown"
    return f"not resolved (point {'within' if drop <= tolerance else 'over'})"


def guarantee_rows(rows: list[dict], fits: dict[str, dict]) -> list[dict]:
    """One row per frontier row with a tolerance-declaring fit and a comparison with the reference."""
    reference = next((r for r in rows if r["reference"]), None)
    out = []
    for r in rows:
        fit = fits.get(r["run"])
        if fit is None or reference is None or "accuracy_diff" not in r:
            continue
        # A fit promises only with both (fits from before Learn-then-Test had a tolerance and no alpha).
        parts = [f for f in fold_fits(fit) if "tolerance" in f and "alpha" in f]
        if not parts:
            continue
        tolerance, alpha = parts[0]["tolerance"], parts[0]["alpha"]
        at_k = [f["fit_accuracy"].get(str(r["k"]), {}) for f in parts]
        drop, low, high = -r["accuracy_diff"], -r["diff_ci_high"], -r["diff_ci_low"]
        out.append({"run": r["run"], "k": r["k"], "tolerance": tolerance, "alpha": alpha,
                    "calibration": calibration_source(fit),
                    "calibration_drop": "/".join(f"{a.get('calibration_drop', float('nan')):+.3f}" for a in at_k),
                    "realised_drop": drop, "drop_ci_low": low, "drop_ci_high": high,
                    "token_ratio": r["token_ratio"],
                    "against": "knn at the run's k" if same_k(reference, r) else
                    f"{reference['run']} (k = {reference['k']}), not knn at the run's k",
                    "verdict": verdict(drop, low, high, tolerance)})
    return out


def same_k(reference: dict, row: dict) -> bool:
    """Whether the reference is knn at the run's k, the comparison the promise is about."""
    return reference["family"] == "knn" and reference["k"] == row["k"]


def guarantee_cells(rows: list[dict]) -> list[dict[str, Any]]:
    """The rows as the report shows them."""
    return [{"run": r["run"], "tolerance / alpha": f"{r['tolerance']:g} / {r['alpha']:g}",
             "calibration": r["calibration"], "calibration drop": r["calibration_drop"],
             "realised drop (95% CI)": f"{r['realised_drop']:+.3f} [{r['drop_ci_low']:+.3f}, {r['drop_ci_high']:+.3f}]",
             "token ratio": f"{r['token_ratio']:.2f}", "against": r["against"], "verdict": r["verdict"]}
            for r in rows]


NOTE = ("Adaptive promises that, for queries drawn like its calibration queries, its accuracy drop against knn with "
        "all k exceeds the tolerance with probability at most alpha. realised drop: the reference's accuracy minus the "
        "run's on the queries both ran, with the paired bootstrap 95% CI; calibration drop: the same on the fit's "
        "calibration queries (one per fold when cross-fitted). verdict: 'breach shown' when the CI lies above the "
        "tolerance, 'within, shown' when below it, else not resolved by these queries. All columns in guarantee.csv.")
