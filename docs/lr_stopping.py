"""Latent accuracy of finished runs with both regressions (docs/provenance.md, "latent regression: which scikit-learn
fits it"): "0.20" (metrics/logistic020.py, MoPoE's pinned scikit-learn 0.20: the mopoe and smvae protocols' fit since
2026-12-06) and "current" (the installed scikit-learn: every protocol's fit before). Each run's own eval settings, test
tuples and regression rows, as evaluate.py builds them.

    make quickstart                      # or any runs with latent_classification among their metrics
    python docs/lr_stopping.py [RUNS]    # RUNS: ./runs (or $MMBENCH_RUNS); data ./data (or $MMBENCH_DATA)
"""
import os
import sys
from pathlib import Path

import torch

from mmbench.evaluate import eval_context
from mmbench.metrics import latent
from mmbench.results import Run, parse_config
from mmbench.train import load_trained

runs = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MMBENCH_RUNS", "runs"))
data = Path(os.environ.get("MMBENCH_DATA", "data"))
rows = []
for d in sorted(p for p in runs.iterdir() if (p / "metrics.json").exists()):
    _, cfg = parse_config((d / "config.yaml").read_bytes(), str(d / "config.yaml"))
    if "latent_classification" not in cfg.eval.metrics:
        continue
    run = Run(cfg, runs)
    ctx = eval_context(run, load_trained(run, torch.device("cpu")), torch.device("cpu"), data)
    got = {}
    for rule in ("0.20", "current"):
        latent.LR_SKLEARN[cfg.eval.lr_protocol] = rule
        torch.manual_seed(cfg.seed + 1)  # as evaluate.py seeds it (eval_context), again for the second fit
        got[rule] = latent.latent_classification(ctx)
    keys = sorted(k for k in got["0.20"] if k.startswith("latent_acc_by_n/"))
    for k in keys:
        rows.append((run.id, k, got["0.20"][k], got["current"][k]))
print(f"{'run':48} {'key':20} {'0.20':>8} {'current':>8} {'diff':>8}")
for rid, k, s, m in rows:
    print(f"{rid:48} {k:20} {s:8.4f} {m:8.4f} {s - m:+8.4f}")
