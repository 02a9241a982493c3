"""The PolyMNIST generator and the embedded polydigits dataset."""

import numpy as np
import pytest
import torch

from mmbench.data import polygen
from mmbench.data.base import load_split, prepare, read_manifest, dataset_dir
from mmbench.data.polydigits import make_backgrounds, source_digits, split_sources
from mmbench.errors import MMBenchError
from mmbench.registry import DATASETS


def fake_sources(n_per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    digits = np.zeros((len(labels), 28, 28), np.uint8)
    digits[:, 8:20, 10:18] = rng.integers(129, 256, size=(len(labels), 12, 8))  # a solid block as the "digit"
    return digits, labels


def backgrounds(seed=0, M=5):
    return make_backgrounds(M, np.random.default_rng(seed), size=40)


@pytest.mark.parametrize("variant", polygen.VARIANTS)
def test_generate_is_seeded_and_labels_agree(variant):
    digits, labels = fake_sources()
    a = polygen.generate(digits, labels, backgrounds(), variant, 2, np.random.default_rng(7))
    b = polygen.generate(digits, labels, backgrounds(), variant, 2, np.random.default_rng(7))
    c = polygen.generate(digits, labels, backgrounds(), variant, 2, np.random.default_rng(8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["m0"], c["m0"])
    assert a["m0"].shape == (2 * len(labels), 3, 28, 28) and a["m0"].dtype == np.uint8
    assert len(a["labels"]) == 2 * len(labels)


def test_pairing_keeps_class_and_uses_each_source_once_per_modality_and_round():
    digits, labels = fake_sources()
    tuples = polygen.pair_indices(labels, 5, 3, np.random.default_rng(0))
    assert tuples.shape == (3 * len(labels), 5)
    assert (labels[tuples] == labels[tuples[:, :1]]).all()  # one label per tuple
    for r in range(3):
        block = tuples[r * len(labels):(r + 1) * len(labels)]
        for m in range(5):
            assert sorted(block[:, m]) == list(range(len(labels)))  # a permutation per modality
    assert (tuples[:, 0] != tuples[:, 1]).any()  # modalities pair different instances


def test_vanilla_inverts_background_exactly_at_digit_pixels():
    digits, labels = fake_sources()
    bgs = backgrounds()
    rng = np.random.default_rng(3)
    tuples = polygen.pair_indices(labels, 5, 1, np.random.default_rng(3))
    masks, _ = polygen.digit_masks(digits, labels, tuples, "vanilla", rng)
    imgs = polygen.compose(masks, bgs, np.random.default_rng(4))
    assert np.array_equal(masks[:, 0], digits[tuples[:, 0]] > 128)
    # a digit pixel and its background neighbourhood are complementary in colour space
    img = imgs[0][0].astype(int)  # 3×28×28
    inside, outside = img[:, 14, 14], img[:, 2, 2]
    assert (np.abs(inside - (255 - outside)) < 40).all()


def test_translated_digits_stay_inside_canvas():
    digits = np.full((20, 28, 28), 255, np.uint8)  # full-canvas "digits": the pasted block is visible whole
    labels = np.repeat(np.arange(10), 2)
    tuples = polygen.pair_indices(labels, 5, 5, np.random.default_rng(0))
    masks, extra = polygen.digit_masks(digits, labels, tuples, "translated", np.random.default_rng(1))
    off = extra["offset"]
    assert off.min() == 0 and off.max() == 7
    for t in range(len(tuples)):
        for m in range(5):
            r, c = off[t, m]
            box = np.zeros((28, 28), bool)
            box[r:r + 21, c:c + 21] = True
            assert masks[t, m].sum() == 21 * 21 and (masks[t, m] <= box).all()


def test_extended_corner_labels_follow_the_ring():
    digits, labels = fake_sources(n_per_class=4)
    out = polygen.generate(digits, labels, backgrounds(), "extended", 2, np.random.default_rng(0))
    corner = out["extra_corner"]
    assert corner.shape == (len(out["labels"]), 5) and corner.min() >= 0 and corner.max() <= 9
    # Modality m shows pair (m-1) top-left and pair m top-right, so each pair label appears in exactly
    # two modalities: m's right corner and (m+1)'s left corner. Check it on the pixels: the corner
    # regions are not plain background.
    for m in range(5):
        img = out[f"m{m}"].astype(int)
        for cols in (slice(0, 10), slice(18, 28)):
            region = img[:, :, :10, cols]
            assert (region.max(axis=(1, 2, 3)) - region.min(axis=(1, 2, 3)) > 60).mean() > 0.9


def test_polydigits_sources_split_is_disjoint():
    digits, labels = source_digits()
    assert digits.shape == (1797, 28, 28) and digits.dtype == np.uint8
    tr, te = split_sources(labels, 0.2, 0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797
    assert set(labels[te]) == set(range(10))


def test_prepare_is_idempotent_seeded_and_verified(tmp_path, data_root):
    spec = DATASETS.get("polydigits")()
    path = dataset_dir("polydigits", "vanilla", data_root)
    manifest = read_manifest(path)
    assert manifest["counts"]["train"] > 8000 and manifest["seed"] == 0
    mtime = (path / "manifest.json").stat().st_mtime_ns
    assert prepare(spec, "vanilla", seed=0, data_root=data_root) == path  # no-op
    assert (path / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(MMBenchError, match="--force"):
        prepare(spec, "vanilla", seed=1, data_root=data_root)
    # same seed elsewhere: byte-identical arrays
    other = prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    assert read_manifest(other)["arrays"] == {k: {**v, "stat": read_manifest(other)["arrays"][k]["stat"]}
                                              for k, v in manifest["arrays"].items()}


def test_corrupted_array_is_refused(tmp_path):
    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    split = load_split(spec, "translated", "test", tmp_path)
    assert split.x["m0"].dtype == torch.uint8 and len(split) == len(split.labels)
    arr = np.load(path / "test_m1.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(path / "test_m1.npy", arr)
    with pytest.raises(MMBenchError, match=r"does not match its manifest.*--force"):
        load_split(spec, "translated", "test", tmp_path)
    prepare(spec, "translated", seed=0, data_root=tmp_path, force=True)
    load_split(spec, "translated", "test", tmp_path)


def test_tampered_datasets_are_refused(tmp_path):
    """verify(): a same-size edit with the mtime restored, a missing array, an edited manifest.json and an
    array whose header disagrees with the manifest are refused; an intact copy (new file stamps) loads and
    its stamps are refreshed so the next load takes the fast path."""
    import json
    import os
    import shutil

    from mmbench.data.base import file_stamp

    spec = DATASETS.get("polydigits")()
    built = prepare(spec, "translated", seed=0, data_root=tmp_path / "built")

    def copy(name):
        root = tmp_path / name
        shutil.copytree(built, dataset_dir("polydigits", "translated", root))  # new ctimes: a full check once
        load_split(spec, "translated", "test", root)
        path = dataset_dir("polydigits", "translated", root)
        manifest = read_manifest(path)
        assert all(manifest["arrays"][k]["stat"] == file_stamp(path / f"{k}.npy") for k in manifest["arrays"])
        return root, path

    def refused(root, match):
        with pytest.raises(MMBenchError, match=match) as e:
            load_split(spec, "translated", "test", root)
        assert "mmbench prepare polydigits --variant translated --force" in str(e.value)

    # same-size edit of the data, mtime (and atime) set back
    root, path = copy("same-size")
    f = path / "test_m1.npy"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    refused(root, r"test_m1.npy does not match its manifest \(sha256")

    # a missing array
    root, path = copy("missing")
    (path / "test_labels.npy").unlink()
    refused(root, "is missing test_labels.npy")

    # manifest.json edited (here: the seed), or an array's recorded checksum replaced
    root, path = copy("manifest")
    m = read_manifest(path)
    m["seed"] = 1
    (path / "manifest.json").write_text(json.dumps(m, indent=1))
    refused(root, r"manifest.json was edited")
    m = read_manifest(built)
    m["arrays"]["test_m0"]["sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(m, indent=1))
    refused(root, r"manifest.json was edited")

    # an array with the same bytes but another shape in its header (shape and dtype are always checked)
    root, path = copy("shape")
    arr = np.load(path / "test_m2.npy")
    np.save(path / "test_m2.npy", arr.reshape(len(arr), 3, 14, 56))
    refused(root, r"test_m2.npy holds a uint8 array of shape \[\d+, 3, 14, 56\], the manifest says uint8")


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    spec = DATASETS.get("polydigits")()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(polygen, "compose", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    assert not dataset_dir("polydigits", "vanilla", tmp_path).exists()
    assert list((tmp_path / "polydigits").iterdir()) == []


def test_unprepared_dataset_message(tmp_path):
    spec = DATASETS.get("polydigits")()
    with pytest.raises(MMBenchError, match="run `mmbench prepare polydigits --variant extended`"):
        load_split(spec, "extended", "train", tmp_path)
