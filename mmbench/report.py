"""`mmbench report`: aggregate finished runs (mean ± std over seeds) and compare them with the papers' reference
cells and claims (mmbench/references.py reads those; mmbench/tables.py shapes the results as tables;
mmbench/render.py lays them out as Markdown, LaTeX, HTML or terminal tables)."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from .budgets import BUDGET, at_budget, off_budget, reads
from .config import flatten, same_setting as _same, setting_key as _key
from .errors import MMBenchError
from .registry import DATASETS
from .references import EXTREMA, OPS, Cell, Claim, load_reference_files
from .results import data_build, default_runs_dir, load_runs, number_provenance
from .tables import paper_summaries, reference_tables, summary_tables
from .verdicts import apply as apply_verdicts


def matches(cfg: Dict[str, Any], where: Optional[Dict[str, Any]]) -> bool:
    return all(_same(cfg.get(k), v) for k, v in (where or {}).items())


def _holds(h: Dict[str, Any], left: float, right: float) -> bool:
    """`left op right`, with `margin` loosening the comparison: added to left for > and >=, taken off for < and <=
    (a negative margin demands a gap: `left > right` by more than |margin|)."""
    margin = float(h.get("margin", 0.0))
    return bool(OPS[h["op"]](left + (margin if h["op"] in (">", ">=") else -margin), right))


# Settings that do not change a run's numbers (where the FID weights live; how often and whether it checkpoints or
# logs): runs differing only in them are one configuration (their seeds are averaged).
NUMBER_NEUTRAL = ("eval.fid_weights", "train.checkpoint_every", "train.checkpoint_minutes", "train.tensorboard")


def runs_frame(runs_dir: Optional[Path] = None) -> pd.DataFrame:
    """One row per (run, metric): dataset, variant, method, seed, group, tables, metric, value."""
    rows = []
    skipped: List[Tuple[str, str]] = []
    for r in load_runs(runs_dir, skipped):
        cfg = r["config"].to_dict()
        seedless = {k: v for k, v in cfg.items() if k not in ("seed", "tables")}
        for section, key in (k.split(".") for k in NUMBER_NEUTRAL):
            seedless.get(section, {}).pop(key, None)
        group = hashlib.sha256(json.dumps(seedless, sort_keys=True).encode()).hexdigest()[:8]
        flat = flatten(cfg)
        flat["variant"] = cfg["variant"] or "default"
        prov = number_provenance(r["provenance"])
        spec = DATASETS.get(cfg["dataset"])  # (a run's config names a registered dataset and variant)
        data = data_build(r["provenance"], spec, cfg["variant"] or spec.variants[0])
        for metric, value in r["metrics"].items():
            rows.append({"run": r["id"], "dataset": cfg["dataset"], "variant": cfg["variant"] or "default",
                         "method": cfg["method"]["name"], "seed": cfg["seed"], "group": group,
                         "tables": tuple(r["tables"]), "metric": metric, "value": float(value), "cfg": flat,
                         "prov": prov, "data": data})
    frame = pd.DataFrame(rows, columns=["run", "dataset", "variant", "method", "seed", "group", "tables", "metric",
                                        "value", "cfg", "prov", "data"])
    frame = one_run_per_seed(frame, skipped)
    frame.attrs["skipped"] = skipped  # (run directory, why it is left out): results.load_runs, one_run_per_seed
    return frame


def one_run_per_seed(frame: pd.DataFrame, skipped: List[Tuple[str, str]]) -> pd.DataFrame:
    """Runs of one configuration and seed count once: two run directories can hold the same experiment when they
    differ only in NUMBER_NEUTRAL settings (checkpointing is part of the run id, not of the configuration), and
    averaging both would count a seed twice (a smaller std, a stronger Welch verdict). The first by run id is kept;
    the others are listed as left out, with the run they repeat."""
    if frame.empty:
        return frame
    runs = frame.drop_duplicates("run")[["run", "group", "seed"]].sort_values("run")
    repeats = runs.duplicated(["group", "seed"], keep="first")
    if not repeats.any():
        return frame
    kept = {(g, s): r for r, g, s in runs[~repeats].itertuples(index=False)}
    tables = dict(zip(frame["run"], frame["tables"]))
    for r, g, s in runs[repeats].itertuples(index=False):
        skipped.append((r, f"the same configuration and seed as run {kept[(g, s)]} (they differ only in settings that "
                           f"change no number: {', '.join(NUMBER_NEUTRAL)}): that seed is counted once"))
        # the kept run serves the tables the repeat was made for too (else a table only the repeat served is missing)
        tables[kept[(g, s)]] = tuple(dict.fromkeys(tables[kept[(g, s)]] + tuple(tables[r])))
    frame = frame[~frame["run"].isin(set(runs[repeats]["run"]))].reset_index(drop=True)
    frame["tables"] = frame["run"].map(tables)
    return frame


def mixed_fields(sel: pd.DataFrame) -> List[str]:
    """Provenance fields (number_provenance) on which the selected runs differ, e.g. ['mmbench commit', 'numpy']."""
    if len(sel) < 2:
        return []
    keys = list(dict.fromkeys(k for p in sel["prov"] for k in p))
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in sel["prov"]}) > 1]


def select(frame: pd.DataFrame, table: str, method: str, metric: Optional[str],
           *wheres: Optional[Dict[str, Any]]) -> pd.DataFrame:
    """Rows of runs that serve `table`, use `method`, report `metric` (None: any) and satisfy every `where`."""
    if frame.empty:
        return frame
    sel = frame[(frame["method"] == method) & ((frame["metric"] == metric) if metric is not None else True)]
    sel = sel[sel["tables"].apply(lambda t: table in t)] if len(sel) else sel  # on the few rows left: the slow test
    for w in wheres:
        if w and not sel.empty:
            sel = sel.loc[[matches(c, w) for c in sel["cfg"]]]
    return sel


def key_config(cfg: Dict[str, Any], key: str) -> Dict[str, Any]:
    """A run's configuration as metric key `key` sees it: its settings but the seed, tables, the NUMBER_NEUTRAL ones
    and the budget and scoring settings the key does not read (budgets.reads)."""
    drop = {"seed", "tables", *NUMBER_NEUTRAL, *(b for b in COMPARABLE if not reads(b, key, cfg))}
    return {k: v for k, v in cfg.items() if k not in drop}


def _config_id(cfg: Dict[str, Any], key: str) -> str:
    return json.dumps(key_config(cfg, key), sort_keys=True, default=repr)


def configurations(sel: pd.DataFrame, key: str) -> Optional[str]:
    """None when the selected rows come from one configuration as metric key `key` sees it (seeds of one experiment;
    runs that differ only in settings the key does not read, e.g. eval.fid_samples for a latent accuracy, are one);
    else the settings that tell the configurations apart, e.g. 'train.epochs (15, 300)'."""
    if sel["group"].nunique() < 2:
        return None
    cfgs = list({_config_id(c, key): key_config(c, key) for c in sel["cfg"]}.values())
    if len(cfgs) < 2:
        return None
    keys = sorted(k for k in set().union(*cfgs) if len({repr(c.get(k)) for c in cfgs}) > 1)
    return "; ".join(f"{k} ({', '.join(sorted({repr(c.get(k)) for c in cfgs}))})" for k in keys) or "config"


def finite(sel: pd.DataFrame) -> pd.DataFrame:
    return sel[sel["value"].apply(math.isfinite)] if len(sel) else sel


def excluded_by(near: pd.DataFrame, where: Dict[str, Any]) -> Optional[str]:
    """Why runs of a cell's table, method and metric do not serve it: each `where` setting they differ on."""
    if near.empty:
        return None
    parts = []
    for k, v in where.items():
        got = sorted({repr(c.get(k)) for c in near["cfg"] if not _same(c.get(k), v)})
        if got:
            parts.append(f"{k} is {', '.join(got)}, the paper's is {v!r}")
    return f"{'; '.join(parts)} ({len(near)} run{'s' if len(near) > 1 else ''})" if parts else None


def absent_from(frame: pd.DataFrame, c: Cell) -> Optional[str]:
    """Why a cell has no value although runs of its table and method pass its `where`: they write no such key."""
    n = select(frame, c.table, c.method, None, c.where)["run"].nunique() if not frame.empty else 0
    return (f"{n} run{'s' if n > 1 else ''} of {c.table} with {c.method} write{'' if n > 1 else 's'} no {c.metric} "
            f"(docs/metrics.md says when a key is written; a run scored before the key existed gets it from "
            f"`mmbench evaluate` with the run's settings)") if n else None


def fill(cells: List[Cell], frame: pd.DataFrame) -> List[Cell]:
    """Each cell's produced mean, sample std and n over the seeds of the one configuration that matches it."""
    for c in cells:
        sel, c.set_aside = at_paper_budget(select(frame, c.table, c.method, c.metric, c.where), c.budgets, c.metric)
        if sel.empty and c.where:
            c.excluded = excluded_by(select(frame, c.table, c.method, c.metric), c.where)
        if sel.empty:  # and runs at the cell's settings that write no such key (both reasons can hold)
            c.absent = absent_from(frame, c)
        c.ambiguous = configurations(sel, c.metric) if len(sel) else None
        if c.ambiguous:
            c.runs = sorted(sel["run"])
            continue
        c.nonfinite = int(len(sel) - len(finite(sel)))
        sel = finite(sel)
        if len(sel):
            c.produced = float(sel["value"].mean())
            c.produced_std = float(sel["value"].std(ddof=1)) if len(sel) > 1 else 0.0  # sample std, as the summary tables
            c.n_runs = len(sel)
            c.runs = sorted(sel["run"])
            c.mixed = mixed_fields(sel)
            c.data = sorted({d for d in sel["data"] if d})
            # a number made at another budget (a quick-tier run) is shown beside the paper's, never scored
            c.off_budget = off_budget(list(sel["cfg"]), c.budgets, c.metric) if c.budgets else None
    return cells


def counted(cfgs: List[Dict[str, Any]], seeds: List[Any], budgets: List[Dict[str, Any]], key: str) -> List[bool]:
    """Which runs' numbers under metric key `key` count at the paper's budget: those at it for that key
    (budgets.at_budget), each seed of a configuration (as the key sees it) once: of a run and its twin re-made with
    a setting the key does not read (`--set eval.joint_samples=1000`), the one at the whole budget, else the first."""
    at = [at_budget(c, budgets, key) for c in cfgs]
    twins: Dict[Tuple[str, Any], List[int]] = {}
    for i, (c, seed) in enumerate(zip(cfgs, seeds)):
        if at[i]:
            twins.setdefault((_config_id(c, key), seed), []).append(i)
    for idx in twins.values():
        if len(idx) > 1:
            keep = next((i for i in idx if at_budget(cfgs[i], budgets, None)), idx[0])
            for i in idx:
                at[i] = i == keep
    return at


def at_paper_budget(sel: pd.DataFrame, budgets: Optional[List[Dict[str, Any]]], key: str) -> Tuple[pd.DataFrame, int]:
    """Where some of the selected runs are at the paper's budget and some not (a quick tier run before the full one
    into one runs directory), the former, and how many runs were set aside; else all of them (0)."""
    if not budgets or sel.empty:
        return sel, 0
    at = counted(list(sel["cfg"]), list(sel["seed"]), budgets, key)
    if all(at) or not any(at):
        return sel, 0
    return sel[at], int(sel[[not a for a in at]]["run"].nunique())


def side_rows(frame: pd.DataFrame, claim: Claim, side: Dict[str, Any]) -> Dict[Any, pd.DataFrame]:
    """The finite rows of one side of a comparison, keyed by the claim's `for_each` value (or None)."""
    sel = finite(select(frame, claim.figure, side["method"], side["metric"], claim.where, side.get("where")))
    if sel.empty:
        return {}
    if not claim.for_each:
        return {None: sel}
    keys = [_key(c.get(claim.for_each)) for c in sel["cfg"]]
    return {k: sel[[x == k for x in keys]] for k in dict.fromkeys(keys)}


def _one_under(prefix: str, metric: str) -> bool:
    """Whether `metric` is a key one level under `prefix` (a metric ending in /* without its *)."""
    return metric.startswith(prefix) and "/" not in metric[len(prefix):]


def keys_under(frame: pd.DataFrame, prefix: str) -> List[str]:
    """The names the runs report one level under `prefix` (a metric ending in /* without its *), e.g. CelebA's
    attributes under latent_ap/img/."""
    return sorted({m[len(prefix):] for m in frame["metric"].unique() if _one_under(prefix, m)}) if len(frame) else []


def _rows_of(frame: pd.DataFrame, claim: Claim, side: Dict[str, Any]) -> List[pd.DataFrame]:
    """One side's rows (every `for_each` value); a metric ending in /* reads the keys under its prefix."""
    if side["metric"].endswith("/*"):
        prefix = side["metric"][:-1]
        return [r for n in keys_under(frame, prefix)
                for r in side_rows(frame, claim, dict(side, metric=prefix + n)).values()]
    return list(side_rows(frame, claim, side).values())


def side_values(frame: pd.DataFrame, claim: Claim, side: Dict[str, Any]) -> Dict[Any, Any]:
    """Mean over seeds of one side of a comparison, keyed by the claim's `for_each` value (or None); where runs of
    several configurations match one key, the value is the string naming the settings that differ (not scored)."""
    return {k: configurations(at, side["metric"]) or float(at["value"].mean())
            for k, at in side_rows(frame, claim, side).items()}


# Two sides of a comparison trained or scored with other budgets (budgets.BUDGET: a full-tier run against a quick-tier
# one) are not compared.
# Who scores a run (the coherence classifiers, their dropout, the decoders' arithmetic): not in the run id, so one
# trained model scored twice; two sides scored otherwise (the authors' classifiers against mmbench's) are not compared.
SCORING = ("eval.classifiers", "eval.classifier_dropout", "eval.precision")
COMPARABLE = BUDGET + SCORING


ANY = "(not read)"  # a setting the side's metric key does not read (budgets.reads): it matches any value


def side_budgets(frame: pd.DataFrame, claim: Claim, side: Dict[str, Any]) -> Dict[Any, set]:
    """The BUDGET and SCORING settings of one side's runs that its metric key reads, per `for_each` value (as
    side_values keys them)."""
    return {k: {tuple(repr(c.get(b)) if reads(b, side["metric"], c) else ANY for b in COMPARABLE) for c in at["cfg"]}
            for k, at in side_rows(frame, claim, side).items()}


SEVERAL = "runs of several configurations match"
OTHER_BUDGETS = "the sides' runs were trained or scored with other budgets or scoring settings"
UNCOMPARABLE = (SEVERAL, OTHER_BUDGETS)  # a claim undecided for these fails --compare (Claim.ambiguous)


def several(settings: str) -> str:
    return f"{SEVERAL} ({settings}); narrow it with `where` or separate runs directories"


def other_budgets(gap: str) -> str:
    return f"{OTHER_BUDGETS} ({gap}); compare runs of one tier"


def budget_gap(a: set, b: set) -> Optional[str]:
    """None when both sides' runs share one budget; else the settings on which they differ, with their values (a
    setting one side's metric key does not read, ANY, differs from none)."""
    if a == b and len(a) == 1:
        return None
    both = list(a | b)
    seen = [sorted({t[i] for t in both} - {ANY}) for i in range(len(COMPARABLE))]
    return "; ".join(f"{name} ({', '.join(v)})" for name, v in zip(COMPARABLE, seen) if len(v) > 1) or None


def side_excluded(frame: pd.DataFrame, claim: Claim, side: Any) -> Optional[str]:
    """Why a side has no runs although runs of its figure, method and metric exist: the filter settings they fail."""
    if not isinstance(side, dict) or not finite(select(frame, claim.figure, side["method"], side["metric"], claim.where,
                                                       side.get("where"))).empty:
        return None
    where = {**(claim.where or {}), **(side.get("where") or {})}
    return excluded_by(select(frame, claim.figure, side["method"], side["metric"]), where) if where else None


def _no_runs(frame: pd.DataFrame, claim: Claim, label: str, sides) -> str:
    """'<label>: no runs', or, where a filter left a side's runs out, which settings did (noted on the claim)."""
    why = [f"{_side_label(sd)}: {x}" for sd in sides if (x := side_excluded(frame, claim, sd))]
    if not why:
        return f"{label}: no runs"
    claim.excluded = claim.excluded or why[0]
    return f"{label}: no runs pass the filter ({'; '.join(why)})"


def _side_label(side: Any) -> str:
    return f"{side}" if not isinstance(side, dict) else f"{side['method']} {side['metric']}"


def _extremum(frame: pd.DataFrame, claim: Claim, h: Dict[str, Any],
              every: Optional[pd.DataFrame] = None) -> Tuple[Optional[bool], str]:
    """`left lowest_at|highest_at [values]`: is the side's mean, over the `for_each` values it has runs at, lowest
    (highest) at one of the listed values? Undecided (None) unless every listed value and at least one other has
    runs, and each value's runs are one configuration. `every`: the frame before the runs at another budget were left
    out; a value whose runs were all left out leaves it undecided (the extreme may be there)."""
    label = f"{_side_label(h['left'])} {h['op']} {claim.for_each} in {h['right']}"
    vals = side_values(frame, claim, h["left"])
    if not vals:
        return None, _no_runs(frame, claim, label, [h["left"]])
    aside = [k for k in side_rows(every, claim, h["left"]) if k not in vals] if every is not None else []
    if aside:
        return None, f"{label}: {claim.for_each}={aside[0]} has runs only at another budget than the paper's"
    bad = [v for v in vals.values() if isinstance(v, str)]
    if bad:
        return None, f"{label}: {several(bad[0])}"
    budgets = set().union(*side_budgets(frame, claim, h["left"]).values())
    gap = budget_gap(budgets, budgets)
    if gap:  # the extreme of values trained or scored otherwise (a quick-tier β against full-tier ones)
        return None, f"{label}: {other_budgets(gap)}"
    listed = [k for k in vals if any(_same(k, w) for w in h["right"])]
    lacking = [w for w in h["right"] if not any(_same(k, w) for k in vals)]
    if lacking:
        return None, f"{label}: no runs at {claim.for_each}={lacking[0]}"
    if len(listed) == len(vals):
        return None, f"{label}: no runs at any other {claim.for_each} to compare with"
    best = EXTREMA[h["op"]](vals.values())
    ats = [k for k, v in vals.items() if v == best]  # every value at the extreme: a tie does not depend on run order
    inside = [k for k in ats if k in listed]
    ok = None if inside and len(inside) < len(ats) else bool(inside)  # tied inside and outside the list: undecided
    where = ", ".join(f"{claim.for_each}={k}" for k in ats)
    verdict = "yes" if ok else "NO" if ok is False else "undecided (tied with a value outside the list)"
    return ok, (f"{_side_label(h['left'])} is {'lowest' if h['op'] == 'lowest_at' else 'highest'} at "
                f"{where} ({best:.3f}; over {len(vals)} values), wanted one of {h['right']}: {verdict}")


def _quantified(frame: pd.DataFrame, claim: Claim, h: Dict[str, Any]) -> Tuple[List[Optional[bool]], List[str]]:
    """`left op right` with metrics ending in /*, counted over the keys the runs report under that prefix (e.g. every
    attribute of latent_ap/img/*): at each `for_each` value it holds when it holds for more than half of the keys
    both sides have ("most") or for every one ("all"); undecided where no key has both sides."""
    lp = h["left"]["metric"][:-1]
    names = keys_under(frame, lp)
    right = h["right"]
    label = f"{_side_label(h['left'])} {h['op']} {_side_label(right)} ({h['quantifier']})"
    counts: Dict[Any, List[int]] = {}  # for_each value -> [keys where it holds, keys compared]
    seen: Dict[Any, None] = {}  # for_each values either side has runs at
    mixed: Dict[Any, str] = {}  # for_each value -> the settings of several configurations matching there
    gaps: Dict[Any, str] = {}  # for_each value -> the budget settings on which the sides differ (the first key's)
    unmatched: Dict[Any, int] = {}  # for_each value -> keys under the prefix only one side reports
    for name in names:
        left = side_values(frame, claim, dict(h["left"], metric=lp + name))
        rv = (side_values(frame, claim, dict(right, metric=right["metric"][:-1] + name)) if isinstance(right, dict)
              else {k: float(right) for k in left})
        seen.update(dict.fromkeys([*left, *rv]))
        for k in set(left) ^ set(rv) if isinstance(right, dict) else ():  # a key one side reports and the other not
            unmatched[k] = unmatched.get(k, 0) + 1
        # the sides' budgets, per key: keys under one prefix read other settings (coherence/joint alone reads
        # eval.joint_samples), and one key at other budgets leaves the for_each value undecided
        lb, rb = ((side_budgets(frame, claim, dict(h["left"], metric=lp + name)),
                   side_budgets(frame, claim, dict(right, metric=right["metric"][:-1] + name)))
                  if isinstance(right, dict) else ({}, {}))
        for k in [k for k in left if k in rv]:
            if isinstance(left[k], str) or isinstance(rv[k], str):
                mixed[k] = left[k] if isinstance(left[k], str) else rv[k]
                continue
            gap = budget_gap(lb.get(k, set()), rb.get(k, set())) if isinstance(right, dict) else None
            if gap:
                gaps.setdefault(k, gap)
                continue
            c = counts.setdefault(k, [0, 0])
            c[0] += _holds(h, left[k], rv[k])
            c[1] += 1
    if not seen:
        return [None], [f"{label}: no runs"]
    verdicts, details = [], []
    for k in seen:
        at = f" at {claim.for_each}={k}" if claim.for_each else ""
        if k in mixed:  # as a plain comparison: never averaged over configurations
            verdicts.append(None)
            details.append(f"{label}{at}: {several(mixed[k])}")
        elif gaps.get(k):
            verdicts.append(None)
            details.append(f"{label}{at}: {other_budgets(gaps[k])}")
        elif k not in counts:
            verdicts.append(None)
            details.append(f"{label}{at}: no key under {lp}* has runs of both sides")
        elif unmatched.get(k):  # "all"/"most" over the keys both report would count a part as the whole
            verdicts.append(None)
            details.append(f"{label}{at}: {unmatched[k]} key(s) under {lp}* reported by one side only; the sides must "
                           f"report the same keys")
        else:
            held, n = counts[k]
            ok = held * 2 > n if h["quantifier"] == "most" else held == n
            verdicts.append(ok)
            details.append(f"{label}{at}: holds for {held} of {n} keys: {'yes' if ok else 'NO'}")
    return verdicts, details


def _side_keys(side: Dict[str, Any], metric: str) -> bool:
    """Whether a side compares metric key `metric` (its metric, or a key one level under a metric ending in /*)."""
    m = side["metric"]
    return metric == m or (m.endswith("/*") and _one_under(m[:-1], metric))


def off_budget_rows(frame: pd.DataFrame, claim: Claim) -> pd.Series:
    """The rows a side of the claim compares (runs tagged with its figure, of the side's method and metric key, passing
    the claim's and the side's `where`) whose method has budgets for the figure and whose number under that key does
    not count at the paper's budget (`counted`, per key and `for_each` value)."""
    off = pd.Series(False, index=frame.index)
    near: Dict[str, pd.DataFrame] = {}  # (method, where) -> its rows (the sides of a claim share a few)
    for side in [s for h in claim.holds for s in (h["left"], h["right"]) if isinstance(s, dict)]:
        if side["method"] not in claim.budgets:
            continue
        which = repr((side["method"], side.get("where")))
        if which not in near:
            near[which] = select(frame, claim.figure, side["method"], None, claim.where, side.get("where"))
        rows = near[which]
        rows = rows[[_side_keys(side, k) for k in rows["metric"]]] if len(rows) else rows
        groups: Dict[Tuple[Any, ...], List[Any]] = {}  # (key, for_each value) -> its rows, counted together
        for i, k, cfg in zip(rows.index, rows["metric"], rows["cfg"]):
            groups.setdefault((k, _key(cfg.get(claim.for_each)) if claim.for_each else None), []).append(i)
        for (k, _), idx in groups.items():
            at = counted(list(frame.loc[idx, "cfg"]), list(frame.loc[idx, "seed"]), claim.budgets[side["method"]], k)
            off[idx] = [o or not a for o, a in zip(off[idx], at)]  # off for any side that compares the row
    return off


def evaluate_claims(claims: List[Claim], frame: pd.DataFrame) -> List[Claim]:
    """A claim holds when every comparison holds, at every `for_each` value either side has runs for; a value one
    side lacks, or where runs of several configurations match, leaves the claim missing unless another fails.
    Where the figure has budgets (mmbench/budgets.py) it is decided from the runs at the paper's budget; only where
    those leave it undecided, the runs at another budget decide it for display (status off-budget, not scored)."""
    for c in claims:
        c.off_budget = None
        bad = off_budget_rows(frame, c) if c.budgets and not frame.empty else None
        if bad is None or not bad.any():
            _decide(c, frame)
            continue
        _decide(c, frame[~bad], every=frame)
        n = frame[bad]["run"].nunique()
        if c.status != "missing":  # decided at the paper's budget: the runs at another are left out, and said
            if n:
                c.details.append(f"{n} run{'s' if n > 1 else ''} at another budget than the paper's left out")
            continue
        at_budget = (c.details, c.status, c.excluded, c.ambiguous, c.mixed)
        rows = _decide(c, frame)  # every run: can the others decide it (for display)?
        if c.status == "missing":
            c.details, c.status, c.excluded, c.ambiguous, c.mixed = at_budget
            continue
        runs = pd.concat(rows).drop_duplicates(["run", "metric"]) if rows else frame.iloc[:0]
        c.off_budget = next((o for (m, k), g in runs.groupby(["method", "metric"]) if m in c.budgets
                             for o in [off_budget(list(g["cfg"]), c.budgets[m], k)] if o), None) \
            or "runs at the paper's budget and at another compared"
        c.details.append(f"not scored: the runs compared are at another budget than the paper's ({c.off_budget}); "
                         f"at theirs it {'holds' if c.status == 'holds' else 'does not hold'}")
        c.status, c.ambiguous = "off-budget", None
    return claims


def _decide(c: Claim, frame: pd.DataFrame, every: Optional[pd.DataFrame] = None) -> List[pd.DataFrame]:
    """Set the claim's details, status, ambiguous, excluded and mixed from `frame`; the rows it compared. `every`:
    the frame before the runs at another budget were left out (an extremum needs every value's runs)."""
    c.details, verdicts, c.excluded = [], [], None
    for h in c.holds:
        if h.get("quantifier"):
            ok_each, detail = _quantified(frame, c, h)
            verdicts += ok_each
            c.details += detail
            continue
        if h["op"] in EXTREMA:
            ok, detail = _extremum(frame, c, h, every)
            verdicts.append(ok)
            c.details.append(detail)
            continue
        left = side_values(frame, c, h["left"])
        right = ({k: float(h["right"]) for k in left} if not isinstance(h["right"], dict)
                 else side_values(frame, c, h["right"]))
        common = [k for k in left if k in right]
        if not common:
            verdicts.append(None)
            c.details.append(_no_runs(frame, c, f"{_side_label(h['left'])} {h['op']} {_side_label(h['right'])}",
                                      [h["left"], h["right"]]))
            continue
        for k in [k for k in dict.fromkeys(list(left) + list(right)) if k not in common]:
            verdicts.append(None)
            lacking = _side_label(h["right"] if k in left else h["left"])
            c.details.append(f"{_side_label(h['left'])} {h['op']} {_side_label(h['right'])} at {c.for_each}={k}: "
                             f"no runs of {lacking}")
        two_sided = isinstance(h["right"], dict)
        lb, rb = (side_budgets(frame, c, h["left"]), side_budgets(frame, c, h["right"])) if two_sided else ({}, {})
        for k in list(common):  # undecided where the runs cannot be compared as they are
            bad = [v for v in (left[k], right[k]) if isinstance(v, str)]
            gap = budget_gap(lb.get(k, set()), rb.get(k, set())) if two_sided and not bad else None
            if bad or gap:
                verdicts.append(None)
                at = f" at {c.for_each}={k}" if c.for_each else ""
                why = several(bad[0]) if bad else other_budgets(gap)
                c.details.append(f"{_side_label(h['left'])} {h['op']} {_side_label(h['right'])}{at}: {why}")
                common.remove(k)
        for k in common:
            ok = _holds(h, left[k], right[k])
            verdicts.append(ok)
            at = f" at {c.for_each}={k}" if c.for_each else ""
            c.details.append(f"{_side_label(h['left'])} = {left[k]:.3f} {h['op']} {right[k]:.3f}"
                             f"{' (' + _side_label(h['right']) + ')' if isinstance(h['right'], dict) else ''}"
                             f"{at}: {'yes' if ok else 'NO'}")
    if all(d.endswith(": no runs") for d in c.details):
        c.details = [f"no runs tagged {c.figure!r} match"]
    # as a cell's "⚠ mixed": the runs the claim compares differ in code, data, classifier set or packages
    rows = [r for h in c.holds for side in (h["left"], h["right"]) if isinstance(side, dict)
            for r in _rows_of(frame, c, side)]
    c.mixed = mixed_fields(pd.concat(rows)) if rows else []
    if c.mixed:
        c.details.append(f"⚠ mixed: the runs compared differ in {', '.join(c.mixed)}")
    if any(v is False for v in verdicts):
        c.status = "fails"
    elif verdicts and all(v is True for v in verdicts):
        c.status = "holds"
    else:
        c.status = "missing"
    # undecided because the runs cannot be compared as they are (several configurations; other budgets), not for
    # want of runs: like an ambiguous cell, it fails --compare even with --allow-missing
    c.ambiguous = next((d for d in c.details if any(m in d for m in UNCOMPARABLE)), None) \
        if c.status == "missing" else None
    return rows


@dataclass
class Report:
    frame: pd.DataFrame
    summaries: List[Tuple[str, pd.DataFrame]]
    refs: List[Tuple[str, pd.DataFrame, str]]
    cells: List[Cell]
    claims: List[Claim]
    paper_lines: List[str]
    runs_dir: Optional[Path] = None

    def __getitem__(self, key: str) -> Any:  # dict-style access kept for callers and tests
        return getattr(self, key)

    @property
    def strict_claims(self) -> List[Claim]:
        """The claims that decide --compare; hedged ones are shown as evidence only."""
        return [c for c in self.claims if c.strength == "strict"]

    @property
    def failures(self) -> int:
        return sum(c.status == "fail" for c in self.cells) + sum(c.status == "fails" for c in self.strict_claims)

    @property
    def missing(self) -> int:
        return sum(c.status == "missing" for c in self.cells) + sum(c.status == "missing" for c in self.strict_claims)

    @property
    def off_budget(self) -> List[Any]:
        """Cells and strict claims whose runs are all at another budget than the paper's (shown, not scored; as
        missing for --compare, so --allow-missing passes them)."""
        return [c for c in self.cells + self.strict_claims if c.status == "off-budget"]

    @property
    def mixed(self) -> List[Cell]:
        return [c for c in self.cells if c.mixed]

    @property
    def mixed_claims(self) -> List[Claim]:
        """Strict claims comparing runs whose provenance differs (--refuse-mixed fails on them, as on cells)."""
        return [c for c in self.strict_claims if c.mixed]

    @property
    def ambiguous(self) -> List[Cell]:
        """Cells matched by runs of several configurations (not scored; --compare fails on them)."""
        return [c for c in self.cells if c.ambiguous]

    @property
    def ambiguous_claims(self) -> List[Claim]:
        """Strict claims left undecided by runs that cannot be compared as they are (--compare fails on them)."""
        return [c for c in self.strict_claims if c.ambiguous]

    @property
    def skipped(self) -> List[Tuple[str, str]]:
        """Run directories left out of the report, with why (results.load_runs)."""
        return list(self.frame.attrs.get("skipped", []))


def build_report(runs_dir: Optional[Path], compare: Optional[Path]) -> Report:
    cells, claims = load_reference_files(compare) if compare else ([], [])
    root = Path(runs_dir or default_runs_dir())
    if not root.is_dir():
        raise MMBenchError(f"runs directory {root} {'is a file, not a directory' if root.exists() else 'does not exist'}; "
                           f"point --runs-dir (or $MMBENCH_RUNS) at the directory holding the runs, or make some with "
                           f"`mmbench run SUITE`")
    frame = runs_frame(runs_dir)
    fill(cells, frame)
    apply_verdicts(cells)
    evaluate_claims(claims, frame)
    return Report(frame, summary_tables(frame), reference_tables(cells), cells, claims,
                  paper_summaries(cells, claims), runs_dir)
