"""`mmbench report`'s tables as data: the produced numbers per paper table or figure (mean ± std over seeds; a sweep
in long form) and each reference table in its paper's layout; mmbench/render.py lays them out, mmbench/plots.py
draws them."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import pandas as pd

from .references import Cell, Claim
from .verdicts import ALPHA, counts as verdict_counts


def pm(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3f}" if not std else f"{mean:.3f} ± {std:.3f}"


HEADLINE = (r"^(latent_acc_by_n|coherence_by_n|fid_by_n|loglik_by_n)/|^coherence/joint$|^recon/(joint|self)$"
            r"|^loglik/joint$")
FAMILY_LABELS = {"latent_acc_by_n": "latent accuracy", "coherence_by_n": "coherence",
                 "coherence_all_by_n": "coherence (inputs among the targets)", "fid_by_n": "FID",
                 "loglik_by_n": "log-likelihood"}
FIXED_LABELS = {"coherence/joint": "joint coherence (prior samples)", "recon/joint": "reconstruction error (all inputs)",
                "recon/self": "self-reconstruction error", "loglik/joint": "log-likelihood (joint posterior)"}


def metric_label(metric: str) -> str:
    """'latent_acc_by_n/2' -> 'latent accuracy, 2 inputs' (mean over subsets of that size)."""
    family, _, arg = metric.partition("/")
    if family in FAMILY_LABELS:
        return f"{FAMILY_LABELS[family]}, {arg} input{'s' if arg != '1' else ''}"
    return FIXED_LABELS.get(metric, metric)


def group_title(dataset: str, variant: str, tables: Tuple[str, ...]) -> str:
    return f"{dataset} ({variant})" + (f" — {', '.join(tables)}" if tables else "")


SHORT = {"method.beta": "β", "method.latent_dim": "latent", "method.options.schedule": "schedule",
         "train.select": "select", "modalities": "modalities", "eval.precision": "eval"}


def series_names(sub: pd.DataFrame) -> Dict[Tuple[str, str], str]:
    """A label per (method, config group): the method's name, plus the settings that tell its
    configurations apart where one method has several (e.g. 'mopoe β=2.5' in a β sweep), so that they
    are never averaged as if they were seeds; a lone configuration evaluated with bf16 decoders is 'mopoe
    [eval=bf16]'."""
    pairs = sub[["method", "group", "cfg"]].drop_duplicates(["method", "group"])
    out: Dict[Tuple[str, str], str] = {}
    for method, rows in pairs.groupby("method", sort=False):
        if len(rows) == 1:  # one configuration; evaluated with bf16 decoders (eval.precision) is said
            bf16 = rows["cfg"].iloc[0].get("eval.precision") == "bf16"
            out[(method, rows["group"].iloc[0])] = f"{method} [eval=bf16]" if bf16 else method
            continue
        cfgs = list(rows["cfg"])
        keys = sorted(k for k in set().union(*cfgs) if k != "seed" and len({repr(c.get(k)) for c in cfgs}) > 1)
        shown = {}  # a float setting's label per value (number_labels)
        for k in keys:
            vals = [c.get(k) for c in cfgs]
            if all(isinstance(v, float) for v in vals):
                shown[k] = dict(zip(map(repr, vals), number_labels(vals)))
        for g, c in zip(rows["group"], cfgs):
            label = ", ".join(f"{SHORT.get(k, k)}={shown[k][repr(c.get(k))]}" if k in shown
                              else f"{SHORT.get(k, k)}={c.get(k)}" for k in keys)
            out[(method, g)] = f"{method} {label}" if label else f"{method} [{g}]"
    return out


def number_labels(values: List[float]) -> List[str]:
    """Each value as `:g` prints it (0.5, 1e-09), or in full (repr) where `:g` would print two different values alike
    (0.1 + 0.2 and 0.3 both print as 0.3): two configurations never share a label."""
    short = [f"{v:g}" for v in values]
    clash = {t for t in short if len({repr(v) for v, u in zip(values, short) if u == t}) > 1}
    return [repr(v) if t in clash else t for v, t in zip(values, short)]


def by_figure(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows regrouped per paper table or figure, in `tables`: a run appears under every table it serves
    (so a figure's table holds all its runs, whichever suite entry made them), and tables served by exactly
    the same runs of one dataset and variant share one group, titled with all of them."""
    if frame.empty:
        return frame
    runs_of: Dict[Tuple[str, str, str], set] = {}
    for ds, var, tables, run in frame[["dataset", "variant", "tables", "run"]].drop_duplicates("run").itertuples(index=False):
        for t in tables or ("",):
            runs_of.setdefault((ds, var, t), set()).add(run)
    merged: Dict[Tuple[str, str, frozenset], List[str]] = {}
    for (ds, var, t), runs in runs_of.items():
        merged.setdefault((ds, var, frozenset(runs)), []).append(t)
    parts = []
    for (_, _, runs), ts in merged.items():
        part = frame[frame["run"].isin(runs)].copy()
        part["tables"] = [tuple(sorted(t for t in ts if t))] * len(part)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def sweep_key(sub: pd.DataFrame) -> Optional[str]:
    """The one numeric setting (e.g. 'method.beta') that tells apart the configurations of each method in a
    group, where one method takes it at at least SWEEP_MIN values; None when the group is no such sweep (one configuration
    per method, several settings varying, or a non-numeric one)."""
    pairs = sub[["method", "group", "cfg"]].drop_duplicates(["method", "group"])
    varying: set = set()
    for _, rows in pairs.groupby("method", sort=False):
        cfgs = list(rows["cfg"])
        varying |= {k for k in set().union(*cfgs) if k not in ("seed", "tables")
                    and len({repr(c.get(k)) for c in cfgs}) > 1}
    if len(varying) != 1:
        return None
    key = next(iter(varying))
    values = [c.get(key) for c in pairs["cfg"]]
    widest = max(len({repr(c.get(key)) for c in rows["cfg"]}) for _, rows in pairs.groupby("method", sort=False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or widest < SWEEP_MIN:
        return None
    return key


SWEEP_MIN = 3  # a setting with this many values in one group is a sweep: rendered long, one table per metric


def _seed_label(name: str, counts: List[int]) -> str:
    lo, hi = min(counts), max(counts)
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{name} ({n} seed{'s' if hi > 1 else ''})"


def _metric_order(metrics) -> List[str]:
    return sorted(metrics, key=lambda k: (not k.startswith(("latent_acc", "coherence_by")), k.startswith("coherence/"), k))


def aggregate(sub: pd.DataFrame, keys: List[str]) -> pd.DataFrame:
    """Mean ± sample std over the finite values per `keys`, and the shown `cell`: a NaN/inf run (a diverged one) is
    left out of the mean and said in the cell, as the reference cells do, not averaged in or dropped unsaid."""
    finite = sub["value"].apply(math.isfinite)
    agg = sub[finite].groupby(keys)["value"].agg(["mean", "std", "count"])
    bad = sub[~finite].groupby(keys)["value"].size().rename("nonfinite")
    agg = agg.join(bad, how="outer").fillna({"count": 0, "nonfinite": 0}).reset_index()
    agg["cell"] = [pm(m, sd if c > 1 else None) + (f" ({int(k)} non-finite left out)" if k else "")
                   for m, sd, c, k in zip(agg["mean"], agg["std"], agg["count"], agg["nonfinite"])]
    return agg


def long_sweep_tables(title: str, sub: pd.DataFrame, key: str) -> List[Tuple[str, pd.DataFrame]]:
    """A sweep in long form: one table per metric, the swept setting's values as rows, methods as columns
    (mean ± std over seeds), instead of one column per (method, value)."""
    sub = sub.assign(sweep=[c.get(key) for c in sub["cfg"]])
    agg = aggregate(sub, ["metric", "sweep", "method"])
    seeds = sub.groupby(["method", "sweep"])["seed"].nunique()
    methods = list(dict.fromkeys(sorted(sub["method"])))
    header = {m: _seed_label(m, list(seeds[m])) for m in methods}
    label = SHORT.get(key, key)
    out = []
    for metric in _metric_order(agg["metric"].unique()):
        part = agg[agg["metric"] == metric]
        long = part.pivot_table(index="sweep", columns="method", values="cell", aggfunc="first")
        long = long.reindex(columns=[m for m in methods if m in long.columns]).sort_index()
        long.columns = [header[m] for m in long.columns]
        long.index = number_labels(list(long.index))
        out.append((f"{title} — {metric_label(metric)}, by {label}",
                    long.reset_index().rename(columns={"index": label}).fillna("—")))
    return out


def summary_tables(frame: pd.DataFrame) -> List[Tuple[str, pd.DataFrame]]:
    """Per paper table or figure (`by_figure`): headline metrics × methods, mean ± std over seeds. A sweep
    (`sweep_key`) goes long: one table per metric, the swept values as rows, methods as columns."""
    out = []
    if frame.empty:
        return out
    head = by_figure(frame[frame["metric"].str.match(HEADLINE)])
    for (dataset, variant, tables), sub in head.groupby(["dataset", "variant", "tables"], sort=True):
        title = group_title(dataset, variant, tables)
        if "simulated" in variant:
            title += " [SIMULATED DATA]"
        builds = sorted(set(sub["data"])) if "data" in sub else [""]
        if builds != [""]:  # e.g. PolyMNIST rebuilt from the MNIST test split: "vanilla", but not the paper's data
            title += f" [data built with {' | '.join(b or 'the defaults' for b in builds)}]"
        key = sweep_key(sub)
        if key is not None:
            out += long_sweep_tables(title, sub, key)
            continue
        names = series_names(sub)
        sub = sub.assign(series=[names[k] for k in zip(sub["method"], sub["group"])])
        agg = aggregate(sub, ["series", "metric"])
        wide = agg.pivot_table(index="metric", columns="series", values="cell", aggfunc="first")
        wide = wide.loc[_metric_order(wide.index)]
        seeds = sub.groupby("series")["seed"].nunique()
        wide.columns = [f"{m} ({seeds[m]} seed{'s' if seeds[m] > 1 else ''})" for m in wide.columns]
        wide.index = [metric_label(k) for k in wide.index]
        out.append((title, wide.reset_index().rename(columns={"index": "metric"}).fillna("—")))
    return out


def reference_tables(cells: List[Cell]) -> List[Tuple[str, pd.DataFrame, str]]:
    """Each reference table in its paper's layout: rows × columns, 'produced | paper | Δ | verdict'."""
    out = []
    by_table: Dict[Tuple[str, str], List[Cell]] = {}
    for c in cells:
        by_table.setdefault((c.paper, c.table), []).append(c)
    for (paper, table), cs in by_table.items():
        rows = list(dict.fromkeys(c.row for c in cs))
        cols = list(dict.fromkeys(c.column for c in cs))
        grid = pd.DataFrame("", index=rows, columns=cols)
        for c in cs:
            if c.ambiguous:
                txt = f"ambiguous: runs of several configurations ({c.ambiguous}) | {pm(c.value, c.std)}"
            elif c.produced is None:
                why = f" ({c.nonfinite} run(s) with a non-finite value)" if c.nonfinite else ""
                why += f" (runs left out by the cell's filter: {c.excluded})" if c.excluded else ""
                why += f" ({c.absent})" if c.absent else ""
                txt = f"missing{why} | {pm(c.value, c.std)}"
            elif c.off_budget:  # a quick-tier number under the paper's key: shown, neither ✓ nor ✗
                first, *more = c.off_budget.split("; ")  # all of them: the CLI's line, `--format csv` (off_budget)
                txt = (f"{pm(c.produced, c.produced_std)} | {pm(c.value, c.std)} | Δ {c.produced - c.value:+.3f} | "
                       f"not scored: another budget than the paper's ({first}"
                       + (f"; {len(more)} more setting{'s' if len(more) > 1 else ''})" if more else ")"))
            else:
                mark = "✓" if c.status == "pass" else "✗"
                txt = f"{pm(c.produced, c.produced_std)} | {pm(c.value, c.std)} | Δ {c.produced - c.value:+.3f} {mark}"
                if c.verdict == "underpowered" or c.p_holm is not None:
                    txt += f" | {c.verdict}" + (f" (p_Holm {c.p_holm:.2g})" if c.p_holm is not None else "")
                if c.mixed:  # the mean pools runs made with different code, data, classifiers or packages
                    txt += f" | ⚠ mixed {', '.join(c.mixed)}"
                if c.nonfinite:
                    txt += f" | ⚠ {c.nonfinite} run(s) with a non-finite value left out"
                if c.short_of_runs:
                    txt += f" | {c.n_runs} of {c.paper_runs} runs"
                if c.set_aside:  # quick-tier runs beside full-tier ones: the paper's budget is scored
                    txt += f" | {c.set_aside} run{'s' if c.set_aside > 1 else ''} at another budget left out"
            grid.loc[c.row, c.column] = txt
        n = len(cs)
        npass = sum(c.status == "pass" for c in cs)
        nmiss = sum(c.status == "missing" for c in cs)
        nfail = sum(c.status == "fail" for c in cs)
        summary = f"{npass} of {n} cells within tolerance, {nfail} failing, {nmiss} missing"
        noff = sum(c.status == "off-budget" for c in cs)
        if noff:
            summary += f", {noff} at another budget than the paper's (shown, not scored)"
        nambig = n - npass - nmiss - nfail - noff
        if nambig:
            summary += f", {nambig} ambiguous (runs of several configurations match)"
        nfew = sum(c.short_of_runs for c in cs)
        if nfew:
            summary += f"; {nfew} over fewer runs than the paper's"
        nmixed = sum(bool(c.mixed) for c in cs)
        if nmixed:
            summary += f"; {nmixed} pool runs whose provenance differs (⚠ mixed)"
        builds = sorted({b for c in cs for b in c.data})
        if builds:
            summary += f"; produced on data built with {' | '.join(builds)} (not the paper's data as prepared by default)"
        out.append((f"{paper} — {table}", grid.reset_index().rename(columns={"index": "model"}), summary))
    return out


def paper_summaries(cells: List[Cell], claims: List[Claim]) -> List[str]:
    """One line per paper: 'k of n cells within tolerance, c of d claims hold, m missing[, b at another budget than
    the paper's (not scored)]' (strict claims), then
    '; hedged claims (evidence only): h of e hold' where the paper has hedged ones."""
    papers = list(dict.fromkeys([c.paper for c in cells] + [c.paper for c in claims]))
    lines = []
    for p in papers:
        cs = [c for c in cells if c.paper == p]
        ks = [c for c in claims if c.paper == p and c.strength == "strict"]
        hedged = [c for c in claims if c.paper == p and c.strength == "hedged"]
        missing = sum(c.status == "missing" for c in cs) + sum(c.status == "missing" for c in ks)
        off = sum(c.status == "off-budget" for c in cs) + sum(c.status == "off-budget" for c in ks)
        line = (f"{p}: {sum(c.status == 'pass' for c in cs)} of {len(cs)} cells within tolerance, "
                f"{sum(c.status == 'holds' for c in ks)} of {len(ks)} claims hold, {missing} missing"
                + (f", {off} at another budget than the paper's (not scored)" if off else "")
                + (f"; hedged claims (evidence only): {sum(c.status == 'holds' for c in hedged)} of "
                   f"{len(hedged)} hold" if hedged else ""))
        v = verdict_counts(cs)
        if any(v.values()):
            line += (f"; Welch vs printed (Holm, α={ALPHA}): {v['consistent']} consistent, "
                     f"{v['differs']} differ, {v['underpowered']} underpowered")
        lines.append(line)
    return lines
