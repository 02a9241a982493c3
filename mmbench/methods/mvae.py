"""MVAE: product of experts with a prior expert, joint ELBO plus unimodal ELBOs (MoPoE utils/BaseMMVae.py
poe_fusion with flag modality_poe, run_epochs.py with poe_unimodal_elbos, set in main_*.py)."""
from __future__ import annotations

from ..registry import METHODS
from .base import MultimodalVAE, PoEMixin

# What weighs each unimodal ELBO's reconstruction: "one" = weight 1 (MoPoE run_epochs.py basic_routine_epoch, the
# authors' MVAE); "rec_weights" = the modality's likelihood scaling, as every likelihood in SMVAE §5 ("divided each
# likelihood by the dimension of each modality and multiplied the largest dimension value by all likelihoods").
UNIMODAL_WEIGHTS = ("one", "rec_weights")


@METHODS.register("mvae")
class MVAE(PoEMixin, MultimodalVAE):
    """MVAE: PoE with a N(0, I) expert; joint ELBO + one ELBO per single modality (MoPoE Eqs. 7-8, authors' code)."""

    paper = "MoPoE-VAE, ICLR 2021, Eqs. (7)-(8) (Wu & Goodman 2018 as implemented by the MoPoE authors)"
    properties = {"posterior form": "PoE", "aggregate modalities": "yes",
                  "multi-modal posterior": "no", "missing modalities": "(yes): needs sub-sampled unimodal ELBOs"}  # MoPoE Table 1
    options = {"unimodal_weights": "one"}
    option_rules = {"unimodal_weights": {"choices": UNIMODAL_WEIGHTS}}

    def prior_expert(self, subset) -> bool:
        return True

    def loss(self, x):
        full = tuple(self.names)
        subsets = [full] + [(n,) for n in self.names]
        mu, logvar = self.unimodal(x, self.names)
        q = self.poe(mu, logvar, self.names, subsets)  # joint and unimodal PoEs in one batched op
        kl = q.kl_standard_normal()  # (1+M)×B
        z = q.rsample()
        joint_nll = self.weighted_nll(z[0], x)
        # Unimodal ELBOs reconstruct only their own modality: weight 1 (the authors' code) or its rec_weight.
        weighted = self.opt["unimodal_weights"] == "rec_weights"
        uni_nll = sum(self.weighted_nll(z[i + 1], x, [n], weighted=weighted) for i, n in enumerate(self.names))
        loss = (joint_nll + uni_nll + self.beta * kl.sum(0)).mean()
        return loss, {"loss": loss.detach(), "nll": joint_nll.mean().detach(), "kl": kl[0].mean().detach()}
