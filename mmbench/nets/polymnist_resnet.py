"""PolyMNIST ResNets of the MM-VAMP code (mmvmvae networks/ConvNetworksPolyMNIST.py ResnetEncoder / ResnetDecoder,
networks/ClfImgPolyMNIST.py): the VAE encoder/decoder and the digit classifier.

Used by the MM-VAMP paper for translated PolyMNIST (App. B.2.2: "Resnet-based encoder and ... decoder",
"Resnet-based non-linear classifier"). Residual blocks add 0.1 × the residual branch; activations are
leaky ReLU (slope 0.2); the encoder downsamples 28 -> 14 -> 7 by 3×3 average pooling, the decoder
upsamples 7 -> 14 -> 28 by nearest-neighbour ×2. Inputs must be C×28×28.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import Modality
from ..errors import MMBenchError
from ..registry import ARCHITECTURES

FLAT = 256 * 7 * 7  # 12544 features after the trunk


def actvn(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class ResnetBlock(nn.Module):
    """x_s + 0.1 · conv3x3(actvn(conv3x3(actvn(x)))); hidden width min(fin, fout); 1×1 shortcut if fin ≠ fout."""

    def __init__(self, fin: int, fout: int):
        super().__init__()
        hidden = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, hidden, 3, 1, 1)
        self.conv_1 = nn.Conv2d(hidden, fout, 3, 1, 1)
        self.shortcut = nn.Conv2d(fin, fout, 1, bias=False) if fin != fout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = self.conv_1(actvn(self.conv_0(actvn(x))))
        return self.shortcut(x) + 0.1 * dx


def _check(modality: Modality) -> int:
    if len(modality.shape) != 3 or tuple(modality.shape[1:]) != (28, 28):
        raise MMBenchError(f"architecture polymnist_resnet needs C×28×28 images; modality {modality.name!r} "
                           f"has shape {tuple(modality.shape)}: choose another method.architecture")
    return modality.shape[0]


def trunk(channels: int) -> nn.Sequential:
    """conv 3->64 at 28×28, blocks 64->64, [pool ->14, 64->128], [pool ->7, 128->256] (mmvmvae ResnetEncoder)."""
    return nn.Sequential(
        nn.Conv2d(channels, 64, 3, 1, 1), ResnetBlock(64, 64),
        nn.AvgPool2d(3, 2, 1), ResnetBlock(64, 128),  # -> 14
        nn.AvgPool2d(3, 2, 1), ResnetBlock(128, 256),  # -> 7
    )


class ResnetEncoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.trunk = trunk(channels)
        self.fc_mu = nn.Linear(FLAT, latent_dim)  # directly from the flattened trunk, no activation
        self.fc_lv = nn.Linear(FLAT, latent_dim)

    def forward(self, x: torch.Tensor):
        h = self.trunk(x).flatten(1)
        return self.fc_mu(h), self.fc_lv(h)


class ResnetDecoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int = 3):
        super().__init__()
        self.fc = nn.Linear(latent_dim, FLAT)
        self.net = nn.Sequential(
            ResnetBlock(256, 128), nn.Upsample(scale_factor=2),  # -> 14
            ResnetBlock(128, 64), nn.Upsample(scale_factor=2),  # -> 28
            ResnetBlock(64, 64),
        )
        self.conv_img = nn.Conv2d(64, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(self.fc(z).view(-1, 256, 7, 7))
        return self.conv_img(actvn(out))  # no output activation (Laplace location)


class ResnetClassifier(nn.Module):
    def __init__(self, n_classes: int, channels: int = 3):
        super().__init__()
        self.trunk = trunk(channels)
        self.fc = nn.Linear(FLAT, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(actvn(self.trunk(x)).flatten(1))


@ARCHITECTURES.register("polymnist_resnet")
class PolyMNISTResNet:
    """MM-VAMP PolyMNIST ResNet: 3 residual stages 28->7, 12544 -> latent (mu, logvar); mirrored upsampling decoder."""

    @staticmethod
    def encoder(modality: Modality, latent_dim: int) -> nn.Module:
        return ResnetEncoder(latent_dim, _check(modality))

    @staticmethod
    def decoder(modality: Modality, latent_dim: int) -> nn.Module:
        return ResnetDecoder(latent_dim, _check(modality))


@ARCHITECTURES.register("polymnist_resnet_clf")
class PolyMNISTResNetClassifier:
    """MM-VAMP translated-PolyMNIST digit classifier: the encoder's ResNet trunk, then Linear(12544, classes)."""

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        return ResnetClassifier(n_classes, _check(modality))
