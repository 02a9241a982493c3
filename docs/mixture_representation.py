"""The quickstart's MMVAE latent accuracy with both eval.mixture_representation choices, on one trained model.

Train (or reuse) the quickstart's MMVAE run -- `make quickstart` trains exactly this run -- then evaluate its
latent classification twice, "mean" (the average of the unimodal means) and "component" (the MMVAE authors'
evaluation: each row reads the one unimodal component of the contiguous-block rule):

    mmbench train polydigits mmvae --variant vanilla --set method.latent_dim=64 --set method.beta=1.0 \
        --set method.image_likelihood=gaussian --set train.epochs=5 --set train.batch_size=32 \
        --set train.lr=2.0e-3 --set eval.classifier_epochs=6 --set eval.classifier_min_accuracy=0.9
    python docs/mixture_representation.py        # runs ./runs (or $MMBENCH_RUNS), data ./data (or $MMBENCH_DATA)
"""
import dataclasses
import json
import os
from pathlib import Path

import torch

from mmbench.config import build_run_config
from mmbench.metrics.context import EvalContext
from mmbench.metrics.latent import latent_classification
from mmbench.registry import DATASETS
from mmbench.results import Run
from mmbench.train import load_data, load_trained

runs, data = Path(os.environ.get("MMBENCH_RUNS", "runs")), Path(os.environ.get("MMBENCH_DATA", "data"))
cfg = build_run_config({"dataset": "polydigits", "variant": "vanilla", "seed": 0,  # suites/quickstart.yaml's MMVAE
                        "method": {"name": "mmvae", "latent_dim": 64, "beta": 1.0, "image_likelihood": "gaussian"},
                        "train": {"epochs": 5, "batch_size": 32, "lr": 2.0e-3},
                        "eval": {"classifier_epochs": 6, "classifier_min_accuracy": 0.9}})
run = Run(cfg, runs)
model = load_trained(run, torch.device("cpu"))
train, test_full = load_data(cfg, data)
print(run.id)
for rep in ("mean", "component"):
    ecfg = dataclasses.replace(cfg.eval, mixture_representation=rep)
    ctx = EvalContext(model=model, spec=DATASETS.get(cfg.dataset)(), variant=cfg.variant, train=train,
                      test=test_full.subset(ecfg.test_samples, seed=2), test_full=test_full, cfg=ecfg,
                      device=torch.device("cpu"), data_root=data)
    torch.manual_seed(cfg.seed + 1)  # as evaluate.py
    acc = latent_classification(ctx)
    print(rep, json.dumps({k: round(v, 4) for k, v in acc.items() if k.startswith("latent_acc_by_n")}))
