"""Modality-specific (style) latents for any shared-latent method (MoPoE App. E.1.1, Eq. 34): the mixin that
mopoe_style, mvae_style and mmvae_style share. Not a method itself (nothing is registered here)."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import torch

from ..errors import MMBenchError
from .base import Gaussian, randn_like, stratified_components

# The MoPoE authors' CelebA job (MoPoE job_celeba): style_dim 32 (App. E.2), beta_style 2.0, beta_content 1.0,
# beta_m1_style (img) 1.0, beta_m2_style (text) 5.0.
STYLE_OPTIONS = {"style_dim": 32, "beta_style": 2.0, "beta_content": 1.0, "style_betas": {"img": 1.0, "text": 5.0}}
# The betas weigh KL divergences as method.beta does (Eq. 34, all 1), so they are >= 0 as it is.
STYLE_RULES = {"style_dim": {"ge": 1}, "beta_style": {"ge": 0}, "beta_content": {"ge": 0}, "style_betas": {"ge": 0}}


class StyleLatents:
    """A shared content latent c (fused by the host method) plus a style latent s_m per modality.

    Put it before the host method in the bases (``class MVAEStyle(StyleLatents, MVAE)``); the host's
    ``unimodal`` then returns the content experts only, so its subset posteriors (PoE, mixture, ...) are
    over the content.

    * ``method.latent_dim`` is the content size; option ``style_dim`` the size of every s_m.
    * Encoders: the architecture's encoder with output size content+style, split into the content expert
      (first ``latent_dim`` dims) and q(s_m | x_m) (the rest); a split linear head is the same function as
      the authors' separate content and style heads.
    * Decoders: the architecture's decoder with input size content+style, fed [c, s_m].
    * Weights: ``beta_style``, ``beta_content`` and ``style_betas`` (per modality name; modalities not
      named weigh 1.0), defaults from the authors' CelebA job; Eq. (34) itself has all weights 1.
    * ``decode(z, m)`` and ``rec_log_prob(z, x, m)`` take z of the content size and draw s_m ~ N(0, I) --
      the MoPoE code's random styles for conditional and prior generation (MoPoE utils/BaseMMVae.py
      cond_generation, generate); a prior style is also a valid importance proposal for s_m, so likelihood
      estimates stay unbiased. A z of size content+style is used as given ([c, s_m]).
    """

    option_rules = STYLE_RULES

    def __init__(self, modalities, cfg, architecture):
        self.check_options(cfg.options, [m.name for m in modalities])  # style_dim is read before the base class's check
        style_dim = {**self.options, **cfg.options}["style_dim"]
        # Encoders and decoders are built for content+style dims; the model's latent is the content.
        super().__init__(modalities, dataclasses.replace(cfg, latent_dim=cfg.latent_dim + style_dim), architecture)
        self.cfg, self.latent_dim, self.style_dim = cfg, cfg.latent_dim, style_dim
        betas = {**self.options["style_betas"], **cfg.options.get("style_betas", {})}
        self.style_betas = {m: float(betas.get(m, 1.0)) for m in self.names}

    def encode_all(self, x, names):
        """Content experts (len(names)×B×D mu, logvar) and the style posteriors {m: Gaussian}."""
        mus, logvars, styles = [], [], {}
        for n in names:
            mu, logvar = self.encoders[n](x[n])
            mus.append(mu[:, :self.latent_dim])
            logvars.append(logvar[:, :self.latent_dim])
            styles[n] = Gaussian(mu[:, self.latent_dim:], logvar[:, self.latent_dim:])
        return torch.stack(mus), torch.stack(logvars), styles

    def unimodal(self, x, names):
        # Only the content experts enter the host method's fusion (its encode_subsets reads this).
        mu, logvar, _ = self.encode_all(x, names)
        return mu, logvar

    def with_style(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] == self.latent_dim + self.style_dim:
            return z
        if z.shape[-1] != self.latent_dim:
            raise MMBenchError(f"{self.registry_name} decodes z of {self.latent_dim} (content) or "
                               f"{self.latent_dim + self.style_dim} (content+style) dims, got {z.shape[-1]}")
        return torch.cat([z, randn_like(z.new_empty(*z.shape[:-1], self.style_dim))], -1)

    def decode(self, z, modality):
        return self.likelihoods[modality].mean(self.decoders[modality](self.with_style(z)))

    def rec_log_prob(self, z, x, modality):
        return self.likelihoods[modality].log_prob(self.decoders[modality](self.with_style(z)), x[modality])

    def styled_terms(self, c: torch.Tensor, x, styles: Dict[str, Gaussian], modalities: Sequence[str],
                     weighted: bool = True):
        """Per sample: Σ_m w_m NLL(x_m | c, s_m), s_m ~ q(s_m | x_m), and Σ_m style_betas[m] KL(q(s_m | x_m) || N(0, I))
        over `modalities` (w_m = rec_weight, or 1 with weighted=False). Eq. (34)'s per-modality terms."""
        nll, kl = 0.0, 0.0
        for m in modalities:
            s = styles[m].rsample()
            w = self.rec_weights[m] if weighted else 1.0
            nll = nll - w * self.rec_log_prob(torch.cat([c, s], -1), x, m)
            kl = kl + self.style_betas[m] * styles[m].kl_standard_normal()
        return nll, kl

    def mixture_style_loss(self, x, subsets: Optional[Sequence] = None):
        """Eq. (34) for a mixture of subset posteriors (MoPoE: all subsets; MMVAE: the unimodal ones), the authors'
        factorized objective: Σ_m w_m NLL_m(x_m | c, s_m) + β (beta_style Σ_m style_betas[m] KL(s_m) +
        beta_content · mean_S KL(q_S(c) || N(0, I))), c from the row's stratified mixture component."""
        subsets = subsets or self.mixture_subsets()
        mu, logvar, styles = self.encode_all(x, self.names)
        comps = self.poe(mu, logvar, self.names, subsets)  # K×B×D content posteriors, one batched op
        B = mu.shape[1]
        # Content: the average of the subset KLs, an upper bound on Eq. (34)'s KL of the mixture (Eq. (12)'s form
        # against Eq. (6), App. A.3), as the MoPoE code (divergence_measures/mm_div.py calc_group_divergence_moe).
        kl_content = comps.kl_standard_normal().mean(0)
        k = stratified_components(B, len(subsets), mu.device)
        c = comps[k, torch.arange(B, device=mu.device)].rsample()
        # Eq. (34): x_m is reconstructed from the shared c and its own style s_m ~ q(s_m | x_m).
        nll, kl_style = self.styled_terms(c, x, styles, self.names)
        kl = self.opt["beta_style"] * kl_style + self.opt["beta_content"] * kl_content
        loss = (nll + self.beta * kl).mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach(),
                      "kl_content": kl_content.mean().detach(), "kl_style": kl_style.mean().detach()}
