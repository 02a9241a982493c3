"""MoPoE-VAE: a mixture of the products of experts of all 2^M - 1 subsets (Sutter et al., ICLR 2021)."""
from __future__ import annotations

import torch

from ..registry import METHODS
from .base import MultimodalVAE, PoEMixin, all_subsets, stratified_components


@METHODS.register("mopoe")
class MoPoE(PoEMixin, MultimodalVAE):
    """MoPoE-VAE: mixture over all subsets of products of experts (MoPoE Def. 1, Eq. 6)."""

    paper = "MoPoE-VAE, ICLR 2021, Def. 1 and Eq. (6)"
    properties = {"posterior form": "MoPoE", "aggregate modalities": "yes",
                  "multi-modal posterior": "yes", "missing modalities": "yes"}  # MoPoE Table 1

    def prior_expert(self, subset) -> bool:
        # The authors' code adds the N(0, I) expert only to the full subset (MoPoE utils/BaseMMVae.py poe_fusion).
        return len(subset) == len(self.names)

    def mixture_subsets(self):
        return all_subsets(self.names)

    def loss(self, x):
        subsets = self.mixture_subsets()
        mu, logvar = self.unimodal(x, self.names)
        comps = self.poe(mu, logvar, self.names, subsets)  # K×B×D, one batched op
        B = mu.shape[1]
        # The average of the subset posteriors' KLs: Eq. (12)'s convex combination of subset ELBOs (a looser bound
        # than Eq. (6)'s KL of the mixture, App. A.3), as the MoPoE code (divergence_measures/mm_div.py
        # calc_group_divergence_moe).
        kl = comps.kl_standard_normal().mean(0)
        # One joint sample per row from its (stratified) mixture component; it reconstructs every modality.
        k = stratified_components(B, len(subsets), mu.device)
        z = comps[k, torch.arange(B, device=mu.device)].rsample()
        nll = self.weighted_nll(z, x)
        loss = (nll + self.beta * kl).mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach()}
