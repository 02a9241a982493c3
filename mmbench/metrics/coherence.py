"""Generation coherence (MoPoE §4, App. B): do generated modalities show the input's class?

* conditional: for every subset S and every modality m, z ~ q(z | X_S) once per test tuple (a mixture
  posterior as eval.mixture_representation says: the whole mixture or the selected component), x̂_m =
  decode(z, m), coherence = plain accuracy of m's classifier on x̂_m against the tuple's label
  (`coherence/<S>-><m>`; targets inside S included, as the authors' code);
* by number of inputs (MoPoE Fig. 3): mean over subsets of size n of the targets outside S
  (`coherence_by_n/<n>`); and over every target, those in S included (`coherence_all_by_n/<n>`: with n = 1
  the mean of the M x M matrix m -> m~, diagonal included: MM-VAMP's "average coherence of all possible
  conditional generations given a single modality" as the rats code averages it, mmvmvae-hippocampal
  mv_vaes/spike_vae.py `val/coherence/acc`; mmvampvae mv_vaes/mv_vae.py logs the PolyMNIST/CelebA matrix
  unaveraged, and `coherence_by_n/1` is its off-diagonal mean);
* joint: z ~ N(0, I), every modality decoded; the fraction of samples on which all modality
  classifiers agree (`coherence/joint`).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from ..errors import MMBenchError
from ..methods.base import evaluable_subsets, subset_key
from ..registry import METRICS
from .batched import classify, row_chunk
from .context import EvalContext


def predict(clf, model, z: torch.Tensor, m: str, block: int, chunk: int) -> torch.Tensor:
    """m's classifier's class for x̂_m = decode(z, m), every row of z, `chunk` rows per network call (z: blocks of
    `block` rows, each one subset's or one prior batch's samples; batched.classify)."""
    return classify(clf, lambda part: model.decode(part, m), z, block, chunk).argmax(1)


@METRICS.register("coherence")
@torch.no_grad()
def coherence(ctx: EvalContext) -> Dict[str, float]:
    """Conditional coherence for every (subset -> modality), its mean by number of inputs, and joint coherence."""
    if ctx.spec.multilabel:
        raise MMBenchError(f"coherence scores one label per tuple; {ctx.spec.registry_name} has multi-label attributes: "
                           f"use coherence_ap in eval.metrics")
    model, names = ctx.model, ctx.model.names
    clfs = ctx.classifiers()
    subsets = evaluable_subsets(model)
    K = len(subsets)
    chunk = row_chunk(ctx.device)
    # Counts stay on the device and are read once, after the last batch.
    correct = torch.zeros(K, len(names), dtype=torch.long, device=ctx.device)
    n_total = 0
    n_batches = (len(ctx.test) + ctx.cfg.batch_size - 1) // ctx.cfg.batch_size
    for b, (idx, x) in enumerate(ctx.batches(ctx.test)):
        y = ctx.test.labels[idx].to(ctx.device)
        z = torch.cat([q.rsample() for q in ctx.posteriors(x, subsets)])  # (K·B)×D
        for j, m in enumerate(names):
            pred = predict(clfs[m], model, z, m, len(idx), chunk).view(K, -1)
            correct[:, j] += (pred == y[None]).sum(1)
        n_total += len(idx)
        ctx.progress("coherence: conditional", b + 1, n_batches)
    acc = correct.cpu().numpy() / max(n_total, 1)
    out: Dict[str, float] = {}
    for k, s in enumerate(subsets):
        for j, m in enumerate(names):
            out[f"coherence/{subset_key(s)}->{m}"] = float(acc[k, j])
    for n in range(1, len(names)):
        vals = [acc[k, j] for k, s in enumerate(subsets) if len(s) == n for j, m in enumerate(names) if m not in s]
        if vals:
            out[f"coherence_by_n/{n}"] = float(np.mean(vals))
        every = [acc[k, j] for k, s in enumerate(subsets) if len(s) == n for j in range(len(names))]
        if every:
            out[f"coherence_all_by_n/{n}"] = float(np.mean(every))
    # Joint coherence of prior samples.
    agree, done = torch.zeros((), dtype=torch.long, device=ctx.device), 0
    while done < ctx.cfg.joint_samples:
        n = min(ctx.cfg.batch_size, ctx.cfg.joint_samples - done)
        z = model.sample_prior(n)
        preds = torch.stack([predict(clfs[m], model, z, m, n, chunk) for m in names])
        agree += (preds == preds[0:1]).all(0).sum()
        done += n
    out["coherence/joint"] = agree.item() / max(done, 1)
    return out
