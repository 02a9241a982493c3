"""Aggregated VAE: one joint posterior averaged from the unimodal ones (MM-VAMP paper baseline, App. B.2, Hosoya 2018)."""
from __future__ import annotations

import math

import torch

from ..registry import METHODS
from .base import Gaussian, MultimodalVAE, product_of_experts
from .independent import BETA_CONVENTIONS

AGGREGATIONS = ("avg", "poe")
AVERAGES = ("variance", "std")


def average_experts(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor, average: str = "variance") -> Gaussian:
    """K×B×D averaged posteriors of K subsets (MM-VAMP Eqs. 15-16): mean of the means, mean of the variances
    (average="variance") or of the standard deviations (average="std"). mu, logvar: M×B×D; mask: K×M."""
    w = mask.to(mu.dtype)
    w = w / w.sum(1, keepdim=True)
    mean = torch.einsum("km,mbd->kbd", w, mu)
    if average == "variance":
        # log Σ_m w_m e^{logvar_m}, stably
        logw = torch.log(w.clamp_min(1e-30)).masked_fill(w == 0, -math.inf)
        logvar_s = torch.logsumexp(logw[:, :, None, None] + logvar[None], 1)
    else:
        logvar_s = 2 * torch.log(torch.einsum("km,mbd->kbd", w, (0.5 * logvar).exp()))
    return Gaussian(mean, logvar_s)


@METHODS.register("aggregated")
class Aggregated(MultimodalVAE):
    """Aggregated VAE: joint posterior = average of the unimodal posteriors, every modality decoded from one z (MM-VAMP App. B.2).

    Loss: rec_w-weighted Σ_m -log p(x_m | z) + β' · KL(q_s(z | X) || N(0, I)), z ~ q_s, q_s = N(μ_s, σ_s)
    with μ_s = 1/M Σ_m μ_m (Eq. 15) and σ_s = 1/M Σ_m σ_m (Eq. 16; MM-VAMP Fig. 1b).

    Options:
    * `average` (default "variance"): what Eq. 16 averages. The paper writes the posteriors as
      N(μ, σ I) (Eq. 11), σ I being the covariance, and the authors' `avg` aggregation averages
      variances (mmvmvae mv_vaes/mv_vae.py aggregate_latents_avg); "std" averages the standard deviations instead,
      as the authors' rats code does (mmvampvae mv_vaes/spike_vae.py aggregate_latents on a log sigma; the rats
      entry of suites/mmvamp.yaml sets it).
    * `aggregation` (default "avg": the paper is explicit, App. B.2 Eqs. 15-16, Hosoya averaging): "poe" =
      product of the unimodal experts without a prior expert, the default of the authors'
      `JointModelConfig` (mmvampvae and mmvmvae config/ModelConfig.py), which the mmvampvae run scripts
      keep (mmvmvae run_polymnist.sh sets avg).
    * `beta_convention` (default "paper"): "paper" weights the KL by β; "code" by β·M, because the
      authors' code computes KL(q_s || N(0, I)) once per modality and sums them (mmvmvae mv_joint_vae.py compute_loss).

    Subset posteriors: q(z | X_S) = the same aggregate over the modalities in S (one modality: its own
    unimodal posterior, as the paper's App. B.2.3 missing-modality evaluation); representations are
    their means. `sample_prior` draws N(0, I), the model's prior.
    """

    paper = "MM-VAMP VAE (Sutter et al. 2024), App. B.2 Eqs. (15)-(16) (Hosoya 2018)"
    options = {"average": "variance", "aggregation": "avg", "beta_convention": "paper"}
    option_rules = {"average": {"choices": AVERAGES}, "aggregation": {"choices": AGGREGATIONS},
                    "beta_convention": {"choices": BETA_CONVENTIONS}}

    def aggregate(self, mu, logvar, names, subsets) -> Gaussian:
        mask = self.subset_mask(subsets, names, mu.device)
        if self.opt["aggregation"] == "poe":
            return product_of_experts(mu, logvar, mask, torch.zeros(len(subsets), device=mu.device))
        return average_experts(mu, logvar, mask, self.opt["average"])

    def encode_subsets(self, x, subsets):
        names = self.needed(subsets)
        mu, logvar = self.unimodal(x, names)
        g = self.aggregate(mu, logvar, names, subsets)
        return [g[k] for k in range(len(subsets))]

    def kl_weight(self) -> float:
        # mmvmvae mv_vaes/mv_joint_vae.py compute_loss: the code's KL is M · KL(q_s || N(0, I)).
        return self.beta * len(self.names) if self.opt["beta_convention"] == "code" else self.beta

    def loss(self, x):
        mu, logvar = self.unimodal(x, self.names)
        q = self.aggregate(mu, logvar, self.names, [tuple(self.names)])[0]
        z = q.rsample()  # one joint sample decodes every modality
        nll = self.weighted_nll(z, x)
        kl = q.kl_standard_normal()
        loss = (nll + self.kl_weight() * kl).mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach()}
