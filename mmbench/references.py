"""The papers' numbers and statements as data: reference files (``reference_results/*.yaml``, one per paper),
read and validated here (errors name file, entry and field); mmbench/report.py matches them with runs.

A reference file holds

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
* **budgets** (only in the generated ``budgets.yaml``, mmbench/budgets.py): per table and method, the settings that
  size a run at the paper's budget; a cell or claim whose runs are at another is shown and not scored.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import yamlio
from .budgets import BUDGET
from .config import check_path, check_settings
from .errors import ConfigError, MMBenchError, show_value
from .registry import METHODS

CELL_FIELDS = ("paper", "table", "row", "column", "method", "metric", "value", "tolerance")
CLAIM_FIELDS = ("id", "paper", "figure", "quote", "source", "holds")
STRENGTHS = ("strict", "hedged")
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
EXTREMA = {"lowest_at": min, "highest_at": max}  # where along `for_each` a side's mean is extreme (right: allowed values)


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
    # set when runs of this table and method pass the `where` but write no such key, e.g. CelebA's batch-mean APs
    # below 256 test tuples: '1 run of MoPoE Table 5 with mopoe_style writes no latent_ap_batchmean/img'
    absent: Optional[str] = None
    paper_runs: Optional[int] = None  # runs behind the printed mean ± std (the reference file's `runs`)
    runs: List[str] = field(default_factory=list)  # ids of the runs behind the produced value
    data: List[str] = field(default_factory=list)  # non-default data builds of those runs (results.data_build)
    p_value: Optional[float] = None  # Welch's (one run: prediction-interval) t-test, produced vs printed (mmbench/verdicts.py)
    p_holm: Optional[float] = None  # Holm-adjusted over the paper's tested cells
    verdict: Optional[str] = None  # consistent / differs / underpowered
    budgets: Optional[List[Dict[str, Any]]] = None  # the paper's budgets for this table and method (budgets.yaml)
    # set when the runs behind the produced value were trained or scored at another budget than the paper's: which
    # settings, e.g. 'train.epochs 15 (paper: 300)'; the value is shown, never scored (status "off-budget")
    off_budget: Optional[str] = None
    set_aside: int = 0  # runs at another budget left out because runs at the paper's budget serve the cell

    @property
    def short_of_runs(self) -> bool:
        """Whether a produced value is over fewer runs than the paper's mean (e.g. 3 of a suite's 5 seeds finished)."""
        return self.produced is not None and bool(self.paper_runs) and self.n_runs < self.paper_runs

    @property
    def status(self) -> str:
        if self.ambiguous:
            return "ambiguous"
        if self.produced is None:
            return "missing"
        if self.off_budget:
            return "off-budget"
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
    status: str = "missing"  # holds / fails / missing / off-budget (decided, not scored: Cell.off_budget)
    details: List[str] = field(default_factory=list)
    excluded: Optional[str] = None  # a side's runs left out by its filter (as Cell.excluded), the first such
    # set when a comparison is undecided because its runs cannot be compared as they are (several configurations
    # match a side; the sides' budgets differ): the first such detail (report.evaluate_claims)
    ambiguous: Optional[str] = None
    mixed: List[str] = field(default_factory=list)  # provenance fields on which the runs compared differ (as Cell's)
    budgets: Optional[Dict[str, List[Dict[str, Any]]]] = None  # method -> the paper's budgets for the figure
    off_budget: Optional[str] = None  # as Cell's: the runs compared are at another budget (status "off-budget")


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
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float (YAML reads 1e400 written out as one)
        return False


def _check_text(where: str, v: Any) -> None:
    """A label the report prints and groups by (paper, table, row, column, id, ...): a non-empty string."""
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(where, f"must be a non-empty string (quote it in the YAML), got {v!r}")


def _check_number(where: str, v: Any, non_negative: bool = False) -> None:
    if not _is_number(v) or (non_negative and v < 0):
        raise ConfigError(where, f"must be a {'number >= 0' if non_negative else 'number'}, got {show_value(v, 40)}")


def _check_method(where: str, name: Any) -> None:
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(where, f"unknown method {name!r}; choose one of: {', '.join(METHODS.names())}")


# The families of metric keys the metrics write (docs/metrics.md's key tables): the part of a key before its first /.
METRIC_FAMILIES = ("latent_acc", "latent_acc_by_n", "latent_lr_unconverged", "latent_ap", "latent_ap_by_n",
                   "latent_ap_batchmean", "ap_attributes_scored", "ap_batchmean_batches", "ap_batchmean_empty",
                   "coherence", "coherence_by_n", "coherence_all_by_n", "coherence_ap", "coherence_ap_by_n",
                   "coherence_ap_batchmean", "fid", "fid_by_n", "loglik", "loglik_by_n", "loglik_mod", "recon", "recon_mse",
                   "latent_scatter")


def _check_metric(where: str, key: Any) -> None:
    """A metric key of a family the metrics write: a typo ('latent_accc/mnist') is an error, not a missing cell."""
    if not isinstance(key, str) or key.split("/")[0] not in METRIC_FAMILIES:
        raise ConfigError(where, f"{key!r} is not a metric key mmbench writes; a key starts with one of: "
                          f"{', '.join(METRIC_FAMILIES)} (docs/metrics.md)")


def _check_side(where: str, side: Any, number_ok: bool) -> None:
    if number_ok and _is_number(side):
        return
    if not isinstance(side, dict) or not {"method", "metric"} <= set(side) or set(side) - {"method", "metric", "where"}:
        raise ConfigError(where, "must be {method, metric[, where]}" + (" or a number" if number_ok else ""))
    _check_method(f"{where}.method", side["method"])
    _check_metric(f"{where}.metric", side["metric"])
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


REFERENCE_KEYS = ("paper", "runs", "cells", "claims", "budgets")


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
    seen_cells: Dict[Tuple[str, str, str, str], str] = {}  # (paper, table, row, column) -> the entry that gave it
    seen_claims: Dict[str, str] = {}  # claim id -> the entry that gave it
    budgets: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}  # table -> method -> the paper's budgets
    for path in paths:
        try:
            text = path.read_bytes()  # bytes: yamlio names the line of a byte that is not UTF-8
        except OSError as e:  # e.g. a directory named *.yaml
            raise ConfigError(str(path), f"cannot be read ({e.strerror or type(e).__name__}); --compare takes a "
                                         f"directory of reference files, e.g. reference_results/") from None
        raw = yamlio.load(text, str(path)) or {}
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
        if raw.get("budgets") is not None:  # the generated budgets.yaml (mmbench/budgets.py)
            _read_budgets(f"{path}: budgets", raw["budgets"], budgets)
        elif not raw.get("cells") and not raw.get("claims"):
            raise ConfigError(str(path), "holds no `cells` or `claims`; a reference file lists the paper's numbers "
                                         "(cells) and statements (claims)")
        # `runs`: how many runs the paper's mean ± std are over (file-wide; a cell may say its own).
        file_runs = raw.get("runs")
        for i, c in enumerate(raw.get("cells") or []):
            where = f"{path}: cells[{i}]"
            _check_fields(where, c, CELL_FIELDS, ("std", "source", "where", "runs"))
            for f in ("paper", "table", "row", "column", "source"):
                if f in c:
                    _check_text(f"{where}.{f}", c[f])
            at = (c["paper"], c["table"], c["row"], c["column"])
            if at in seen_cells:  # the report's grid would show one of them and count both
                raise ConfigError(where, f"the same paper, table, row and column as {seen_cells[at]}; a cell is given "
                                         f"once (merge the two, or tell them apart by row or column)")
            seen_cells[at] = where
            _check_metric(f"{where}.metric", c["metric"])
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
            for f in ("id", "paper", "figure", "quote", "source"):
                _check_text(f"{where}.{f}", c[f])
            if c["id"] in seen_claims:
                raise ConfigError(f"{where}.id", f"{c['id']!r} is also the id of {seen_claims[c['id']]}; give each "
                                                 f"claim its own id")
            seen_claims[c["id"]] = where
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
                if not isinstance(h["op"], str) or (h["op"] not in OPS and h["op"] not in EXTREMA):
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
    for cell in cells:  # scored only from runs at its table's budget (mmbench/budgets.py)
        cell.budgets = budgets.get(cell.table, {}).get(cell.method)
    for claim in claims:
        claim.budgets = budgets.get(claim.figure)
    return cells, claims


def _read_budgets(where: str, raw: Any, into: Dict[str, Dict[str, List[Dict[str, Any]]]]) -> None:
    """Validate a `budgets` block ({table: {method: [{setting: value}, ...]}}) and add it to `into`."""
    if not isinstance(raw, dict):
        raise ConfigError(where, "must map each table to {method: [budget, ...]}; regenerate it with "
                                 "`python -m mmbench.budgets`")
    for table, methods in raw.items():
        if not isinstance(methods, dict):
            raise ConfigError(f"{where}.{table}", "must map each method to a list of budgets; regenerate it with "
                                                  "`python -m mmbench.budgets`")
        for method, listed in methods.items():
            at = f"{where}.{table}.{method}"
            _check_method(at, method)
            if not isinstance(listed, list) or not listed or not all(isinstance(b, dict) for b in listed):
                raise ConfigError(at, "must be a non-empty list of {setting: value} budgets")
            for b in listed:
                if set(b) != set(BUDGET):
                    raise ConfigError(at, f"a budget names exactly the settings {', '.join(BUDGET)} (got "
                                          f"{', '.join(map(str, b))}); regenerate it with `python -m mmbench.budgets`")
            into.setdefault(str(table), {}).setdefault(str(method), []).extend(listed)
