"""Bimodal CelebA (MoPoE App. E; MoPoE celeba/CelebADataset.py, text from mmjsd
preprocessing/mainPreprocessLabelsToTextCelebA.py): a face image and a text listing its attributes.

Raw files (with their published md5s): ``img_align_celeba.zip``, ``list_attr_celeba.txt``,
``list_eval_partition.txt``. CelebA is distributed through Google Drive and Baidu only, with no
stable file URL, so they are read from ``--source DIR`` (download them from the CelebA page).

* image: rows 35:183 and columns 15:163 of the 218×178 aligned image (a 148-pixel centre crop),
  resized to 64×64 with bicubic interpolation (PIL), stored uint8 N×3×64×64;
* text: the names of the attributes equal to 1 in file order, joined with ", ", the last ones
  dropped while longer than 256 characters, underscores to spaces, lowercased, and placed at a
  seeded random start (0 ≤ start < 255 − length, as the authors' preprocessing) in a 256-character
  field padded with '*'; stored as indices into the 71-character alphabet. `-o text_order=random`
  shuffles the names of each image (seeded), again after each name dropped, as mmjsd's `make_text`
  with `random_text_ordering` (MM-VAMP App. B.3: "the attributes are randomly ordered"; the code's
  default, and this one's, is file order);
* labels: the 40-attribute multi-hot vector (N×40);
* splits: train = partition 0; test = partition ``test_partition`` (default 1, the validation
  split, which is what the MoPoE code calls "test"; 2 gives the official test split).
"""
from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from ..errors import MMBenchError
from ..registry import DATASETS
from .base import DatasetSpec, Modality, whole_option
from .download import Resource, fetch
from .mnist_svhn_text import ALPHABET

FILES = {
    "img_align_celeba.zip": "00d2c5bc6d35e252742224ab0c1e8fcb",
    "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
    "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668",
}
# Images per partition (0 train, 1 validation, 2 test) listed by the md5-checked list_eval_partition.txt (the CelebA
# page: 162,770 / 19,867 / 19,962 of 202,599): the split sizes of a build, for `run --dry-run` before `prepare`.
PARTITION_SIZES = {0: 162_770, 1: 19_867, 2: 19_962}
TEST_PARTITION = 1  # the default test split: the validation partition, what the MoPoE code calls "test"
TEXT_LEN = 256
CROP = (35, 183, 15, 163)  # rows, cols of the 148-pixel centre crop of a 218×178 image


def read_attributes(path: Path) -> Tuple[List[str], Dict[str, np.ndarray]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        n = int(lines[0].strip())
        names = lines[1].split()
        rows = {}
        for line in lines[2:2 + n]:
            parts = line.split()
            rows[parts[0]] = (np.array(parts[1:], dtype=int) > 0).astype(np.uint8)
    except (IndexError, ValueError) as e:
        raise MMBenchError(f"{path} is not in the list_attr_celeba.txt format ({e})") from None
    if len(names) != 40 or len(rows) != n or any(len(v) != 40 for v in rows.values()):
        raise MMBenchError(f"{path}: expected {n} rows of 40 attributes")
    return names, rows


def read_partition(path: Path) -> Dict[str, int]:
    out = {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                raise MMBenchError(f"{path} line {i}: expected 'IMAGE.jpg PARTITION' (0, 1 or 2), got {line.strip()!r}; "
                                   f"replace it with the file from the CelebA page")
            out[fields[0]] = int(fields[1])
    return out


def attribute_text(names: List[str], attrs: np.ndarray, rng: np.random.Generator, shuffle: bool = False) -> str:
    """The 256-character text of one image (mmjsd `make_text` / `attr_to_text`, seeded); `shuffle`: the names in a
    random order, drawn again after each name dropped (`make_text`'s `random_shuffle`)."""
    chosen = [n for n, a in zip(names, attrs) if a]
    if shuffle:
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    text = ", ".join(chosen)
    while len(text) > TEXT_LEN:
        chosen = chosen[:-1]
        if shuffle:
            chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        text = ", ".join(chosen)
    text = text.replace("_", " ").lower()
    start = int(rng.integers(0, TEXT_LEN - 1 - len(text))) if len(text) < TEXT_LEN - 1 else 0
    return ("*" * start + text).ljust(TEXT_LEN, "*")


def crop_resize(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    img = np.asarray(Image.open(BytesIO(jpeg)).convert("RGB"))
    r0, r1, c0, c1 = CROP
    if img.shape[0] < r1 or img.shape[1] < c1:
        raise MMBenchError(f"CelebA image of shape {img.shape} is smaller than the aligned 218×178")
    small = Image.fromarray(img[r0:r1, c0:c1]).resize((64, 64), Image.BICUBIC)
    return np.asarray(small, np.uint8).transpose(2, 0, 1)


@DATASETS.register("celeba")
class CelebA(DatasetSpec):
    """Bimodal CelebA: 64×64 face and the text of its 40 attributes (MoPoE App. E); --source only."""

    variants = ("default",)
    recipe_version = 1
    n_classes = 40
    multilabel = True  # 40 multi-hot attributes; their names are the manifest's "attributes"
    default_architecture = "celeba_resnet"
    classifier_architecture = "celeba_clf"
    option_names = {"source": "directory with img_align_celeba.zip and the two txt files",
                    "test_partition": "partition used as test: 1 (validation, MoPoE code; default) or 2",
                    "text_order": "attribute names in the text: file (the authors' code; default) or random "
                                  "(MM-VAMP App. B.3; shuffled per image, seeded)"}
    option_defaults = {"test_partition": TEST_PARTITION, "text_order": "file"}
    location_options = ("source",)
    needs = {"default": "--source DIR"}  # no stable file URL (build)

    def expected_counts(self, variant: str) -> Dict[str, int]:
        # default options: train = partition 0, test = TEST_PARTITION
        return {"train": PARTITION_SIZES[0], "test": PARTITION_SIZES[TEST_PARTITION]}

    def modalities(self, variant: str) -> List[Modality]:
        # Reconstruction weights as the MoPoE code: 4096/12288 for the image, 4096/256 for the text.
        return [Modality("img", (3, 64, 64), "image", "laplace", 1 / 3),
                Modality("text", (TEXT_LEN, len(ALPHABET)), "text", "categorical", 16.0, ALPHABET)]

    def check_options(self, variant: str, options: Dict[str, Any]) -> None:
        test_part = whole_option(options, "test_partition", TEST_PARTITION)
        if test_part not in (1, 2):
            raise MMBenchError(f"option test_partition={test_part} is not allowed; choose 1 or 2")
        order = options.get("text_order", "file")
        if order not in ("file", "random"):
            raise MMBenchError(f"option text_order={order!r} is not allowed; choose file or random")

    def build(self, out, variant: str, seed: int, options: Dict[str, Any],
              progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
        if not options.get("source"):
            raise MMBenchError("CelebA has no stable download URL; download img_align_celeba.zip, list_attr_celeba.txt "
                               "and list_eval_partition.txt from the CelebA page and pass --source DIR")
        test_part = whole_option(options, "test_partition", TEST_PARTITION)
        shuffle = options.get("text_order", "file") == "random"
        paths = {f: fetch(Resource(f, md5, ()), out.raw_root / "celeba", Path(options["source"]), progress)
                 for f, md5 in FILES.items()}
        names, attrs = read_attributes(paths["list_attr_celeba.txt"])
        partition = read_partition(paths["list_eval_partition.txt"])
        rng = np.random.default_rng(seed)
        with zipfile.ZipFile(paths["img_align_celeba.zip"]) as zf:
            members = {Path(i.filename).name: i.filename for i in zf.infolist() if i.filename.endswith(".jpg")}
            counts = {}
            for split, part in (("train", 0), ("test", test_part)):
                files = sorted(f for f, p in partition.items() if p == part)
                missing = [f for f in files if f not in members or f not in attrs]
                if missing:
                    raise MMBenchError(f"{len(missing)} images of partition {part} are missing from the archive or the "
                                       f"attribute list (first: {missing[0]})")
                imgs = np.empty((len(files), 3, 64, 64), np.uint8)
                for i, f in enumerate(files):
                    imgs[i] = crop_resize(zf.read(members[f]))
                    if i % 500 == 0 or i == len(files) - 1:
                        progress(f"celeba {split}", i + 1, len(files))
                labels = np.stack([attrs[f] for f in files]).astype(np.int64)
                text = np.stack([np.array([ALPHABET.find(ch) for ch in attribute_text(names, a, rng, shuffle)],
                                          np.uint8) for a in labels])
                out.write(f"{split}_img", imgs)
                out.write(f"{split}_text", text)
                out.write(f"{split}_labels", labels)
                counts[split] = len(files)
        return {"counts": counts, "attributes": names, "test_partition": test_part, "source": {"md5": FILES}}
