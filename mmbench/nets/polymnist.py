"""PolyMNIST networks of the MoPoE code (MoPoE mmnist/networks/ConvNetworksImgCMNIST.py EncoderImg /
DecoderImg, mmnist/networks/ConvNetworkImgClfCMNIST.py ClfImg): the VAE CNN and the coherence classifier."""
from __future__ import annotations

import torch
from torch import nn

from ..data.base import Modality
from ..registry import ARCHITECTURES


class CNNEncoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),  # -> 7
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),  # -> 4
            nn.Flatten(), nn.Linear(2048, latent_dim), nn.ReLU(),
        )
        self.mu = nn.Linear(latent_dim, latent_dim)
        self.logvar = nn.Linear(latent_dim, latent_dim)

    def forward(self, x: torch.Tensor):
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


class CNNDecoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 2048), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),  # -> 7
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),  # -> 14
            nn.ConvTranspose2d(32, channels, 3, 2, 1, output_padding=1),  # -> 28, no output activation
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@ARCHITECTURES.register("polymnist_cnn")
class PolyMNISTCNN:
    """MoPoE PolyMNIST CNN: 3 stride-2 convs -> 2048 -> latent (mu, logvar); mirrored transposed-conv decoder."""

    @staticmethod
    def encoder(modality: Modality, latent_dim: int) -> nn.Module:
        return CNNEncoder(latent_dim, modality.shape[0])

    @staticmethod
    def decoder(modality: Modality, latent_dim: int) -> nn.Module:
        return CNNDecoder(latent_dim, modality.shape[0])


@ARCHITECTURES.register("polymnist_clf")
class PolyMNISTClassifier:
    """MoPoE PolyMNIST digit classifier (ClfImg): two 4×4 stride-2 convs with dropout, 980 -> 128 -> classes."""

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(modality.shape[0], 10, 4, 2, 1), nn.Dropout2d(0.5), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(10, 20, 4, 2, 1), nn.Dropout2d(0.5), nn.ReLU(),  # -> 7
            nn.Flatten(), nn.Linear(980, 128), nn.Dropout(0.5), nn.ReLU(), nn.Linear(128, n_classes),
        )
