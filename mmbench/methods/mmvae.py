"""MMVAE as in the MoPoE code: a mixture of the unimodal posteriors (MoPoE utils/BaseMMVae.py moe_fusion,
fusion_condition_moe)."""
from __future__ import annotations

from ..registry import METHODS
from .base import unimodal_mixtures
from .mopoe import MoPoE


@METHODS.register("mmvae")
class MMVAE(MoPoE):
    """MMVAE: mixture of unimodal experts, stratified ELBO with averaged KL (MoPoE Eqs. 9-10, authors' code)."""

    paper = "MoPoE-VAE, ICLR 2021, Eqs. (9)-(10) (Shi et al. 2019 as implemented by the MoPoE authors)"
    properties = {"posterior form": "MoE", "aggregate modalities": "no",
                  "multi-modal posterior": "yes", "missing modalities": "yes"}  # MoPoE Table 1

    def prior_expert(self, subset) -> bool:
        return False

    def mixture_subsets(self):
        return [(n,) for n in self.names]

    def encode_subsets(self, x, subsets):
        # q(z | X_S) = uniform mixture of the unimodal posteriors of the modalities in S.
        return unimodal_mixtures(self, x, subsets)
