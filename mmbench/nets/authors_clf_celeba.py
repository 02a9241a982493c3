"""The MoPoE authors' bimodal-CelebA attribute classifiers (files `clf_m1` image, `clf_m2` text; 40 logits).

Image (MoPoE `celeba/networks/ConvNetworkImgClfCelebA.py`, `ClfImg`): `feature_extractor`
(`FeatureExtractorImg.py`: conv1 3 -> DIM, k3 s2 p2, no bias; resblock1..4 to 2..5·DIM, k4 s2, p1 except the
last p0; a = 2.0, b = 0.3), dropout 0.5, linear 5·DIM -> 40. Its residual blocks
(`ResidualBlocks.py ResidualBlock2dConv`: BN, ReLU, bias-free 1×1 conv, Dropout2d, BN, ReLU, bias-free conv,
Dropout2d) have a `downsample` shortcut conv *with* a bias, which mmbench's `celeba_clf` (bias-free 2-d
convs throughout) lacks, so the image classifier is rebuilt here with the authors' module names.
Text (`ConvNetworkTextClfCelebA.py`, `ClfText`): conv1 alphabet -> DIM (k3 s2 p1), resblock_1..6 to 2..7·DIM
(`ResidualBlock1dConv`, k4 s2, p1 except the last p0, a = 2.0, b = 0.3), dropout, linear 7·DIM -> 40: the
layers of mmbench's `celeba_clf` text classifier in the same order, so its modules are renamed onto it.
DIM = 128 (`celeba/flags.py` DIM_img, DIM_text). The authors end in a sigmoid; these return the logits (same
average precision). Files are `torch.save(state_dict)`, read by `celeba/experiment.py set_clfs`.
"""
from __future__ import annotations

from typing import List, Tuple

from torch import nn

from ..data.base import Modality
from ..errors import MMBenchError
from ..registry import ARCHITECTURES
from .celeba import DIM, CelebAClassifiers

A, B = 2.0, 0.3


class AuthorsResBlock2d(nn.Module):
    """a · downsample(x) + b · (BN-ReLU-1×1-Dropout2d-BN-ReLU-conv-Dropout2d)(x), the authors' names."""

    def __init__(self, cin: int, cout: int, p: int):
        super().__init__()
        self.bn1, self.conv1, self.dropout1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cin, 1, bias=False), nn.Dropout2d(0.5)
        self.bn2, self.conv2 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 4, 2, p, bias=False)
        self.dropout2, self.relu = nn.Dropout2d(0.5), nn.ReLU()
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, p), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = self.dropout1(self.conv1(self.relu(self.bn1(x))))
        h = self.dropout2(self.conv2(self.relu(self.bn2(h))))
        return A * self.downsample(x) + B * h


class AuthorsImageFeatures(nn.Module):
    def __init__(self, channels: int = 3, dim: int = DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, dim, 3, 2, 2, bias=False)  # 64 -> 33
        for i in range(1, 5):  # 33 -> 16 -> 8 -> 4 -> 1
            setattr(self, f"resblock{i}", nn.Sequential(AuthorsResBlock2d(i * dim, (i + 1) * dim, 0 if i == 4 else 1)))

    def forward(self, x):
        h = self.conv1(x)
        for i in range(1, 5):
            h = getattr(self, f"resblock{i}")(h)
        return h


class AuthorsImageClassifier(nn.Module):
    """64×64 image -> attribute logits, in the authors' ClfImg layout."""

    def __init__(self, channels: int, n_classes: int, dim: int = DIM):
        super().__init__()
        self.feature_extractor = AuthorsImageFeatures(channels, dim)
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(5 * dim, n_classes)

    def forward(self, x):
        return self.linear(self.dropout(self.feature_extractor(x)).flatten(1))


# ClfText's modules -> mmbench's celeba_clf text classifier (Sequential(trunk, dropout, linear); the trunk is
# ToChannels, conv, 6 ResBlocks (branch: BN, ReLU, conv, dropout, BN, ReLU, conv, dropout; shortcut: conv, BN)).
TEXT_PREFIXES = [("conv1.", "0.1."), ("linear.", "2.")] + [
    (f"resblock_{i}.0.{a}", f"0.{i + 1}.{m}") for i in range(1, 7)
    for a, m in (("bn1.", "branch.0."), ("conv1.", "branch.2."), ("bn2.", "branch.4."), ("conv2.", "branch.6."),
                 ("downsample.0.", "shortcut.0."), ("downsample.1.", "shortcut.1."))]
FILES = {"image": "clf_m1", "text": "clf_m2"}


def _kind(modality: Modality) -> str:
    if modality.kind not in FILES:
        raise MMBenchError(f"the MoPoE authors distribute CelebA classifiers for the image and the text; "
                           f"{modality.name!r} is {modality.kind!r}")
    return modality.kind


@ARCHITECTURES.register("authors_celeba_clf")
class AuthorsCelebAClassifiers:
    """The MoPoE authors' CelebA attribute classifiers (residual image ClfImg; text as celeba_clf)."""

    datasets = ("celeba",)

    @staticmethod
    def files(modality: Modality) -> List[str]:
        return [FILES[_kind(modality)]]

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        if _kind(modality) == "image":
            return AuthorsImageClassifier(modality.shape[0], n_classes)
        return CelebAClassifiers.classifier(modality, n_classes)

    @staticmethod
    def prefixes(modality: Modality) -> List[Tuple[str, str]]:
        return [("", "")] if _kind(modality) == "image" else TEXT_PREFIXES
