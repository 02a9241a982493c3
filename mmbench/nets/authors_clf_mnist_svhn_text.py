"""The MoPoE authors' MNIST-SVHN-Text digit classifiers (files `clf_m1` MNIST, `clf_m2` SVHN, `clf_m3` text).

MNIST (MoPoE `mnistsvhntext/networks/ConvNetworkImgClfMNIST.py`, `ClfImg`: conv1..conv3, dropout, linear)
and SVHN (`ConvNetworkImgClfSVHN.py`, `ClfImgSVHN`: conv1..conv4 each followed by dropout, bn1..bn4, ReLU;
linear) have the layers of mmbench's `mnist_svhn_text_clf` in the same order, so the import renames their
modules. Their text classifier (`ConvNetworkTextClf.py`, `ClfText`) is a residual 1-d CNN that mmbench's own
text classifier simplifies; it is rebuilt here with the authors' module names: conv1 (alphabet -> 2·dim,
k1), resblock_1 (2·dim -> 3·dim, k4 s2 p1) and resblock_4 (3·dim -> 2·dim, k4 s2 p0), dropout 0.5, linear
2·dim -> 10, with dim = 64 (`mnistsvhntext/flags.py --dim`). A residual block: branch = BN, ReLU, 1×1 conv,
BN, ReLU, conv(k, s, p); shortcut = conv(k, s, p) + BN (`downsample`); output = shortcut + 0.3 · branch.
The authors end every classifier in a sigmoid; these return the logits (same argmax).
Files are `torch.save(state_dict)`, read by `mnistsvhntext/experiment.py set_clfs` (`flags.clf_save_m1..3`).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from torch import nn

from ..data.base import Modality
from ..errors import MMBenchError
from ..registry import ARCHITECTURES
from .mnist_svhn_text import CLASSIFIERS

DIM = 64


class AuthorsResBlock(nn.Module):
    """downsample(x) + 0.3 · (BN-ReLU-1×1 conv-BN-ReLU-conv)(x); attribute names as the authors' block."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm1d(cin), nn.Conv1d(cin, cin, 1)
        self.bn2, self.conv2 = nn.BatchNorm1d(cin), nn.Conv1d(cin, cout, k, s, p)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(nn.Conv1d(cin, cout, k, s, p), nn.BatchNorm1d(cout))

    def forward(self, x):
        h = self.conv2(self.relu(self.bn2(self.conv1(self.relu(self.bn1(x))))))
        return self.downsample(x) + 0.3 * h


class AuthorsTextClassifier(nn.Module):
    """One-hot text (B, 8, alphabet) -> 10 digit logits, in the authors' ClfText layout."""

    def __init__(self, alphabet: int, n_classes: int, dim: int = DIM):
        super().__init__()
        self.conv1 = nn.Conv1d(alphabet, 2 * dim, 1)
        self.resblock_1 = nn.Sequential(AuthorsResBlock(2 * dim, 3 * dim, 4, 2, 1))  # 8 -> 4
        self.resblock_4 = nn.Sequential(AuthorsResBlock(3 * dim, 2 * dim, 4, 2, 0))  # 4 -> 1
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(2 * dim, n_classes)

    def forward(self, x):
        h = self.resblock_4(self.resblock_1(self.conv1(x.transpose(1, 2))))
        if h.shape[-1] != 1:
            raise MMBenchError(f"the authors' text classifier needs 8-character texts; got {x.shape[1]}")
        return self.linear(self.dropout(h).flatten(1))


# (authors' prefix, mmbench prefix) per modality; the text classifier has the authors' names already.
PREFIXES: Dict[str, List[Tuple[str, str]]] = {
    "mnist": [("conv1.", "0."), ("conv2.", "2."), ("conv3.", "4."), ("linear.", "8.")],
    "svhn": [p for i in range(4) for p in ((f"conv{i + 1}.", f"0.{4 * i}."), (f"bn{i + 1}.", f"0.{4 * i + 2}."))]
    + [("linear.", "1.")],
    "text": [("", "")],
}
FILES = {"mnist": "clf_m1", "svhn": "clf_m2", "text": "clf_m3"}


def _check(modality: Modality) -> str:
    if modality.name not in FILES:
        raise MMBenchError(f"the MoPoE authors distribute no MNIST-SVHN-Text classifier for modality "
                           f"{modality.name!r}; they have {', '.join(FILES)}")
    return modality.name


@ARCHITECTURES.register("authors_mnist_svhn_text_clf")
class AuthorsMNISTSVHNTextClassifiers:
    """The MoPoE authors' MNIST-SVHN-Text classifiers (MNIST/SVHN as mnist_svhn_text_clf; residual text CNN)."""

    datasets = ("mnist-svhn-text",)

    @staticmethod
    def files(modality: Modality) -> List[str]:
        return [FILES[_check(modality)]]

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        if _check(modality) == "text":
            return AuthorsTextClassifier(modality.shape[1], n_classes)
        return CLASSIFIERS[modality.name](modality, n_classes)

    @staticmethod
    def prefixes(modality: Modality) -> List[Tuple[str, str]]:
        return PREFIXES[_check(modality)]
