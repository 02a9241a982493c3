"""MoPoE-VAE with modality-specific (style) latents, as used for bimodal CelebA (MoPoE App. E.1.1, Eq. 34)."""
from __future__ import annotations

from ..registry import METHODS
from .mopoe import MoPoE
from .style import STYLE_OPTIONS, StyleLatents


@METHODS.register("mopoe_style")
class MoPoEStyle(StyleLatents, MoPoE):
    """MoPoE with a shared content latent c (mixture of subset PoEs) plus a style latent s_m per modality (Eq. 34).

    * ``method.latent_dim`` is the content size (the paper: 32; the authors' CelebA job: 20, MoPoE job_celeba).
    * Options ``style_dim`` (default 32, App. E.2), ``beta_style`` (2.0), ``beta_content`` (1.0) and
      ``style_betas`` (img 1.0, text 5.0): the CelebA job's values; the style machinery is methods/style.py.
    * Loss (the authors' factorized objective): Σ_m w_m NLL_m(x_m | c, s_m)
      + β (beta_style Σ_m style_betas[m] KL(q(s_m|x_m) || N(0,I)) + beta_content · mean_S KL(q_S(c) || N(0,I))),
      c from the stratified mixture component, s_m from q(s_m | x_m).
    * Interface: ``encode_subsets`` returns the *content* posterior (latent classification reads the shared
      space, as the paper); ``decode``/``rec_log_prob`` draw a prior style for a content-sized z.
    """

    paper = "MoPoE-VAE, ICLR 2021, App. E.1.1, Eq. (34)"
    options = dict(STYLE_OPTIONS)

    def loss(self, x):
        return self.mixture_style_loss(x)
