"""MNIST-SVHN-Text (MoPoE App. C; MoPoE mnistsvhntext/SVHNMNISTDataset.py rand_match_on_idx,
utils/text.py create_text_from_label_mnist): digit triples of an MNIST image, an SVHN
image and the digit's English word.

Pairing, as the authors' code (`rand_match_on_idx`), seeded: within each digit class take the
first n = min(#MNIST, #SVHN, 10,000) indices of each set in label-sorted order, then append 20
independent random permutations of each slice (train and test alike: 1,121,360 / 200,000 triples).
Each source image is stored once; the pairing is stored as index arrays.

Text: the word at a random start inside an 8-character field of spaces, over the 71-character
alphabet of the authors' code, stored as character indices and one-hot encoded when loaded. The
start index is drawn once per triple (seeded) and stored. Option `text_start`:
* `fixed` (default): the stored start is used throughout, so a seed reproduces the data byte for
  byte and every metric sees the same test text; with 20 pairings per image the word already
  appears at many positions during training.
* `per_epoch`: as the authors' loader for the training split, whose start is redrawn every time a triple is
  batched (once per epoch), from torch's generator that training seeds; the test split keeps its
  stored start so that evaluation stays fixed (the authors' loader redraws it too, at every pass).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch

from ..errors import MMBenchError, brief
from ..registry import DATASETS
from . import mnist
from .base import DatasetSpec, Modality, whole_option
from .download import Resource, damaged, fetch

# The authors' alphabet.json (71 entries; '-' appears twice, str.find maps it to 36).
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEXT_LEN = 8
SVHN = {
    "train": Resource("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373",
                      ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",)),
    "test": Resource("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3",
                     ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",)),
}


def encode(text: str) -> np.ndarray:
    return np.array([ALPHABET.find(ch) for ch in text], np.uint8)


def make_text(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Character indices (N×8): each word placed at a start drawn uniformly from 0..7-len(word), as MoPoE
    utils/text.py create_text_from_label_mnist (random.randint(0, len_seq - 1 - len(word)), both ends included):
    the last character is always a space."""
    out = np.full((len(labels), TEXT_LEN), ALPHABET.find(" "), np.uint8)
    for i, label in enumerate(labels):
        word = WORDS[int(label)]
        start = rng.integers(0, TEXT_LEN - len(word))
        out[i, start:start + len(word)] = encode(word)
    return out


def redraw_start(rows: torch.Tensor) -> torch.Tensor:
    """The same words at fresh uniform starts 0..7-len(word) (N×8 character indices; one word per row among spaces;
    the range of make_text)."""
    space = ALPHABET.find(" ")
    letters = rows != space
    n = letters.sum(1, keepdim=True)
    old = letters.int().argmax(1, keepdim=True)  # first letter
    new = (torch.rand(n.shape) * (TEXT_LEN - n)).long()
    pos = torch.arange(TEXT_LEN).expand_as(rows)
    inside = (pos >= new) & (pos < new + n)
    moved = rows.gather(1, (pos - new + old).clamp(0, TEXT_LEN - 1))
    return torch.where(inside, moved, torch.full_like(rows, space))


def load_svhn(path, user_copy: bool = False) -> tuple:
    """SVHN's images (N×3×32×32 uint8) and labels (0..9) from its .mat file; `user_copy`: the file is the user's
    own (from --source), which a damaged file's error tells them to replace, not to delete."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as e:  # noqa: BLE001 - scipy raises several types for a damaged file
        res = next((r for r in SVHN.values() if r.filename == Path(path).name), None)
        raise damaged(Path(path), f"is not a readable MATLAB file ({brief(e)})", res, user_copy) from None
    if "X" not in mat or "y" not in mat:
        raise MMBenchError(f"{path} has no X/y arrays; is it SVHN's {path.name}?")
    x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)).astype(np.uint8)  # 32×32×3×N -> N×3×32×32
    y = mat["y"].reshape(-1).astype(np.int64)
    y[y == 10] = 0  # SVHN labels the digit 0 as 10
    return x, y


# Images per digit 0-9 in the md5-checked source files (SVHN's "10" counted as 0): what the default recipe's split sizes
# follow from (paired_count), for `run --dry-run` before anything is prepared (tests/test_mnist_svhn_text.py checks
# MNIST's test counts against the real file where it is at hand).
CLASS_COUNTS = {
    "mnist": {"train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
              "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)},
    "svhn": {"train": (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659),
             "test": (1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595)},
}


ROUNDS, MAX_PER_CLASS = 20, 10_000  # the default pairing: the authors' 20 matchings of at most 10,000 images a class


def paired_count(counts_a, counts_b, max_per_class: int, rounds: int) -> int:
    """How many pairs `pair` makes from two datasets with these images per class: per class the first
    min(a, b, max_per_class) of each, matched `rounds` times."""
    return rounds * sum(min(a, b, max_per_class) for a, b in zip(counts_a, counts_b))


def pair(l1: np.ndarray, l2: np.ndarray, max_per_class: int, rounds: int, rng: np.random.Generator) -> tuple:
    """Index pairs as the authors' `rand_match_on_idx`, seeded."""
    o1, o2 = np.argsort(l1, kind="stable"), np.argsort(l2, kind="stable")
    s1, s2 = l1[o1], l2[o2]
    i1, i2 = [], []
    for label in np.unique(s1):
        a, b = o1[s1 == label], o2[s2 == label]
        n = min(len(a), len(b), max_per_class)
        for _ in range(rounds):
            i1.append(rng.permutation(a[:n]))
            i2.append(rng.permutation(b[:n]))
    return np.concatenate(i1), np.concatenate(i2)


@DATASETS.register("mnist-svhn-text")
class MNISTSVHNText(DatasetSpec):
    """MNIST-SVHN-Text: MNIST digit, SVHN digit and the digit's word (MoPoE App. C), 20 pairings per class."""

    variants = ("default",)
    recipe_version = 2  # 2: word starts 0..7-len (1 let a word end on the last character)
    n_classes = 10
    default_architecture = "mnist_svhn_text"
    classifier_architecture = "mnist_svhn_text_clf"
    option_names = {"source": "directory with the MNIST .gz and SVHN .mat files",
                    "rounds": "random pairings per class (default 20, as the authors)",
                    "max_per_class": "cap on source images per class (default 10,000)",
                    "text_start": "'fixed' (default: the stored start) or 'per_epoch' (redrawn at every training batch, "
                                  "as the authors' loader)"}
    option_defaults = {"rounds": ROUNDS, "max_per_class": MAX_PER_CLASS, "text_start": "fixed"}
    location_options = ("source",)

    def redraws(self, manifest, split):
        per_epoch = manifest.get("text", {}).get("start") == "per_epoch"
        return {"text": redraw_start} if per_epoch and split == "train" else {}

    def expected_counts(self, variant: str) -> Dict[str, int]:
        # the default pairing (ROUNDS, MAX_PER_CLASS): 1,121,360 train and 200,000 test triples
        return {split: paired_count(CLASS_COUNTS["mnist"][split], CLASS_COUNTS["svhn"][split], MAX_PER_CLASS, ROUNDS)
                for split in ("train", "test")}

    def modalities(self, variant: str) -> List[Modality]:
        # Reconstruction weights relative to SVHN's 3,072 values (MoPoE mnistsvhntext/experiment.py set_rec_weights).
        return [Modality("mnist", (1, 28, 28), "image", "laplace", 3072 / 784),
                Modality("svhn", (3, 32, 32), "image", "laplace", 1.0),
                Modality("text", (TEXT_LEN, len(ALPHABET)), "text", "categorical", 3072 / TEXT_LEN, ALPHABET)]

    def check_options(self, variant: str, options: Dict[str, Any]) -> None:
        rounds, cap = whole_option(options, "rounds", ROUNDS), whole_option(options, "max_per_class", MAX_PER_CLASS)
        if rounds < 1 or cap < 1:
            raise MMBenchError("options rounds and max_per_class must be whole numbers >= 1")
        text_start = options.get("text_start", "fixed")
        if text_start not in ("fixed", "per_epoch"):
            raise MMBenchError(f"option text_start={text_start!r} is not allowed; choose fixed or per_epoch")

    def build(self, out, variant: str, seed: int, options: Dict[str, Any],
              progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
        source = Path(options["source"]) if options.get("source") else None
        rounds, cap = whole_option(options, "rounds", ROUNDS), whole_option(options, "max_per_class", MAX_PER_CLASS)
        text_start = options.get("text_start", "fixed")
        rng = np.random.default_rng(seed)
        counts = {}
        for split in ("train", "test"):
            m_x, m_y = mnist.load(split, out.raw_root / "mnist", source, progress)
            s_x, s_y = load_svhn(fetch(SVHN[split], out.raw_root / "svhn", source, progress),
                                 user_copy=source is not None)
            i_m, i_s = pair(m_y, s_y, cap, rounds, rng)
            labels = m_y[i_m]
            if not np.array_equal(labels, s_y[i_s]):
                raise MMBenchError("internal error: MNIST and SVHN labels disagree after pairing")
            out.write(f"{split}_base_mnist", m_x[:, None])
            out.write(f"{split}_base_svhn", s_x)
            out.write(f"{split}_index_mnist", i_m.astype(np.int32))
            out.write(f"{split}_index_svhn", i_s.astype(np.int32))
            out.write(f"{split}_text", make_text(labels, rng))
            out.write(f"{split}_labels", labels.astype(np.int64))
            counts[split] = int(len(labels))
            progress("mnist-svhn-text pairing", 1 if split == "train" else 2, 2)
        return {"counts": counts, "text": {"length": TEXT_LEN, "alphabet_size": len(ALPHABET), "start": text_start},
                "source": {"mnist_md5": mnist.FILES, "svhn_md5": {r.filename: r.md5 for r in SVHN.values()}}}
