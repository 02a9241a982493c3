"""MVAE with modality-specific (style) latents: MoPoE Table 5's "MVAE" row (App. E.1.1, E.2)."""
from __future__ import annotations

from ..registry import METHODS
from .mvae import MVAE
from .style import STYLE_OPTIONS, StyleLatents


@METHODS.register("mvae_style")
class MVAEStyle(StyleLatents, MVAE):
    """MVAE (PoE of the content experts with a N(0, I) expert) plus a style latent s_m per modality.

    The MoPoE authors' factorized MVAE (`--method=poe --factorized_representation`, MoPoE run_epochs.py
    basic_routine_epoch and utils/utils.py calc_elbo): the joint ELBO
    Σ_m w_m NLL_m(x_m | c, s_m) + β (beta_content KL(q(c | X)) + beta_style Σ_m style_betas[m] KL(q(s_m | x_m)))
    plus, for every modality m, its unimodal ELBO
    NLL_m(x_m | c_m, s_m) (weight 1) + β (beta_content KL(q(c | x_m)) + beta_style style_betas[m] KL(q(s_m | x_m))),
    c ~ the PoE with the prior expert, s_m ~ q(s_m | x_m) drawn anew for each ELBO; each style KL thus
    enters twice, as in the authors' code. Options and the style machinery: methods/style.py.
    """

    paper = "MoPoE-VAE, ICLR 2021, Table 5 and App. E.1.1 (Wu & Goodman 2018 with modality-specific latents)"
    options = dict(STYLE_OPTIONS)

    def loss(self, x):
        full = tuple(self.names)
        subsets = [full] + [(n,) for n in self.names]
        mu, logvar, styles = self.encode_all(x, self.names)
        q = self.poe(mu, logvar, self.names, subsets)  # content: joint and unimodal PoEs in one batched op
        kl_content = q.kl_standard_normal()  # (1+M)×B
        c = q.rsample()
        # Joint ELBO: every modality from the joint content and its own style.
        joint_nll, kl_style = self.styled_terms(c[0], x, styles, self.names)
        nll = joint_nll
        kl = self.opt["beta_content"] * kl_content[0] + self.opt["beta_style"] * kl_style
        # Unimodal ELBOs: modality m from its unimodal content and its style, reconstruction weight 1.
        for i, m in enumerate(self.names):
            nll_m, kl_style_m = self.styled_terms(c[i + 1], x, styles, [m], weighted=False)
            nll = nll + nll_m
            kl = kl + self.opt["beta_content"] * kl_content[i + 1] + self.opt["beta_style"] * kl_style_m
        loss = (nll + self.beta * kl).mean()
        return loss, {"loss": loss.detach(), "nll": joint_nll.mean().detach(), "kl": kl.mean().detach(),
                      "kl_content": kl_content[0].mean().detach(), "kl_style": kl_style.mean().detach()}
