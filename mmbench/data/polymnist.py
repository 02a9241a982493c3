"""PolyMNIST (MoPoE App. D; MoPoE mmnist/MMNISTDataset.py): five modalities of MNIST digits on photographic backgrounds.

* ``vanilla`` (default): the authors' prebuilt archive (Zenodo record 4899160, ``PolyMNIST.zip``),
  verified (layout ``MMNIST/{train,test}/m0..m4/<i>.<digit>.png``, 60,000 / 10,000 tuples × 5
  modalities, identical file names across modalities), paired across modalities by sorted file
  name, converted to arrays; the archive's sha256 is recorded in the manifest.
* ``--rebuild`` (and always for ``extended`` and ``translated``): regenerated with the official
  recipe (``polygen``, seeded) from the MNIST IDX files and five background photographs
  (``--backgrounds DIR``: the first five ``*.jpg`` in sorted order, modality m using the m-th).
  Option ``mnist_source=test-halves`` builds both splits from the MNIST test split's two
  disjoint halves (for machines that only have ``t10k``; train and test still share no digit);
  ``multiplicity=k`` pairs the train split k times with fresh permutations and crops (default 1).
"""
from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import MMBenchError, brief
from ..registry import DATASETS
from . import mnist, polygen
from .base import DatasetSpec, Modality, whole_option
from .download import Resource, damaged, fetch, file_digest

ARCHIVE = Resource("PolyMNIST.zip", None, ("https://zenodo.org/records/4899160/files/PolyMNIST.zip?download=1",
                                           "https://zenodo.org/record/4899160/files/PolyMNIST.zip"))  # Zenodo's old form
COUNTS = {"train": 60_000, "test": 10_000}
NAME = re.compile(r"^(\d+)\.(\d)\.png$")


def background_files(directory: Path, n: int) -> List[Path]:
    """The background images a rebuild uses: the first `n` *.jpg of `directory` in sorted order (modality m: the m-th)."""
    return sorted(Path(directory).glob("*.jpg"))[:n]


def background_digests(paths: List[Path]) -> Dict[str, str]:
    """File name -> sha256 of the backgrounds used (recorded in the manifest, compared on a later prepare)."""
    digests = {}
    for p in paths:
        try:
            digests[p.name] = file_digest(p, "sha256")
        except OSError as e:  # a folder, a dangling link or a link loop named *.jpg
            raise MMBenchError(f"{p} (from --backgrounds) is not a readable image ({brief(e)}); replace it with an "
                               f"intact copy") from None
    return digests


def load_backgrounds(directory: Path, n: int) -> tuple:
    from PIL import Image

    paths = background_files(directory, n)
    if len(paths) < n:
        raise MMBenchError(f"--backgrounds {directory} holds {len(paths)} .jpg files; PolyMNIST needs {n} "
                           f"(modality m uses the m-th in sorted order)")
    images = []
    for p in paths:
        try:
            images.append(np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8))
        except (OSError, Image.DecompressionBombError) as e:  # PIL's UnidentifiedImageError and truncated-file errors
            # are OSErrors; a header claiming a huge image is not
            raise MMBenchError(f"{p} (from --backgrounds) is not a readable image ({brief(e)}); replace it with an "
                               f"intact copy") from None
        if min(images[-1].shape[:2]) <= polygen.CANVAS:  # a 28×28 crop needs room to move (official code)
            raise MMBenchError(f"{p} (from --backgrounds) is {images[-1].shape[1]}×{images[-1].shape[0]} pixels; "
                               f"a background must be larger than {polygen.CANVAS}×{polygen.CANVAS} (use a photograph)")
    return images, background_digests(paths)


def read_archive(path: Path, n_modalities: int, counts: Dict[str, int],
                 progress: Callable[[str, int, int], None],
                 user_copy: bool = False) -> Dict[str, Dict[str, np.ndarray]]:
    """Arrays of every split of the authors' zip, after checking its layout and counts. `user_copy`: the file is the
    user's own (from --source), which a damaged archive's error tells them to replace, not to delete."""
    try:
        return _read_archive(path, n_modalities, counts, progress)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # OSError: PIL's UnidentifiedImageError too
        raise damaged(path, f"is not a readable zip archive of PNG images ({brief(e)})", ARCHIVE, user_copy) from None


def _read_archive(path, n_modalities, counts, progress):
    with zipfile.ZipFile(path) as zf:
        return _read_open_archive(zf, path, n_modalities, counts, progress)


def _read_open_archive(zf, path, n_modalities, counts, progress):
    from io import BytesIO

    from PIL import Image

    files: Dict[tuple, str] = {}
    for info in zf.infolist():
        parts = info.filename.split("/")
        if len(parts) >= 4 and parts[-4] == "MMNIST" and NAME.match(parts[-1]):
            key = (parts[-3], parts[-2], parts[-1])
            if key in files:  # two MMNIST trees: which image is the tuple's would depend on their order in the zip
                first = zf.getinfo(files[key])
                if (first.CRC, first.file_size) != (info.CRC, info.file_size):
                    raise MMBenchError(f"{path} holds two different images as MMNIST/{'/'.join(key)} ({first.filename} "
                                       f"and {info.filename}); the archive is not PolyMNIST as published")
            files[key] = info.filename
    out = {}
    for split, expected in counts.items():
        names = None
        for m in range(n_modalities):
            got = sorted(k[2] for k in files if k[0] == split and k[1] == f"m{m}")
            if len(got) != expected:
                raise MMBenchError(f"{path}: MMNIST/{split}/m{m} holds {len(got)} images, expected {expected}; "
                                   f"the archive is incomplete or not PolyMNIST")
            if names is not None and got != names:
                raise MMBenchError(f"{path}: MMNIST/{split}/m{m} has other file names than m0; cannot pair modalities")
            names = got
        arrays = {}
        for m in range(n_modalities):
            imgs = np.empty((expected, 3, 28, 28), np.uint8)
            for i, name in enumerate(names):  # sorted names pair the modalities (official code: glob order)
                member = files[(split, f"m{m}", name)]
                with zf.open(member) as f:
                    try:
                        image = Image.open(BytesIO(f.read()))
                    except Image.DecompressionBombError as e:  # not an OSError: a header claiming a huge image
                        raise MMBenchError(f"{path}: {member} is not a 28×28 image ({brief(e)}); the archive is "
                                           f"damaged or not PolyMNIST") from None
                    if image.size != (28, 28):  # would not fit its row of the N×3×28×28 array
                        raise MMBenchError(f"{path}: {member} is {image.size[0]}×{image.size[1]} pixels, PolyMNIST's "
                                           f"images are 28×28; the archive is damaged or not PolyMNIST")
                    imgs[i] = np.asarray(image.convert("RGB"), np.uint8).transpose(2, 0, 1)
                if i % 1000 == 0 or i == expected - 1:
                    progress(f"convert {split} m{m}", i + 1, expected)
            arrays[f"m{m}"] = imgs
        arrays["labels"] = np.array([int(NAME.match(n).group(2)) for n in names], np.int64)
        out[split] = arrays
    return out


@DATASETS.register("polymnist")
class PolyMNIST(DatasetSpec):
    """PolyMNIST: 5 modalities of MNIST digits on photo backgrounds (Zenodo archive or rebuilt; vanilla/extended/translated)."""

    variants = polygen.VARIANTS
    recipe_version = 1
    variant_recipe_versions = polygen.VARIANT_RECIPE_VERSIONS
    n_classes = 10
    n_modalities = 5
    default_architecture = "polymnist_cnn"
    classifier_architecture = "polymnist_clf"

    def classifier_for(self, variant: str) -> str:
        # Translated digits: the MM-VAMP code's ResNet classifier (mmvmvae networks/ClfImgPolyMNIST.py, loaded by
        # utils/eval.py load_modality_clfs_PM); else MoPoE's ClfImg.
        return "polymnist_resnet_clf" if variant == "translated" else self.classifier_architecture
    option_names = {"source": "directory with PolyMNIST.zip or the MNIST .gz files",
                    "backgrounds": "directory with the background .jpg files (rebuilds)",
                    "rebuild": "regenerate vanilla from MNIST instead of the authors' archive",
                    "mnist_source": "'train-test' (default) or 'test-halves'",
                    "multiplicity": "pairing rounds of the train split (default 1, as the authors)"}
    option_defaults = {"mnist_source": "train-test", "multiplicity": 1, "rebuild": False}
    location_options = ("source", "backgrounds")
    needs = {v: "--backgrounds DIR" for v in polygen.VARIANTS if v != "vanilla"}  # rebuilt from MNIST (vanilla: archive)
    counts = COUNTS

    def modalities(self, variant: str) -> List[Modality]:
        return [Modality(f"m{m}", (3, 28, 28), "image", "laplace") for m in range(self.n_modalities)]

    def expected_counts(self, variant: str) -> Optional[Dict[str, int]]:
        # The authors' archive is refused unless its splits hold COUNTS; a default rebuild pairs each digit of MNIST's
        # md5-checked train and test files once (multiplicity 1), which hold as many.
        return dict(self.counts)

    def check_options(self, variant: str, options: Dict[str, Any]) -> None:
        mode = options.get("mnist_source", "train-test")
        if mode not in ("train-test", "test-halves"):
            raise MMBenchError(f"option mnist_source={mode!r} is not allowed; choose train-test or test-halves")
        whole_option(options, "multiplicity", 1, least=1)
        shaping = [k for k in ("mnist_source", "multiplicity")
                   if k in options and str(options[k]) != str(self.option_defaults[k])]
        if variant == "vanilla" and not options.get("rebuild") and shaping:
            them = "them" if len(shaping) > 1 else "it"
            raise MMBenchError(f"option {' and '.join(shaping)} shape(s) a rebuild from MNIST, but vanilla is read "
                               f"from the authors' archive without --rebuild: add --rebuild (and --backgrounds "
                               f"DIR), or leave {them} out")

    @classmethod
    def inert_options(cls, variant: str) -> Sequence[str]:
        return () if variant == "vanilla" else ("rebuild",)  # the other variants are always rebuilt from MNIST

    def changed_inputs(self, manifest: Dict[str, Any], options: Dict[str, Any]) -> Optional[str]:
        """--source naming another PolyMNIST.zip than the copy was read from (its sha256: no digest of the archive is
        published, so the first one read is the reference), or --backgrounds naming other images than the copy was
        rebuilt with (file names and sha256 of the five used)."""
        read = manifest.get("source", {}).get("sha256")
        archive = Path(options["source"]) / ARCHIVE.filename if options.get("source") else None
        if read is not None and archive is not None and archive.is_file():
            now = file_digest(archive, "sha256")
            if now != read:
                return f"--source {options['source']} holds a {ARCHIVE.filename} of sha256 {now}, the copy was read from {read}"
        built = manifest.get("source", {}).get("backgrounds_sha256")
        if not options.get("backgrounds") or built is None:
            return None
        now = background_digests(background_files(Path(options["backgrounds"]), self.n_modalities))
        if now == built:
            return None
        return (f"--backgrounds {options['backgrounds']} gives {', '.join(now) or 'no .jpg files'}, the copy was built "
                f"with {', '.join(built)}" + (" (same names, other contents)" if list(now) == list(built) else ""))

    def build(self, out, variant: str, seed: int, options: Dict[str, Any],
              progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
        source = Path(options["source"]) if options.get("source") else None
        if variant == "vanilla" and not options.get("rebuild"):
            path = fetch(ARCHIVE, out.raw_root / "polymnist", source, progress)
            splits = read_archive(path, self.n_modalities, self.counts, progress, user_copy=source is not None)
            for split, arrays in splits.items():
                for key, arr in arrays.items():
                    out.write(f"{split}_{key}", arr)
            return {"counts": {s: int(len(a["labels"])) for s, a in splits.items()},
                    "source": {"archive": ARCHIVE.urls[0], "sha256": file_digest(path, "sha256")}}
        if not options.get("backgrounds"):
            raise MMBenchError(f"rebuilding polymnist ({variant}) needs --backgrounds DIR with {self.n_modalities} "
                               f".jpg images (the authors' five PolyMNIST backgrounds for a faithful copy)")
        backgrounds, bg_digests = load_backgrounds(Path(options["backgrounds"]), self.n_modalities)
        raw = out.raw_root / "mnist"
        mode = options.get("mnist_source", "train-test")
        if mode == "train-test":
            sources = {"train": mnist.load("train", raw, source, progress), "test": mnist.load("test", raw, source, progress)}
        elif mode == "test-halves":
            images, labels = mnist.load("test", raw, source, progress)
            half = len(labels) // 2
            sources = {"train": (images[:half], labels[:half]), "test": (images[half:], labels[half:])}
        else:
            raise MMBenchError(f"option mnist_source={mode!r} is not allowed; choose train-test or test-halves")
        rng = np.random.default_rng(seed)
        counts = {}
        rounds = {"train": whole_option(options, "multiplicity", 1, least=1), "test": 1}
        for split, (digits, labels) in sources.items():
            arrays = polygen.generate(digits, labels, backgrounds, variant, rounds[split], rng,
                                      progress=lambda i, n, s=split: progress(f"polymnist {s}", i, n))
            for key, arr in arrays.items():
                out.write(f"{split}_{key}", arr)
            counts[split] = int(len(arrays["labels"]))
        return {"counts": counts, "source": {"mnist": mode, "md5": {k: v for k, v in mnist.FILES.items()},
                                             "backgrounds_sha256": bg_digests}}
