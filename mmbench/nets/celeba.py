"""Bimodal CelebA residual networks of the MoPoE code (thomassutter/MoPoE `celeba/networks/`: `ResidualBlocks.py`,
`FeatureExtractorImg.py`, `FeatureExtractorText.py`, `DataGeneratorImg.py`, `DataGeneratorText.py`,
`FeatureCompressor.py`, `ConvNetworkImgClfCelebA.py`, `ConvNetworkTextClfCelebA.py`; DIM 128).

* residual block: branch = BN, ReLU, 1×1 conv, dropout 0.5, BN, ReLU, conv(k, s, p), dropout 0.5;
  shortcut = conv(k, s, p) + BN; output = a · shortcut + b · branch with a = 2.0, b = 0.3. Up-sampling
  blocks use transposed convolutions in both paths. 2-d blocks use Dropout2d and bias-free convs,
  1-d blocks plain Dropout and convs with bias (as the authors' code);
* image encoder (64×64): conv 3->128 (k3 s2 p2, 64->33), then 4 blocks to 256, 384, 512, 640 channels
  (33->16->8->4->1; the last with p0), flattened to 640 (num_layers_img 5 = the conv + 4 blocks);
* image decoder: linear -> 640×1×1, 4 transposed blocks to 512, 384, 256, 128 channels (1->4->8->16->32),
  transposed conv 128->3 (k3 s2 p1 op1, 32->64); no output activation (Laplace mean);
* text encoder (256 characters, one-hot over the alphabet): conv1d alphabet->128 (k4 s2 p1, 256->128),
  6 blocks to 256, 384, 512, 640, 640, 640 channels (128->64->32->16->8->4->1; num_layers_text 7);
* text decoder: linear -> 640×1, 6 transposed blocks 640, 640, 512, 384, 256, 128 (1->4->...->128),
  transposed conv1d 128->alphabet (256 positions); it returns *logits* B×256×alphabet for the
  categorical likelihood (the authors return log-softmax and pass it, as probabilities, to `OneHotCategorical` in
  `utils/BaseMMVae.py`; not copied);
* encoders end in two linear heads (mu, logvar) of size ``latent_dim``. The authors' factorized model
  has four heads (content and style mu/logvar); a linear head of size content+style whose output is
  split (``mopoe_style`` does this) is exactly the same function as two separate heads.

Classifiers ("celeba_clf"): image = the image encoder's trunk, dropout 0.5, linear 640->40;
text = conv1d alphabet->128 (k3 s2 p1), 6 blocks to 256 ... 896 channels (last p0), dropout 0.5, linear
896->40. They return 40 logits (the authors end in a sigmoid; the logits feed BCE-with-logits and, being
monotone in the sigmoid, give the same average precision).

The dropout and BN placement inside transposed blocks is the encoder blocks' (`ResidualBlock*TransposeConv`); the
shortcut convolutions of the 2-d blocks have no bias (the authors' have one; the BatchNorm after it removes any
bias). All layers use PyTorch's default initialisation, as the authors' code, except in ``celeba_resnet_lv0``,
whose encoders' log-variance heads start at zero (see that class and README, "celeba").
"""
from __future__ import annotations

from torch import nn

from ..data.base import Modality
from ..errors import MMBenchError
from ..registry import ARCHITECTURES

DIM = 128  # MoPoE celeba/flags.py: DIM_img = DIM_text = 128
A, B = 2.0, 0.3  # shortcut and branch weights of the residual blocks


class ToChannels(nn.Module):
    """(B, length, alphabet) <-> (B, alphabet, length) for 1-d convolutions."""

    def forward(self, x):
        return x.transpose(1, 2)


class ResBlock(nn.Module):
    """a · (conv + BN shortcut) + b · (BN-ReLU-1×1-dropout-BN-ReLU-conv-dropout branch); down or up (transposed)."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, dims: int = 2, up: bool = False,
                 output_padding: int = 0, a: float = A, b: float = B):
        super().__init__()
        bias = dims == 1  # the authors' 2-d convs are bias-free, their 1-d convs are not
        if up:
            conv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[dims]
            extra = {"output_padding": output_padding}
        else:
            conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
            extra = {}
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
        drop = {1: nn.Dropout, 2: nn.Dropout2d}[dims]
        self.a, self.b = a, b
        self.branch = nn.Sequential(bn(cin), nn.ReLU(), conv(cin, cin, 1, bias=bias), drop(0.5),
                                    bn(cin), nn.ReLU(), conv(cin, cout, k, s, p, bias=bias, **extra), drop(0.5))
        self.shortcut = nn.Sequential(conv(cin, cout, k, s, p, bias=bias, **extra), bn(cout))

    def forward(self, x):
        return self.a * self.shortcut(x) + self.b * self.branch(x)


def image_trunk(channels: int = 3, dim: int = DIM, a: float = A, b: float = B) -> nn.Sequential:
    """64×64 image -> 5·dim features."""
    widths = [dim * i for i in range(1, 6)]  # 128, 256, 384, 512, 640
    layers = [nn.Conv2d(channels, widths[0], 3, 2, 2, bias=False)]  # 64 -> 33
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(ResBlock(cin, cout, 4, 2, 0 if i == 3 else 1, a=a, b=b))  # 33 -> 16 -> 8 -> 4 -> 1
    return nn.Sequential(*layers, nn.Flatten())


def image_generator(latent_dim: int, channels: int = 3, dim: int = DIM, a: float = A, b: float = B) -> nn.Sequential:
    """latent -> 64×64 image (no output activation)."""
    widths = [dim * i for i in (5, 4, 3, 2, 1)]  # 640, 512, 384, 256, 128
    layers = [nn.Linear(latent_dim, widths[0]), nn.Unflatten(1, (widths[0], 1, 1))]
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(ResBlock(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, up=True, a=a, b=b))  # 1 -> 4 -> ... -> 32
    layers.append(nn.ConvTranspose2d(widths[-1], channels, 3, 2, 1, output_padding=1))  # 32 -> 64
    return nn.Sequential(*layers)


def text_trunk(alphabet: int, widths, first_kernel: int, a: float = A, b: float = B) -> nn.Sequential:
    """One-hot text (B, 256, alphabet) -> widths[-1] features; halves the length at every layer."""
    layers = [ToChannels(), nn.Conv1d(alphabet, widths[0], first_kernel, 2, 1)]  # 256 -> 128
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(ResBlock(cin, cout, 4, 2, 0 if last else 1, dims=1, a=a, b=b))  # 128 -> 64 -> ... -> 4 -> 1
    return nn.Sequential(*layers, nn.Flatten())


def text_encoder_widths(dim: int = DIM) -> list:
    return [dim * i for i in (1, 2, 3, 4, 5, 5, 5)]  # 128 ... 640, 640, 640


TEXT_ENCODER_WIDTHS = text_encoder_widths()
TEXT_CLF_WIDTHS = [DIM * i for i in range(1, 8)]  # 128 ... 896


def text_generator(latent_dim: int, alphabet: int, dim: int = DIM, a: float = A, b: float = B) -> nn.Sequential:
    """latent -> logits (B, 256, alphabet)."""
    widths = [dim * i for i in (5, 5, 5, 4, 3, 2, 1)]  # 640, 640, 640, 512, 384, 256, 128
    layers = [nn.Linear(latent_dim, widths[0]), nn.Unflatten(1, (widths[0], 1))]
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(ResBlock(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, dims=1, up=True, a=a, b=b))
    layers += [nn.ConvTranspose1d(widths[-1], alphabet, 4, 2, 1), ToChannels()]  # 128 -> 256
    return nn.Sequential(*layers)


class GaussianHeads(nn.Module):
    """A trunk followed by two linear heads: (mu, logvar). `zero_logvar`: the log-variance head starts at zero
    weights and bias (every posterior starts with unit variance); otherwise PyTorch's default init, as the authors."""

    def __init__(self, trunk: nn.Module, features: int, latent_dim: int, bias: bool = True, zero_logvar: bool = False):
        super().__init__()
        self.trunk = trunk
        self.mu, self.logvar = nn.Linear(features, latent_dim, bias), nn.Linear(features, latent_dim, bias)
        if zero_logvar:
            nn.init.zeros_(self.logvar.weight)
            if bias:
                nn.init.zeros_(self.logvar.bias)

    def forward(self, x):
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


def _check(modality: Modality) -> str:
    if modality.kind == "image":
        if tuple(modality.shape[1:]) != (64, 64):
            raise MMBenchError(f"celeba nets need 64×64 images; modality {modality.name!r} has shape {modality.shape}")
        return "image"
    if modality.kind == "text":
        if modality.shape[0] != 256:
            raise MMBenchError(f"celeba nets need 256-character texts; modality {modality.name!r} has shape "
                               f"{modality.shape}")
        return "text"
    raise MMBenchError(f"celeba nets handle image and text modalities; {modality.name!r} is {modality.kind!r}")


@ARCHITECTURES.register("celeba_resnet")
class CelebAResNets:
    """MoPoE bimodal-CelebA residual nets: 64×64 image and 256-character text encoders/decoders (DIM 128)."""

    zero_logvar = False

    @classmethod
    def encoder(cls, modality: Modality, latent_dim: int) -> nn.Module:
        if _check(modality) == "image":
            return GaussianHeads(image_trunk(modality.shape[0]), 5 * DIM, latent_dim, zero_logvar=cls.zero_logvar)
        return GaussianHeads(text_trunk(modality.shape[1], TEXT_ENCODER_WIDTHS, 4), TEXT_ENCODER_WIDTHS[-1],
                             latent_dim, zero_logvar=cls.zero_logvar)

    @staticmethod
    def decoder(modality: Modality, latent_dim: int) -> nn.Module:
        if _check(modality) == "image":
            return image_generator(latent_dim, modality.shape[0])
        return text_generator(latent_dim, modality.shape[1])


@ARCHITECTURES.register("celeba_resnet_lv0")
class CelebAResNetsLV0(CelebAResNets):
    """celeba_resnet with the encoders' log-variance heads initialised to zero (unit variances at the start), so
    that Adam's first steps cannot align the batch-normalised features with a random log-variance readout (the
    CelebA divergence at lr 5e-4, README); otherwise identical."""

    zero_logvar = True


@ARCHITECTURES.register("celeba_clf")
class CelebAClassifiers:
    """MoPoE bimodal-CelebA attribute classifiers: residual image / text trunks, dropout, linear to 40 logits."""

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        if _check(modality) == "image":
            return nn.Sequential(image_trunk(modality.shape[0]), nn.Dropout(0.5), nn.Linear(5 * DIM, n_classes))
        return nn.Sequential(text_trunk(modality.shape[1], TEXT_CLF_WIDTHS, 3), nn.Dropout(0.5),
                             nn.Linear(TEXT_CLF_WIDTHS[-1], n_classes))
