"""The PolyMNIST generator and the embedded polydigits dataset."""

import re
import time

import numpy as np
import pytest
import torch

from mmbench.data import polygen
from mmbench.data.base import load_split, prepare, read_manifest, dataset_dir
from mmbench.data.polydigits import make_backgrounds, source_digits, split_sources
from mmbench.errors import MMBenchError
from mmbench.registry import DATASETS

from conftest import left_in


def fake_sources(n_per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    digits = np.zeros((len(labels), 28, 28), np.uint8)
    digits[:, 8:20, 10:18] = rng.integers(129, 256, size=(len(labels), 12, 8))  # a solid block as the "digit"
    return digits, labels


def backgrounds(seed=0, M=5):
    return make_backgrounds(M, np.random.default_rng(seed), size=40)


def class_squares(variant):
    """Source digits whose class can be read off the image: class c is a filled square of side 6 + c at
    rows 10.. (below the extended variant's 10-pixel corner band), three instances per class; for the
    translated variant (scaled by 0.75) of side 4 + 2c, so the scaled areas stay distinct."""
    labels = np.repeat(np.arange(10), 3)
    digits = np.zeros((len(labels), 28, 28), np.uint8)
    for i, c in enumerate(labels):
        if variant == "translated":
            digits[i, 3:7 + 2 * c, 3:7 + 2 * c] = 255
        else:
            digits[i, 10:16 + c, 6:12 + c] = 255
    return digits, labels


def inverted_pixels(img, m):
    """Digit pixels of modality m's T×3×28×28 images: closer to the inverted background colour than to it."""
    from mmbench.data.polydigits import PALETTE

    base = np.array(PALETTE[m])[None, :, None, None] * 255
    x = img.astype(float)
    return np.abs(x - (255 - base)).sum(1) < np.abs(x - base).sum(1)


# The bytes each variant's recipe builds from one seed (sha256 of the arrays in key order, first 16 hex digits),
# pinned to its recipe version: a change that moves a byte (a draw taken in another order, another rounding) makes
# every prepared copy a different dataset, so it bumps the variant's recipe version (VARIANT_RECIPE_VERSIONS) and
# the pin; one that keeps them (a faster crop) passes unchanged.
PINNED_BYTES = {("vanilla", 1): "a2adb944f129ed32", ("extended", 1): "181719518d455288",
                ("translated", 2): "10650b6b941ae64a"}


@pytest.mark.parametrize("variant", polygen.VARIANTS)
def test_each_variants_bytes_are_pinned_to_its_recipe_version(variant):
    import hashlib

    out = polygen.generate(*fake_sources(), backgrounds(), variant, 2, np.random.default_rng(7))
    h = hashlib.sha256()
    for k in sorted(out):
        h.update(k.encode())
        h.update(np.ascontiguousarray(out[k]).tobytes())
    version = DATASETS.get("polymnist")().recipe_version_of(variant)  # polydigits' too (the test of version 2 below)
    assert h.hexdigest()[:16] == PINNED_BYTES.get((variant, version)), (variant, version)


@pytest.mark.parametrize("variant", polygen.VARIANTS)
def test_generate_is_seeded_and_labels_agree(variant):
    digits, labels = fake_sources()
    a = polygen.generate(digits, labels, backgrounds(), variant, 2, np.random.default_rng(7))
    b = polygen.generate(digits, labels, backgrounds(), variant, 2, np.random.default_rng(7))
    c = polygen.generate(digits, labels, backgrounds(), variant, 2, np.random.default_rng(8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["m0"], c["m0"])
    assert a["m0"].shape == (2 * len(labels), 3, 28, 28) and a["m0"].dtype == np.uint8
    # every modality of every tuple shows a digit of the tuple's label
    digits, labels = class_squares(variant)
    out = polygen.generate(digits, labels, backgrounds(), variant, 2, np.random.default_rng(7))
    assert len(out["labels"]) == 2 * len(labels) and sorted(out["labels"]) == sorted(np.tile(labels, 2))
    if variant == "translated":
        small = polygen.resize_digits(digits, polygen.TRANSLATE_SIZE, truncate=True) > 128
        area = {int(c): int(small[labels == c][0].sum()) for c in range(10)}
        rows = slice(0, 28)
    else:
        area = {int(c): int((digits[labels == c][0] > 128).sum()) for c in range(10)}
        rows = slice(10, 28)  # below the corner digits
    assert len(set(area.values())) == 10  # the area tells the class
    of_area = {a_: c_ for c_, a_ in area.items()}
    for m in range(5):
        seen = inverted_pixels(out[f"m{m}"], m)[:, rows].sum((1, 2))
        assert [of_area.get(int(n), -1) for n in seen] == out["labels"].tolist(), f"modality m{m}"


def test_pairing_keeps_class_and_uses_each_source_once_per_modality_and_round():
    digits, labels = fake_sources()
    tuples = polygen.pair_indices(labels, 5, 3, np.random.default_rng(0))
    assert tuples.shape == (3 * len(labels), 5)
    assert (labels[tuples] == labels[tuples[:, :1]]).all()  # one label per tuple
    for r in range(3):
        block = tuples[r * len(labels):(r + 1) * len(labels)]
        for m in range(5):
            assert sorted(block[:, m]) == list(range(len(labels)))  # a permutation per modality
    assert not np.array_equal(tuples[:len(labels)], tuples[len(labels):2 * len(labels)])  # fresh per round
    assert (tuples[:, 0] != tuples[:, 1]).any()  # modalities pair different instances


def test_vanilla_inverts_background_exactly_at_digit_pixels():
    digits, labels = fake_sources()
    bgs = backgrounds()
    rng = np.random.default_rng(3)
    tuples = polygen.pair_indices(labels, 5, 1, np.random.default_rng(3))
    masks, _ = polygen.digit_masks(digits, labels, tuples, "vanilla", rng)
    imgs = polygen.compose(masks, bgs, np.random.default_rng(4))
    assert np.array_equal(masks[:, 0], digits[tuples[:, 0]] > 128)
    for t in range(4):
        for m in range(5):
            img = imgs[m][t].transpose(1, 2, 0).astype(int)  # 28×28×3
            mask = masks[t, m]
            assert 0 < mask.sum() < mask.size
            # the background crop: the offsets whose pixels equal the image everywhere outside the digit
            H, W = bgs[m].shape[:2]
            crops = [bgs[m][r:r + 28, c:c + 28].astype(int) for r in range(H - 27) for c in range(W - 27)]
            fits = [cr for cr in crops if np.array_equal(cr[~mask], img[~mask])]
            assert fits, f"tuple {t} m{m}: no crop of the background matches outside the digit"
            assert any(np.array_equal(img[mask], 255 - cr[mask]) for cr in fits)  # digit pixels: exactly 255 - crop


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


def test_extended_images_have_a_digit_in_both_top_corners():
    """Both 10×10 top corners of every extended image hold ink (which digit, and its ring-pair label, is checked
    on the masks by test_extended_corner_digits_show_their_ring_pair_label)."""
    digits, labels = fake_sources(n_per_class=4)
    out = polygen.generate(digits, labels, backgrounds(), "extended", 2, np.random.default_rng(0))
    corner = out["extra_corner"]
    assert corner.shape == (len(out["labels"]), 5) and corner.min() >= 0 and corner.max() <= 9
    for m in range(5):
        img = out[f"m{m}"].astype(int)
        for cols in (slice(0, 10), slice(18, 28)):
            region = img[:, :, :10, cols]
            assert (region.max(axis=(1, 2, 3)) - region.min(axis=(1, 2, 3)) > 60).mean() > 0.9


def test_extended_corner_digits_show_their_ring_pair_label():
    """Modality m's top-left corner shows a source digit of label corner[:, m-1] and its top-right corner one
    of corner[:, m]: each pair label (p, p+1) appears in exactly modality p's right and p+1's left corner.
    Read on the masks: every source's 10×10 corner mask is distinct (noise digits), so the pasted source,
    and its label, can be identified."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 4)
    digits = np.zeros((len(labels), 28, 28), np.uint8)
    # noise below the corner band (rows 0..9 stay empty in the main digit): distinct 10×10 corner masks
    digits[:, 12:, :] = rng.integers(0, 256, size=(len(labels), 16, 28))
    small = polygen.resize_digits(digits, polygen.CORNER_SIZE) > 128
    keys = {small[i].tobytes(): i for i in range(len(labels))}
    assert len(keys) == len(labels)
    tuples = polygen.pair_indices(labels, 5, 2, np.random.default_rng(1))
    masks, extra = polygen.digit_masks(digits, labels, tuples, "extended", np.random.default_rng(2))
    corner = extra["corner"]
    assert not (digits[:, :10] > 128).any()
    shown = {}  # (tuple, ring pair, modality) -> the pasted source
    for t in range(len(tuples)):
        for m in range(5):
            for p, cols in (((m - 1) % 5, slice(0, 10)), (m, slice(18, 28))):
                src = keys.get(masks[t, m, :10, cols].tobytes())
                assert src is not None, (t, m, p)
                assert labels[src] == corner[t, p], (t, m, p)
                shown[t, p, m] = src
    # each corner digit is a random instance of its label, drawn per modality: the two modalities of a ring pair
    # show different handwritten instances (here 4 per label) in most tuples
    differ = [shown[t, p, p] != shown[t, p, (p + 1) % 5] for t in range(len(tuples)) for p in range(5)]
    assert np.mean(differ) > 0.5


def test_polydigits_sources_split_is_disjoint():
    digits, labels = source_digits()
    assert digits.shape == (1797, 28, 28) and digits.dtype == np.uint8
    tr, te = split_sources(labels, 0.2, 0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797
    assert set(labels[te]) == set(range(10))


def test_polydigits_sources_are_full_range_and_centred():
    # polydigits docstring: sklearn's 16 grey levels scaled to 0..255, upsampled to 20×20 and centred in 28×28 (MNIST)
    digits, _ = source_digits()
    assert digits.max() == 255  # level 16 -> 255 (256 would wrap to 0 in uint8)
    assert digits[:, 4:24, 4:24].any(axis=(1, 2)).all()
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert not digits[:, border].any()


def test_polydigits_sources_split_is_stratified():
    # polydigits docstring: a seeded *stratified* 80/20 split: each class holds 20 % of its images in test (±1)
    _, labels = source_digits()
    for seed in (0, 1):
        _, te = split_sources(labels, 0.2, seed)
        assert np.abs(np.bincount(labels[te], minlength=10) - 0.2 * np.bincount(labels)).max() <= 1


def test_polydigits_expected_counts_are_what_a_build_writes(data_root):
    """expected_counts, the sizes `run --dry-run` projects an unprepared copy by: the prepared manifest's counts, for
    every variant, since the stratified split's sizes do not depend on the build's seed."""
    spec = DATASETS.get("polydigits")()
    built = read_manifest(dataset_dir("polydigits", "vanilla", data_root))["counts"]
    assert all(spec.expected_counts(v) == built for v in spec.variants)
    _, labels = source_digits()
    assert {tuple(map(len, split_sources(labels, spec.test_fraction, seed))) for seed in range(5)} == {(1437, 360)}


def test_images_become_floats_over_255():
    # base.to_float docstring: images uint8 -> [0, 1], i.e. x / 255 (255 -> 1.0, 51 -> 0.2 exactly in float32)
    from mmbench.data.base import Modality, to_float

    x = to_float(Modality("img", (1, 1, 3), "image"), torch.tensor([[[255, 0, 51]]], dtype=torch.uint8))
    assert torch.equal(x, torch.tensor([[[1.0, 0.0, 0.2]]], dtype=torch.float32))


def test_prepare_is_idempotent_seeded_and_verified(tmp_path, data_root):
    spec = DATASETS.get("polydigits")()
    path = dataset_dir("polydigits", "vanilla", data_root)
    manifest = read_manifest(path)
    # the recipe: 1,797 sources split 80/20 (stratified) -> 1,437 / 360 images, paired x6 and x3
    tr, te = split_sources(source_digits()[1], spec.test_fraction, 0)
    assert (len(tr), len(te)) == (1437, 360)
    assert manifest["counts"] == {"train": 1437 * 6, "test": 360 * 3} == {"train": 8622, "test": 1080}
    assert manifest["seed"] == 0
    mtime = (path / "manifest.json").stat().st_mtime_ns
    assert prepare(spec, "vanilla", seed=0, data_root=data_root) == path  # no-op
    assert (path / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(MMBenchError, match="--force"):
        prepare(spec, "vanilla", seed=1, data_root=data_root)
    newer = type(spec)()
    newer.recipe_version = spec.recipe_version + 1  # a recipe fix: data built before is not taken as current
    with pytest.raises(MMBenchError, match=f"recipe version {spec.recipe_version} where this mmbench builds "
                                           f"{spec.recipe_version + 1}.*--force"):
        prepare(newer, "vanilla", seed=0, data_root=data_root)
    per_variant = type(spec)()  # a fix of one variant leaves the others' prepared data current
    per_variant.variant_recipe_versions = {"other": spec.recipe_version + 1}
    assert prepare(per_variant, "vanilla", seed=0, data_root=data_root) == path
    per_variant.variant_recipe_versions = {"vanilla": spec.recipe_version + 1}
    with pytest.raises(MMBenchError, match=f"recipe version {spec.recipe_version} where this mmbench builds "
                                           f"{spec.recipe_version + 1}.*--force"):
        prepare(per_variant, "vanilla", seed=0, data_root=data_root)
    # same seed elsewhere: byte-identical arrays
    other = prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    assert read_manifest(other)["arrays"] == {k: {**v, "stat": read_manifest(other)["arrays"][k]["stat"]}
                                              for k, v in manifest["arrays"].items()}


def test_corrupted_array_is_refused(tmp_path):
    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    assert read_manifest(path)["counts"] == spec.expected_counts("translated")  # what `run --dry-run` sized it by
    split = load_split(spec, "translated", "test", tmp_path)
    assert split.x["m0"].dtype == torch.uint8 and len(split) == len(split.labels)
    arr = np.load(path / "test_m1.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(path / "test_m1.npy", arr)
    with pytest.raises(MMBenchError, match=r"does not match its manifest.*--force"):
        load_split(spec, "translated", "test", tmp_path)
    with pytest.raises(MMBenchError, match=r"does not match its manifest.*--force"):  # prepare again: checked, not
        prepare(spec, "translated", seed=0, data_root=tmp_path)  # reported as prepared
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
        assert all(manifest["stamps"][k] == file_stamp(path / f"{k}.npy") for k in manifest["arrays"])
        assert manifest["arrays"] == read_manifest(built)["arrays"]  # as built: the dataset digest is unchanged
        return root, path

    def refused(root, match):
        with pytest.raises(MMBenchError, match=match) as e:
            load_split(spec, "translated", "test", root)
        assert re.search(rf"`mmbench prepare polydigits --variant translated( --seed \d+)? --data-root "
                         rf"{re.escape(str(root))} --force`", str(e.value))

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
    assert left_in(tmp_path / "polydigits") == []


def test_unprepared_dataset_message(tmp_path):
    spec = DATASETS.get("polydigits")()
    with pytest.raises(MMBenchError, match=re.escape(f"run `mmbench prepare polydigits --variant extended --data-root {tmp_path}`")):
        load_split(spec, "extended", "train", tmp_path)


@pytest.mark.parametrize("text, problem", [
    ('{"x', "is unreadable"), ("[]", "is corrupt"), ('{"seed": 0}', "is corrupt"),
    ('{"dataset": "polydigits", "variant": "translated", "arrays": [1]}', "is corrupt"),
    ('{"dataset": "polydigits", "arrays": {}}', r"is corrupt \(no variant\)"),
    ('{"dataset": "polydigits", "variant": "translated", "arrays": {"test_m0": {"shape": [1080, 3, 28, 28]}}}',
     r"is corrupt \(its arrays are not listed with shape, dtype and sha256\)")])
def test_corrupt_manifest_is_one_line_and_force_rebuilds_it(tmp_path, text, problem, monkeypatch, capsys):
    """A manifest.json that is not JSON, or not a manifest: loading, preparing and the CLI say so in one line
    naming `prepare --force`, which rebuilds the dataset."""
    import sys

    from mmbench import cli

    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    (path / "manifest.json").write_text(text)
    fix = f"rebuild the dataset with `mmbench prepare polydigits --variant translated --data-root {tmp_path} --force`"
    for attempt in (lambda: load_split(spec, "translated", "test", tmp_path),
                    lambda: prepare(spec, "translated", seed=0, data_root=tmp_path)):
        with pytest.raises(MMBenchError, match=f"manifest.json of {path} {problem}") as e:
            attempt()
        assert str(e.value).endswith(fix) and "\n" not in str(e.value)
    monkeypatch.setattr(sys, "argv", ["mmbench", "bench", "load", "polydigits", "-v", "translated",
                                      "--data-root", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and fix in err
    prepare(spec, "translated", seed=0, data_root=tmp_path, force=True)
    assert read_manifest(path)["dataset"] == "polydigits"
    assert len(load_split(spec, "translated", "test", tmp_path)) > 0


def test_digits_are_binarised_strictly_above_128():
    digits = np.zeros((10, 28, 28), np.uint8)
    digits[:, 14, 14], digits[:, 14, 15] = 128, 129
    labels = np.arange(10)
    tuples = polygen.pair_indices(labels, 2, 1, np.random.default_rng(0))
    masks, _ = polygen.digit_masks(digits, labels, tuples, "vanilla", np.random.default_rng(0))
    assert not masks[:, :, 14, 14].any() and masks[:, :, 14, 15].all()


def test_extended_corner_labels_cover_all_ten_classes():
    digits = np.random.default_rng(0).integers(0, 256, (20, 28, 28)).astype(np.uint8)
    labels = np.repeat(np.arange(10), 2)
    tuples = polygen.pair_indices(labels, 5, 5, np.random.default_rng(0))  # 100 tuples × 5 modalities
    _, extra = polygen.digit_masks(digits, labels, tuples, "extended", np.random.default_rng(1))
    assert set(np.unique(extra["corner"])) == set(range(10))
    # a split lacking a class cannot draw its corner digits: one line naming it, not a KeyError
    few = labels % 9
    with pytest.raises(MMBenchError, match=r"needs digits of all ten classes in each split, this one has only \[0, 1, 2, 3, 4, 5, 6, 7, 8\]"):
        polygen.digit_masks(digits, few, polygen.pair_indices(few, 5, 1, np.random.default_rng(0)), "extended",
                            np.random.default_rng(1))


# ----- behaviours a mutation pass found unguarded -----
def test_an_array_of_another_dtype_is_refused_by_name(tmp_path):
    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    arr = np.load(path / "test_m2.npy")
    np.save(path / "test_m2.npy", arr.view(np.int8))
    with pytest.raises(MMBenchError, match=r"test_m2.npy holds a int8 array of shape"):
        load_split(spec, "translated", "test", tmp_path)


def test_prepare_refuses_other_options_and_ignores_locations(tmp_path):
    from mmbench.data.base import DatasetSpec, Modality

    class Tiny(DatasetSpec):
        registry_name = "tiny"
        option_names = {"n": "rows", "source": "where"}
        location_options = ("source",)
        def modalities(self, variant):
            return [Modality("m0", (1, 2, 2))]
        def build(self, out, variant, seed, options, progress):
            out.write("test_labels", np.zeros(options.get("n", 2), np.int64))
            return {}

    prepare(Tiny(), None, data_root=tmp_path, options={"n": 2, "source": "/a"})
    prepare(Tiny(), None, data_root=tmp_path, options={"n": 2, "source": "/b"})  # a location: same data
    with pytest.raises(MMBenchError, match=r"prepared with other settings \(seed 0, options \{'n': 2\}\); pass "
                                           r"--force to rebuild it with seed 0 and options \{'n': 3\}$"):
        prepare(Tiny(), None, data_root=tmp_path, options={"n": 3, "source": "/c"})  # the advice names no location
    with pytest.raises(MMBenchError, match="no prepare option 'm'; allowed: n, source"):
        prepare(Tiny(), None, data_root=tmp_path / "other", options={"m": 1})


def test_the_rebuild_advice_is_the_command_that_built_the_dataset():
    """A damaged dataset's fix names the build's seed, options and file locations: `--force` alone would download
    the archive instead of rebuilding from MNIST, or build other data (another seed, multiplicity)."""
    from mmbench.data.base import prepare_command

    manifest = {"dataset": "polymnist", "variant": "vanilla", "seed": 3,
                "options": {"rebuild": True, "mnist_source": "test-halves", "multiplicity": 12},
                "locations": {"source": "/data/my mnist", "backgrounds": "/data/bg"}}
    assert prepare_command(manifest) == (
        "mmbench prepare polymnist --variant vanilla --seed 3 --rebuild -o mnist_source=test-halves -o multiplicity=12"
        " --backgrounds /data/bg --source '/data/my mnist' --force")
    # a manifest written before locations were recorded: seed 0 and no options add nothing
    assert prepare_command({"dataset": "celeba", "variant": "default", "seed": 0, "options": {}}) == (
        "mmbench prepare celeba --variant default --force")


def test_a_build_records_where_its_files_came_from_and_a_first_prepare_names_what_it_needs(tmp_path):
    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    assert read_manifest(path)["locations"] == {}
    for name, variant, need in (("rats", "deposit", "--source DIR"), ("polymnist", "extended", "--backgrounds DIR"),
                                ("celeba", "default", "--source DIR")):
        with pytest.raises(MMBenchError, match="is not prepared") as e:
            load_split(DATASETS.get(name)(), variant, "test", tmp_path)
        assert str(e.value).endswith(f"run `mmbench prepare {name} --variant {variant} {need} --data-root {tmp_path}`")
    with pytest.raises(MMBenchError, match="has no split 'val'; choose one of: test, train"):
        load_split(spec, "translated", "val", tmp_path)


def test_a_corrupt_manifest_of_an_unregistered_dataset_names_its_data_root(tmp_path):
    """A folder under a data root whose name is no registered dataset (a leftover, a renamed one): its corrupt
    manifest's advice is the bare `mmbench prepare`, still with the root it was found in."""
    path = tmp_path / "nosuch" / "v1"
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("not json")
    with pytest.raises(MMBenchError, match="manifest.json of") as e:
        read_manifest(path)
    assert str(e.value).endswith(f"`mmbench prepare nosuch --variant v1 --data-root {tmp_path} --force`")


def test_the_advice_about_data_outside_the_default_root_names_its_root_and_rebuilds_that_copy(tmp_path, data_root,
                                                                                                  monkeypatch):
    """A damaged copy under `--data-root DIR` is rebuilt by the advice it is refused with, run as given from another
    working directory: without `--data-root DIR` the advice built a second copy in ./data and left the damaged one
    (and a first build's hint prepared where the command did not look). The default root is not named."""
    import shlex
    import shutil

    from typer.testing import CliRunner

    from mmbench.cli import app

    spec, root = DATASETS.get("polydigits")(), tmp_path / "else where"  # a space: the root is one shell word
    path = dataset_dir("polydigits", "vanilla", root)
    shutil.copytree(dataset_dir("polydigits", "vanilla", data_root), path)
    (path / "test_labels.npy").unlink()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(MMBenchError, match="is missing test_labels.npy") as e:
        load_split(spec, "vanilla", "test", root)
    command = re.search(r"rebuild it with `([^`]+)`", str(e.value)).group(1)
    assert command == f"mmbench prepare polydigits --variant vanilla --data-root {shlex.quote(str(root))} --force"
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output
    assert len(load_split(spec, "vanilla", "test", root)) > 0 and not (tmp_path / "cwd" / "data").exists()
    for where, named in ((root, f" --data-root {shlex.quote(str(root))}"), (None, ""), (tmp_path / "cwd" / "data", ""),
                         (root.parent / "else where" / ".." / "else where", f" --data-root {shlex.quote(str(root))}")):
        with pytest.raises(MMBenchError, match="is not prepared") as e:
            load_split(spec, "extended", "test", where)
        assert str(e.value).endswith(f"run `mmbench prepare polydigits --variant extended{named}`")


def test_the_data_root_in_advice_is_quoted_for_the_shell(tmp_path):
    import shlex

    from mmbench.data.base import data_root_words

    root = tmp_path / "my data"
    assert data_root_words(root) == ["--data-root", shlex.quote(str(root.resolve()))] and " " in shlex.split(
        " ".join(data_root_words(root)))[1]


def test_run_s_advice_for_an_unprepared_dataset_prepares_it_in_its_data_root(tmp_path):
    from mmbench.cli import _prepare_for
    from mmbench.config import build_run_config

    cfg = build_run_config({"dataset": "polymnist", "eval": {"metrics": []}})  # not embedded: prepared by the user
    with pytest.raises(MMBenchError, match="is not prepared") as e:
        _prepare_for([cfg], tmp_path)
    assert str(e.value).endswith(f" --data-root {tmp_path}` first")


def test_the_rebuild_advice_quotes_option_values_and_spells_false_options():
    """prepare_command: an option value with a space is one shell word; a False flag option is `-o key=false`."""
    import shlex

    from mmbench.data.base import prepare_command

    manifest = {"dataset": "polymnist", "variant": "vanilla", "seed": 0,
                "options": {"rebuild": False, "label": "two words"}, "locations": {}}
    command = prepare_command(manifest)
    assert command == "mmbench prepare polymnist --variant vanilla -o 'label=two words' -o rebuild=false --force"
    assert shlex.split(command)[6:9] == ["label=two words", "-o", "rebuild=false"]


def test_an_older_manifest_is_hashed_in_full_and_a_verified_copy_then_loads_on_stamps(tmp_path, monkeypatch):
    """verify: a manifest without manifest_sha256 is not trusted on its stamps and gets its checksum written;
    a copy verified once is not hashed again on the next load."""
    import json
    import shutil

    from mmbench.data import base
    from mmbench.data.base import file_stamp

    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path / "a")
    m = read_manifest(path)
    del m["manifest_sha256"]
    (path / "manifest.json").write_text(json.dumps(m))
    load_split(spec, "translated", "test", tmp_path / "a")
    assert read_manifest(path)["manifest_sha256"] == base.manifest_checksum(read_manifest(path))
    # an older manifest whose recorded stamp matches an edited array: still refused
    data = bytearray((path / "test_m1.npy").read_bytes())
    data[-1] ^= 1
    (path / "test_m1.npy").write_bytes(bytes(data))
    m["arrays"]["test_m1"]["stat"] = file_stamp(path / "test_m1.npy")
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MMBenchError, match="test_m1.npy does not match its manifest"):
        load_split(spec, "translated", "test", tmp_path / "a")
    # a copy: hashed once, then its recorded stamps are trusted
    built = prepare(spec, "translated", seed=0, data_root=tmp_path / "b")
    shutil.copytree(built, dataset_dir("polydigits", "translated", tmp_path / "c"))
    load_split(spec, "translated", "test", tmp_path / "c")
    monkeypatch.setattr(base, "file_digest", lambda *a: pytest.fail("a verified copy was hashed again"))
    load_split(spec, "translated", "test", tmp_path / "c")


def test_the_dataset_digest_is_the_arrays_content_and_neither_hash_reads_file_stamps(data_root):
    """manifest_digest: the same data prepared again (other stamps, build time) has one digest, other data another;
    manifest_checksum does not change with the arrays' build stamps."""
    import copy

    from mmbench.data.base import manifest_checksum, manifest_digest

    built = read_manifest(dataset_dir("polydigits", "vanilla", data_root))
    again = copy.deepcopy(built)
    for meta in again["arrays"].values():
        meta["stat"] = [meta["stat"][0], 1, 2]
    assert manifest_checksum(again) == manifest_checksum(built)
    again.update(build_seconds=built["build_seconds"] + 1, stamps={"test_m0": [1, 2, 3]})
    again["manifest_sha256"] = manifest_checksum(again)
    assert manifest_digest(again) == manifest_digest(built)
    again["arrays"]["test_m0"]["sha256"] = "0" * 64
    assert manifest_digest(again) != manifest_digest(built)


def test_a_subset_of_every_row_is_the_split_itself_unless_shuffled(data_root):
    """DataSplit.subset(n): n of len(split) or more (or None) keeps the split as it is; keep_order=False shuffles."""
    split = load_split(DATASETS.get("polydigits")(), "vanilla", "test", data_root)
    assert all(split.subset(n) is split for n in (len(split), len(split) + 1, None))
    assert not torch.equal(split.subset(len(split), keep_order=False).labels, split.labels)


# ----- the PolyMNIST recipe: behaviours a second mutation pass found unguarded -----
class Arrays:
    """A stand-in for the array writer a build writes to: the arrays by key, in memory."""

    def __init__(self, raw_root=None):
        self.raw_root, self.arrays = raw_root, {}

    def write(self, key, array):
        self.arrays[key] = np.array(array)


def test_resize_digits_is_bilinear_on_pixel_centres_and_rounded():
    # polygen.resize_digits: bilinear with align_corners=False, i.e. output pixel k of n samples the source at
    # (k + 0.5) · 28 / n − 0.5; a linear ramp stays linear under bilinear interpolation, so each output pixel is
    # round(5 x + 3 y) at its sampled (y, x) (never halfway between two integers at these sizes)
    r, c = np.mgrid[0:28, 0:28]
    digit = (5 * c + 3 * r).astype(np.uint8)[None]
    for size in (polygen.TRANSLATE_SIZE, polygen.CORNER_SIZE):
        s = (np.arange(size) + 0.5) * 28 / size - 0.5
        expected = np.rint(5 * s[None, :] + 3 * s[:, None])
        assert np.array_equal(polygen.resize_digits(digit, size)[0], expected), size


def test_translated_digits_are_binarised_strictly_above_128():
    # polygen docstring: the digit is binarised at > 128 (a flat 128 digit scales to a flat 128: no digit pixel);
    # a flat 130 stays above 129 after the float resize (a flat 129 comes out at 128.99998 in places, truncated to
    # 128 as in the authors' code)
    digits = np.stack([np.full((28, 28), 128, np.uint8), np.full((28, 28), 130, np.uint8)])
    labels = np.arange(2)
    tuples = polygen.pair_indices(labels, 2, 1, np.random.default_rng(0))
    masks, _ = polygen.digit_masks(digits, labels, tuples, "translated", np.random.default_rng(0))
    assert masks[0].sum() == 0 and (masks[1].sum((1, 2)) == 21 * 21).all()


def test_translated_digit_is_truncated_before_the_threshold_as_the_authors_code():
    """mmvmvae _add_background_image copies the float bilinear output into a uint8 tensor (truncation), then > 128:
    a resized value in (128, 129) is background there, so it is here (rounding would make it a digit pixel)."""
    digit = np.full((1, 28, 28), 22, np.uint8)
    digit[0, :, 0] = 150  # output column 0 samples source x = 1/6: 5/6 * 150 + 1/6 * 22 = 128.67
    assert (polygen.resize_digits(digit, 21, truncate=True)[0, :, 0] == 128).all()
    assert (polygen.resize_digits(digit, 21)[0, :, 0] == 129).all()  # rounded: a digit pixel
    masks, _ = polygen.digit_masks(digit, np.zeros(1, np.int64), np.zeros((1, 1), np.int64), "translated",
                                   np.random.default_rng(0))
    assert masks.sum() == 0


def test_extended_corner_digits_never_erase_the_main_digit():
    # polygen docstring: the corner digits are added to the vanilla image, "the main digit is untouched". Digits
    # inked on rows 0..13: a 10×10 corner copy is inked on its rows 0..4 only, so the extended mask is the main one
    digits = np.zeros((20, 28, 28), np.uint8)
    digits[:, :14] = 255
    labels = np.repeat(np.arange(10), 2)
    tuples = polygen.pair_indices(labels, 5, 1, np.random.default_rng(0))
    small = polygen.resize_digits(digits[:1], polygen.CORNER_SIZE)[0] > 128
    assert small[:5].all() and not small[5:].any()
    masks, _ = polygen.digit_masks(digits, labels, tuples, "extended", np.random.default_rng(1))
    assert np.array_equal(masks, digits[tuples] > 128)


def test_background_crops_are_uniform_over_the_official_offset_range_of_each_axis():
    # polygen.compose (MoPoE _add_background_image): a 28×28 crop at row offset randint(0, H − 28) and column offset
    # randint(0, W − 28), upper bounds exclusive. A 31×45 background whose pixel (y, x) holds (y, x, 7) tells each
    # crop's offset; without a digit the image is the crop itself
    H, W = 31, 45
    y, x = np.mgrid[0:H, 0:W]
    bg = np.stack([y, x, np.full_like(y, 7)], axis=-1).astype(np.uint8)
    masks = np.zeros((400, 1, 28, 28), bool)
    (img,) = polygen.compose(masks, [bg], np.random.default_rng(0))
    ys, xs = img[:, 0, 0, 0].astype(int), img[:, 1, 0, 0].astype(int)
    for t in range(len(img)):
        assert np.array_equal(img[t], bg[ys[t]:ys[t] + 28, xs[t]:xs[t] + 28].transpose(2, 0, 1)), t
    assert set(ys.tolist()) == set(range(H - 28)) and set(xs.tolist()) == set(range(W - 28))
    (other,) = polygen.compose(masks, [bg], np.random.default_rng(1))  # the offsets come from the generator
    assert not np.array_equal(other[:, 0, 0, 0], img[:, 0, 0, 0]) and not np.array_equal(other[:, 1, 0, 0], img[:, 1, 0, 0])


def test_polydigits_backgrounds_deviate_from_their_base_colour_by_the_amplitude():
    # polydigits.BG_AMPLITUDE: the texture's peak deviation from the base colour (0.08 · 255 = 20.4 grey levels)
    from mmbench.data.polydigits import BG_AMPLITUDE, PALETTE

    for m, img in enumerate(make_backgrounds(5, np.random.default_rng(3))):
        dev = np.abs(img.astype(float) - 255 * np.array(PALETTE[m]))
        assert 255 * BG_AMPLITUDE - 1 <= dev.max() <= 255 * BG_AMPLITUDE + 0.5, (m, dev.max())


def test_polydigits_build_follows_its_seed(monkeypatch):
    # polydigits docstring: the split, the backgrounds and the generation are all seeded by the build's seed
    _, labels = source_digits()
    assert not np.array_equal(split_sources(labels, 0.2, 0)[1], split_sources(labels, 0.2, 1)[1])
    spec = DATASETS.get("polydigits")()
    monkeypatch.setattr(spec, "multiplicity", {"train": 1, "test": 1})
    built = []
    for seed in (0, 1):  # (the same seed rebuilding byte-identical arrays: test_prepare_is_idempotent_seeded_and_verified)
        out = Arrays()
        spec.build(out, "vanilla", seed, {}, lambda *a: None)
        built.append(out.arrays)
    for key in ("backgrounds", "train_m0", "test_m0"):
        assert not np.array_equal(built[0][key], built[1][key]), key


def test_each_modality_inverts_its_own_digit_over_its_own_background():
    # polygen.compose: modality m's image is a crop of background m, inverted (255 − pixel) at modality m's digit
    masks = np.zeros((3, 5, 28, 28), bool)
    for m in range(5):
        masks[:, m, m] = True  # modality m's digit: row m
    bgs = [np.full((30, 30, 3), 20 + 40 * m, np.uint8) for m in range(5)]
    imgs = polygen.compose(masks, bgs, np.random.default_rng(0))
    for m in range(5):
        expected = np.full((3, 3, 28, 28), 20 + 40 * m)
        expected[:, :, m] = 255 - (20 + 40 * m)
        assert np.array_equal(imgs[m], expected), m


def test_polydigits_sources_scale_the_16_grey_levels_to_0_255_rounded(monkeypatch):
    # polydigits docstring: sklearn's 16 grey levels (0..16) scaled to 0..255: level k -> round(k · 255 / 16); a flat
    # 8×8 image stays flat through the upsampling, so its 20×20 centre holds exactly that value
    import types

    import sklearn.datasets

    levels = np.arange(17)
    fake = types.SimpleNamespace(images=np.repeat(levels, 64).reshape(17, 8, 8).astype(float), target=levels % 10)
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: fake)
    digits, labels = source_digits()
    assert labels.tolist() == (levels % 10).tolist()
    expected = np.rint(levels * 255 / 16)
    assert np.array_equal(digits[:, 4:24, 4:24].reshape(17, -1), np.repeat(expected[:, None], 400, axis=1))


def test_translated_copies_carry_recipe_version_2_and_older_copies_are_refused_where_loaded(tmp_path):
    """The truncation changed the translated variant of every polygen dataset (polymnist and polydigits): their
    recipe version is 2, the other variants' stays 1; a copy of another version is refused by `prepare` and by every
    loader (train, evaluate), with the command that rebuilds it."""
    for name in ("polymnist", "polydigits"):
        spec = DATASETS.get(name)()
        assert {v: spec.recipe_version_of(v) for v in polygen.VARIANTS} == {"vanilla": 1, "extended": 1, "translated": 2}
    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    assert read_manifest(path)["recipe_version"] == 2
    assert len(load_split(spec, "translated", "test", tmp_path).labels) == 1080
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    manifest["recipe_version"] = 1  # as written by the mmbench before the fix
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MMBenchError, match=r"built by recipe version 1 of polydigits \(translated\); this mmbench builds "
                                           r"version 2: rebuild it with `mmbench prepare polydigits --variant translated "
                                           rf"--data-root {re.escape(str(tmp_path))} --force`"):
        load_split(spec, "translated", "test", tmp_path)
    with pytest.raises(MMBenchError, match="recipe version 1 where this mmbench builds 2.*--force"):
        prepare(spec, "translated", seed=0, data_root=tmp_path)


# ----- behaviours a third mutation pass found unguarded -----
def test_a_subset_keeps_every_modality_label_and_extra_label_of_the_same_rows_and_follows_its_seed():
    """DataSplit.subset: the first n rows of a seeded permutation, taken alike from every modality (an Indexed one,
    as MNIST-SVHN-Text's pairing, through its own index), the labels and the extra labels; another seed, other rows."""
    from mmbench.data.base import DataSplit, Indexed, Modality

    n = 50
    rows = torch.arange(n)
    base = torch.arange(1000, 1000 + n)  # the paired source images, stored once
    index = torch.from_numpy(np.random.default_rng(0).permutation(n))  # row r shows base[index[r]]
    split = DataSplit([Modality("a", (1,)), Modality("b", (1,))], {"a": rows * 2, "b": Indexed(base, index)},
                      rows + 100, {"trial": rows + 200})
    subs = [split.subset(10, seed=s) for s in (0, 0, 1)]
    for sub in subs:
        picked = sub.x["a"] // 2  # the original row of each subset row
        assert len(sub) == 10 and len(set(picked.tolist())) == 10
        assert torch.equal(sub.x["b"][:], base[index[picked]])
        assert torch.equal(sub.labels, picked + 100) and torch.equal(sub.extra_labels["trial"], picked + 200)
    assert torch.equal(subs[0].x["a"], subs[1].x["a"]) and not torch.equal(subs[0].x["a"], subs[2].x["a"])


# ----- behaviours a fourth mutation pass found unguarded -----
@pytest.mark.parametrize("field, value", [("recipe_version", 3), ("counts", {"train": 1, "test": 1})])
def test_a_manifest_whose_recipe_version_or_counts_were_edited_is_refused_as_edited(tmp_path, field, value):
    """manifest_sha256 covers every field but itself and the stamps: a recipe version raised by hand (to pass a copy
    of an older recipe for current) or edited counts are refused as an edit, by loading and by preparing again."""
    import json

    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    newer = type(spec)()
    newer.variant_recipe_versions = {**spec.variant_recipe_versions, "translated": 3}
    current = newer if field == "recipe_version" else spec
    manifest = json.loads((path / "manifest.json").read_text())
    manifest[field] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MMBenchError, match=r"manifest.json was edited .*--force"):
        load_split(current, "translated", "test", tmp_path)
    with pytest.raises(MMBenchError, match=r"manifest.json was edited .*--force"):
        prepare(current, "translated", seed=0, data_root=tmp_path)


def test_a_forced_rebuild_that_fails_keeps_the_prepared_copy(tmp_path, monkeypatch):
    """--force builds in a sibling directory and replaces the copy only once the new one is complete: an interrupted
    rebuild leaves the prepared copy as it was (and no partial build beside it)."""
    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    before = read_manifest(path)
    labels = load_split(spec, "translated", "test", tmp_path).labels

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(polygen, "compose", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(spec, "translated", seed=0, data_root=tmp_path, force=True)
    assert left_in(tmp_path / "polydigits") == ["translated"]
    assert read_manifest(path) == before
    assert torch.equal(load_split(spec, "translated", "test", tmp_path).labels, labels)


def test_a_forced_rebuild_whose_final_rename_fails_puts_the_prepared_copy_back(tmp_path, monkeypatch):
    """prepare --force moves the prepared copy aside only to rename the complete new build into its place; when that
    rename fails (or is interrupted), the copy is put back where it was instead of being left under a hidden name."""
    import pathlib

    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    before = read_manifest(path)
    rename = pathlib.Path.rename

    def failing(self, target):
        if self.name.startswith(".translated.building-"):
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", failing)
    with pytest.raises(OSError, match="rename failed"):
        prepare(spec, "translated", seed=0, data_root=tmp_path, force=True)
    assert left_in(tmp_path / "polydigits") == ["translated"]
    assert read_manifest(path) == before
    assert len(load_split(spec, "translated", "test", tmp_path)) == 1080


def test_a_forced_rebuild_that_runs_out_of_space_keeps_the_prepared_copy_and_says_so(tmp_path, monkeypatch):
    # data/base.ArrayWriter.write: numpy's short write on a full disk is an OSError naming no file, which the CLI
    # shows as a traceback; now one line naming the array and the fix, the prepared copy untouched
    from conftest import file_size_limit

    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "translated", seed=0, data_root=tmp_path)
    files = {p.name: p.read_bytes() for p in path.iterdir()}
    with file_size_limit(100_000), pytest.raises(MMBenchError) as e:  # the image arrays are ~2 MB
        prepare(spec, "translated", seed=0, data_root=tmp_path, force=True)
    message = str(e.value)
    assert re.match(r"writing \w+\.npy of the build failed \(OSError: .*\); the unfinished build is removed and any "
                    r"prepared copy is left as it was: free space in " + re.escape(str(tmp_path / "polydigits")) +
                    r" \(a full disk or a quota\?\) and run the command again$", message), message
    assert left_in(tmp_path / "polydigits") == ["translated"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files
    assert prepare(spec, "translated", seed=0, data_root=tmp_path) == path  # still verified as prepared
    import mmbench.data.base as base

    def full(*a, **k):  # the arrays written, the manifest last
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(base.json, "dump", full)
    with pytest.raises(MMBenchError, match=r"^writing manifest\.json of the build failed \(OSError: "):
        prepare(spec, "translated", seed=0, data_root=tmp_path, force=True)
    monkeypatch.undo()
    assert left_in(tmp_path / "polydigits") == ["translated"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files


def test_a_second_prepare_waits_for_the_first_and_builds_nothing(tmp_path, capsys):
    # data/base.prepare: two processes preparing the same data (two `mmbench run` of suites on polydigits) both
    # built it, and the second replaced the first's copy under it (with other settings, without --force); the build
    # now holds a lock on the dataset's folder, and the second finds the copy the first built
    import threading

    spec = DATASETS.get("polydigits")()
    build, started, builds = spec.build, threading.Event(), []

    def slow_build(*a, **k):
        builds.append(1)
        started.set()
        time.sleep(1.0)
        return build(*a, **k)

    spec.build = slow_build
    first = threading.Thread(target=prepare, args=(spec, "vanilla"), kwargs={"seed": 0, "data_root": tmp_path})
    first.start()
    assert started.wait(60)
    path = prepare(spec, "vanilla", seed=0, data_root=tmp_path)  # waits for the first, then finds its copy
    first.join()
    assert builds == [1] and path == dataset_dir("polydigits", "vanilla", tmp_path) and read_manifest(path)["seed"] == 0
    assert f"waiting for another process building a dataset in {tmp_path / 'polydigits'}" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "polydigits").iterdir()) == [".mmbench.lock", "vanilla"]  # hidden
    from mmbench.files import folder_lock

    found = threading.Thread(target=prepare, args=(spec, "vanilla"), kwargs={"seed": 0, "data_root": tmp_path})
    with folder_lock(tmp_path / "polydigits"):  # another build under way (another variant): no wait for a copy
        found.start()
        found.join(10)
        assert not found.is_alive()
    found.join()
    with pytest.raises(MMBenchError, match="was prepared with other settings"):  # not replaced without --force
        prepare(spec, "vanilla", seed=1, data_root=tmp_path)


def test_a_dataset_builds_where_flock_is_emulated_with_fcntl_locks_as_on_nfs(tmp_path, nfs_flock):
    # files.folder_lock took its flock on the dataset's folder, opened read-only (a folder cannot be opened for
    # writing); an NFS client emulates flock with fcntl locks, whose exclusive lock needs a file open for writing, so
    # on a cluster's NFS data root every prepare failed with EBADF. It locks a hidden file in the folder now.
    spec = DATASETS.get("polydigits")()
    path = prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    assert read_manifest(path)["seed"] == 0
    from mmbench.files import folder_lock

    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / ".mmbench.lock").mkdir()  # what cannot be opened is named, with its fix
    with pytest.raises(MMBenchError, match=r"^cannot open the lock file .*ro/\.mmbench\.lock \(Is a directory\); "
                                           r"move it away, and run again$"):
        with folder_lock(tmp_path / "ro"):
            pass


def test_the_folder_lock_on_shared_folders_and_file_systems_without_locks(tmp_path, monkeypatch, capsys, request):
    # files.folder_lock: (1) a group's shared folder: the lock file is made writable by whoever may write the folder;
    # (2) a colleague's lock file this user cannot write is locked read-only (a local disk), and on NFS, where that
    # fails with EBADF, one line says whose it is; (3) a file system that keeps no locks (NFS without lockd, Lustre
    # without -o flock) is one line naming the lock file, or, for a cache (required=False), a note and no lock
    import errno
    import fcntl
    import os
    import stat

    from mmbench import files
    from mmbench.files import folder_lock

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    old = os.umask(0o022)
    try:
        with folder_lock(shared):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((shared / ".mmbench.lock").stat().st_mode) == 0o664
    public = tmp_path / "public"  # writable by all: so is its lock file
    public.mkdir()
    os.chmod(public, 0o777)
    with folder_lock(public):
        pass
    assert stat.S_IMODE((public / ".mmbench.lock").stat().st_mode) == 0o666
    os.chmod(public / ".mmbench.lock", 0o644)  # a colleague's lock file (another owner): left as its owner made it
    monkeypatch.setattr(files.os, "geteuid", lambda: os.getuid() + 1)
    with folder_lock(public):
        pass
    assert stat.S_IMODE((public / ".mmbench.lock").stat().st_mode) == 0o644
    monkeypatch.undo()
    (tmp_path / "elsewhere").write_text("not a lock")
    (tmp_path / "linked").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "linked" / ".mmbench.lock")  # a link planted in the lock's place
    with pytest.raises(MMBenchError, match=r"^cannot open the lock file .*linked/\.mmbench\.lock \(Too many levels "
                                           r"of symbolic links\); move it away"):
        with folder_lock(tmp_path / "linked"):
            pass
    real_open = os.open

    def colleagues(path, flags, *a):  # the lock file exists and is not writable by this user
        if str(path).endswith(".mmbench.lock") and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(files.os, "open", colleagues)
    with pytest.raises(MMBenchError, match=rf"^cannot create the lock file .*fresh/\.mmbench\.lock \(Permission "
                                           rf"denied\); make {re.escape(str(tmp_path / 'fresh'))} writable"):
        (tmp_path / "fresh").mkdir()
        with folder_lock(tmp_path / "fresh"):  # no lock file yet, and none can be made: the folder is not writable
            pass
    ran = []
    with folder_lock(shared):
        ran.append(1)
    assert ran == [1]
    request.getfixturevalue("nfs_flock")
    with pytest.raises(MMBenchError, match=rf"^cannot lock {re.escape(str(shared))}/\.mmbench\.lock \(Bad file "
                                           rf"descriptor\): it is another user's and not writable by you; ask them"):
        with folder_lock(shared):
            pass
    monkeypatch.setattr(files.os, "open", real_open)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(MMBenchError, match=r"\(No locks available\): its file system keeps no locks \(NFS without "
                                           r"lockd, Lustre without -o flock\); mount it with locks"):
        with folder_lock(shared):
            pass
    capsys.readouterr()
    with folder_lock(shared, required=False):
        ran.append(2)
    assert ran == [1, 2] and "note: cannot lock" in capsys.readouterr().err


def test_a_build_killed_outright_leaves_nothing_after_the_next_build(tmp_path, monkeypatch):
    """A prepare killed by SIGKILL (no `finally` runs: its unfinished .<variant>.building-* folder stays, as does a
    copy a --force rebuild had moved aside, .<variant>.old-<pid>) is cleaned up by the next build in that folder,
    which holds the build lock, so no build is still writing there; the data it builds are the same."""
    import mmbench.data.base as base

    spec = DATASETS.get("polydigits")()

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # as a SIGKILL in the middle of the build: the cleanup never runs
        m.setattr(polygen, "compose", killed)
        m.setattr(base.shutil, "rmtree", lambda *a, **k: None)
        with pytest.raises(KeyboardInterrupt):
            prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    (tmp_path / "polydigits" / ".vanilla.old-99999").mkdir()  # killed between a --force's two renames
    assert len(left_in(tmp_path / "polydigits")) == 2
    (tmp_path / "polydigits" / "notes.old-2025").mkdir()  # not hidden: the user's, never a build's
    path = prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    assert left_in(tmp_path / "polydigits") == ["notes.old-2025", "vanilla"]
    assert read_manifest(path)["seed"] == 0


@pytest.mark.parametrize("dataset,variant,option,allowed", [
    ("polymnist", "extended", {"mnist_source": "test_halves"}, "choose train-test or test-halves"),
    ("polymnist", "extended", {"multiplicity": 1.5}, "give a whole number >= 1"),
    ("celeba", "default", {"text_order": "Random"}, "choose file or random"),
    ("mnist-svhn-text", "default", {"rounds": 0}, "whole numbers >= 1"),
    ("rats", "simulated", {"split": "heldout"}, "choose one of: held_out, in_sample")])
def test_an_option_value_no_build_takes_is_refused_before_a_copy_there_is_compared(tmp_path, dataset, variant, option,
                                                                                  allowed):
    """A bad value is named with what is allowed, even where a copy is prepared already (compared first, it was told
    to pass --force, which then refused the value)."""
    import json

    target = dataset_dir(dataset, variant, tmp_path)
    target.mkdir(parents=True)
    (target / "manifest.json").write_text(json.dumps({"dataset": dataset, "variant": variant, "arrays": {}, "seed": 0,
                                                      "recipe_version": 1, "options": {}}))
    with pytest.raises(MMBenchError, match=re.escape(allowed)) as e:
        prepare(DATASETS.get(dataset)(), variant, data_root=tmp_path, options=option)
    assert "--force" not in str(e.value)


def test_polymnist_options_a_build_does_not_read_are_refused_or_left_out_of_its_identity(tmp_path):
    """The archive's vanilla copy reads no MNIST option: a rebuild option without --rebuild is refused, saying so; the
    other variants are always rebuilt, so --rebuild is no part of their identity (nor of the report's data text)."""
    from mmbench.data.base import built_by
    from mmbench.results import data_build

    spec = DATASETS.get("polymnist")()
    with pytest.raises(MMBenchError, match=r"option multiplicity shape\(s\) a rebuild from MNIST, .*add --rebuild"):
        prepare(spec, "vanilla", data_root=tmp_path, options={"multiplicity": 3})
    assert built_by(spec, {"rebuild": True, "multiplicity": 1}, "extended") == {}
    assert built_by(spec, {"rebuild": True}, "vanilla") == {"rebuild": True}
    assert built_by(spec, {"rebuild": False}, "vanilla") == {}
    prov = {"dataset_build": {"options": {"rebuild": True, "mnist_source": "test-halves"}}}
    assert data_build(prov, spec, "extended") == "mnist_source=test-halves"
    assert data_build(prov, spec, "vanilla") == "mnist_source=test-halves, rebuild=True"
