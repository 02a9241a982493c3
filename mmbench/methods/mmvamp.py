"""MM-VAMP VAE: per-modality posteriors regularised toward a data-dependent mixture prior (Sutter et al. 2024)."""
from __future__ import annotations

import math

import torch

from ..registry import METHODS
from .base import Gaussian
from .independent import BETA_CONVENTIONS, Independent

RATES = ("bound", "mc")


def gaussian_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, e^logvar1) || N(mu2, e^logvar2)) of diagonal Gaussians, closed form, summed over the last dim."""
    return 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2) ** 2) / logvar2.exp() - 1).sum(-1)


def rate_bound(mu: torch.Tensor, logvar: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """M×B upper bound on KL(q_m || h_α) (Jensen, convexity of KL in its 2nd argument), as the authors' code.

    mu, logvar: M×B×D unimodal posteriors. Bound = (1-α)/M Σ_m̃ KL(q_m || q_m̃) + α KL(q_m || N(0, I)),
    the self term KL(q_m || q_m) = 0 included (mmvampvae mv_vaes/mv_mixedprior_vae.py compute_loss).
    """
    M = mu.shape[0]
    pair = gaussian_kl(mu[:, None], logvar[:, None], mu[None], logvar[None])  # M×M×B, [m, m̃]
    # the weights second: on the CPU a 0-dim tensor α (an annealed one) then scales as a Python float does, not
    # rounded to a bf16 operand's precision first (the CPU rounds a leading 0-dim operand to the other's dtype)
    out = pair.sum(1) * ((1 - alpha) / M)
    if torch.is_tensor(alpha) or alpha > 0:  # a tensor α (annealed: > 0) is not read on the host
        out = out + Gaussian(mu, logvar).kl_standard_normal() * alpha
    return out


def log_mixture_prior(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """log h_α(z_m | X) for each z_m (z: M×B×D); h_α = (1-α)·(1/M) Σ_m̃ q_m̃ + α·N(0, I) (MM-VAMP Eq. 3 at α = 0)."""
    M = mu.shape[0]
    terms = []
    on_device = torch.is_tensor(alpha)  # an annealed α: both terms, a weight of 0 giving log 0 = -inf
    log = torch.log if on_device else math.log
    if on_device or alpha < 1:
        lp = Gaussian(mu[None], logvar[None]).log_prob(z[:, None])  # M×M×B: log q_m̃(z_m), [m, m̃]
        terms.append(lp + log((1 - alpha) / M))
    if on_device or alpha > 0:
        std = Gaussian(torch.zeros_like(z), torch.zeros_like(z)).log_prob(z)  # M×B
        terms.append(std[:, None] + log(alpha))
    return torch.logsumexp(torch.cat(terms, 1), 1)


def rate_mc(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """M×B one-sample unbiased estimate of KL(q_m || h_α) at z_m ~ q_m: log q_m(z_m) - log h_α(z_m) (MM-VAMP Eq. 4)."""
    return Gaussian(mu, logvar).log_prob(z) - log_mixture_prior(z, mu, logvar, alpha)


def annealed_alpha(alpha0: float, steps: int, t):
    """The authors' `exp_annealing` schedule toward a final α of 0 (mmvmvae mv_vaes/mv_vae.py exp_annealing, at
    position t of `steps`; t may be fractional, see MMVAMP.anneal_position); constant if steps = 0. t a Python
    number: a Python float; t a float64 tensor (a run's position; under vmap each run's): computed on its device in
    float64, as the Python floats compute it."""
    if steps <= 0 or alpha0 <= 0:
        return alpha0
    rate = (math.log(1e-10) - math.log(alpha0 + 1e-10)) / steps
    if torch.is_tensor(t):
        return (alpha0 * torch.exp(rate * t)).clamp_min(0.0)
    return max(alpha0 * math.exp(rate * t), 0.0)


@METHODS.register("mmvamp")
class MMVAMP(Independent):
    """MM-VAMP VAE: each q_m regularised toward the mixture of all unimodal posteriors (MM-VAMP Eqs. 1-4).

    Loss: Σ_m [ rec_w_m · (-log p(x_m | z_m)) + β · R_m ], z_m ~ q_m(z_m | x_m) decoded only by decoder m
    (Eq. 2; no cross-modal reconstruction), R_m the rate of KL(q_m || h), h(z | X) = 1/M Σ_m̃ q_m̃(z | x_m̃)
    (Eq. 3); Σ_m KL(q_m || h) = M · JS(q_1, ..., q_M) (Eq. 4).

    Options:
    * `rate` (default "bound", what the authors' code optimises, for reproduction): "bound" = the
      closed-form Jensen upper bound 1/M Σ_m̃ KL(q_m || q_m̃) (mmvampvae mv_mixedprior_vae.py compute_loss);
      "mc" = the unbiased one-sample Monte-Carlo estimate log q_m(z_m) - log h(z_m) of the paper's exact KL, at the same z_m
      that is reconstructed.
    * `alpha` (default 0.0, the paper's prior): weight of N(0, I) in the prior h_α = (1-α) h + α N(0, I);
      with "bound" the rate is (1-α)/M Σ_m̃ KL(q_m || q_m̃) + α KL(q_m || N(0, I)), the authors' `klds_sum`.
    * `alpha_anneal_steps` (default 0: α constant): > 0 decays α exponentially from `alpha` to ~0 over that
      many training steps, the authors' schedule (mmvampvae runs: alpha 1.0, 300000 steps at their default
      batch 128; mmvmvae PolyMNIST: α = 0 throughout).
    * `alpha_anneal_batch` (default 0: the steps are this run's own optimizer steps): > 0 says the
      `alpha_anneal_steps` are steps of that batch size, and the schedule advances by (batch rows) /
      alpha_anneal_batch per step -- the same α after the same number of training samples (so per epoch)
      as the authors' run at that batch, whatever train.batch_size is (at batch 256 a plain step count
      decays α half as fast per epoch as the authors' 128).
    * `beta_convention`: accepted for uniformity with the baselines; "paper" and "code" coincide here,
      because the authors' code weights Σ_m R_m by β exactly as the paper's β-VAE rate (mv_mixedprior_vae.py).

    Conditional generation and representations: for a subset S, z comes from the uniform mixture of the
    unimodal posteriors q_m, m in S, i.e. the MM-VAMP prior restricted to S (a single modality: its own
    q_m, as the authors' m -> m̃ coherence draws z ~ q_m and decodes it with decoder m̃); latent
    classification uses its mean (for one modality the encoder mean, the authors' "aggregated" = own mu).
    The model has no unconditional prior (paper §3, data-dependent h); `sample_prior` draws N(0, I), which
    the rate only approaches through `alpha`, so prior-sample ("joint") coherence is not a paper metric here.
    """

    # α's schedule is computed on the device from the run's counter buffers, which the trainers advance after each
    # step (count_step): no device read per step, one captured graph for every step, a packed run reads its own
    packable = True

    paper = "MM-VAMP VAE (Sutter et al. 2024), Eqs. (1)-(4)"
    options = {"beta_convention": "paper", "rate": "bound", "alpha": 0.0, "alpha_anneal_steps": 0,
               "alpha_anneal_batch": 0}
    option_rules = {"beta_convention": {"choices": BETA_CONVENTIONS}, "rate": {"choices": RATES},
                    # α is a mixture weight of the prior h_α
                    "alpha": {"ge": 0, "le": 1, "note": "0: the paper's prior"},
                    "alpha_anneal_steps": {"ge": 0, "note": "0: no annealing"},
                    "alpha_anneal_batch": {"ge": 0, "note": "the batch size alpha_anneal_steps are counted in, e.g. 128 "
                                                           "as the authors' runs; 0: this run's own steps"}}

    def __init__(self, modalities, cfg, architecture):
        super().__init__(modalities, cfg, architecture)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # for the α schedule; checkpointed
        self.register_buffer("train_samples", torch.zeros((), dtype=torch.long))  # training rows seen; checkpointed

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before `train_samples` existed trained without alpha_anneal_batch: start it at 0.
        state_dict.setdefault(prefix + "train_samples", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def anneal_position(self) -> torch.Tensor:
        """Where the α schedule is: optimizer steps, or training samples / alpha_anneal_batch, from the counter
        buffers (a float64 tensor on the model's device; a packed run's are its own)."""
        ab = self.opt["alpha_anneal_batch"]
        return self.train_samples.double() / ab if ab > 0 else self.train_steps.double()

    def kl_weight(self) -> float:
        return self.beta

    def annealing(self) -> bool:
        return self.opt["alpha_anneal_steps"] > 0 and self.opt["alpha"] > 0

    def alpha(self):
        """α of the prior h_α now: a Python float when constant, annealed a float64 device tensor
        (anneal_position)."""
        if not self.annealing():  # constant: the counters are not read
            return float(self.opt["alpha"])
        return annealed_alpha(float(self.opt["alpha"]), self.opt["alpha_anneal_steps"], self.anneal_position())

    def rate(self, q: Gaussian, z):
        if self.opt["rate"] == "mc":
            return rate_mc(z, q.mu, q.logvar, self.alpha())
        return rate_bound(q.mu, q.logvar, self.alpha())

    def loss(self, x):
        loss, logs = super().loss(x)
        if self.opt["alpha_anneal_steps"] > 0:
            logs["alpha"] = self.alpha()
        if self.training and torch.is_grad_enabled():
            self.counted(x)
        return loss, logs

    def count_step(self, rows: int) -> None:
        self.train_steps += 1
        self.train_samples += rows
