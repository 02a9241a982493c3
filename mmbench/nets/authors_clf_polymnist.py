"""The MoPoE authors' PolyMNIST digit classifiers, as distributed with their data, loaded into mmbench's own.

Their class (MoPoE `mmnist/networks/ConvNetworkImgClfCMNIST.py`, `ClfImg`) holds one `nn.Sequential` named
`encoder` with the layers of mmbench's `polymnist_clf` in the same order (conv, Dropout2d, ReLU, conv,
Dropout2d, ReLU, flatten, linear 980->128, dropout, ReLU, linear 128->10), so the import strips the `encoder.`
prefix. Files: `pretrained_img_to_digit_clf_m<i>` for modality m<i> (MoPoE `job_polymnist`,
`--pretrained-classifier-paths .../trained_clfs_polyMNIST/pretrained_img_to_digit_clf_m{0..4}`), each a
`torch.save(state_dict)` read by `mmnist/experiment.py set_clfs` with `load_state_dict(torch.load(fp))`.
"""
from __future__ import annotations

from typing import List, Tuple

from torch import nn

from ..data.base import Modality
from ..registry import ARCHITECTURES
from .polymnist import PolyMNISTClassifier


@ARCHITECTURES.register("authors_polymnist_clf")
class AuthorsPolyMNISTClassifiers:
    """The MoPoE authors' PolyMNIST ClfImg (same layers as polymnist_clf), for `mmbench classifiers import`."""

    datasets = ("polymnist", "polydigits")  # polydigits: the offline stand-in with PolyMNIST's shapes

    @staticmethod
    def files(modality: Modality) -> List[str]:
        name = f"pretrained_img_to_digit_clf_{modality.name}"
        return [name, f"trained_clfs_polyMNIST/{name}"]

    @staticmethod
    def classifier(modality: Modality, n_classes: int) -> nn.Module:
        return PolyMNISTClassifier.classifier(modality, n_classes)

    @staticmethod
    def prefixes(modality: Modality) -> List[Tuple[str, str]]:
        """(authors' module prefix, mmbench module prefix) for every layer with parameters."""
        return [(f"encoder.{i}.", f"{i}.") for i in (0, 3, 7, 10)]
