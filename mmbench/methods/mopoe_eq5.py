"""The Eq. (5) objective of MoPoE Table 7: every subset's ELBO L_k(θ, φ_k; X), averaged.

Same posteriors as MoPoE (products of experts of every subset, the N(0, I) expert in the full set
only), but instead of one sample from the mixture per row, *every* subset posterior q(z | X_k) draws a
sample that reconstructs *every* modality (MoPoE Eq. 4), and the 2^M - 1 ELBOs are averaged with
uniform weights (the convex combination of Eq. 5). It costs 2^M - 1 decoder passes per modality per
step where MoPoE needs one, which is the paper's reason for Definition 1 (App. C.4).
"""
from __future__ import annotations

from ..registry import METHODS
from .mopoe import MoPoE


@METHODS.register("mopoe_eq5")
class MoPoEEq5(MoPoE):
    """Average of all subset ELBOs, each subset posterior reconstructing all modalities (MoPoE Eqs. 4-5, Table 7)."""

    paper = "MoPoE-VAE, ICLR 2021, Eqs. (4)-(5) and Table 7"
    properties = {"posterior form": "PoE per subset", "aggregate modalities": "yes",
                  "multi-modal posterior": "yes", "missing modalities": "yes"}

    def loss(self, x):
        subsets = self.mixture_subsets()
        mu, logvar = self.unimodal(x, self.names)
        comps = self.poe(mu, logvar, self.names, subsets)  # K×B×D
        K, B, D = comps.mu.shape
        z = comps.rsample().reshape(K * B, D)  # one sample from each subset posterior, all at once
        xk = {m: v.repeat(K, *([1] * (v.dim() - 1))) for m, v in x.items()}  # rows k·B + b <- x[b]
        nll = self.weighted_nll(z, xk).view(K, B)  # Eq. (4): q(z | X_k) reconstructs all of X
        kl = comps.kl_standard_normal()  # K×B
        elbo_terms = nll + self.beta * kl
        loss = elbo_terms.mean()  # Eq. (5): uniform convex combination over the 2^M - 1 subsets
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach()}
