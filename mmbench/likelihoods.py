"""Decoder likelihoods p(x_m | z). Each returns a per-sample log-density summed over the modality's dims."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .registry import LIKELIHOODS


def likelihood_name(modality, image_likelihood: Optional[str]) -> str:
    """The likelihood a model uses for `modality`: method.image_likelihood for image modalities where it is set,
    else the dataset's."""
    return image_likelihood if image_likelihood and modality.kind == "image" else modality.likelihood


@LIKELIHOODS.register("laplace")
class Laplace:
    """Laplace with fixed scale 0.75 around the decoder output (MoPoE modalities/Modality.py get_likelihood;
    the decoders return scale 0.75, e.g. mmnist/networks/ConvNetworksImgCMNIST.py DecoderImg)."""

    scale = 0.75

    @classmethod
    def log_prob(cls, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Σ_i log Laplace(x_i; mu_i, b) = -N log(2b) - Σ_i |x_i - mu_i| / b: the constant and the scale applied to
        # the row sums, not to every element (the evaluation's log-likelihood runs this on ~10^8 decoded rows);
        # the gradient is bitwise that of the per-element form (-(g/b) = g/(-b))
        d = x - out
        d = d.abs_() if not d.requires_grad else d.abs()
        return d.flatten(1).sum(1) / -cls.scale - math.prod(d.shape[1:]) * math.log(2 * cls.scale)

    @staticmethod
    def mean(out: torch.Tensor) -> torch.Tensor:
        return out


@LIKELIHOODS.register("gaussian")
class Gaussian:
    """Gaussian with fixed standard deviation 0.1 around the decoder output (not used by the papers' image models)."""

    scale = 0.1

    @classmethod
    def log_prob(cls, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Σ_i log N(x_i; mu_i, σ²) = -N/2 log(2πσ²) - Σ_i (x_i - mu_i)² / (2σ²), constants on the row sums (as Laplace)
        sq = (x - out) ** 2
        const = math.prod(sq.shape[1:]) * 0.5 * math.log(2 * math.pi * cls.scale ** 2)
        return sq.flatten(1).sum(1) / -(2 * cls.scale ** 2) - const

    @staticmethod
    def mean(out: torch.Tensor) -> torch.Tensor:
        return out


@LIKELIHOODS.register("sse")
class SummedSquaredError:
    """Gaussian with fixed variance 1/2, normalising constant dropped: -log p = Σ (x - mu)², the summed MSE of
    the MM-VAMP rats code (yangmeng96/mmvmvae-hippocampal mv_vaes/spike_vae.py), so reconstruction losses and β match the paper's Fig. 5
    scale. Not a normalised density (off by N/2·log π over N dims): `loglik` refuses it."""

    normalised = False

    @staticmethod
    def log_prob(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -((x - out) ** 2).flatten(1).sum(1)

    @staticmethod
    def mean(out: torch.Tensor) -> torch.Tensor:
        return out


@LIKELIHOODS.register("categorical")
class Categorical:
    """One-hot categorical over the last dim from logits (as mmvmvae; not MoPoE's log-softmax-as-probs quirk)."""

    @staticmethod
    def log_prob(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (F.log_softmax(out, dim=-1) * x).flatten(1).sum(1)

    @staticmethod
    def mean(out: torch.Tensor) -> torch.Tensor:
        return F.softmax(out, dim=-1)
