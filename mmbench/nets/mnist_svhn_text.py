"""MNIST-SVHN-Text networks of the MoPoE code (MoPoE mnistsvhntext/networks/ConvNetworksImgMNIST.py,
ConvNetworksImgSVHN.py, ConvNetworksTextMNIST.py): MNIST MLP, SVHN CNN, text 1-d CNN."""
from __future__ import annotations

from torch import nn

from ..data.base import Modality
from ..errors import MMBenchError
from ..registry import ARCHITECTURES


class Gaussian(nn.Module):
    """A trunk followed by two linear heads: (mu, logvar)."""

    def __init__(self, trunk: nn.Module, features: int, latent_dim: int):
        super().__init__()
        self.trunk, self.mu, self.logvar = trunk, nn.Linear(features, latent_dim), nn.Linear(features, latent_dim)

    def forward(self, x):
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


class ToChannels(nn.Module):
    """(B, length, alphabet) one-hot text <-> (B, alphabet, length) for 1-d convolutions."""

    def forward(self, x):
        return x.transpose(1, 2)


def mnist_trunk():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU())


def svhn_trunk(dropout_bn: bool = False):
    layers = []
    for cin, cout, pad in ((3, 32, 1), (32, 64, 1), (64, 64, 1), (64, 128, 0)):  # 32 -> 16 -> 8 -> 4 -> 1
        layers.append(nn.Conv2d(cin, cout, 4, 2, pad))
        if dropout_bn:
            layers += [nn.Dropout(0.5), nn.BatchNorm2d(cout)]
        layers.append(nn.ReLU())
    return nn.Sequential(*layers, nn.Flatten())


def text_trunk(alphabet: int):
    return nn.Sequential(ToChannels(), nn.Conv1d(alphabet, 128, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 4, 2, 1), nn.ReLU(),  # 8 -> 4
                         nn.Conv1d(128, 128, 4, 2, 0), nn.ReLU(), nn.Flatten())  # 4 -> 1


ENCODERS = {
    "mnist": lambda m, d: Gaussian(mnist_trunk(), 400, d),
    "svhn": lambda m, d: Gaussian(svhn_trunk(), 128, d),
    "text": lambda m, d: Gaussian(text_trunk(m.shape[1]), 128, d),
}
DECODERS = {
    # The MNIST decoder ends in a sigmoid (authors' code); SVHN's has no output activation.
    "mnist": lambda m, d: nn.Sequential(nn.Linear(d, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid(),
                                        nn.Unflatten(1, (1, 28, 28))),
    "svhn": lambda m, d: nn.Sequential(nn.Linear(d, 128), nn.Unflatten(1, (128, 1, 1)), nn.ReLU(),
                                       nn.ConvTranspose2d(128, 64, 4, 1, 0), nn.ReLU(),  # 1 -> 4
                                       nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU(),  # -> 8
                                       nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # -> 16
                                       nn.ConvTranspose2d(32, 3, 4, 2, 1)),  # -> 32
    # Logits over the alphabet (the authors' decoder ends in LogSoftmax and utils/BaseMMVae.py forward passes it
    # positionally to OneHotCategorical, i.e. as probabilities; mmvmvae uses logits).
    "text": lambda m, d: nn.Sequential(nn.Linear(d, 128), nn.Unflatten(1, (128, 1)),
                                       nn.ConvTranspose1d(128, 128, 4, 1, 0), nn.ReLU(),  # 1 -> 4
                                       nn.ConvTranspose1d(128, 128, 4, 2, 1), nn.ReLU(),  # -> 8
                                       nn.Conv1d(128, m.shape[1], 1), ToChannels()),
}
CLASSIFIERS = {
    "mnist": lambda m, k: nn.Sequential(nn.Conv2d(1, 32, 4, 2), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                                        nn.Conv2d(64, 128, 4, 2), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                                        nn.Linear(128, k)),  # 28 -> 13 -> 5 -> 1
    "svhn": lambda m, k: nn.Sequential(svhn_trunk(dropout_bn=True), nn.Linear(128, k)),
    # Simplification: the text encoder's trunk, not the authors' residual text classifier.
    "text": lambda m, k: nn.Sequential(text_trunk(m.shape[1]), nn.Dropout(0.5), nn.Linear(128, k)),
}


def _pick(table: dict, modality: Modality, what: str):
    try:
        return table[modality.name]
    except KeyError:
        raise MMBenchError(f"the mnist_svhn_text {what} has no network for modality {modality.name!r}; "
                           f"it knows {', '.join(table)}") from None


@ARCHITECTURES.register("mnist_svhn_text")
class MNISTSVHNTextNets:
    """MoPoE MNIST-SVHN-Text nets: MNIST MLP (784-400), SVHN 4-conv CNN, text 1-d CNN over the 71-char alphabet."""

    @staticmethod
    def encoder(modality: Modality, latent_dim: int) -> nn.Module:
        return _pick(ENCODERS, modality, "architecture")(modality, latent_dim)

    @staticmethod
    def decoder(modality: Modality, latent_dim: int) -> nn.Module:
        return _pick(DECODERS, modality, "architecture")(modality, latent_dim)


@ARCHITECTURES.register("mnist_svhn_text_clf")
class MNISTSVHNTextClassifiers:
    """Digit classifiers for MNIST (3 convs), SVHN (4 convs with dropout + batch norm) and text (1-d CNN)."""

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        return _pick(CLASSIFIERS, modality, "classifier")(modality, n_classes)
