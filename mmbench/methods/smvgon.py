"""SMVGON: SMVAE whose surrogate joint posterior is a variational gradient-origin network (SMVAE Eqs. 9 and 12),
and "vgon", that VGON trained alone (SMVAE App. B-C, Tables 5-6).

The VGON step (SMVAE §2.2; cwkx/GON `Variational-GON.py`): start at the origin z0 = 0, take one
gradient-ascent step of the VGON ELBO w.r.t. z0 through the decoders, ẑ0 = z0 + ∇_z0 L (Eq. 9), and read the
variational parameters off ẑ0 with two trainable linear maps, q(z) = N(μ_λ(ẑ0), σ²_λ(ẑ0)). The gradient is taken
as a function transform (torch.func.grad) that the outer loss backpropagates through (second order).

Step size (option `inner_step`, default 1/256): Eq. 9 writes a unit step on one sample's ELBO, but the GON code
differentiates the batch-*mean* ELBO, i.e. a step of 1/B per sample, and with image likelihoods summed over
thousands of pixels a unit step overflows (measured here: NaN within a few Adam steps with the Gaussian image
likelihood; no learning with Laplace). A step tied to the batch would make a posterior depend on the evaluation
batch size, so the step is a fixed per-sample factor; 1/256 is the GON convention at the SMVAE paper's batch size
(256, §5).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from ..registry import METHODS
from .base import Gaussian, MultimodalVAE, randn_like
from .smvae import SMVAE

INNER_STEP = 1 / 256  # per-sample step of Eq. 9: the GON code's batch-mean gradient at the paper's batch size 256


INNER_STEP_RULE = {"gt": 0, "note": "default 1/256"}


def inner_step(opt) -> float:
    return float(opt["inner_step"])  # checked by check_options (option_rules)

class VGONHead(nn.Module):
    """μ_λ and log σ²_λ: two Linear(D, D) maps from the (stepped) origin (GON Variational-GON.py fc21, fc22)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.mu = nn.Linear(latent_dim, latent_dim)
        self.logvar = nn.Linear(latent_dim, latent_dim)

    def forward(self, z0: torch.Tensor) -> Gaussian:
        return Gaussian(self.mu(z0), self.logvar(z0))


def vgon_elbo(model: MultimodalVAE, head: VGONHead, z0: torch.Tensor, x: Dict[str, torch.Tensor],
              names: Sequence[str], eps: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Per-sample VGON ELBO at z0 (SMVAE Eq. 8) with the reparameterisation noise `eps` given explicitly:
    -Σ_{m ∈ names} w_m (-log p(x_m | z)) - kl_weight · KL(q_λ,z0 || N(0, I)), z = μ_λ(z0) + eps · σ_λ(z0)."""
    q = head(z0)
    z = q.mu + eps * (0.5 * q.logvar).exp()
    return -model.weighted_nll(z, x, names) - kl_weight * q.kl_standard_normal()


class _InnerELBO(nn.Module):
    """The batch sum of vgon_elbo as a module's forward, so that torch.func.functional_call can hand the model's
    buffers to the inner gradient as its arguments (vgon_posterior)."""

    def __init__(self, model: MultimodalVAE, head: VGONHead):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, z0, x, names, eps, kl_weight):
        return vgon_elbo(self.model, self.head, z0, x, names, eps, kl_weight).sum()


def inner_elbo(model: MultimodalVAE, head: VGONHead) -> _InnerELBO:
    """The model's _InnerELBO for `head`: kept outside its modules (no state_dict entry), made when the model is
    built (a module made inside a captured step is a graph break); made here for any other head."""
    inner = model.__dict__.get("_inner_elbo")
    if inner is None or inner.head is not head:
        inner = _InnerELBO(model, head)
        model.__dict__["_inner_elbo"] = inner
    return inner


def vgon_posterior(model: MultimodalVAE, head: VGONHead, x: Dict[str, torch.Tensor], names: Sequence[str],
                   kl_weight: float, step_size: float) -> Tuple[Gaussian, torch.Tensor]:
    """q_λ,ẑ0(z) after one gradient step from the origin (Eq. 9), and that gradient ∇_z0 L at z0 = 0.

    Only the modalities in `names` enter the inner ELBO (a subset's posterior: the missing modalities are simply
    absent from the step). Rows are independent, so the gradient of the batch *sum* is each sample's own gradient
    (the GON code differentiates the batch mean, i.e. a step of 1/B; `step_size` is the per-sample step). In training mode
    the inner ELBO uses a reparameterised sample, in eval mode the mean (as the GON code's eval-mode
    reparameterisation), so evaluation is deterministic. When the caller tracks gradients its backward runs through
    the step (second order, to decoders and head: the create_graph=True of torch.autograd.grad); under
    torch.no_grad() it is a plain gradient.
    """
    ref = x[names[0]]
    z0 = torch.zeros(ref.shape[0], head.latent_dim, device=ref.device, dtype=head.mu.weight.dtype)
    eps = randn_like(z0) if model.training else torch.zeros_like(z0)
    # The gradient as a function transform: the outer backward differentiates it when it tracks gradients (the
    # create_graph of torch.autograd.grad), vmap batches it over a pack's runs, and TorchDynamo traces it whole
    # (torch.autograd.grad does neither of the last two; on the CPU both give the same bits). The model's buffers
    # go in as arguments: a BatchNorm in the decoders updates its running statistics in place during the inner
    # pass, which a transform allows on its inputs only.
    inner = inner_elbo(model, head)
    buffers = {f"model.{n}": b for n, b in model.named_buffers()}
    grad = torch.func.grad(lambda z, b: torch.func.functional_call(inner, b, (z, x, names, eps, kl_weight),
                                                                     strict=False))(z0, buffers)
    return head(z0 + step_size * grad), grad  # Eq. 9, from the origin


@METHODS.register("smvgon")
class SMVGON(SMVAE):
    """SMVGON: SMVAE with a VGON surrogate joint posterior, no surrogate inference network (SMVAE Eq. 12).

    Loss: -L_VGON(Θ, λ, ẑ0; X) + β/2^M Σ_c KL(q_φc(z | X_c) || q_λ,ẑ0(z)). As in SMVAE, cfg.beta weights the
    divergence and the VGON ELBO has KL weight 1 (inner step and outer loss alike); all options of smvae apply
    (schedule, stage1_steps, detach_surrogate), plus `inner_step` (default 1/256, see the module docstring).
    encode_subsets: PoE of the unimodal experts, as smvae (the VGON surrogate is used in training only, §3.3).
    """

    paper = "SMVAE (ICLR 2022 submission), Eqs. (8), (9), (12)"
    options = {**SMVAE.options, "inner_step": INNER_STEP}
    option_rules = {**SMVAE.option_rules, "inner_step": INNER_STEP_RULE}

    def build_surrogate(self, architecture: str) -> None:
        self.step_size = inner_step(self.opt)
        self.surrogate_head = VGONHead(self.latent_dim)
        inner_elbo(self, self.surrogate_head)

    def surrogate(self, x):
        return vgon_posterior(self, self.surrogate_head, x, self.names, 1.0, self.step_size)[0]


@METHODS.register("vgon")
class VGON(MultimodalVAE):
    """VGON over all modalities: a multimodal VAE without an inference network (SMVAE §2.2, Eqs. 8-9, Tables 5-6).

    Loss: the negative VGON ELBO at the stepped origin, Σ_m w_m (-log p(x_m | z)) + β KL(q_λ,ẑ0 || N(0, I))
    (cfg.beta = 1 is the paper's ELBO; the inner step uses the same β). Option `inner_step` (default 1/256, see the
    module docstring).
    encode_subsets: a subset's posterior takes the inner gradient of the present modalities' log-likelihoods only
    (plus the KL), so every subset is defined; the model is trained on the full set only (the paper's Tables 5-6
    report the full set), so strict-subset posteriors are an extrapolation.
    """

    encodes_through_decoders = True  # a posterior is a gradient step through the decoders (Eq. 9)

    paper = "SMVAE (ICLR 2022 submission), Eqs. (8)-(9), App. B-C, Tables 5-6 (Bond-Taylor & Willcocks 2020)"
    options = {"inner_step": INNER_STEP}
    option_rules = {"inner_step": INNER_STEP_RULE}

    def __init__(self, modalities, cfg, architecture: str):
        super().__init__(modalities, cfg, architecture)
        self.encoders = nn.ModuleDict()  # no inference network: the gradient step replaces it
        self.head = VGONHead(self.latent_dim)
        self.step_size = inner_step(self.opt)
        inner_elbo(self, self.head)

    def posterior(self, x, names) -> Gaussian:
        return vgon_posterior(self, self.head, x, names, self.beta, self.step_size)[0]

    def encode_subsets(self, x, subsets):
        return [self.posterior(x, [n for n in self.names if n in s]) for s in subsets]

    def loss(self, x):
        q = self.posterior(x, self.names)
        nll = self.weighted_nll(q.rsample(), x)
        kl = q.kl_standard_normal()
        loss = (nll + self.beta * kl).mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach()}
