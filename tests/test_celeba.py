"""Bimodal CelebA from a fixture in the published layout (zip of aligned JPEGs + the two txt files)."""
import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes

from mmbench.data import celeba
from mmbench.data.base import load_split, prepare, read_manifest, save_preview
from mmbench.data.mnist_svhn_text import ALPHABET
from mmbench.errors import MMBenchError
from mmbench.registry import DATASETS

NAMES = [f"Attr_{i:02d}" for i in range(40)]
PARTS = [0, 0, 0, 0, 1, 1, 2, 0, 1, 2]


@pytest.fixture()
def source(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    attrs = rng.choice([-1, 1], size=(len(PARTS), 40))
    attrs[0] = 1  # every attribute: the text must be cut to 256 characters
    attrs[1] = -1  # none: an empty text
    with zipfile.ZipFile(src / "img_align_celeba.zip", "w") as zf:
        for i in range(len(PARTS)):
            img = np.zeros((218, 178, 3), np.uint8)
            img[35:183, 15:163] = 40 + 20 * i  # the crop is flat; outside it is black
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            zf.writestr(f"img_align_celeba/{i + 1:06d}.jpg", buf.getvalue())
    lines = [str(len(PARTS)), " ".join(NAMES)]
    lines += [f"{i + 1:06d}.jpg " + " ".join(f"{a:2d}" for a in attrs[i]) for i in range(len(PARTS))]
    (src / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (src / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(PARTS)))
    for f in celeba.FILES:
        monkeypatch.setitem(celeba.FILES, f, hashlib.md5((src / f).read_bytes()).hexdigest())
    return src, attrs


def test_prepare_crops_texts_and_splits(tmp_path, source):
    src, attrs = source
    spec = DATASETS.get("celeba")()
    path = prepare(spec, None, seed=0, data_root=tmp_path / "d", options={"source": str(src)})
    m = read_manifest(path)
    assert m["counts"] == {"train": 5, "test": 3} and m["attributes"] == NAMES
    train = load_split(spec, None, "train", tmp_path / "d")
    test = load_split(spec, None, "test", tmp_path / "d")
    img = train.x["img"]
    assert img.shape == (5, 3, 64, 64)
    # only the centre crop survives: every pixel of the fixture's crop is 40 (a crop one pixel off takes border ~25)
    assert 38 <= int(img[0].min()) and int(img[0].max()) <= 42
    assert test.labels.tolist() == (attrs[[4, 5, 8]] > 0).astype(int).tolist()
    texts = ["".join(ALPHABET[c] for c in row) for row in train.x["text"].tolist()]
    assert all(len(t) == 256 for t in texts)
    full = texts[0].strip("*")
    # whole names only: the last that fits in 256 characters, none cut (attr 28 would overflow)
    assert full == ", ".join(f"attr {i:02d}" for i in range(28))
    assert texts[1] == "*" * 256
    t3 = texts[2].strip("*")
    assert t3 == ", ".join(n.replace("_", " ").lower() for n, a in zip(NAMES, attrs[2]) if a > 0)
    assert texts[2].index(t3[0]) < 255 - len(t3)
    assert train.batch(np.arange(2))["text"].shape == (2, 256, 71)
    import matplotlib.image

    grid = matplotlib.image.imread(save_preview(test, tmp_path / "grid.png"))  # the text row decodes with its alphabet
    n = min(10, len(test))
    assert grid.shape[:2] == (round(1.2 * 2 * 100), round(1.1 * n * 100)) and grid[..., :3].std() > 0.05
    # the official test split on request
    other = prepare(spec, None, seed=0, data_root=tmp_path / "e", options={"source": str(src), "test_partition": 2})
    assert read_manifest(other)["counts"]["test"] == 2


def test_celeba_needs_source_and_intact_files(tmp_path, source):
    src, _ = source
    spec = DATASETS.get("celeba")()
    with pytest.raises(MMBenchError, match="no stable download URL"):
        prepare(spec, None, data_root=tmp_path / "d")
    (src / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(MMBenchError,
                       match=r"list_eval_partition.txt fails its checksum \(md5 .*\): your copy \(from --source\)"):
        prepare(spec, None, data_root=tmp_path / "d", options={"source": str(src)})


def test_crop_resize_keeps_rows_columns_and_channels():
    # celeba.py docstring: rows 35:183, cols 15:163 of the 218×178 image, stored N×3×64×64 (channel, row, col), RGB
    img = np.zeros((218, 178, 3), np.uint8)
    img[35:183, 15:163] = (50, 100, 150)  # the crop: R=50, G=100, B=150
    img[35:109, 15:163, 0] = 200  # top half of the crop: R=200
    img[35:183, 89:163, 2] = 10  # right half of the crop: B=10
    out = celeba.crop_resize(png_bytes(img)).astype(int)
    assert out.shape == (3, 64, 64)
    # R: 200 top-left and top-right, 50 bottom-left; B: 150 top-left, 10 top-right and bottom-right; G flat 100
    assert (out[0, 5, 5], out[0, 5, 58], out[0, 58, 5]) == (200, 200, 50)
    assert (out[2, 5, 5], out[2, 5, 58], out[2, 58, 58]) == (150, 10, 10)
    assert (out[1] == 100).all()


def test_crop_resize_is_bicubic():
    # celeba.py docstring (MoPoE CelebADataset.py): bicubic resize; bicubic weights go negative, so a step edge rings
    # below its low and above its high level, which bilinear (non-negative weights) never does
    img = np.zeros((218, 178, 3), np.uint8)
    img[35:183, 15:163] = 50
    img[35:109, 15:163] = 200
    out = celeba.crop_resize(png_bytes(img)).astype(int)
    assert out.min() < 50 and out.max() > 200


def test_attribute_text_start_range_is_the_authors():
    # celeba.py docstring (mmjsd preprocessing): 0 ≤ start < 255 − length, so the largest draw is 254 − length
    class Last:
        def integers(self, lo, hi):
            self.range = (lo, hi)
            return hi - 1

    rng = Last()
    text = celeba.attribute_text(["Smiling", "Young"], np.array([1, 1]), rng)
    assert rng.range == (0, 255 - len("smiling, young"))
    assert text == "*" * (254 - len("smiling, young")) + "smiling, young" + "**"


def test_attribute_text_of_exactly_256_characters_is_kept_whole():
    # celeba.py docstring: the last names are dropped only while the text is longer than 256 characters
    names = ["a" * 126, "b" * 128, "c"]  # 126 + 2 + 128 = 256; with ", c" it is 259
    text = celeba.attribute_text(names, np.array([1, 1, 1]), np.random.default_rng(0))
    assert text == "a" * 126 + ", " + "b" * 128


# ----- behaviours a mutation pass found unguarded -----
def test_attribute_text_of_255_or_256_characters_starts_at_the_first_place():
    # celeba.py docstring: 0 ≤ start < 255 − length; with no room left (length 255 or 256) the text starts at 0
    for n in (255, 256):
        names = ["a" * (n - 3), "b"]  # "aaa…, b": n characters
        text = celeba.attribute_text(names, np.array([1, 1]), np.random.default_rng(0))
        assert text == ("a" * (n - 3) + ", b").ljust(256, "*")


def test_small_images_and_other_test_partitions_are_refused(tmp_path, source):
    # celeba.py: the crop needs the aligned 218×178 image; test_partition is 1 or 2 (0 would test on the train split)
    with pytest.raises(MMBenchError, match=r"shape \(100, 178, 3\) is smaller than the aligned 218×178"):
        celeba.crop_resize(png_bytes(np.zeros((100, 178, 3), np.uint8)))
    src, _ = source
    for part in (0, 3):
        with pytest.raises(MMBenchError, match=f"test_partition={part} is not allowed; choose 1 or 2"):
            prepare(DATASETS.get("celeba")(), None, data_root=tmp_path / "d",
                    options={"source": str(src), "test_partition": part})
    with pytest.raises(MMBenchError, match=r"test_partition=1.5 is not allowed; give a whole number"):  # not 1
        prepare(DATASETS.get("celeba")(), None, data_root=tmp_path / "d", options={"source": str(src), "test_partition": 1.5})


def test_attribute_lists_with_missing_rows_or_values_are_refused(tmp_path, source, monkeypatch):
    # celeba.read_attributes: the header's count of rows of 40 attributes each; an image of a used partition without
    # its attributes is named, not a KeyError
    src, attrs = source
    lines = (src / "list_attr_celeba.txt").read_text().splitlines()
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:-1]) + "\n")  # 10 promised, 9 given
    with pytest.raises(MMBenchError, match="expected 10 rows of 40 attributes"):
        celeba.read_attributes(short)
    narrow = tmp_path / "narrow.txt"
    narrow.write_text("\n".join(lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:]) + "\n")  # row 2: 39 values
    with pytest.raises(MMBenchError, match="expected 10 rows of 40 attributes"):
        celeba.read_attributes(narrow)
    # 000005.jpg (partition 1, the test split) has no attribute row
    (src / "list_attr_celeba.txt").write_text("\n".join(["9"] + lines[1:6] + lines[7:]) + "\n")
    monkeypatch.setitem(celeba.FILES, "list_attr_celeba.txt",
                        hashlib.md5((src / "list_attr_celeba.txt").read_bytes()).hexdigest())
    with pytest.raises(MMBenchError, match=r"1 images of partition 1 are missing .* \(first: 000005.jpg\)"):
        prepare(DATASETS.get("celeba")(), None, data_root=tmp_path / "d", options={"source": str(src)})


def test_text_starts_follow_the_seed(tmp_path, source):
    # celeba.py docstring: each text is placed at a *seeded* random start: the prepare seed draws the starts
    src, _ = source
    spec = DATASETS.get("celeba")()
    sha = [read_manifest(prepare(spec, None, seed=s, data_root=tmp_path / str(i), options={"source": str(src)}))
           ["arrays"]["train_text"]["sha256"] for i, s in enumerate((0, 1, 0))]
    assert sha[0] == sha[2] != sha[1]


def test_the_manifest_names_the_attributes_in_file_order(tmp_path, source, monkeypatch):
    # celeba.py: labels are the 40 attributes in list_attr_celeba.txt's column order; the manifest's "attributes"
    # names them in that order (the names a multilabel result is reported under)
    src, _ = source
    lines = (src / "list_attr_celeba.txt").read_text().splitlines()
    names = NAMES[::-1]
    (src / "list_attr_celeba.txt").write_text("\n".join([lines[0], " ".join(names)] + lines[2:]) + "\n")
    monkeypatch.setitem(celeba.FILES, "list_attr_celeba.txt",
                        hashlib.md5((src / "list_attr_celeba.txt").read_bytes()).hexdigest())
    path = prepare(DATASETS.get("celeba")(), None, data_root=tmp_path / "d", options={"source": str(src)})
    assert read_manifest(path)["attributes"] == names


def test_a_malformed_partition_line_is_one_line(tmp_path):
    from mmbench.data.celeba import read_partition

    path = tmp_path / "list_eval_partition.txt"
    path.write_text("000001.jpg 0\n000002.jpg 2\n")
    assert read_partition(path) == {"000001.jpg": 0, "000002.jpg": 2}
    for bad in ("000003.jpg", "000003.jpg 1 x", "000003.jpg one"):  # were a ValueError traceback
        path.write_text(f"000001.jpg 0\n{bad}\n")
        with pytest.raises(MMBenchError, match=f"line 2: expected 'IMAGE.jpg PARTITION' .*got {bad!r}; replace it"):
            read_partition(path)


# ----- behaviours a fourth mutation pass found unguarded -----
def test_blank_lines_in_the_partition_file_are_skipped(tmp_path):
    # celeba.read_partition: only non-blank lines are 'IMAGE.jpg PARTITION' records (a copy may end in a blank line)
    path = tmp_path / "list_eval_partition.txt"
    path.write_text("000001.jpg 0\n\n000002.jpg 1\n   \n000003.jpg 2\n\n")
    assert celeba.read_partition(path) == {"000001.jpg": 0, "000002.jpg": 1, "000003.jpg": 2}


def test_expected_counts_are_the_partitions_a_default_build_takes():
    """Before `prepare`, a run is sized by the partitions the default build takes: train partition 0 (162,770) and
    test partition 1 (19,867, `test_partition` 1), of the 202,599 images the checked partition file lists."""
    spec = DATASETS.get("celeba")()
    assert spec.expected_counts("default") == {"train": 162_770, "test": 19_867}
    assert sum(celeba.PARTITION_SIZES.values()) == 202_599 and celeba.PARTITION_SIZES[2] == 19_962


def test_a_manifest_without_attribute_names_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    """The advice rebuilds the copy as it was built, where it is: `mmbench prepare celeba --force` alone is refused
    (CelebA has no download URL: it needs --source DIR), builds another test partition and goes to ./data."""
    import json
    import shlex
    from types import SimpleNamespace

    import torch

    from mmbench.data.base import dataset_dir
    from mmbench.metrics.average_precision import attribute_names

    path = dataset_dir("celeba", "default", tmp_path)
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({
        "dataset": "celeba", "variant": "default", "seed": 0, "arrays": {}, "options": {"test_partition": 2},
        "locations": {"source": "/data/my celeba"}}))
    ctx = SimpleNamespace(spec=DATASETS.get("celeba")(), variant="default", data_root=tmp_path,
                          test=SimpleNamespace(labels=torch.zeros(2, 40)))
    with pytest.raises(MMBenchError, match="lists no 40 attribute names") as e:
        attribute_names(ctx)
    assert str(e.value).endswith(
        f"rebuild it with `mmbench prepare celeba --variant default -o test_partition=2 --source '/data/my celeba' "
        f"--data-root {shlex.quote(str(tmp_path.resolve()))} --force`")


def test_text_order_random_shuffles_each_images_names_and_file_order_stays_the_default(tmp_path, source):
    """MM-VAMP App. B.3: "the attributes are randomly ordered" (mmjsd's `random_text_ordering`); the code's default,
    and mmbench's, is file order, whose build is unchanged by the option's existence."""
    src, attrs = source
    spec = DATASETS.get("celeba")()
    shas, texts = [], []
    for d, extra in (("file", {}), ("random", {"text_order": "random"}), ("again", {"text_order": "random"})):
        path = prepare(spec, None, seed=0, data_root=tmp_path / d, options={"source": str(src), **extra})
        shas.append(read_manifest(path)["arrays"]["train_text"]["sha256"])
        rows = load_split(spec, None, "train", tmp_path / d).x["text"].tolist()
        texts.append(["".join(ALPHABET[c] for c in row).strip("*") for row in rows])
    assert shas[1] == shas[2] != shas[0]  # seeded, and another text
    # image 2 (train row 2): the same names, in another order
    assert sorted(texts[1][2].split(", ")) == sorted(texts[0][2].split(", ")) and texts[1][2] != texts[0][2]
    assert len(texts[1][0]) <= 256 and texts[1][1] == ""  # cut to 256 characters; no names, no text
    with pytest.raises(MMBenchError, match="option text_order='alphabetical' is not allowed; choose file or random"):
        prepare(spec, None, data_root=tmp_path / "x", options={"source": str(src), "text_order": "alphabetical"})


def test_a_shuffled_text_drops_names_until_it_fits_and_shuffles_again():
    # mmjsd make_text: while too long, the last name is dropped and the rest shuffled again
    names = [f"n{i:02d}" + "x" * 20 for i in range(20)]  # 20 names of 23 characters: 478 characters joined
    text = celeba.attribute_text(names, np.ones(20, int), np.random.default_rng(1), shuffle=True).strip("*")
    kept = text.split(", ")
    assert len(text) <= 256 and len(kept) == 10 and len(set(kept)) == 10 and set(kept) <= set(names)
    assert kept != sorted(kept)


def test_an_option_given_at_its_default_serves_and_is_served_by_a_build_without_it(tmp_path, source):
    """`-o text_order=file -o test_partition=1` builds what no option builds: it is left out of the build's identity,
    so neither asks for --force against the other (both were "prepared with other settings")."""
    src, _ = source
    spec = DATASETS.get("celeba")()
    plain = prepare(spec, None, seed=0, data_root=tmp_path, options={"source": str(src)})
    stamp = (plain / "manifest.json").stat().st_mtime_ns
    named = prepare(spec, None, seed=0, data_root=tmp_path,
                    options={"source": str(src), "text_order": "file", "test_partition": "1"})
    assert named == plain and (plain / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    other = prepare(spec, None, seed=0, data_root=tmp_path / "o",
                    options={"source": str(src), "text_order": "file", "test_partition": 1})
    assert read_manifest(other)["options"] == {}
    assert prepare(spec, None, seed=0, data_root=tmp_path / "o", options={"source": str(src)}) == other
    with pytest.raises(MMBenchError, match="prepared with other settings"):
        prepare(spec, None, seed=0, data_root=tmp_path, options={"source": str(src), "text_order": "random"})
