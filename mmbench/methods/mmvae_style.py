"""MMVAE with modality-specific (style) latents: MoPoE Table 5's "MMVAE" row (App. E.1.1, E.2)."""
from __future__ import annotations

from ..registry import METHODS
from .mmvae import MMVAE
from .style import STYLE_OPTIONS, StyleLatents


@METHODS.register("mmvae_style")
class MMVAEStyle(StyleLatents, MMVAE):
    """MMVAE (mixture of the unimodal content posteriors) plus a style latent s_m per modality.

    The MoPoE authors' factorized MMVAE (`--method=moe --factorized_representation`, MoPoE run_epochs.py
    basic_routine_epoch): Σ_m w_m NLL_m(x_m | c, s_m) + β (beta_style Σ_m style_betas[m] KL(q(s_m|x_m) || N(0,I))
    + beta_content · mean_m KL(q_m(c | x_m) || N(0,I))), c from the row's stratified unimodal component --
    Eq. (34) with the mixture over the M unimodal subsets. Options and the style machinery: methods/style.py.
    ``encode_subsets`` returns the content posterior (a mixture of the unimodal content experts for |S| >= 2).
    """

    paper = "MoPoE-VAE, ICLR 2021, Table 5 and App. E.1.1 (Shi et al. 2019 with modality-specific latents)"
    options = dict(STYLE_OPTIONS)

    def loss(self, x):
        return self.mixture_style_loss(x)
