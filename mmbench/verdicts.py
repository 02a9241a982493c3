"""Statistical verdicts: is a produced cell's difference from the paper real, or seed noise?

For every reference cell with a printed std and a known number of runs behind it (the paper's n,
from the reference file's ``runs``), Welch's two-sample t-test of produced (mean, sample std, n) against
printed (value, std, n) — ``scipy.stats.ttest_ind_from_stats(equal_var=False)`` — or, for one produced run
(no std of its own), the t-test of a new observation against the printed sample: under "same distribution",
(x − value) / (std · sqrt(1 + 1/n)) follows Student's t with n − 1 degrees of freedom (the prediction-interval
test); then Holm's step-down correction over the tested cells of one paper (family-wise error ``ALPHA``).
Verdicts:

* ``consistent``: Holm-adjusted p >= ALPHA with at least ``MIN_CONSISTENT_RUNS`` produced runs (no evidence
  the reproduction differs, from a test that could have found one);
* ``differs``: Holm-adjusted p < ALPHA;
* ``underpowered``: no test possible — no printed std or no paper n (or a paper n of one), or both stds
  zero — or p >= ALPHA from one or two produced runs: one run can show a gap far outside the printed
  spread (``differs``), but its agreement says little, and Welch's test from two runs has about one
  degree of freedom, so "consistent" would claim what the test cannot show.

The fixed tolerance (|Δ| <= tolerance) stays the gate of ``--compare``; the verdict is shown beside it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

ALPHA = 0.05
MIN_CONSISTENT_RUNS = 3  # produced runs below which a non-significant test says nothing (see the module docstring)


def welch_p(mean1: float, std1: float, n1: int, mean2: float, std2: float, n2: int) -> Optional[float]:
    """Two-sided p of Welch's t-test from summary statistics (None where it is undefined)."""
    from scipy.stats import ttest_ind_from_stats

    if n1 < 2 or n2 < 2 or std1 is None or std2 is None or (std1 == 0 and std2 == 0):
        return None
    p = float(ttest_ind_from_stats(mean1, std1, n1, mean2, std2, n2, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def one_run_p(x: float, mean: float, std: float, n: int) -> Optional[float]:
    """Two-sided p of one new observation `x` against a sample (mean, sample std, n) of the same normal
    distribution: (x - mean) / (std * sqrt(1 + 1/n)) ~ t(n - 1) (None where it is undefined)."""
    from scipy.stats import t as student_t

    if n < 2 or not std or std <= 0:
        return None
    t = (x - mean) / (std * math.sqrt(1.0 + 1.0 / n))
    return float(2.0 * student_t.sf(abs(t), n - 1))


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def apply(cells: list) -> list:
    """Set `p_value`, `p_holm` and `verdict` on every cell (Holm within each paper)."""
    by_paper: Dict[str, list] = {}
    for c in cells:
        c.p_value = c.p_holm = None
        c.verdict = None if c.produced is None or c.off_budget else "underpowered"
        # a run at another budget (quick tier) is not tested against the paper's runs: it is not their experiment;
        # a printed std of 0 is tested (welch_p, one_run_p)
        if c.produced is None or c.off_budget or c.std is None or not c.paper_runs:
            continue
        c.p_value = (one_run_p(c.produced, c.value, c.std, c.paper_runs) if c.n_runs == 1 else
                     welch_p(c.produced, c.produced_std, c.n_runs, c.value, c.std, c.paper_runs))
        if c.p_value is not None:
            by_paper.setdefault(c.paper, []).append(c)
    for tested in by_paper.values():
        for c, p in zip(tested, holm([c.p_value for c in tested])):
            c.p_holm = p
            c.verdict = ("differs" if p < ALPHA else "consistent" if c.n_runs >= MIN_CONSISTENT_RUNS
                         else "underpowered")
    return cells


def counts(cells: list) -> Dict[str, int]:
    out = {"consistent": 0, "differs": 0, "underpowered": 0}
    for c in cells:
        if c.verdict:
            out[c.verdict] += 1
    return out


# ----- tidy export (`mmbench report --format csv|json`) -----------------------------------------------
TIDY_COLUMNS = ["paper", "table", "row", "column", "method", "metric", "produced_mean", "produced_std", "n_runs",
                "printed_value", "printed_std", "paper_runs", "tolerance", "difference", "tolerance_verdict",
                "welch_p", "welch_p_holm", "welch_verdict", "mixed_provenance", "run_ids",
                "excluded_by_filter", "absent_from_runs", "off_budget", "other_budget_runs_left_out"]


def tidy_rows(cells: list, frame) -> list:
    """One row per reference cell (paper, table, row, column, method, metric key) with the produced and printed
    statistics, both verdicts and the run ids behind it; without references, one row per (runs group, metric)
    of the produced aggregates (paper columns empty)."""
    if cells:
        return [{"paper": c.paper, "table": c.table, "row": c.row, "column": c.column, "method": c.method,
                 "metric": c.metric, "produced_mean": c.produced, "produced_std": c.produced_std if c.n_runs > 1 else None,
                 "n_runs": c.n_runs, "printed_value": c.value, "printed_std": c.std, "paper_runs": c.paper_runs,
                 "tolerance": c.tolerance, "difference": None if c.produced is None else c.produced - c.value,
                 "tolerance_verdict": c.status, "welch_p": c.p_value, "welch_p_holm": c.p_holm,
                 "welch_verdict": c.verdict, "mixed_provenance": list(c.mixed), "run_ids": list(c.runs),
                 "excluded_by_filter": c.excluded, "absent_from_runs": c.absent, "off_budget": c.off_budget,
                 "other_budget_runs_left_out": c.set_aside}
                for c in cells]
    rows = []
    if frame is None or frame.empty:
        return rows
    for (tables, method, group, metric), g in frame.groupby(["tables", "method", "group", "metric"], sort=True):
        g = g[g["value"].apply(math.isfinite)]  # NaN/inf runs left out of the mean and of n, as in the cells
        n = len(g)
        rows.append({"paper": None, "table": ", ".join(tables), "row": None, "column": None, "method": method,
                     "metric": metric, "produced_mean": float(g["value"].mean()) if n else None,
                     "produced_std": float(g["value"].std(ddof=1)) if n > 1 else None, "n_runs": n,
                     "printed_value": None, "printed_std": None, "paper_runs": None, "tolerance": None,
                     "difference": None, "tolerance_verdict": None, "welch_p": None, "welch_p_holm": None,
                     "welch_verdict": None, "mixed_provenance": [], "run_ids": sorted(g["run"]),
                     "excluded_by_filter": None, "absent_from_runs": None, "off_budget": None,
                     "other_budget_runs_left_out": None})
    return rows
