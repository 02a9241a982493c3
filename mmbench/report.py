"""`mmbench report`: aggregate finished runs (mean ± std over seeds) and compare with paper values.

Reference files (``reference_results/*.yaml``, one per paper) list cells, each with paper, table,
row, column, method, metric key, value, std where printed, and tolerance. A cell is matched by the
runs whose config says they reproduce that table (``tables``) and that use the cell's method; the
cell passes when |produced mean - value| <= tolerance. Cells with no run are shown as missing.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table
from tabulate import tabulate

from .errors import ConfigError, MMBenchError
from .results import load_runs

CELL_FIELDS = ("paper", "table", "row", "column", "method", "metric", "value", "tolerance")


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
    produced: Optional[float] = None
    produced_std: Optional[float] = None
    n_runs: int = 0

    @property
    def status(self) -> str:
        if self.produced is None:
            return "missing"
        return "pass" if abs(self.produced - self.value) <= self.tolerance + 1e-12 else "fail"


def load_references(directory: Path) -> List[Cell]:
    directory = Path(directory)
    if not directory.is_dir():
        raise MMBenchError(f"reference directory {directory} does not exist; pass --compare reference_results/")
    cells = []
    for path in sorted(directory.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        for i, c in enumerate(raw.get("cells") or []):
            where = f"{path}: cells[{i}]"
            if not isinstance(c, dict):
                raise ConfigError(where, "each cell must be a mapping")
            missing = [f for f in CELL_FIELDS if f not in c]
            if missing:
                raise ConfigError(where, f"missing field(s) {', '.join(missing)}; a cell needs {', '.join(CELL_FIELDS)}")
            known = set(CELL_FIELDS) | {"std", "source"}
            unknown = set(c) - known
            if unknown:
                raise ConfigError(f"{where}.{sorted(unknown)[0]}", f"unknown field; allowed: {', '.join(sorted(known))}")
            cells.append(Cell(**{k: c[k] for k in c}))
    return cells


def runs_frame(runs_dir: Optional[Path] = None) -> pd.DataFrame:
    """One row per (run, metric): dataset, variant, method, seed, group, tables, metric, value."""
    rows = []
    for r in load_runs(runs_dir):
        cfg = r["config"].to_dict()
        seedless = {k: v for k, v in cfg.items() if k not in ("seed", "tables")}
        group = hashlib.sha256(json.dumps(seedless, sort_keys=True).encode()).hexdigest()[:8]
        for metric, value in r["metrics"].items():
            rows.append({"run": r["id"], "dataset": cfg["dataset"], "variant": cfg["variant"] or "default",
                         "method": cfg["method"]["name"], "seed": cfg["seed"], "group": group,
                         "tables": tuple(r["tables"]), "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=["run", "dataset", "variant", "method", "seed", "group", "tables", "metric",
                                       "value"])


def fill(cells: List[Cell], frame: pd.DataFrame) -> List[Cell]:
    for c in cells:
        sel = frame[(frame["method"] == c.method) & (frame["metric"] == c.metric)
                    & frame["tables"].apply(lambda t, name=c.table: name in t)]
        if len(sel):
            c.produced = float(sel["value"].mean())
            c.produced_std = float(sel["value"].std(ddof=0)) if len(sel) > 1 else 0.0
            c.n_runs = len(sel)
    return cells


def pm(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3f}" if not std else f"{mean:.3f} ± {std:.3f}"


HEADLINE = r"^(latent_acc_by_n|coherence_by_n)/|^coherence/joint$"


def metric_label(metric: str) -> str:
    """'latent_acc_by_n/2' -> 'latent accuracy, 2 inputs' (mean over subsets of that size)."""
    family, _, arg = metric.partition("/")
    names = {"latent_acc_by_n": "latent accuracy", "coherence_by_n": "coherence"}
    if family in names:
        return f"{names[family]}, {arg} input{'s' if arg != '1' else ''}"
    return {"coherence/joint": "joint coherence (prior samples)"}.get(metric, metric)


def group_title(dataset: str, variant: str, tables: Tuple[str, ...]) -> str:
    return f"{dataset} ({variant})" + (f" — {', '.join(tables)}" if tables else "")


def series_names(sub: pd.DataFrame) -> Dict[Tuple[str, str], str]:
    """A label per (method, config group): the method's name, plus the group hash where one method
    has several configurations (e.g. a β sweep), so that they are never averaged as if they were seeds."""
    pairs = sub[["method", "group"]].drop_duplicates()
    several = pairs["method"].value_counts()
    return {(m, g): m if several[m] == 1 else f"{m} [{g}]" for m, g in pairs.itertuples(index=False)}


def summary_tables(frame: pd.DataFrame) -> List[Tuple[str, pd.DataFrame]]:
    """Per (dataset, variant, tables) group: headline metrics × methods, mean ± std over seeds."""
    out = []
    if frame.empty:
        return out
    head = frame[frame["metric"].str.match(HEADLINE)]
    for (dataset, variant, tables), sub in head.groupby(["dataset", "variant", "tables"], sort=True):
        names = series_names(sub)
        sub = sub.assign(series=[names[k] for k in zip(sub["method"], sub["group"])])
        agg = sub.groupby(["series", "metric"])["value"].agg(["mean", "std", "count"]).reset_index()
        agg["cell"] = [pm(m, s if c > 1 else None) for m, s, c in zip(agg["mean"], agg["std"], agg["count"])]
        wide = agg.pivot_table(index="metric", columns="series", values="cell", aggfunc="first")
        order = sorted(wide.index, key=lambda k: (k.startswith("coherence/"), k))  # by-n rows first, joint last
        wide = wide.loc[order]
        seeds = sub.groupby("series")["seed"].nunique()
        wide.columns = [f"{m} ({seeds[m]} seed{'s' if seeds[m] > 1 else ''})" for m in wide.columns]
        wide.index = [metric_label(k) for k in wide.index]
        out.append((group_title(dataset, variant, tables), wide.reset_index().rename(columns={"index": "metric"})))
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
            if c.produced is None:
                txt = f"missing | {pm(c.value, c.std)}"
            else:
                mark = "✓" if c.status == "pass" else "✗"
                txt = f"{pm(c.produced, c.produced_std)} | {pm(c.value, c.std)} | Δ {c.produced - c.value:+.3f} {mark}"
            grid.loc[c.row, c.column] = txt
        n = len(cs)
        npass = sum(c.status == "pass" for c in cs)
        nmiss = sum(c.status == "missing" for c in cs)
        summary = f"{npass} of {n} cells within tolerance, {n - npass - nmiss} failing, {nmiss} missing"
        out.append((f"{paper} — {table}", grid.reset_index().rename(columns={"index": "model"}), summary))
    return out


def render_markdown(summaries, refs) -> str:
    parts = ["# mmbench report", ""]
    for title, df in summaries:
        parts += [f"## {title}", "", tabulate(df, headers="keys", tablefmt="github", showindex=False), ""]
    if refs:
        parts += ["## Comparison with the papers", "",
                  "Each cell: produced (mean ± std over seeds) | paper value (± printed std) | difference and verdict.", ""]
    for title, df, summary in refs:
        parts += [f"### {title}", "", tabulate(df, headers="keys", tablefmt="github", showindex=False), "",
                  f"*{summary}*", ""]
    return "\n".join(parts)


def render_terminal(console: Console, summaries, refs) -> None:
    def show(title: str, df: pd.DataFrame, caption: str = "") -> None:
        t = Table(title=title, caption=caption or None, show_lines=False)
        for c in df.columns:
            t.add_column(str(c))
        for _, row in df.iterrows():
            t.add_row(*[str(v) for v in row.values])
        console.print(t)

    if not summaries and not refs:
        console.print("no finished runs found")
    for title, df in summaries:
        show(title, df)
    for title, df, summary in refs:
        show(title, df, summary)


def build_report(runs_dir: Optional[Path], compare: Optional[Path]) -> Dict[str, Any]:
    frame = runs_frame(runs_dir)
    cells = fill(load_references(compare), frame) if compare else []
    return {"frame": frame, "summaries": summary_tables(frame), "refs": reference_tables(cells), "cells": cells}
