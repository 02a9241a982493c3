"""Independent VAEs: one VAE per modality, each with its own N(0, I) prior (MM-VAMP paper baseline, Fig. 1a)."""
from __future__ import annotations

from ..registry import METHODS
from .base import Gaussian, MultimodalVAE, unimodal_mixtures

BETA_CONVENTIONS = ("paper", "code")


@METHODS.register("independent")
class Independent(MultimodalVAE):
    """Independent VAEs: per-modality ELBO with a N(0, I) prior, no sharing between modalities (MM-VAMP §5 baseline).

    Loss: Σ_m [ rec_w_m · (-log p(x_m | z_m)) + β' · KL(q_m(z_m | x_m) || N(0, I)) ], z_m ~ q_m, each
    modality decoded only by its own decoder (MM-VAMP Fig. 1a).

    Option `beta_convention` (default "paper"): "paper" weights each KL by β, as the paper's β-VAE
    description (§5, "β weighting the rate term R"); "code" weights it by β², as the authors' mmvmvae
    code does (mmvmvae mv_vaes/mv_unimodal_vae.py compute_loss: per-modality betas[m] = β inside the KL sum,
    then the sum times β again), so that a β taken from the authors' scripts reproduces their runs.

    Conditional generation and representations: for a subset S, z comes from the uniform mixture of
    the unimodal posteriors q_m, m in S (a single modality: its own q_m, as the authors' m -> m̃
    coherence evaluation draws z ~ q_m and decodes it with decoder m̃); latent classification uses its
    mean. The latent spaces of different modalities are never aligned, so cross-modal coherence is
    expected at chance level; only m -> m (self-reconstruction) is meaningful. `sample_prior` draws
    N(0, I), every modality's own prior.
    """

    paper = "MM-VAMP VAE (Sutter et al. 2024), §5 baselines and Fig. 1a (Kingma & Welling 2014)"
    own_latent_per_modality = True  # z_m per modality (Fig. 1a); metrics read it (MMVAMP inherits it)
    options = {"beta_convention": "paper"}
    option_rules = {"beta_convention": {"choices": BETA_CONVENTIONS}}

    def encode_subsets(self, x, subsets):
        return unimodal_mixtures(self, x, subsets)

    def kl_weight(self) -> float:
        # mmvmvae mv_vaes/mv_unimodal_vae.py compute_loss: KL weight β·β in the authors' code.
        return self.beta ** 2 if self.opt["beta_convention"] == "code" else self.beta

    def rate(self, q: Gaussian, z):
        """M×B rate terms (z: the M×B×D samples z_m ~ q_m); here KL(q_m || N(0, I)) in closed form."""
        return q.kl_standard_normal()

    def loss(self, x):
        mu, logvar = self.unimodal(x, self.names)  # M×B×D
        q = Gaussian(mu, logvar)
        z = q.rsample()  # z_m ~ q_m(z_m | x_m), one reparameterised sample per modality
        # Each modality reconstructed from its own latent only (MM-VAMP Eq. 2 / Fig. 1a).
        nll = sum(self.weighted_nll(z[i], x, [m]) for i, m in enumerate(self.names))
        kl = self.rate(q, z).sum(0)
        loss = (nll + self.kl_weight() * kl).mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach()}
