"""Figures of the report: metrics against the number of input modalities (MoPoE Fig. 3 style)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

import pandas as pd

from .report import group_title, series_names

PANELS = [("latent_acc_by_n", "latent classification accuracy"), ("coherence_by_n", "conditional coherence")]


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
    for (dataset, variant, tables), g in sub.groupby(["dataset", "variant", "tables"]):
        names = series_names(g)
        g = g.assign(series=[names[k] for k in zip(g["method"], g["group"])])
        fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4), squeeze=False)
        for ax, (family, label) in zip(axes[0], PANELS):
            fam = g[g["family"] == family]
            for series, mg in fam.groupby("series"):
                agg = mg.groupby("n")["value"].agg(["mean", "std"]).reset_index()
                ax.errorbar(agg["n"], agg["mean"], yerr=agg["std"].fillna(0), marker="o", capsize=3, label=series)
            ax.set_xticks(sorted(fam["n"].unique()))
            ax.set_xlabel("number of input modalities")
            ax.set_ylabel(label)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0][0].legend(frameon=False, loc="lower right")
        fig.suptitle(group_title(dataset, variant, tables), fontsize=10)
        fig.tight_layout()
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{variant}-{'-'.join(tables) or 'runs'}-by-inputs").strip("_")
        for ext in ("png", "svg"):
            path = out_dir / f"{stem}.{ext}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
