"""Reconstruction error on the test set (MM-VAMP Figs. 3-5 x-axis: all inputs; Figs. 8-9: self-reconstruction).

The papers' "reconstruction loss" is the authors' logged reconstruction term: per test tuple
Σ_m rec_w_m · (-log p(x_m | z)), the likelihood's negative log-density summed over the modality's
dimensions (Laplace, scale 0.75, for PolyMNIST images), with one reparameterised z (mmvmvae
mv_vaes/mv_vae.py compute_rec_loss; all rec_w are 1 on PolyMNIST). MM-VAMP App. B.2.3 defines the two settings:

* all inputs (Fig. 3): z ~ q(z | X) of the full set decodes every modality -- for methods with a latent
  per modality (``own_latent_per_modality``: independent VAEs, MM-VAMP) each modality is decoded from its
  own posterior q(z | x_m), as those models reconstruct ("for the latter two methods nothing changes");
* self-reconstruction (Fig. 8): z ~ q(z | x_m) decodes x_m; Fig. 8's x-axis is the sum over modalities.

Keys (averages over the test tuples, ``eval.test_samples``):
``recon/joint-><m>`` and ``recon/<m>-><m>``: -log p(x_m | z), unweighted;
``recon/joint`` = Σ_m rec_w_m · recon/joint-><m> (Fig. 3); ``recon/self`` = Σ_m rec_w_m · recon/<m>-><m>
(Fig. 8); ``recon/self_mean`` = the unweighted mean of recon/<m>-><m> over modalities;
``recon_mse/...`` the same keys (without self_mean) for the squared error of the likelihood's mean,
summed over the modality's dimensions (a text modality: its softmax against the one-hot characters);
the MSE is reported because MM-VAMP App. A.1 (Fig. 7) compares against an autoencoder's MSE.
"""
from __future__ import annotations

from typing import Dict

import torch

from ..errors import MMBenchError
from ..methods.base import subset_key
from ..registry import METRICS
from .context import EvalContext


@METRICS.register("reconstruction")
@torch.no_grad()
def reconstruction(ctx: EvalContext) -> Dict[str, float]:
    """Negative log-likelihood and squared error of reconstructions from all inputs and from each modality alone."""
    model, names = ctx.model, ctx.model.names
    own = getattr(model, "own_latent_per_modality", False)
    full = tuple(names)
    # Self-reconstruction needs q(z | x_m); a method that infers z only from all inputs gets recon/joint only.
    alone = [m for m in names if model.supports((m,))]
    subsets = [full] + [(m,) for m in alone if (m,) != full]
    sums = {(kind, src, m): 0.0 for kind in ("nll", "mse") for src in ("joint", "self") for m in names}
    n = 0
    n_batches = (len(ctx.test) + ctx.cfg.batch_size - 1) // ctx.cfg.batch_size
    for b, (idx, x) in enumerate(ctx.batches(ctx.test)):
        qs = dict(zip(subsets, ctx.posteriors(x, subsets)))  # eval.mixture_representation
        z_full = qs[full].rsample()
        for m in names:
            z_self = (qs[(m,)].rsample() if (m,) != full else z_full) if m in alone else None
            # MM-VAMP App. B.2.3: per-modality-latent models reconstruct from q(z | x_m) given all inputs too.
            pairs = [("joint", z_self if own else z_full)] + ([("self", z_self)] if z_self is not None else [])
            for src, z in pairs:
                nll = -model.rec_log_prob(z, x, m)
                mse = (model.decode(z, m) - x[m]).pow(2).flatten(1).sum(1)
                sums["nll", src, m] += nll.double().sum().item()
                sums["mse", src, m] += mse.double().sum().item()
        n += len(idx)
        ctx.progress("reconstruction", b + 1, n_batches)
    if n == 0:
        raise MMBenchError("reconstruction has no test tuples; check eval.test_samples")
    w = model.rec_weights
    out: Dict[str, float] = {}
    for kind, prefix in (("nll", "recon"), ("mse", "recon_mse")):
        weight = (lambda m: w[m]) if kind == "nll" else (lambda m: 1.0)
        for m in names:
            out[f"{prefix}/joint->{m}"] = sums[kind, "joint", m] / n
        out[f"{prefix}/joint"] = sum(weight(m) * out[f"{prefix}/joint->{m}"] for m in names)
        if len(alone) == len(names):
            for m in names:
                out[f"{prefix}/{subset_key((m,))}->{m}"] = sums[kind, "self", m] / n
            out[f"{prefix}/self"] = sum(weight(m) * out[f"{prefix}/{m}->{m}"] for m in names)
    if len(alone) == len(names):
        out["recon/self_mean"] = sum(out[f"recon/{m}->{m}"] for m in names) / len(names)
    return out
