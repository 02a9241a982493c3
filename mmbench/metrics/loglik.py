"""Test log-likelihood by importance sampling (MoPoE App. B, Table 4, Fig. 3 right; Burda et al. 2016).

For every input subset S, the proposal is the subset posterior q(z | X_S) and

    log p(X) ≈ logsumexp_k [ log p(X | z_k) + log p(z_k) - log q(z_k | X_S) ] - log K,   z_k ~ q(z | X_S),

with log p(X | z) = Σ_m log p(x_m | z) from the model's own likelihoods, unweighted (the rec_weight
of training is not part of the generative model). K = ``eval.ll_samples`` (default 15, MoPoE App. B;
the released code uses 12). The weight divides by exactly the density sampled from. A ``Mixture``
posterior (MMVAE, |S| >= 2) is used as ``eval.ll_proposal`` says: "mixture" (default) samples the
mixture (a component per draw) and divides by the mixture density; "component" (the MoPoE authors'
proposal: their `moe_fusion` gives each test row one unimodal component by the contiguous-block rule)
samples that row's component and divides by its density. Both are unbiased estimators of p(X); sampling
one component but dividing by the mixture density would not be. The estimate is a stochastic lower bound
that tightens as K grows; it is averaged over the test tuples (``eval.test_samples``). The released
MoPoE code's reshape bug, which mixes data points inside a logmeanexp (MoPoE utils/likelihood.py
log_marginal_estimate: the (K·B) weights viewed as (B, K)), is not
reproduced.

Keys, for every subset the method can encode (``supports``): ``loglik/<S>`` (log p(X) with proposal
q(z | X_S); the full set's key joins all names with +),
``loglik/joint`` (= the full set's), ``loglik_by_n/<n>`` (mean over subsets of size n; MoPoE Fig. 3
right) and ``loglik_mod/<S>-><m>`` (log p(x_m) with the same proposal and samples: the per-modality
"marginals" of the authors' code).

The prior is N(0, I) (every method's `sample_prior`); a method with another prior must define
``prior_log_prob(z)``, and one that overrides `sample_prior` without it is refused. Methods with a
latent per modality (``own_latent_per_modality``) have no single shared z, so the estimator does not
apply and is refused.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch

from ..errors import MMBenchError
from ..methods.base import LOG_2PI, MultimodalVAE, evaluable_subsets, subset_key
from ..registry import METRICS
from .batched import rec_log_probs, row_chunk
from .context import EvalContext


def prior_log_prob(model, z: torch.Tensor) -> torch.Tensor:
    """log p(z) per row: the model's `prior_log_prob` if it has one, else the standard normal."""
    own = getattr(model, "prior_log_prob", None)
    if own is not None:
        return own(z)
    custom = getattr(type(model), "sample_prior", None)
    if isinstance(model, MultimodalVAE) and custom is not MultimodalVAE.sample_prior:
        raise MMBenchError(f"method {getattr(model, 'registry_name', type(model).__name__)} overrides sample_prior "
                           f"but has no prior_log_prob(z); loglik needs the prior's density")
    return -0.5 * (LOG_2PI + z ** 2).sum(-1)


@torch.no_grad()
def importance_sampled(model, x: Dict[str, torch.Tensor], subsets, K: int, proposal: str = "mixture"):
    """Per-tuple estimates for every subset proposal: (S×B joint log p(X), S×B×M per-modality log p(x_m)).

    `proposal` (eval.ll_proposal) for a mixture posterior: "mixture" or its "component" selected per row.

    The K·S·B draws of a test batch (every sample of every subset) go through each decoder together, in
    chunks sized for the device (metrics/batched.py).
    """
    names = model.names
    qs = [q.represent(proposal) for q in model.encode_subsets(x, subsets)]
    S = len(subsets)
    # Every draw first, sample by sample and subset by subset: the RNG order of one sample at a time.
    zs, log_q = None, []
    for k in range(K):
        for s, q in enumerate(qs):
            z = q.rsample()  # B×D, z ~ q(z | X_S) (a Mixture samples a component per row)
            if zs is None:  # every draw written once into one K×S×B×D tensor (no stacking copies)
                zs = z.new_empty(K, S, *z.shape)
            zs[k, s] = z
        log_q.append(torch.stack([q.log_prob(zs[k, s]) for s, q in enumerate(qs)]))  # S×B, the density sampled from
    B = zs.shape[2]
    flat = zs.view(K * S * B, -1)  # row (k·S + s)·B + b: sample k of subset s for tuple b
    log_pz = prior_log_prob(model, flat).view(K, S, B)
    rec = rec_log_probs(model, flat, x, names, row_chunk(flat.device)).view(K, S, B, len(names))
    base = log_pz - torch.stack(log_q)  # K×S×B
    log_k = math.log(K)
    # MoPoE App. B: log (1/K) Σ_k w_k, in log space.
    joint = torch.logsumexp(rec.sum(-1) + base, 0) - log_k
    per_mod = torch.logsumexp(rec + base[..., None], 0) - log_k
    return joint, per_mod


@METRICS.register("loglik")
@torch.no_grad()
def loglik(ctx: EvalContext) -> Dict[str, float]:
    """Importance-sampled test log-likelihood per subset proposal (`loglik/<S>`, `loglik/joint`, `loglik_by_n/<n>`,
    `loglik_mod/<S>-><m>`; MoPoE Table 4 and Fig. 3)."""
    model, names = ctx.model, ctx.model.names
    if getattr(model, "own_latent_per_modality", False):
        raise MMBenchError(f"loglik assumes one latent shared by all modalities; method "
                           f"{getattr(model, 'registry_name', type(model).__name__)} has one per modality; "
                           f"remove loglik from eval.metrics (use reconstruction)")
    likelihoods = getattr(model, "likelihoods", {})
    unnormalised = [m for m in names if not getattr(likelihoods.get(m), "normalised", True)]
    if unnormalised:  # e.g. the rats' summed squared error: a log-likelihood would be off by a constant
        raise MMBenchError(f"loglik needs normalised likelihoods; modalities {', '.join(unnormalised)} use one without "
                           f"its constant (sse); remove loglik from eval.metrics (use reconstruction)")
    subsets = evaluable_subsets(model)  # every subset the method can encode (all but for joint-encoder VAEs)
    K = ctx.cfg.ll_samples
    # Sums stay on the device and are read once, after the last batch.
    joint_sum = torch.zeros(len(subsets), dtype=torch.float64, device=ctx.device)
    mod_sum = torch.zeros(len(subsets), len(names), dtype=torch.float64, device=ctx.device)
    n = 0
    n_batches = (len(ctx.test) + ctx.cfg.batch_size - 1) // ctx.cfg.batch_size
    for b, (idx, x) in enumerate(ctx.batches(ctx.test)):
        joint, per_mod = importance_sampled(model, x, subsets, K, ctx.cfg.ll_proposal)
        joint_sum += joint.double().sum(1)
        mod_sum += per_mod.double().sum(1)
        n += len(idx)
        ctx.progress("log-likelihood", b + 1, n_batches)
    if n == 0:
        raise MMBenchError("loglik has no test tuples; check eval.test_samples")
    joint_mean, mod_mean = (joint_sum / n).cpu().tolist(), (mod_sum / n).cpu().tolist()
    out: Dict[str, float] = {}
    for k, s in enumerate(subsets):
        out[f"loglik/{subset_key(s)}"] = joint_mean[k]
        for j, m in enumerate(names):
            out[f"loglik_mod/{subset_key(s)}->{m}"] = mod_mean[k][j]
    if f"loglik/{subset_key(names)}" in out:
        out["loglik/joint"] = out[f"loglik/{subset_key(names)}"]
    for size in sorted({len(s) for s in subsets}):
        out[f"loglik_by_n/{size}"] = float(np.mean([joint_mean[k] for k, s in enumerate(subsets) if len(s) == size]))
    return out
