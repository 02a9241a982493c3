"""Decoder likelihoods p(x_m | z). Each returns a per-sample log-density summed over the modality's dims."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import LIKELIHOODS


@LIKELIHOODS.register("laplace")
class Laplace:
    """Laplace with fixed scale 0.75 around the decoder output (MoPoE modalities/Modality.py get_likelihood;
    the decoders return scale 0.75, e.g. mmnist/networks/ConvNetworksImgCMNIST.py DecoderImg)."""

    scale = 0.75

    @classmethod
    def log_prob(cls, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # log Laplace(x; mu, b) = -log(2b) - |x - mu| / b
        lp = -torch.log(torch.tensor(2 * cls.scale)) - (x - out).abs() / cls.scale
        return lp.flatten(1).sum(1)

    @staticmethod
    def mean(out: torch.Tensor) -> torch.Tensor:
        return out


@LIKELIHOODS.register("gaussian")
class Gaussian:
    """Gaussian with fixed standard deviation 0.1 around the decoder output (not used by the papers' image models)."""

    scale = 0.1

    @classmethod
    def log_prob(cls, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lp = -0.5 * torch.log(torch.tensor(2 * torch.pi * cls.scale ** 2)) - (x - out) ** 2 / (2 * cls.scale ** 2)
        return lp.flatten(1).sum(1)

    @staticmethod
    def mean(out: torch.Tensor) -> torch.Tensor:
        return out


@LIKELIHOODS.register("sse")
class SummedSquaredError:
    """Gaussian with fixed variance 1/2, normalising constant dropped: -log p = Σ (x - mu)², the summed MSE of
    the MM-VAMP rats code (rats.md, Losses), so reconstruction losses and β match the paper's Fig. 5 scale."""

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
