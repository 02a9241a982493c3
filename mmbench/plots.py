"""Figures of the report, in the papers' styles.

* ``by_inputs``: metrics against the number of input modalities (MoPoE Fig. 3, SMVAE Fig. 2);
* ``beta_sweep``: a representation/coherence metric against reconstruction error or log-likelihood,
  one point per β, one line per method (MoPoE Figs. 1, 5-6; MM-VAMP Figs. 3, 4, 8, 9);
* ``reproduction``: per paper, every reference cell's produced value against its printed value
  (tolerance as error bars, the identity line, cells outside tolerance marked);
* ``training_curves``: train and test loss per epoch of each run (from the run's history.json);
* ``all_figures``: every figure the finished runs support.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from .errors import MMBenchError
from .results import atomic_write
from .tables import by_figure, group_title, series_names

PANELS = [("latent_acc_by_n", "latent classification accuracy"), ("coherence_by_n", "conditional coherence")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def series_style(i: int) -> Dict[str, Any]:
    """The i-th line's marker: its own shape, each smaller than the one before, so lines that coincide (e.g.
    MM-VAMP at α = 1, where it is the independent VAEs) show as nested markers instead of hiding each other."""
    return {"marker": MARKERS[i % len(MARKERS)], "markersize": max(8.0 - 1.5 * i, 3.0)}


def _with_beta(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a `beta` column: each run's method.beta (what decides a β sweep)."""
    return frame.assign(beta=frame["cfg"].apply(lambda c: c.get("method.beta")))


def by_inputs(frame: pd.DataFrame, out_dir: Path) -> List[Path]:
    """One PNG and SVG per (dataset, variant, tables) group: each panel a metric vs number of inputs,
    one line per method (mean over seeds, error bars = std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if frame.empty:
        return written
    sub = frame[frame["metric"].str.match(r"^(latent_acc_by_n|coherence_by_n)/\d+$")].copy()
    if sub.empty:
        return written
    sub["family"] = sub["metric"].str.split("/").str[0]
    sub["n"] = sub["metric"].str.split("/").str[1].astype(int)
    swept = {key for key, g in by_figure(_with_beta(frame)).groupby(["dataset", "variant", "tables"])
             if _sweep_axes(g) is not None}
    for (dataset, variant, tables), g in by_figure(sub).groupby(["dataset", "variant", "tables"]):
        if (dataset, variant, tables) in swept:
            continue  # a β sweep (MoPoE Figs. 1, 5-6; MM-VAMP Figs. 3-5, 8-9): `beta_sweep` draws it, not one line per β here
        names = series_names(g)  # a sweep without a trade-off metric is drawn here, one line per β ('mopoe β=2.5')
        g = g.assign(series=[names[k] for k in zip(g["method"], g["group"])])
        order = sorted(g["series"].unique())  # one style per series, the same in both panels
        fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4), squeeze=False)
        for ax, (family, label) in zip(axes[0], PANELS):
            fam = g[g["family"] == family]
            for series, mg in fam.groupby("series"):
                agg = mg.groupby("n")["value"].agg(["mean", "std"]).reset_index()
                ax.errorbar(agg["n"], agg["mean"], yerr=agg["std"].fillna(0), capsize=3, label=series,
                            **series_style(order.index(series)))
            ax.set_xticks(sorted(fam["n"].unique()))
            ax.set_xlabel("number of input modalities")
            ax.set_ylabel(label)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        written += _finish_group(fig, axes, out_dir, dataset, variant, tables, "by-inputs", None)
    return written


def _stem(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)).strip("_")


def _beta_label(beta: float) -> str:
    """'β=2.5', or 'β=2^-8' for the powers of two of the MM-VAMP grids."""
    import math

    k = math.log2(beta) if beta > 0 else 0.5
    return f"β=$2^{{{int(k)}}}$" if k.is_integer() and abs(k) >= 3 else f"β={beta:g}"


def _finish_group(fig, axes, out_dir: Path, dataset: str, variant: str, tables, kind: str,
                  what: Optional[str] = None) -> List[Path]:
    """Title (the figure group, and what the panels show), layout, legend beside the panels, saved as PNG+SVG."""
    fig.suptitle(group_title(dataset, variant, tables) + (f" — {what}" if what else ""), fontsize=10)
    fig.tight_layout()
    _legend(fig, axes[0])
    return _save(fig, out_dir, _stem(dataset, variant, "-".join(tables) or "runs", kind))


def _legend(fig, axes) -> None:
    """One legend for the figure, right of the panels (never over the data), from the first panel with lines."""
    ax = next((a for a in axes if a.get_legend_handles_labels()[0]), None)
    if ax is not None:
        fig.legend(*ax.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   fontsize=8)


def _save(fig, out_dir: Path, stem: str) -> List[Path]:
    import matplotlib.pyplot as plt

    written = []
    for ext in ("png", "svg"):
        path = out_dir / f"{stem}.{ext}"
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, bbox_inches="tight")  # "tight" keeps the legend right of the panels
        atomic_write(path, buf.getvalue())  # whole or not at all: a full disk leaves the previous figure as it was
        written.append(path)
    plt.close(fig)
    return written


# x axes (trade-off measure) and y axes (representation / generation quality) of the β-sweep figures.
SWEEP_X = [("recon/joint", "reconstruction error (all inputs)"), ("recon/self", "self-reconstruction error"),
           ("loglik/joint", "test log-likelihood")]
SWEEP_Y = [("latent_acc_by_n/1", "latent accuracy, 1 input"), ("coherence_by_n/1", "coherence, 1 input"),
           ("coherence_all_by_n/1", "coherence, 1 input\n(itself among the targets)"),
           ("coherence/joint", "joint coherence")]


def _sweep_axes(g: pd.DataFrame):
    """The β-sweep figure's x axis and y panels for one figure group (rows with `beta`), or None where the group
    is not drawn as a sweep: fewer than two β, or no trade-off (x) or quality (y) metric among its rows. The one
    decision both figures read, so a group is drawn by exactly one of them."""
    if g["beta"].nunique() < 2:
        return None
    xs = [(k, lab) for k, lab in SWEEP_X if (g["metric"] == k).any()]
    ys = [(k, lab) for k, lab in SWEEP_Y if (g["metric"] == k).any()]
    return (xs[0], ys) if xs and ys else None


def _sweep_lines(g: pd.DataFrame) -> List[str]:
    """Each row's line in the β-sweep figure: its method, plus the settings other than β that tell that method's
    configurations apart (series_names, with β left out), so that two configurations at one β (e.g. latent 8 and
    16) are two lines, never averaged into one point as if they were seeds."""
    import hashlib

    from .report import NUMBER_NEUTRAL

    cfgs = [{k: v for k, v in c.items() if k != "method.beta"} for c in g["cfg"]]
    keys = [hashlib.sha256(json.dumps({k: v for k, v in c.items() if k not in ("seed", "tables", *NUMBER_NEUTRAL)},
                                      sort_keys=True, default=str).encode()).hexdigest()[:8] for c in cfgs]
    names = series_names(g.assign(group=keys, cfg=cfgs))
    return [names[k] for k in zip(g["method"], keys)]


def beta_sweep(frame: pd.DataFrame, out_dir: Path) -> List[Path]:
    """Per (dataset, variant, tables) group with several β: y metric vs x metric, points labelled by β,
    one line per method and configuration apart from β (_sweep_lines; mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written: List[Path] = []
    if frame.empty:
        return written
    frame = _with_beta(frame)
    for (dataset, variant, tables), g in by_figure(frame).groupby(["dataset", "variant", "tables"]):
        axes_of = _sweep_axes(g)
        if axes_of is None:
            continue
        (xkey, xlab), ys = axes_of
        g = g.assign(line=_sweep_lines(g))
        means = g.groupby(["line", "beta", "metric"])["value"].mean().unstack("metric")
        stds = g.groupby(["line", "beta", "metric"])["value"].std().unstack("metric").fillna(0.0)
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.6), squeeze=False)
        methods = sorted(means.index.get_level_values("line").unique())  # one style per line in every panel
        for ax, (ykey, ylab) in zip(axes[0], ys):
            for method, mg in means.groupby(level="line"):
                mg = mg.droplevel("line").sort_index()
                sd = stds.loc[method].reindex(mg.index)
                if xkey not in mg or ykey not in mg:
                    continue
                # mean over seeds; bars = std in both directions (MoPoE Figs. 1, 5-6)
                line = ax.errorbar(mg[xkey], mg[ykey], xerr=sd.get(xkey), yerr=sd.get(ykey), capsize=2, label=method,
                                   **series_style(methods.index(method)))
                # the smallest and the largest β of each line (the papers' arrows run from small to large β)
                for beta in (mg.index[0], mg.index[-1]):
                    ax.annotate(_beta_label(beta), (mg.loc[beta, xkey], mg.loc[beta, ykey]), fontsize=7,
                                color=line[0].get_color(), xytext=(4, 4 - 12 * (beta == mg.index[-1])),
                                textcoords="offset points")
            ax.set_xlabel(xlab)
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3)
        written += _finish_group(fig, axes, out_dir, dataset, variant, tables, "beta-sweep", "β sweep")
    return written


def latent_scatters(frame: pd.DataFrame, runs_dir: Path, out_dir: Path) -> List[Path]:
    """MM-VAMP Figs. 6 and 13: each run's stored unimodal latents (metric latent_scatter), coloured by class
    (left) and by modality (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: List[Path] = []
    if frame.empty:
        return written
    runs = frame[frame["metric"] == "latent_scatter/points"].drop_duplicates("run")
    for row in runs.itertuples(index=False):
        path = Path(runs_dir) / row.run / "artifacts" / "latents.npz"
        if not path.exists():
            continue
        with open(path, "rb") as fh, np.load(fh) as npz:  # closed when read, a damaged one too
            data = {k: npz[k] for k in npz.files}
        names = [str(n) for n in data["names"]]
        labels = data["labels"]
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        colours = plt.get_cmap("tab10")
        for j, m in enumerate(names):
            z = data[f"z_{m}"]
            for c in np.unique(labels):
                sel = labels == c
                axes[0].scatter(z[sel, 0], z[sel, 1], s=3, alpha=0.5, color=colours(int(c) % 10),
                                label=f"class {c}" if j == 0 else None)
            axes[1].scatter(z[:, 0], z[:, 1], s=3, alpha=0.5, color=colours(j % 10), label=m)
        for ax, title in zip(axes, ("coloured by class", "coloured by modality")):
            ax.set_title(title, fontsize=9)
            ax.legend(frameon=False, fontsize=7, markerscale=3)
            ax.set_xlabel("z1" if str(data["projection"]) == "identity" else "PC 1")
            ax.set_ylabel("z2" if str(data["projection"]) == "identity" else "PC 2")
        beta = row.cfg.get("method.beta")
        fig.suptitle(f"{group_title(row.dataset, row.variant, row.tables)} — {row.method}, β={beta:g}, seed {row.seed}",
                     fontsize=9)
        fig.tight_layout()
        written += _save(fig, out_dir, _stem(row.run, "latents"))
    return written


def per_attribute(frame: pd.DataFrame, out_dir: Path) -> List[Path]:
    """MoPoE Figs. 12-13, MM-VAMP Fig. 11: average precision per attribute (latent_ap/<S>/<attr>,
    coherence_ap/<S>-><m>/<attr>), one panel per input subset (or subset -> target), one bar per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: List[Path] = []
    if frame.empty:
        return written
    sub = frame[frame["metric"].str.match(r"^(latent_ap|coherence_ap)/[^/]+/.+$")].copy()
    if sub.empty:
        return written
    parts = sub["metric"].str.split("/", n=2)
    sub["family"], sub["panel"], sub["attr"] = parts.str[0], parts.str[1], parts.str[2]
    sub = _with_beta(sub)
    for (dataset, variant, tables, family, beta), g in by_figure(sub).groupby(["dataset", "variant", "tables", "family", "beta"]):
        names = series_names(g)  # one figure per β, so a sweep does not crowd 40 attributes with every run
        g = g.assign(series=[names[k] for k in zip(g["method"], g["group"])])
        panels = list(dict.fromkeys(g["panel"]))
        attrs = list(dict.fromkeys(g["attr"]))
        series = sorted(g["series"].unique())
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 0.18 * len(attrs) + 2),
                                 squeeze=False, sharey=True)
        width = 0.8 / max(len(series), 1)
        for ax, panel in zip(axes[0], panels):
            means = g[g["panel"] == panel].groupby(["series", "attr"])["value"].mean()
            for i, sname in enumerate(series):
                vals = [means.get((sname, a), np.nan) for a in attrs]
                ax.barh(np.arange(len(attrs)) + i * width, vals, height=width, label=sname)
            ax.set_title(panel, fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_xlabel("average precision")
            ax.grid(axis="x", alpha=0.3)
        axes[0][0].set_yticks(np.arange(len(attrs)) + 0.4 - width / 2)
        axes[0][0].set_yticklabels(attrs, fontsize=6)
        axes[0][0].invert_yaxis()
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(series), 4), frameon=False, fontsize=7)
        label = "latent representation" if family == "latent_ap" else "generation coherence"
        fig.suptitle(f"{group_title(dataset, variant, tables)} — {label} per attribute, β={beta:g}", fontsize=9)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        written += _save(fig, out_dir, _stem(dataset, variant, "-".join(tables) or "runs", family, f"beta{beta:g}",
                                             "per-attribute"))
    return written


# Panels of the reproduction figure: metric families on one scale share a panel.
SCALES = {"latent_acc": "accuracy / coherence / AP", "coherence": "accuracy / coherence / AP",
          "latent_ap": "accuracy / coherence / AP", "coherence_ap": "accuracy / coherence / AP",
          "latent_ap_batchmean": "accuracy / coherence / AP", "coherence_ap_batchmean": "accuracy / coherence / AP",
          "fid": "FID", "loglik": "log-likelihood", "loglik_mod": "log-likelihood", "recon": "reconstruction error"}


def reproduction_points(cells: List[Any]) -> Dict[str, pd.DataFrame]:
    """Per paper, one row per reference cell that has a produced value: where it is in the paper, the panel
    (metric scale), printed value, produced mean and std, tolerance and whether it is within tolerance."""
    rows = []
    for c in cells:
        if c.produced is None:
            continue
        family = c.metric.split("/")[0].removesuffix("_by_n")
        rows.append({"paper": c.paper, "table": c.table, "row": c.row, "column": c.column, "metric": c.metric,
                     "panel": SCALES.get(family, family), "printed": c.value, "produced": c.produced,
                     "produced_std": c.produced_std or 0.0, "tolerance": c.tolerance, "passed": c.status == "pass",
                     "scored": c.status in ("pass", "fail")})
    frame = pd.DataFrame(rows, columns=["paper", "table", "row", "column", "metric", "panel", "printed", "produced",
                                        "produced_std", "tolerance", "passed", "scored"])
    return {p: g.reset_index(drop=True) for p, g in frame.groupby("paper", sort=False)}


def reproduction(cells: List[Any], out_dir: Path) -> List[Path]:
    """One figure per paper: produced vs printed for every cell with a produced value, one panel per metric
    scale. Vertical bars are the tolerance around the produced value, so a bar crosses the identity line
    exactly when the cell is within tolerance; cells outside it are red crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: List[Path] = []
    for paper, pts in reproduction_points(cells).items():
        n_all = sum(c.paper == paper for c in cells)
        panels = list(dict.fromkeys(pts["panel"]))
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            g = pts[pts["panel"] == panel]
            for state, colour, marker, label in (("pass", "tab:green", "o", "within tolerance"),
                                                 ("fail", "tab:red", "x", "outside tolerance"),
                                                 ("off", "tab:grey", "s", "another budget (not scored)")):
                h = g[g["passed"] & g["scored"] if state == "pass" else ~g["passed"] & g["scored"] if state == "fail"
                      else ~g["scored"]]
                if len(h):
                    ax.errorbar(h["printed"], h["produced"], yerr=h["tolerance"], fmt=marker, color=colour,
                                ecolor=colour, alpha=0.8, capsize=2, markersize=5, label=label)
            lo = min((g["printed"]).min(), (g["produced"] - g["tolerance"]).min())
            hi = max((g["printed"]).max(), (g["produced"] + g["tolerance"]).max())
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="produced = printed")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlabel(f"printed ({panel})")
            ax.set_ylabel(f"produced ({panel})")
            ax.grid(alpha=0.3)
        npass, noff = int(pts["passed"].sum()), int((~pts["scored"]).sum())
        fig.suptitle(f"{paper}\n{npass} of {len(pts)} produced cells within tolerance"
                     + (f", {noff} at another budget than the paper's (not scored)" if noff else "")
                     + f" ({n_all - len(pts)} of {n_all} cells missing, not shown)", fontsize=9)
        fig.tight_layout()
        legend = {}  # every kind of mark from every panel (the first panel may have no failures)
        for ax in axes[0]:
            legend.update({label: h for h, label in zip(*ax.get_legend_handles_labels())})
        fig.legend(legend.values(), legend.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                   fontsize=8)
        # the first 60 characters, not the authors alone: two papers are "Sutter, ..."
        written += _save(fig, out_dir, _stem(paper[:60], "reproduction"))
    return written


def run_history(run_dir: Path) -> Optional[List[Dict[str, float]]]:
    """A run's per-epoch records ({epoch, train_loss, ..., test_loss}): history.json, written at the end of
    training; for runs trained before it existed, the history in checkpoints/last.pt. None if neither; an
    MMBenchError naming the file if it cannot be read."""
    path = Path(run_dir) / "history.json"
    if path.exists():
        try:
            history = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise MMBenchError(f"{path} is not valid JSON ({e})") from None
        except OSError as e:  # a folder, an unreadable file
            raise MMBenchError(f"{path} cannot be read ({e.strerror or type(e).__name__}); move it away and the "
                               f"history in the run's checkpoints/last.pt is drawn") from None
    else:
        last = Path(run_dir) / "checkpoints" / "last.pt"
        if not last.exists():
            return None
        from .train import read_checkpoint

        path, history = last, read_checkpoint(last)["state"].get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h for h in history):
        raise MMBenchError(f"{path} holds no list of per-epoch records")
    for i, h in enumerate(history):  # a string or null would be drawn as a category, or break the figure
        for k, v in h.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise MMBenchError(f"{path}: epoch record {i + 1} has {k} = {v!r}, not a number")
    return history


LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]


def curve_styles(keys: List[Tuple[str, int]]) -> List[Dict[str, Any]]:
    """Each (series, seed) curve's style: one colour per series (method), seeds told apart by line style and then
    marker, so the 15 curves of a 3-method × 5-seed figure are 15 distinct lines (one colour cycle of 10 repeated
    colours before)."""
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(s for s, _ in keys))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    seen: Dict[str, int] = {}
    styles = []
    for s, _ in keys:
        k = seen[s] = seen.get(s, -1) + 1
        styles.append({"color": colours(series.index(s) % colours.N), "linestyle": LINESTYLES[k % len(LINESTYLES)],
                       "marker": MARKERS[(k // len(LINESTYLES)) % len(MARKERS)]})
    return styles


def training_curves(frame: pd.DataFrame, runs_dir: Path, out_dir: Path, notes: Optional[List[str]] = None) -> List[Path]:
    """Per (dataset, variant, tables) group: train and test loss against epoch, one line per run. A run whose
    history cannot be read is left out of its figure, with a line saying so appended to `notes` (without
    `notes`, the error is raised)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: List[Path] = []
    if frame.empty:
        return written
    for (dataset, variant, tables), g in by_figure(frame).groupby(["dataset", "variant", "tables"]):
        names = series_names(g)
        runs = g.drop_duplicates("run").sort_values(["method", "seed"])
        curves = []
        for r in runs.itertuples(index=False):
            try:
                h = run_history(Path(runs_dir) / r.run)
            except MMBenchError as e:
                if notes is None:
                    raise
                notes.append(f"training curve of {r.run} left out: {e}")
                continue
            if h:
                curves.append((names[(r.method, r.group)], r.seed, pd.DataFrame(h)))
        if not curves:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        styles = curve_styles([(series, seed) for series, seed, _ in curves])
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), squeeze=False)
        for ax, (key, title) in zip(axes[0], (("train_loss", "train loss"), ("test_loss", "test loss"))):
            for (series, seed, h), style in zip(curves, styles):
                if key in h:
                    ax.plot(h["epoch"], h[key], markersize=3, lw=1, label=f"{series} s{seed}", **style)
            epoch_axis(ax)
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
        written += _finish_group(fig, axes, out_dir, dataset, variant, tables, "training", "training curves")
    return written


def epoch_axis(ax) -> None:
    """x axis in whole epochs, also for a run of one epoch (matplotlib would tick 0.945 ... 1.050 there)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def all_figures(report: Any, out_dir: Path, notes: Optional[List[str]] = None) -> List[Path]:
    """Every figure the report's runs support (PNG and SVG each); what had to be left out of one is appended to
    `notes` (training_curves)."""
    from .results import default_runs_dir

    out_dir = Path(out_dir)
    runs_dir = Path(report.runs_dir or default_runs_dir())
    return (reproduction(report.cells, out_dir) + by_inputs(report.frame, out_dir) + beta_sweep(report.frame, out_dir)
            + per_attribute(report.frame, out_dir) + latent_scatters(report.frame, runs_dir, out_dir)
            + training_curves(report.frame, runs_dir, out_dir, notes))
