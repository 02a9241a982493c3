"""`mmbench report`: aggregate finished runs (mean ± std over seeds) and compare with the papers (the tables and
verdicts as data; mmbench/render.py lays them out as Markdown, LaTeX, HTML or terminal tables).

Reference files (``reference_results/*.yaml``, one per paper) hold

* **cells**: paper, table, row, column, method, metric key, value, std where printed, tolerance, source
  and an optional ``where`` (dotted config paths the matching runs must have, e.g.
  ``{method.beta: 2.5}``). A cell is matched by the runs whose config says they reproduce that table
  (``tables``), use the cell's method and satisfy ``where``; it passes when
  |produced mean - value| <= tolerance. Cells with no run are missing.
* **claims**: qualitative statements about figures (quoted with page/section), each a list of
  comparisons ``left op right`` between produced means (or a number) that must all hold, optionally
  for each value of a config path (``for_each: method.beta``); or, with ``for_each``, where along that path a
  side is lowest or highest (``op: lowest_at``/``highest_at``, ``right``: the values it may be at); a side metric
  ending in ``/*`` with ``quantifier: most|all`` counts the keys under that prefix (e.g. every attribute). A
  claim's ``strength`` is ``strict``
  (default: the quote states the comparison and the keys measure what the paper plotted; a claim that
  does not hold fails ``--compare``) or ``hedged`` (the quote hedges -- "typically", "may", "most" -- or
  the check is a reading or proxy of ours: shown with its evidence, never a failure).
"""
from __future__ import annotations

import hashlib
import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from . import yamlio
from .config import check_path, check_settings
from .errors import ConfigError, MMBenchError
from .registry import METHODS
from .results import default_runs_dir, load_runs, number_provenance
from .verdicts import ALPHA, apply as apply_verdicts, counts as verdict_counts

CELL_FIELDS = ("paper", "table", "row", "column", "method", "metric", "value", "tolerance")
CLAIM_FIELDS = ("id", "paper", "figure", "quote", "source", "holds")
STRENGTHS = ("strict", "hedged")
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
EXTREMA = {"lowest_at": min, "highest_at": max}  # where along `for_each` a side's mean is extreme (right: allowed values)


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'method': {'beta': 1}} -> {'method.beta': 1} (the paths a `where` filter names)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and isinstance(actual, (int, float)):
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return actual == wanted or (isinstance(actual, tuple) and isinstance(wanted, list) and actual == _key(wanted))


def _key(value: Any) -> Any:
    """A setting as a dict key: a list-valued one (e.g. `modalities`) as a tuple."""
    if isinstance(value, list):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    return value


def matches(cfg: Dict[str, Any], where: Optional[Dict[str, Any]]) -> bool:
    return all(_same(cfg.get(k), v) for k, v in (where or {}).items())


@dataclass
class Cell:
    paper: str
    table: str
    row: str
    column: str
    method: str
    metric: str
    value: float
    tolerance: float
    std: Optional[float] = None
    source: str = ""
    where: Optional[Dict[str, Any]] = None
    produced: Optional[float] = None
    produced_std: Optional[float] = None
    n_runs: int = 0
    mixed: List[str] = field(default_factory=list)  # provenance fields on which the runs behind it differ
    # set when runs of several configurations (beyond the seed) match the cell: nothing is averaged, the cell
    # is not scored, and this names the settings that differ (narrow it with `where` or separate runs directories)
    ambiguous: Optional[str] = None
    nonfinite: int = 0  # matching runs whose value is NaN or infinite (left out of the mean and of n_runs)
    # set when no run matches but runs of this table, method and metric fail the cell's `where`: which settings
    # keep them out, e.g. 'eval.lr_protocol is mopoe, the paper's is smvae (2 runs)'
    excluded: Optional[str] = None
    paper_runs: Optional[int] = None  # runs behind the printed mean ± std (the reference file's `runs`)
    runs: List[str] = field(default_factory=list)  # ids of the runs behind the produced value
    p_value: Optional[float] = None  # Welch's (one run: prediction-interval) t-test, produced vs printed (mmbench/verdicts.py)
    p_holm: Optional[float] = None  # Holm-adjusted over the paper's tested cells
    verdict: Optional[str] = None  # consistent / differs / underpowered

    @property
    def status(self) -> str:
        if self.ambiguous:
            return "ambiguous"
        if self.produced is None:
            return "missing"
        return "pass" if abs(self.produced - self.value) <= self.tolerance + 1e-12 else "fail"


@dataclass
class Claim:
    id: str
    paper: str
    figure: str
    quote: str
    source: str
    holds: List[Dict[str, Any]]
    where: Optional[Dict[str, Any]] = None
    for_each: Optional[str] = None
    strength: str = "strict"  # strict: a failure fails --compare; hedged: evidence only (STRENGTHS)
    status: str = "missing"  # holds / fails / missing
    details: List[str] = field(default_factory=list)
    excluded: Optional[str] = None  # a side's runs left out by its filter (as Cell.excluded), the first such


def _check_fields(where: str, raw: Any, required: Tuple[str, ...], optional: Tuple[str, ...]) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(where, "each entry must be a mapping")
    missing = [f for f in required if f not in raw]
    if missing:
        raise ConfigError(where, f"missing field(s) {', '.join(missing)}; an entry needs {', '.join(required)}")
    known = set(required) | set(optional)
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", f"unknown field; allowed: {', '.join(sorted(known))}")
    if raw.get("where") is not None:
        check_settings(raw["where"], f"{where}.where")
    if "method" in raw:
        _check_method(f"{where}.method", raw["method"])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_number(where: str, v: Any, non_negative: bool = False) -> None:
    if not _is_number(v) or (non_negative and v < 0):
        raise ConfigError(where, f"must be a {'number >= 0' if non_negative else 'number'}, got {v!r}")


def _check_method(where: str, name: Any) -> None:
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(where, f"unknown method {name!r}; choose one of: {', '.join(METHODS.names())}")


def _check_side(where: str, side: Any, number_ok: bool) -> None:
    if number_ok and _is_number(side):
        return
    if not isinstance(side, dict) or not {"method", "metric"} <= set(side) or set(side) - {"method", "metric", "where"}:
        raise ConfigError(where, "must be {method, metric[, where]}" + (" or a number" if number_ok else ""))
    _check_method(f"{where}.method", side["method"])
    if side.get("where") is not None:
        check_settings(side["where"], f"{where}.where")


QUANTIFIERS = ("most", "all")  # over the keys a metric ending in /* matches: more than half of them, or every one


def _check_quantifier(where: str, h: Dict[str, Any]) -> None:
    """A side metric ending in `/*` (e.g. latent_ap/img/*: every attribute) needs a `quantifier`, and the other side
    the same wildcard or a number; a quantifier needs the wildcard."""
    metrics = [side["metric"] for side in (h["left"], h["right"]) if isinstance(side, dict)]
    wild = any("*" in m for m in metrics)
    if not wild and "quantifier" not in h:
        return
    if h["op"] in EXTREMA or not wild:
        raise ConfigError(f"{where}.quantifier", f"needs a comparison ({', '.join(OPS)}) whose left metric ends in "
                          "/* (the keys it counts, e.g. latent_ap/img/*)")
    if h.get("quantifier") not in QUANTIFIERS:
        raise ConfigError(f"{where}.quantifier", f"a metric ending in /* needs quantifier {' or '.join(QUANTIFIERS)} "
                          f"(for how many of the keys it matches the comparison must hold), not {h.get('quantifier')!r}")
    if any(not m.endswith("/*") or m.count("*") > 1 for m in metrics):  # every metric side, the left one included
        raise ConfigError(f"{where}.left", "with a quantifier, the left metric (and a right one) end in /*, "
                          "with no other *")


def _holds(h: Dict[str, Any], left: float, right: float) -> bool:
    """`left op right`, with `margin` loosening the comparison: added to left for > and >=, taken off for < and <=."""
    margin = float(h.get("margin", 0.0))
    return bool(OPS[h["op"]](left + (margin if h["op"] in (">", ">=") else -margin), right))


REFERENCE_KEYS = ("paper", "runs", "cells", "claims")


def load_references(directory: Path) -> List[Cell]:
    return load_reference_files(directory)[0]


def load_reference_files(directory: Path) -> Tuple[List[Cell], List[Claim]]:
    """Every cell and claim of every reference file, validated (errors name file, entry and field)."""
    directory = Path(directory)
    if directory.is_file():
        raise MMBenchError(f"{directory} is a file; --compare takes the directory holding the reference files, e.g. "
                           f"reference_results/")
    if not directory.is_dir():
        raise MMBenchError(f"reference directory {directory} does not exist; pass --compare reference_results/")
    paths = sorted(directory.glob("*.yaml"))
    if not paths:
        raise MMBenchError(f"reference directory {directory} holds no reference files (*.yaml); pass the directory "
                           f"that does, e.g. --compare reference_results/")
    cells: List[Cell] = []
    claims: List[Claim] = []
    for path in paths:
        raw = yamlio.load(path.read_text(), str(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(str(path), "a reference file must be a mapping with `cells` and/or `claims` (and "
                                         "optionally `paper`, `runs`)")
        unknown = sorted(set(map(str, raw)) - set(REFERENCE_KEYS))
        if unknown:  # e.g. a suite file: --compare given the wrong directory
            raise ConfigError(f"{path}: {unknown[0]}", f"unknown key of a reference file (allowed: "
                              f"{', '.join(REFERENCE_KEYS)}); --compare takes the reference directory, e.g. "
                              f"reference_results/")
        for key in ("cells", "claims"):
            if raw.get(key) is not None and not isinstance(raw[key], list):
                raise ConfigError(f"{path}: {key}", "must be a list of entries")
        if not raw.get("cells") and not raw.get("claims"):
            raise ConfigError(str(path), "holds no `cells` or `claims`; a reference file lists the paper's numbers "
                                         "(cells) and statements (claims)")
        # `runs`: how many runs the paper's mean ± std are over (file-wide; a cell may say its own).
        file_runs = raw.get("runs")
        for i, c in enumerate(raw.get("cells") or []):
            where = f"{path}: cells[{i}]"
            _check_fields(where, c, CELL_FIELDS, ("std", "source", "where", "runs"))
            _check_number(f"{where}.value", c["value"])
            _check_number(f"{where}.tolerance", c["tolerance"], non_negative=True)
            if c.get("std") is not None:
                _check_number(f"{where}.std", c["std"], non_negative=True)
            n = c.get("runs", file_runs)
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise ConfigError(f"{where}.runs" if "runs" in c else f"{path}: runs",
                                  f"must be a positive integer (the paper's number of runs), got {n!r}")
            cells.append(Cell(**{k: v for k, v in c.items() if k != "runs"}, paper_runs=n))
        for i, c in enumerate(raw.get("claims") or []):
            where = f"{path}: claims[{i}]"
            _check_fields(where, c, CLAIM_FIELDS, ("where", "for_each", "strength"))
            if c.get("for_each") is not None:
                check_path(c["for_each"], f"{where}.for_each")
            if c.get("strength", "strict") not in STRENGTHS:
                raise ConfigError(f"{where}.strength", f"must be one of {', '.join(STRENGTHS)}, not {c['strength']!r}")
            if not isinstance(c["holds"], list) or not c["holds"]:
                raise ConfigError(f"{where}.holds", "must be a non-empty list of {left, op, right} comparisons")
            for j, h in enumerate(c["holds"]):
                hw = f"{where}.holds[{j}]"
                if not isinstance(h, dict) or set(h) - {"left", "op", "right", "margin", "quantifier"} or not {"left", "op", "right"} <= set(h):
                    raise ConfigError(hw, "must be {left, op, right[, margin][, quantifier]}")
                if h["op"] not in OPS and h["op"] not in EXTREMA:
                    raise ConfigError(f"{hw}.op", f"must be one of {', '.join([*OPS, *EXTREMA])}")
                if "margin" in h:
                    _check_number(f"{hw}.margin", h["margin"])
                _check_side(f"{hw}.left", h["left"], number_ok=False)
                if h["op"] in EXTREMA:
                    if not c.get("for_each"):
                        raise ConfigError(f"{where}.for_each", f"op {h['op']} needs for_each (the config path "
                                          "along which the side is lowest or highest)")
                    if not isinstance(h["right"], list) or not h["right"] or "margin" in h:
                        raise ConfigError(f"{hw}.right", f"with op {h['op']}, a non-empty list of {c['for_each']} "
                                          "values the extreme may be at (and no margin)")
                else:
                    _check_side(f"{hw}.right", h["right"], number_ok=True)
                _check_quantifier(hw, h)
            claims.append(Claim(**c))
    return cells, claims


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
        for metric, value in r["metrics"].items():
            rows.append({"run": r["id"], "dataset": cfg["dataset"], "variant": cfg["variant"] or "default",
                         "method": cfg["method"]["name"], "seed": cfg["seed"], "group": group,
                         "tables": tuple(r["tables"]), "metric": metric, "value": float(value), "cfg": flat,
                         "prov": prov})
    frame = pd.DataFrame(rows, columns=["run", "dataset", "variant", "method", "seed", "group", "tables", "metric",
                                        "value", "cfg", "prov"])
    frame.attrs["skipped"] = skipped  # (run directory, why it is left out): results.load_runs
    return frame


def mixed_fields(sel: pd.DataFrame) -> List[str]:
    """Provenance fields (number_provenance) on which the selected runs differ, e.g. ['mmbench commit', 'numpy']."""
    if len(sel) < 2:
        return []
    keys = list(dict.fromkeys(k for p in sel["prov"] for k in p))
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in sel["prov"]}) > 1]


def select(frame: pd.DataFrame, table: str, method: str, metric: str, *wheres: Optional[Dict[str, Any]]) -> pd.DataFrame:
    """Rows of runs that serve `table`, use `method`, report `metric` and satisfy every `where`."""
    if frame.empty:
        return frame
    sel = frame[(frame["method"] == method) & (frame["metric"] == metric)
                & frame["tables"].apply(lambda t: table in t)]
    for w in wheres:
        if w and not sel.empty:
            sel = sel.loc[[matches(c, w) for c in sel["cfg"]]]
    return sel


def configurations(sel: pd.DataFrame) -> Optional[str]:
    """None when the selected rows come from one configuration (seeds of one experiment); else the settings that
    tell the configurations apart, e.g. 'train.epochs (15, 300)' (a quick-tier and a full-tier run)."""
    if sel["group"].nunique() < 2:
        return None
    cfgs = list(sel.drop_duplicates("group")["cfg"])
    keys = sorted(k for k in set().union(*cfgs) if k not in ("seed", "tables") + NUMBER_NEUTRAL
                  and len({repr(c.get(k)) for c in cfgs}) > 1)
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


def fill(cells: List[Cell], frame: pd.DataFrame) -> List[Cell]:
    """Each cell's produced mean, sample std and n over the seeds of the one configuration that matches it."""
    for c in cells:
        sel = select(frame, c.table, c.method, c.metric, c.where)
        if sel.empty and c.where:
            c.excluded = excluded_by(select(frame, c.table, c.method, c.metric), c.where)
        c.ambiguous = configurations(sel) if len(sel) else None
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
    return cells


def side_values(frame: pd.DataFrame, claim: Claim, side: Dict[str, Any]) -> Dict[Any, Any]:
    """Mean over seeds of one side of a comparison, keyed by the claim's `for_each` value (or None); where runs of
    several configurations match one key, the value is the string naming the settings that differ (not scored)."""
    sel = finite(select(frame, claim.figure, side["method"], side["metric"], claim.where, side.get("where")))
    if sel.empty:
        return {}
    if not claim.for_each:
        return {None: configurations(sel) or float(sel["value"].mean())}
    keys = [_key(c.get(claim.for_each)) for c in sel["cfg"]]
    out = {}
    for k in dict.fromkeys(keys):
        at = sel[[x == k for x in keys]]
        out[k] = configurations(at) or float(at["value"].mean())
    return out


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


def _extremum(frame: pd.DataFrame, claim: Claim, h: Dict[str, Any]) -> Tuple[Optional[bool], str]:
    """`left lowest_at|highest_at [values]`: is the side's mean, over the `for_each` values it has runs at, lowest
    (highest) at one of the listed values? Undecided (None) unless every listed value and at least one other has
    runs, and each value's runs are one configuration."""
    label = f"{_side_label(h['left'])} {h['op']} {claim.for_each} in {h['right']}"
    vals = side_values(frame, claim, h["left"])
    if not vals:
        return None, _no_runs(frame, claim, label, [h["left"]])
    bad = [v for v in vals.values() if isinstance(v, str)]
    if bad:
        return None, (f"{label}: runs of several configurations match ({bad[0]}); narrow it with `where` or separate "
                      f"runs directories")
    listed = [k for k in vals if any(_same(k, w) for w in h["right"])]
    lacking = [w for w in h["right"] if not any(_same(k, w) for k in vals)]
    if lacking:
        return None, f"{label}: no runs at {claim.for_each}={lacking[0]}"
    if len(listed) == len(vals):
        return None, f"{label}: no runs at any other {claim.for_each} to compare with"
    at = EXTREMA[h["op"]](vals, key=vals.get)
    ok = at in listed
    return ok, (f"{_side_label(h['left'])} is {'lowest' if h['op'] == 'lowest_at' else 'highest'} at "
                f"{claim.for_each}={at} ({vals[at]:.3f}; over {len(vals)} values), wanted one of {h['right']}: "
                f"{'yes' if ok else 'NO'}")


def _quantified(frame: pd.DataFrame, claim: Claim, h: Dict[str, Any]) -> Tuple[List[Optional[bool]], List[str]]:
    """`left op right` with metrics ending in /*, counted over the keys the runs report under that prefix (e.g. every
    attribute of latent_ap/img/*): at each `for_each` value it holds when it holds for more than half of the keys
    both sides have ("most") or for every one ("all"); undecided where no key has both sides."""
    lp = h["left"]["metric"][:-1]
    names = sorted({m[len(lp):] for m in frame["metric"].unique() if m.startswith(lp) and "/" not in m[len(lp):]}
                   if len(frame) else set())
    right = h["right"]
    label = f"{_side_label(h['left'])} {h['op']} {_side_label(right)} ({h['quantifier']})"
    counts: Dict[Any, List[int]] = {}  # for_each value -> [keys where it holds, keys compared]
    seen: Dict[Any, None] = {}  # for_each values either side has runs at
    mixed: Dict[Any, str] = {}  # for_each value -> the settings of several configurations matching there
    for name in names:
        left = side_values(frame, claim, dict(h["left"], metric=lp + name))
        rv = (side_values(frame, claim, dict(right, metric=right["metric"][:-1] + name)) if isinstance(right, dict)
              else {k: float(right) for k in left})
        seen.update(dict.fromkeys([*left, *rv]))
        for k in [k for k in left if k in rv]:
            if isinstance(left[k], str) or isinstance(rv[k], str):
                mixed[k] = left[k] if isinstance(left[k], str) else rv[k]
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
            details.append(f"{label}{at}: runs of several configurations match ({mixed[k]}); narrow it with `where` "
                           f"or separate runs directories")
        elif k not in counts:
            verdicts.append(None)
            details.append(f"{label}{at}: no key under {lp}* has runs of both sides")
        else:
            held, n = counts[k]
            ok = held * 2 > n if h["quantifier"] == "most" else held == n
            verdicts.append(ok)
            details.append(f"{label}{at}: holds for {held} of {n} keys: {'yes' if ok else 'NO'}")
    return verdicts, details


def evaluate_claims(claims: List[Claim], frame: pd.DataFrame) -> List[Claim]:
    """A claim holds when every comparison holds, at every `for_each` value either side has runs for; a value one
    side lacks, or where runs of several configurations match, leaves the claim missing unless another fails."""
    for c in claims:
        c.details, verdicts, c.excluded = [], [], None
        for h in c.holds:
            if h.get("quantifier"):
                ok_each, detail = _quantified(frame, c, h)
                verdicts += ok_each
                c.details += detail
                continue
            if h["op"] in EXTREMA:
                ok, detail = _extremum(frame, c, h)
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
            for k in list(common):
                bad = [v for v in (left[k], right[k]) if isinstance(v, str)]
                if bad:
                    verdicts.append(None)
                    at = f" at {c.for_each}={k}" if c.for_each else ""
                    c.details.append(f"{_side_label(h['left'])} {h['op']} {_side_label(h['right'])}{at}: runs of "
                                     f"several configurations match ({bad[0]}); narrow it with `where` or separate "
                                     f"runs directories")
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
        if any(v is False for v in verdicts):
            c.status = "fails"
        elif verdicts and all(v is True for v in verdicts):
            c.status = "holds"
        else:
            c.status = "missing"
    return claims


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
        for g, c in zip(rows["group"], cfgs):
            label = ", ".join(f"{SHORT.get(k, k)}={c.get(k):g}" if isinstance(c.get(k), float)
                              else f"{SHORT.get(k, k)}={c.get(k)}" for k in keys)
            out[(method, g)] = f"{method} {label}" if label else f"{method} [{g}]"
    return out


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


def long_sweep_tables(title: str, sub: pd.DataFrame, key: str) -> List[Tuple[str, pd.DataFrame]]:
    """A sweep in long form: one table per metric, the swept setting's values as rows, methods as columns
    (mean ± std over seeds), instead of one column per (method, value)."""
    sub = sub.assign(sweep=[c.get(key) for c in sub["cfg"]])
    agg = sub.groupby(["metric", "sweep", "method"])["value"].agg(["mean", "std", "count"]).reset_index()
    agg["cell"] = [pm(m, s if c > 1 else None) for m, s, c in zip(agg["mean"], agg["std"], agg["count"])]
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
        long.index = [f"{v:g}" for v in long.index]
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
        if any(c.get("dataset_simulated") for c in sub["cfg"]) or "simulated" in variant:
            title += " [SIMULATED DATA]"
        key = sweep_key(sub)
        if key is not None:
            out += long_sweep_tables(title, sub, key)
            continue
        names = series_names(sub)
        sub = sub.assign(series=[names[k] for k in zip(sub["method"], sub["group"])])
        agg = sub.groupby(["series", "metric"])["value"].agg(["mean", "std", "count"]).reset_index()
        agg["cell"] = [pm(m, s if c > 1 else None) for m, s, c in zip(agg["mean"], agg["std"], agg["count"])]
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
                txt = f"missing{why} | {pm(c.value, c.std)}"
            else:
                mark = "✓" if c.status == "pass" else "✗"
                txt = f"{pm(c.produced, c.produced_std)} | {pm(c.value, c.std)} | Δ {c.produced - c.value:+.3f} {mark}"
                if c.verdict == "underpowered" or c.p_holm is not None:
                    txt += f" | {c.verdict}" + (f" (p_Holm {c.p_holm:.2g})" if c.p_holm is not None else "")
                if c.mixed:  # the mean pools runs made with different code, data, classifiers or packages
                    txt += f" | ⚠ mixed {', '.join(c.mixed)}"
                if c.nonfinite:
                    txt += f" | ⚠ {c.nonfinite} run(s) with a non-finite value left out"
            grid.loc[c.row, c.column] = txt
        n = len(cs)
        npass = sum(c.status == "pass" for c in cs)
        nmiss = sum(c.status == "missing" for c in cs)
        nfail = sum(c.status == "fail" for c in cs)
        summary = f"{npass} of {n} cells within tolerance, {nfail} failing, {nmiss} missing"
        nambig = n - npass - nmiss - nfail
        if nambig:
            summary += f", {nambig} ambiguous (runs of several configurations match)"
        nmixed = sum(bool(c.mixed) for c in cs)
        if nmixed:
            summary += f"; {nmixed} pool runs whose provenance differs (⚠ mixed)"
        out.append((f"{paper} — {table}", grid.reset_index().rename(columns={"index": "model"}), summary))
    return out


def paper_summaries(cells: List[Cell], claims: List[Claim]) -> List[str]:
    """One line per paper: 'k of n cells within tolerance, c of d claims hold, m missing' (strict claims), then
    '; hedged claims (evidence only): h of e hold' where the paper has hedged ones."""
    papers = list(dict.fromkeys([c.paper for c in cells] + [c.paper for c in claims]))
    lines = []
    for p in papers:
        cs = [c for c in cells if c.paper == p]
        ks = [c for c in claims if c.paper == p and c.strength == "strict"]
        hedged = [c for c in claims if c.paper == p and c.strength == "hedged"]
        missing = sum(c.status == "missing" for c in cs) + sum(c.status == "missing" for c in ks)
        line = (f"{p}: {sum(c.status == 'pass' for c in cs)} of {len(cs)} cells within tolerance, "
                f"{sum(c.status == 'holds' for c in ks)} of {len(ks)} claims hold, {missing} missing"
                + (f"; hedged claims (evidence only): {sum(c.status == 'holds' for c in hedged)} of "
                   f"{len(hedged)} hold" if hedged else ""))
        v = verdict_counts(cs)
        if any(v.values()):
            line += (f"; Welch vs printed (Holm, α={ALPHA}): {v['consistent']} consistent, "
                     f"{v['differs']} differ, {v['underpowered']} underpowered")
        lines.append(line)
    return lines


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
    def mixed(self) -> List[Cell]:
        return [c for c in self.cells if c.mixed]

    @property
    def ambiguous(self) -> List[Cell]:
        """Cells matched by runs of several configurations (not scored; --compare fails on them)."""
        return [c for c in self.cells if c.ambiguous]

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
