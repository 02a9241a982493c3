"""The PolyMNIST generator (MoPoE App. D; MoPoE mmnist/MMNISTDataset.py _create_mmnist_dataset /
_add_background_image; translation as mmvmvae utils/PolyMNISTDataset.py), shared by every PolyMNIST-like dataset.

Given source digits (uint8 N×28×28 with labels, e.g. an IDX pair) and one background image per
modality, it makes M-modality tuples:

* pairing: within each digit class, an independent random permutation of the class's source images
  per modality, so a tuple's modalities share the label but are different handwritten instances;
  repeated ``multiplicity`` times with fresh permutations;
* each modality image: digit binarised at >128, a random 28×28 crop of the modality's background,
  colours inverted (1 - pixel) where the digit is.

Variants (all seeded through one ``numpy.random.Generator``):

* ``vanilla``: as above.
* ``translated`` (MM-VAMP App. B.2.1): the digit is first downscaled by 0.75 to 21×21 (bilinear, truncated to
  uint8 before the > 128 threshold, as mmvmvae utils/PolyMNISTDataset.py) and pasted at a random offset 0..7 on
  each axis into an empty 28×28 canvas, so it always lies fully inside the canvas.
* ``extended`` (mrVAE §5, App. E.3): the vanilla image plus two small corner digits per modality.
  Ring pair p = (p, p+1 mod M) carries one corner label shared by exactly those two modalities.
  Geometry: each corner digit is a source image downscaled to 10×10 (bilinear) and pasted into the
  top-left (the pair with the previous modality, p = m-1) or top-right (the pair with the next
  modality, p = m) 10×10 corner of the canvas; the main digit is untouched. As for the main digit,
  the two modalities of a pair show different source instances of the shared corner label.
  Stored labels: the main digit, and ``corner`` (N×M): column p is the label of ring pair p.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MMBenchError

VARIANTS = ("vanilla", "extended", "translated")
# Recipe versions of the variants a generator fix changed (every dataset built here reads them, DatasetSpec
# variant_recipe_versions): translated 2, the resized digit truncated before > 128 as the authors' code (1 rounded).
VARIANT_RECIPE_VERSIONS = {"translated": 2}
CANVAS = 28
TRANSLATE_SIZE = 21  # round(28 * 0.75), MM-VAMP App. B.2.1
CORNER_SIZE = 10


def resize_digits(digits: np.ndarray, size: int, truncate: bool = False) -> np.ndarray:
    """Bilinear resize of uint8 N×H×W digits to N×size×size (uint8), rounded, or truncated (`truncate`: the float
    output copied into a uint8 tensor, as mmvmvae utils/PolyMNISTDataset.py _add_background_image does)."""
    t = torch.from_numpy(digits).float().unsqueeze(1)
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    return (out.floor() if truncate else out.round()).clamp(0, 255).to(torch.uint8).numpy()


def pair_indices(labels: np.ndarray, n_modalities: int, multiplicity: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Tuples of source indices (T×M): per class, one independent permutation per modality and repeat."""
    rows = []
    for _ in range(multiplicity):
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rows.append(np.stack([rng.permutation(idx) for _ in range(n_modalities)], axis=1))
    return np.concatenate(rows, axis=0)


def digit_masks(digits: np.ndarray, labels: np.ndarray, tuples: np.ndarray, variant: str,
                rng: np.random.Generator) -> tuple:
    """Boolean T×M×28×28 masks of digit pixels for each tuple and modality, and extra labels."""
    T, M = tuples.shape
    extra: Dict[str, np.ndarray] = {}
    if variant == "translated":
        small = resize_digits(digits, TRANSLATE_SIZE, truncate=True)  # then > 128, as the authors' code
        canvas = np.zeros((T, M, CANVAS, CANVAS), dtype=np.uint8)
        span = CANVAS - TRANSLATE_SIZE + 1  # offsets 0..7
        off = rng.integers(0, span, size=(T, M, 2))
        for r in range(span):  # every digit placed at its offset, one offset at a time
            for c in range(span):
                t, m = np.nonzero((off[..., 0] == r) & (off[..., 1] == c))
                canvas[t, m, r:r + TRANSLATE_SIZE, c:c + TRANSLATE_SIZE] = small[tuples[t, m]]
        extra["offset"] = off.astype(np.int64)
        return canvas > 128, extra
    masks = digits[tuples] > 128
    if variant == "extended":
        small = resize_digits(digits, CORNER_SIZE) > 128
        by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        if len(by_class) < 10:  # corner labels are drawn from all ten digits
            raise MMBenchError(f"the extended variant needs digits of all ten classes in each split, this one has "
                               f"only {sorted(by_class)}; build it from a larger source (every MNIST split has all ten)")
        corner = rng.integers(0, 10, size=(T, M))  # column p: label shared by modalities p and p+1
        # each tuple's and modality's two corner digits (left: the label shared with modality m-1, right: with m+1),
        # drawn in the order t, m, left/right: one uniform pick from the label's digits each, as rng.choice draws it
        # (rng.integers over an array of pool sizes draws the same numbers in turn; tests/test_data.py pins the bytes)
        shared = np.stack([corner[:, (np.arange(M) - 1) % M], corner], axis=-1)  # T×M×2: the two corners' labels
        pools = [by_class[c] for c in range(10)]
        pick = rng.integers(0, np.array([len(q) for q in pools])[shared])
        src = np.empty_like(pick)
        for c in range(10):
            where = shared == c
            src[where] = pools[c][pick[where]]
        for side, col in ((0, 0), (1, CANVAS - CORNER_SIZE)):
            masks[:, :, :CORNER_SIZE, col:col + CORNER_SIZE] |= small[src[..., side]]
        extra["corner"] = corner.astype(np.int64)
    elif variant != "vanilla":
        raise ValueError(f"unknown PolyMNIST variant {variant!r}")
    return masks, extra


def compose(masks: np.ndarray, backgrounds: Sequence[np.ndarray], rng: np.random.Generator,
            progress: Optional[Callable[[int, int], None]] = None) -> List[np.ndarray]:
    """One uint8 T×3×28×28 array per modality: background crop, inverted where the digit is."""
    T, M = masks.shape[:2]
    out = []
    for m in range(M):
        bg = backgrounds[m]  # H×W×3 uint8
        H, W = bg.shape[:2]
        ys = rng.integers(0, H - CANVAS, size=T)  # exclusive upper bound, as the official code
        xs = rng.integers(0, W - CANVAS, size=T)
        windows = np.lib.stride_tricks.sliding_window_view(bg, (CANVAS, CANVAS), axis=(0, 1))  # y×x×3×28×28 view
        img = np.ascontiguousarray(windows[ys, xs])  # T×3×28×28: the crop at (ys, xs)
        flip = masks[:, m, None].astype(bool).view(np.uint8) * np.uint8(255)
        np.bitwise_xor(img, flip, out=img)  # 255 - v where the digit is
        out.append(img)
        if progress:
            progress(m + 1, M)
    return out


def generate(digits: np.ndarray, labels: np.ndarray, backgrounds: Sequence[np.ndarray], variant: str,
             multiplicity: int, rng: np.random.Generator,
             progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, np.ndarray]:
    """All arrays of one split: ``m0..m{M-1}`` (uint8 T×3×28×28), ``labels`` and ``extra_*`` labels."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown PolyMNIST variant {variant!r}; choose one of {VARIANTS}")
    M = len(backgrounds)
    for bg in backgrounds:
        if bg.ndim != 3 or bg.shape[2] != 3 or bg.dtype != np.uint8 or min(bg.shape[:2]) <= CANVAS:
            raise ValueError("backgrounds must be uint8 H×W×3 images larger than 28×28")
    tuples = pair_indices(labels, M, multiplicity, rng)
    masks, extra = digit_masks(digits, labels, tuples, variant, rng)
    images = compose(masks, backgrounds, rng, progress)
    arrays = {f"m{m}": images[m] for m in range(M)}
    arrays["labels"] = labels[tuples[:, 0]].astype(np.int64)
    for k, v in extra.items():
        arrays[f"extra_{k}"] = v
    return arrays
