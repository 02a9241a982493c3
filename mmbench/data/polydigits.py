"""polydigits: an offline PolyMNIST built from scikit-learn's bundled 8×8 handwritten digits.

The embedded default dataset: no download, prepared in seconds. Source digits are the 1,797
images of ``sklearn.datasets.load_digits`` (16 grey levels), upsampled (bilinear) to 20×20 and
centred in a 28×28 canvas like MNIST, then fed to the same PolyMNIST generator as the real data
(``polygen``). A seeded stratified split puts 80 % of the source images in train and 20 % in
test, so train and test never share a source digit image.

Backgrounds are generated procedurally (seeded): one 96×96 image per modality, a smooth,
low-contrast colour field (a base colour far from mid-grey plus a few low-frequency waves). The
digit, inverted over such a background, stands out clearly; high-contrast textured backgrounds
(the real PolyMNIST's) make the shared digit much slower to learn, which a CPU quickstart cannot
afford.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np

from ..registry import DATASETS
from . import polygen
from .base import DatasetSpec, Modality

# Base colours (RGB in [0, 1]) of the five backgrounds: dark or light, never mid-grey, so that the
# inverted digit (1 - background) contrasts with its surroundings.
PALETTE = [(0.10, 0.15, 0.40), (0.92, 0.85, 0.50), (0.10, 0.32, 0.15), (0.92, 0.68, 0.75), (0.38, 0.12, 0.08)]
BG_SIZE = 96
BG_AMPLITUDE = 0.08  # peak deviation of the texture from the base colour


def make_backgrounds(n: int, rng: np.random.Generator, size: int = BG_SIZE) -> List[np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for m in range(n):
        base = np.array(PALETTE[m % len(PALETTE)])
        field = np.zeros((size, size, 3))
        for _ in range(3):  # three smooth waves per image, random direction, frequency and phase
            fy, fx = rng.uniform(-3, 3, size=2)
            phase = rng.uniform(0, 2 * np.pi, size=3)
            field += np.sin(2 * np.pi * (fy * yy + fx * xx)[..., None] + phase)
        field = field / np.abs(field).max()
        img = np.clip(base + BG_AMPLITUDE * field, 0, 1)
        out.append((img * 255).round().astype(np.uint8))
    return out


def source_digits() -> tuple:
    """sklearn's 1,797 digits as uint8 N×28×28 MNIST-like images, and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    big = polygen.resize_digits(small, 20)
    canvas = np.zeros((len(big), 28, 28), dtype=np.uint8)
    canvas[:, 4:24, 4:24] = big
    return canvas, d.target.astype(np.int64)


def split_sources(labels: np.ndarray, test_fraction: float, seed: int) -> tuple:
    """Disjoint, stratified, seeded train/test index sets over the source images."""
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_fraction, stratify=labels,
                                           random_state=seed)
    return np.sort(idx_train), np.sort(idx_test)


@DATASETS.register("polydigits")
class PolyDigits(DatasetSpec):
    """Embedded offline PolyMNIST from sklearn's digits (5 modalities; vanilla/extended/translated); builds in seconds."""

    variants = polygen.VARIANTS
    embedded = True  # built offline, so `mmbench run` prepares it on demand
    recipe_version = 1
    variant_recipe_versions = polygen.VARIANT_RECIPE_VERSIONS
    n_classes = 10
    default_architecture = "polymnist_cnn"
    classifier_architecture = "polymnist_clf"
    n_modalities = 5
    test_fraction = 0.2
    multiplicity = {"train": 6, "test": 3}

    def modalities(self, variant: str) -> List[Modality]:
        return [Modality(f"m{m}", (3, 28, 28), "image", "laplace") for m in range(self.n_modalities)]

    def expected_counts(self, variant: str) -> Dict[str, int]:
        # Every variant pairs each source image of a split once per round (polygen.pair_indices), and the stratified
        # split's sizes do not depend on its seed, so any seed's split sizes times the multiplicity are the counts.
        from sklearn.datasets import load_digits

        train, test = split_sources(load_digits().target, self.test_fraction, seed=0)
        return {"train": self.multiplicity["train"] * len(train), "test": self.multiplicity["test"] * len(test)}

    def build(self, out, variant: str, seed: int, options: Dict[str, Any],
              progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
        rng = np.random.default_rng(seed)
        digits, labels = source_digits()
        idx_train, idx_test = split_sources(labels, self.test_fraction, seed)
        backgrounds = make_backgrounds(self.n_modalities, rng)
        out.write("backgrounds", np.stack(backgrounds))
        counts = {}
        for split, idx in (("train", idx_train), ("test", idx_test)):
            arrays = polygen.generate(digits[idx], labels[idx], backgrounds, variant, self.multiplicity[split], rng,
                                      progress=lambda i, n, s=split: progress(f"polydigits {s}", i, n))
            for key, arr in arrays.items():
                out.write(f"{split}_{key}", arr)
            counts[split] = int(len(arrays["labels"]))
        return {"counts": counts, "source": "sklearn.datasets.load_digits",
                "source_images": {"train": int(len(idx_train)), "test": int(len(idx_test))}}
