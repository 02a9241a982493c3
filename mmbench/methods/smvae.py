"""SMVAE: PoE subset posteriors pulled toward a surrogate joint posterior (SMVAE, ICLR 2022 submission, Eq. 11),
and "vae", the surrogate alone as a plain joint-encoder VAE (SMVAE App. B-C, Tables 5-6).

Shared pieces used by jmvae.py and smvgon.py live here: `gaussian_kl` (closed-form KL of two diagonal Gaussians),
`build_encoders` and `JointFusion` (the joint inference network q(z | X) over all modalities).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from ..errors import ConfigError, MMBenchError
from ..registry import ARCHITECTURES, METHODS
from .base import Gaussian, MultimodalVAE, PoEMixin, all_subsets


def gaussian_kl(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, closed form, summed over the last dim (broadcasts leading dims)."""
    return 0.5 * (p.logvar - q.logvar + (q.logvar.exp() + (q.mu - p.mu) ** 2) / p.logvar.exp() - 1).sum(-1)


def build_encoders(modalities, architecture: str, latent_dim: int) -> nn.ModuleDict:
    """A fresh encoder per modality from the registered architecture (each returns (mu, logvar))."""
    arch = ARCHITECTURES.get(architecture)
    return nn.ModuleDict({m.name: arch.encoder(m, latent_dim) for m in modalities})


class JointFusion(nn.Module):
    """Joint inference network head: q(z | X) from the M per-modality encoder outputs.

    The registered architectures expose encoders that return (mu, logvar) only, so the joint network
    concatenates every modality's (mu, logvar) (2·D·M features) and maps them with an MLP
    Linear(2DM, 2D)-ReLU-Linear(2D, 2D) to the joint (mu, logvar). This is our choice (the SMVAE paper only says
    the surrogate "requires as many parameters as all of the unimodal inference models", §3.3): the per-modality
    encoders give it exactly that, the small MLP lets it combine modalities non-linearly, unlike a PoE.
    """

    def __init__(self, n_modalities: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * n_modalities * latent_dim, 2 * latent_dim), nn.ReLU(),
                                 nn.Linear(2 * latent_dim, 2 * latent_dim))

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor) -> Gaussian:
        """mu, logvar: M×B×D stacks (modality order fixed by the caller) -> a B×D Gaussian."""
        h = torch.cat([mu, logvar], -1).permute(1, 0, 2).flatten(1)  # B × (M·2D)
        out_mu, out_logvar = self.net(h).chunk(2, -1)
        return Gaussian(out_mu, out_logvar)


def joint_posterior(encoders: nn.ModuleDict, fusion: JointFusion, x: Dict[str, torch.Tensor],
                    names: Sequence[str]) -> Gaussian:
    """q(z | X) of a joint network: every modality through its own encoder, then the fusion MLP."""
    missing = [n for n in names if n not in x]
    if missing:
        raise MMBenchError(f"the joint inference network needs every modality; missing {missing}")
    out = [encoders[n](x[n]) for n in names]
    return fusion(torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]))


@METHODS.register("smvae")
class SMVAE(PoEMixin, MultimodalVAE):
    """SMVAE: ELBO of a surrogate joint posterior minus β/2^M Σ_c KL(PoE subset posterior || surrogate) (SMVAE Eq. 11).

    * cfg.beta is the paper's β, the weight of the divergence term (the paper sets β = 1, §5); the surrogate's
      ELBO L(Θ, Λ; X) is a plain ELBO (KL weight 1, Eq. 1), reconstructing every modality with the dataset's
      rec_weight (the paper's likelihood rescaling, §5).
    * q_φc(z | X_c) is the PoE of the subset's unimodal experts for all 2^M - 1 non-empty subsets, normalised by
      2^M as Eq. 11 writes it. The surrogate q_Λ(z | X) has its own per-modality encoders plus a fusion MLP
      (`JointFusion`).
    * Option `prior_expert` (which PoEs include the N(0, I) expert): `full` (default: the full set only, as the
      MoPoE code whose networks the paper uses, utils/BaseMMVae.py poe_fusion), `all` (Eq. 3 read literally for every
      subset) or `none`. Not `all` by default: while the surrogate is still close to the prior, the prior expert
      alone already matches it and the divergence drives every expert's variance up without bound (measured on
      polydigits, Laplace, lr 1e-3, batch 32: expert log-variances passed 80 and overflowed to NaN within ~45
      Adam steps; `full` and `none` trained stably).
    * Options: `detach_surrogate` (default false): Eq. 11 is one objective over all parameters and App. D credits
      end-to-end training with moving both distributions together, so by default gradients of the divergence
      also reach the surrogate; true stops them (the surrogate is then trained by its ELBO only).
      `schedule` (default `end_to_end`, the paper's choice, §3.2 and App. D) or `two_stage` (App. D): stage 1
      maximises only the surrogate ELBO (unimodal experts untouched), then the surrogate and decoders are fixed and
      only the divergence (Eq. 10) trains the unimodal experts. Stage 1 lasts `stage1_fraction` of the training
      steps (default 2/3: App. D ran 200 of 300 epochs) or, if set instead, exactly `stage1_steps` steps. The
      stages count training steps in a buffer saved with the weights (resume-safe), advanced after each step
      (count_step; a host copy, host_step, picks the stage); the trainer tells the method the run's length
      through `plan_steps` (the method does not see epochs).
    * encode_subsets: the PoE posteriors for every subset, the full set included (§3.2: "at test time, we infer
      representations from subsets using a PoE-aggregated inference model"); the surrogate is used in training only.
    """

    # Both schedules pack. end_to_end's step-counter buffer counts per run and picks nothing; two_stage picks each
    # step's stage from a host count and the run's length (plan_steps), which every run of a pack shares (one pack
    # key: one length; one resume point: one count), so the pack's template keeps them (host_step).
    packable = True

    paper = "SMVAE (Scalable multimodal VAEs with surrogate joint posterior, ICLR 2022 submission), Eqs. (3), (10), (11)"
    options = {"schedule": "end_to_end", "stage1_fraction": 2 / 3, "stage1_steps": None, "detach_surrogate": False,
               "prior_expert": "full"}
    option_rules = {"schedule": {"choices": ("end_to_end", "two_stage")}, "prior_expert": {"choices": ("full", "all", "none")},
                    "stage1_fraction": {"gt": 0, "lt": 1, "note": "of the training steps"},
                    "stage1_steps": {"type": int, "null": "stage1_fraction of the run", "ge": 1, "note": "training steps"}}

    @classmethod
    def pack_refusal(cls, options):
        return None  # a step schedule planned from the run's length packs: a pack's runs share it (above)

    @classmethod
    def check_option_combination(cls, options):
        if options.get("stage1_steps") is not None and "stage1_fraction" in options:
            raise ConfigError("method.options.stage1_steps", "set stage1_steps or stage1_fraction, not both")

    def __init__(self, modalities, cfg, architecture: str):
        super().__init__(modalities, cfg, architecture)
        self.total_steps = None  # set by plan_steps
        self.build_surrogate(architecture)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # checkpointed; `steps`: host copy
        self.steps = 0  # training steps so far, read by the two_stage schedule without a device read (no host sync)
        self._restage()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "train_steps" in state_dict:  # the host copy follows the checkpoint (read once, at loading)
            self.steps = int(state_dict[prefix + "train_steps"])
            self._restage()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def plan_steps(self, total: int) -> None:
        """Hook the trainer calls before training with the run's number of optimiser steps (epochs × batches)."""
        self.total_steps = int(total)
        self._restage()

    def count_step(self, rows: int) -> None:
        self.train_steps += 1

    def host_step(self) -> None:  # only a schedule reads the host copy: a captured end-to-end step has no host number
        if self.opt["schedule"] != "end_to_end":
            self.steps += 1
            self._restage()

    def host_state(self, state_dict):
        if self.opt["schedule"] == "end_to_end":
            return None
        return int(state_dict["train_steps"]) if "train_steps" in state_dict else 0

    def noise_key(self):
        return self.stage()  # stage 2 also runs the unimodal encoders (their dropout draws, on CelebA's networks)

    # ----- the surrogate q_Λ(z | X) -------------------------------------------------------------
    def build_surrogate(self, architecture: str) -> None:
        self.surrogate_encoders = build_encoders(self.modalities, architecture, self.latent_dim)
        self.surrogate_fusion = JointFusion(len(self.names), self.latent_dim)

    def surrogate(self, x: Dict[str, torch.Tensor]) -> Gaussian:
        return joint_posterior(self.surrogate_encoders, self.surrogate_fusion, x, self.names)

    # ----- objective ---------------------------------------------------------------------------
    def prior_expert(self, subset) -> bool:
        # Eq. 3: q_PoE(z | X) ∝ p(z) Π q_φm(z | x_m); on which subsets p(z) joins is the `prior_expert` option.
        which = self.opt["prior_expert"]
        return which == "all" or (which == "full" and len(subset) == len(self.names))

    def stage(self) -> str:
        """`end_to_end`, `stage1` or `stage2` for the current training step (counts only in training mode). Kept as
        a string that changes where the stage does (_restage), so a captured step specialises on it, not on the
        step count (a pack's step is then compiled once per stage, not once per step)."""
        if self._stage is None:
            self.stage1_steps()  # two_stage by fraction before the run's length is known: says so
        return self._stage

    def _restage(self) -> None:
        if self.opt["schedule"] == "end_to_end":
            self._stage = "end_to_end"
        elif self.opt["stage1_steps"] is None and self.total_steps is None:
            self._stage = None  # stage() raises: the length is not planned yet
        else:
            self._stage = "stage1" if self.steps < self.stage1_steps() else "stage2"

    def stage1_steps(self) -> int:
        if self.opt["stage1_steps"] is not None:
            return self.opt["stage1_steps"]
        if self.total_steps is None:
            raise MMBenchError("smvae two_stage with stage1_fraction needs the run's length: train through mmbench "
                               "(its trainer calls plan_steps) or set method.options.stage1_steps")
        return round(self.opt["stage1_fraction"] * self.total_steps)

    def subset_divergence(self, mu: torch.Tensor, logvar: torch.Tensor, q_sur: Gaussian) -> torch.Tensor:
        """β/2^M Σ_{c ≠ ∅} KL(q_φc(z | X_c) || q_Λ(z | X)) per sample (Eq. 11), all subsets in one batched op."""
        subsets = all_subsets(self.names)
        q_c = self.poe(mu, logvar, self.names, subsets)  # K×B×D
        kl = gaussian_kl(q_c, Gaussian(q_sur.mu.unsqueeze(0), q_sur.logvar.unsqueeze(0)))  # K×B
        return self.beta / 2 ** len(self.names) * kl.sum(0)

    def surrogate_elbo(self, x: Dict[str, torch.Tensor], q_sur: Gaussian):
        """(-log p(X | z) weighted, KL(q_Λ || N(0, I))) per sample: the negative ELBO L(Θ, Λ; X) in two parts."""
        z = q_sur.rsample()
        return self.weighted_nll(z, x), q_sur.kl_standard_normal()

    def loss(self, x):
        stage = self.stage()  # this step's, read before it is counted
        if self.training:  # the trainers count after the step (count_step, host_step; a looped pack once for all)
            self.counted(x)
        if stage == "stage2":
            # App. D, second stage: the surrogate (and the decoders) are fixed; only Eq. 10 trains the experts.
            with torch.no_grad():
                q_sur = self.surrogate(x)
                nll, kl = self.surrogate_elbo(x, q_sur)
        else:
            q_sur = self.surrogate(x)
            nll, kl = self.surrogate_elbo(x, q_sur)
        if stage == "stage1":
            loss = (nll + kl).mean()  # App. D, first stage: the surrogate ELBO only
            return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach(), "div": 0.0}
        if self.opt["detach_surrogate"]:
            q_sur = Gaussian(q_sur.mu.detach(), q_sur.logvar.detach())
        mu, logvar = self.unimodal(x, self.names)
        div = self.subset_divergence(mu, logvar, q_sur)
        per_sample = div if stage == "stage2" else nll + kl + div
        loss = per_sample.mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach(), "div": div.mean().detach()}


@METHODS.register("vae")
class JointVAE(MultimodalVAE):
    """VAE with one joint encoder over all modalities: SMVAE's surrogate trained alone (SMVAE Eq. 1, Tables 5-6).

    q(z | X) = `JointFusion` of the per-modality encoders; loss = Σ_m w_m (-log p(x_m | z)) + β KL(q || N(0, I))
    (cfg.beta = 1 is the paper's plain ELBO). The joint encoder needs every modality, so only the full set can be
    encoded (`supports` is false for strict subsets, which metrics skip); encoding a strict subset raises an error
    instead of inventing inputs (the paper's Tables 5-6 report the full set only).
    """

    paper = "SMVAE (ICLR 2022 submission), Eq. (1), App. B-C, Tables 5-6"

    def supports(self, subset) -> bool:
        return set(subset) == set(self.names)

    def __init__(self, modalities, cfg, architecture: str):
        super().__init__(modalities, cfg, architecture)
        self.fusion = JointFusion(len(self.names), self.latent_dim)

    def encode_subsets(self, x, subsets):
        out = []
        for s in subsets:
            if set(s) != set(self.names):
                raise MMBenchError(f"method 'vae' infers z only from all modalities ({'+'.join(self.names)}), "
                                   f"not from {'+'.join(s)}: its joint encoder needs every input; "
                                   f"use a multimodal method (e.g. smvae) for subsets")
            out.append(joint_posterior(self.encoders, self.fusion, x, self.names))
        return out

    def loss(self, x):
        q = joint_posterior(self.encoders, self.fusion, x, self.names)
        nll = self.weighted_nll(q.rsample(), x)
        kl = q.kl_standard_normal()
        loss = (nll + self.beta * kl).mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach()}
