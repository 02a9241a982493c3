"""Per-rat MLPs of the MM-VAMP rats code (yangmeng96/mmvmvae-hippocampal networks/NetworksRatsspike.py and networks/ClfOdorRats.py).

Input of rat m: a neurons × 10 window of spike counts / 10, flattened neuron-major (D = neurons × 10:
920/790/1040/490/460). The latent size comes from the method config (2 in the paper's suite).
The decoder's output is the mean of the dataset's likelihood, "sse": a Gaussian with fixed variance
(1/2, constant dropped), i.e. the authors' reconstruction loss, MSE summed over features and rats.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data.base import Modality
from ..registry import ARCHITECTURES


def act() -> nn.Module:
    return nn.LeakyReLU(0.01)  # PyTorch's default slope, as the authors


SIGMA_FLOOR = 1e-6  # σ = exp(head) + 1e-6 (mmvmvae-hippocampal mv_vaes/spike_vae.py reparametrize, kl_div_z)


class RatEncoder(nn.Module):
    def __init__(self, dim: int, latent_dim: int):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(dim, dim), act(), nn.Linear(dim, dim), act(),
                                   nn.Linear(dim, latent_dim), act())
        self.mu = nn.Linear(latent_dim, latent_dim)
        self.logvar = nn.Linear(latent_dim, latent_dim)  # its output is read as a log σ, as the authors'

    def forward(self, x: torch.Tensor):
        h = self.trunk(x)
        # the head is the authors' log σ: σ = exp(head) + 1e-6, returned as the log variance the methods take:
        # 2 log σ = 2 logaddexp(head, c), c = log 1e-6, as max(head, c) + log1p(exp(-|head - c|)) (scalars only: no
        # tensor sent from the host in a step)
        head, c = self.logvar(h), math.log(SIGMA_FLOOR)
        log_sigma = torch.clamp(head, min=c) + torch.log1p(torch.exp(-(head - c).abs()))
        return self.mu(h), 2.0 * log_sigma


class RatDecoder(nn.Module):
    def __init__(self, shape: tuple, latent_dim: int):
        super().__init__()
        dim = math.prod(shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, dim), act(), nn.Linear(dim, dim), act(),
                                 nn.Linear(dim, dim), nn.Unflatten(1, tuple(shape)))  # linear output

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@ARCHITECTURES.register("rat_mlp")
class RatMLP:
    """Per-rat MLP VAE nets: two hidden layers of width neurons×10, LeakyReLU 0.01, linear mu and log σ heads.

    The second head is a log standard deviation with a floor, σ = exp(head) + 1e-6, as the authors' code
    (mmvmvae-hippocampal mv_vaes/spike_vae.py reparametrize); the encoder returns it as the log variance the
    methods take. (Version 1 read the head as a log variance: the same family, but each Adam step moved log σ half
    as far and σ had no floor, which the β sweep's 1e-5 reaches; runs made with it keep their old ids.)
    The rats suite's aggregated VAE averages standard deviations, as the authors' code does.
    """

    id_version = 2  # enters the run ids of every run on this architecture (config.RunConfig.run_id)

    @staticmethod
    def encoder(modality: Modality, latent_dim: int) -> nn.Module:
        return RatEncoder(math.prod(modality.shape), latent_dim)

    @staticmethod
    def decoder(modality: Modality, latent_dim: int) -> nn.Module:
        return RatDecoder(modality.shape, latent_dim)


@ARCHITECTURES.register("rat_clf")
class RatClassifier:
    """Per-rat odor classifier of the authors' coherence metric: D -> 1024 -> 512 -> 256 -> 64 -> classes, LeakyReLU."""

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        widths = [math.prod(modality.shape), 1024, 512, 256, 64]
        layers = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], n_classes))
