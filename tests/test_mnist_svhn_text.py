"""MNIST-SVHN-Text from fixtures in the canonical formats (gzip'd IDX, MATLAB v5 .mat)."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from conftest import train_steps

from mmbench.data import mnist, mnist_svhn_text as mst
from mmbench.data.base import load_split, prepare, read_manifest, save_preview
from mmbench.data.download import Resource
from mmbench.errors import MMBenchError
from mmbench.registry import DATASETS
from test_download import write_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # absent in a user's checkout: tests skip


@pytest.fixture()
def raw(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    truth = {}
    for split, prefix, n_m, n_s in (("train", "train", 40, 50), ("test", "t10k", 30, 20)):
        m_y = rng.integers(0, 10, n_m).astype(np.uint8)
        m_x = rng.integers(0, 256, (n_m, 28, 28)).astype(np.uint8)
        m_x[:, 0, 0] = m_y * 20  # tag pixel: the label
        write_idx(src / f"{prefix}-images-idx3-ubyte.gz", m_x)
        write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", m_y)
        s_y = rng.integers(1, 11, n_s)  # SVHN stores the digit 0 as 10
        s_x = rng.integers(0, 256, (32, 32, 3, n_s)).astype(np.uint8)
        s_x[0, 0, 0, :] = (s_y % 10) * 20
        scipy.io.savemat(src / f"{split}_32x32.mat", {"X": s_x, "y": s_y.reshape(-1, 1)})
        truth[split] = (m_y.astype(int), s_y % 10)
    for name in list(mnist.FILES):
        monkeypatch.setitem(mnist.FILES, name, hashlib.md5((src / name).read_bytes()).hexdigest())
    for split, res in list(mst.SVHN.items()):
        digest = hashlib.md5((src / res.filename).read_bytes()).hexdigest()
        monkeypatch.setitem(mst.SVHN, split, Resource(res.filename, digest, res.urls))
    return src, truth


def expected_count(l1, l2, cap, rounds):
    """mst.paired_count, the formula `run --dry-run` sizes an unprepared copy by, on the classes of two label arrays
    (checked here against what `pair` makes)."""
    return mst.paired_count(np.bincount(l1, minlength=10), np.bincount(l2, minlength=10), cap, rounds)


def test_expected_counts_follow_from_the_source_files_classes():
    """The default recipe (20 rounds, at most 10,000 a class) on MNIST's and SVHN's class counts: 1,121,360 train and
    200,000 test triples; each class table sums to its file's size (60,000 / 10,000 MNIST, 73,257 / 26,032 SVHN)."""
    spec = DATASETS.get("mnist-svhn-text")()
    assert spec.expected_counts("default") == {"train": 1_121_360, "test": 200_000}
    assert [sum(mst.CLASS_COUNTS[d][s]) for d in ("mnist", "svhn") for s in ("train", "test")] == [
        60_000, 10_000, 73_257, 26_032]
    assert mst.paired_count((5, 1), (2, 9), 3, 4) == 4 * (2 + 1) and mst.paired_count((5, 9), (7, 9), 3, 2) == 12


@pytest.mark.skipif(not (SHARED / "mnist-t10k").exists(), reason="../shared/data/mnist-t10k (the real MNIST test "
                    "split) is not here")
def test_mnist_test_class_counts_are_the_real_files():
    from mmbench.data.mnist import read_idx

    y = read_idx(SHARED / "mnist-t10k" / "t10k-labels-idx1-ubyte.gz").astype(int)
    assert tuple(np.bincount(y, minlength=10).tolist()) == mst.CLASS_COUNTS["mnist"]["test"]


def test_pairing_text_and_counts(tmp_path, raw):
    src, truth = raw
    spec = DATASETS.get("mnist-svhn-text")()
    path = prepare(spec, None, seed=3, data_root=tmp_path / "d", options={"source": str(src), "rounds": 4, "max_per_class": 3})
    manifest = read_manifest(path)
    for split in ("train", "test"):
        assert manifest["counts"][split] == expected_count(*truth[split], 3, 4)
        s = load_split(spec, None, split, tmp_path / "d")
        y = s.labels
        assert len(s) == manifest["counts"][split]
        assert (s.x["mnist"][:][:, 0, 0, 0] == y * 20).all()  # the paired MNIST image has the label
        assert (s.x["svhn"][:][:, 0, 0, 0] == y * 20).all()  # so has the SVHN one (10 -> 0)
        texts = ["".join(mst.ALPHABET[c] for c in row) for row in s.x["text"].tolist()]
        assert all(t.strip() == mst.WORDS[int(l)] and len(t) == 8 for t, l in zip(texts, y))
        b = s.batch(torch_arange(len(s)))
        assert b["text"].shape == (len(s), 8, 71) and (b["text"].sum(-1) == 1).all()
        assert b["mnist"].shape[1:] == (1, 28, 28) and b["svhn"].shape[1:] == (3, 32, 32)
    starts = {t.index(t.strip()) for t in texts}
    assert len(starts) > 1  # the word moves inside the field
    save_preview(load_split(spec, None, "test", tmp_path / "d"), tmp_path / "p.png")
    import matplotlib.image

    grid = matplotlib.image.imread(tmp_path / "p.png")
    n = min(10, len(load_split(spec, None, "test", tmp_path / "d")))
    assert grid.shape[:2] == (round(1.2 * 3 * 100), round(1.1 * n * 100))  # 3 modality rows × n tuples at 100 dpi
    assert grid[..., :3].std() > 0.05  # drawn, not blank
    # seeded: the same seed elsewhere gives byte-identical arrays
    other = prepare(spec, None, seed=3, data_root=tmp_path / "e", options={"source": str(src), "rounds": 4, "max_per_class": 3})
    assert {k: v["sha256"] for k, v in read_manifest(other)["arrays"].items()} == \
           {k: v["sha256"] for k, v in manifest["arrays"].items()}


def test_text_start_redrawn_per_epoch_only_when_asked(tmp_path, raw):
    import torch

    src, _ = raw
    spec = DATASETS.get("mnist-svhn-text")()
    opts = {"source": str(src), "rounds": 4, "max_per_class": 3}
    prepare(spec, None, seed=3, data_root=tmp_path / "f", options=opts)
    fixed = load_split(spec, None, "train", tmp_path / "f")
    idx = torch_arange(len(fixed))
    assert torch.equal(fixed.batch(idx)["text"].argmax(-1), fixed.x["text"].long())  # default: the stored start
    with pytest.raises(MMBenchError, match="text_start='sometimes' is not allowed"):
        prepare(spec, None, seed=3, data_root=tmp_path / "x", options={**opts, "text_start": "sometimes"})
    path = prepare(spec, None, seed=3, data_root=tmp_path / "p", options={**opts, "text_start": "per_epoch"})
    assert read_manifest(path)["text"]["start"] == "per_epoch"
    train, test = (load_split(spec, None, s, tmp_path / "p") for s in ("train", "test"))
    assert torch.equal(train.x["text"], fixed.x["text"])  # same stored arrays; only batching differs
    torch.manual_seed(0)
    a = train.batch(idx)["text"]
    b = train.batch(idx)["text"]
    torch.manual_seed(0)
    assert torch.equal(train.batch(idx)["text"], a)  # seeded
    assert not torch.equal(a, b)  # redrawn at every batch
    for one_hot in (a, b):
        texts = ["".join(mst.ALPHABET[c] for c in row) for row in one_hot.argmax(-1).tolist()]
        assert all(t.strip() == mst.WORDS[int(y)] and len(t) == 8 for t, y in zip(texts, train.labels))
    assert not torch.equal(a.argmax(-1), fixed.x["text"].long()) or not torch.equal(b.argmax(-1), fixed.x["text"].long())
    j = torch_arange(len(test))
    assert torch.equal(test.batch(j)["text"].argmax(-1), test.x["text"].long())  # evaluation text: the stored one
    assert train.select(["text"]).redraw and train.subset(5).redraw  # kept through select/subset


def test_stored_text_starts_cover_the_authors_range_only():
    for label in range(10):
        word = mst.WORDS[label]
        rows = mst.make_text(np.full(2000, label), np.random.default_rng(label))
        starts = {"".join(mst.ALPHABET[c] for c in r).index(word) for r in rows.tolist()}
        assert starts == set(range(0, 8 - len(word))), (word, starts)


def test_redraw_start_keeps_words_inside_the_field():
    import torch

    rows = torch.from_numpy(np.stack([mst.encode(w.ljust(8)) for w in mst.WORDS]))
    torch.manual_seed(1)
    seen = [set() for _ in mst.WORDS]
    for _ in range(200):
        out = mst.redraw_start(rows)
        for i, r in enumerate(out.tolist()):
            t = "".join(mst.ALPHABET[c] for c in r)
            assert t.strip() == mst.WORDS[i] and len(t) == 8
            seen[i].add(t.index(mst.WORDS[i]))
    # every start of MoPoE's range, 0..7-len (random.randint(0, len_seq - 1 - len(word))): never the last place
    assert all(s == set(range(0, 8 - len(w))) for s, w in zip(seen, mst.WORDS))


def torch_arange(n):
    import torch

    return torch.arange(n)


def test_default_pairing_is_the_authors(tmp_path):
    l1 = np.array([1, 0, 1, 1, 0, 2])
    l2 = np.array([0, 1, 1, 0, 0, 2, 2])
    i1, i2 = mst.pair(l1, l2, 10_000, 20, np.random.default_rng(0))
    assert len(i1) == 20 * (2 + 2 + 1)
    assert (l1[i1] == l2[i2]).all()
    assert sorted(set(i2[l2[i2] == 1])) == [1, 2]  # class 1: n = min(3, 2) -> the first 2 of SVHN's... all of them
    assert sorted(set(i1[l1[i1] == 1])) == [0, 2]  # ... and the first 2 of MNIST's in sorted order


def test_alphabet_is_the_authors():
    assert len(mst.ALPHABET) == 71
    assert (mst.ALPHABET.find("-"), mst.ALPHABET.find(" "), mst.ALPHABET.find("*"), mst.ALPHABET.find("\n")) == (36, 69, 55, 70)


def test_damaged_mat_file(tmp_path):
    bad = tmp_path / "train_32x32.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(MMBenchError, match="not a readable MATLAB file"):
        mst.load_svhn(bad)


@pytest.mark.parametrize("method", ["mopoe", "mvae", "mmvae"])
def test_methods_train_on_mnist_svhn_text_shapes(method):
    import torch

    from mmbench.methods.base import MethodConfig, all_subsets
    from mmbench.registry import METHODS

    spec = DATASETS.get("mnist-svhn-text")()
    mods = spec.modalities("default")
    torch.manual_seed(0)
    model = METHODS.get(method)(mods, MethodConfig(method, latent_dim=20), spec.default_architecture)
    x = {"mnist": torch.rand(16, 1, 28, 28), "svhn": torch.rand(16, 3, 32, 32),
         "text": torch.nn.functional.one_hot(torch.randint(0, 71, (16, 8)), 71).float()}
    # every parameter gets a non-zero gradient in some step (an input the loss ignores fails here), all finite
    losses, _ = train_steps(model, x, 25, require_grad=True)
    # falls by 15% or more, not merely below the first step: untrained (lr 1e-9) the last loss is the first's give or
    # take sampling noise, below it for mopoe and mmvae at seed 0, which the plain `< first` let through. Measured
    # last/first: mopoe 0.62, mvae 0.72, mmvae 0.66 (over model seeds 0, 1, 2 with another sampling seed: 0.66-0.76);
    # at lr 1e-9 0.9997-1.0004
    assert losses[-1] < 0.85 * losses[0], losses
    assert len(model.encode_subsets(x, all_subsets(model.names))) == 7
    assert model.decode(model.sample_prior(3), "text").shape == (3, 8, 71)
    for m in mods:
        clf = __import__("mmbench.registry", fromlist=["ARCHITECTURES"]).ARCHITECTURES.get(
            spec.classifier_architecture).classifier(m, 10)
        assert clf(x[m.name][:4]).shape == (4, 10)


def test_mopoe_suite_smoke_tier_end_to_end(tmp_path, raw):
    """The MoPoE suite's smoke tier on fixture data, then the comparison with the paper's Tables 2-3."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src, _ = raw
    prepare(DATASETS.get("mnist-svhn-text")(), None, seed=0, data_root=tmp_path / "d", options={"source": str(src)})
    env = {**os.environ, "MMBENCH_DATA": str(tmp_path / "d"), "MMBENCH_RUNS": str(tmp_path / "r"), "COLUMNS": "200"}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "mmbench", "run", str(root / "suites/mopoe_iclr21.yaml"), "--tier", "smoke",
                          "--only", "mst-tables-2-3"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 of 3 runs finished" in run.stdout
    rep = subprocess.run([sys.executable, "-m", "mmbench", "report", "--compare", str(root / "reference_results"),
                          "--format", "md"], capture_output=True, text=True, env=env, timeout=600)
    # Every MoPoE Table 2/3 cell has a produced value, shown beside the paper's and not scored: one epoch on 512
    # tuples is not the paper's 150 epochs (mmbench/budgets.py), so neither ✓ nor ✗, and none missing.
    for table in ("MoPoE Table 2", "MoPoE Table 3"):
        section = rep.stdout.split(f"— {table}")[1].split("###")[0]
        # the settings each key reads (budgets.READ_BY): latent accuracies also eval.lr_train_samples, coherences
        # eval.classifier_epochs, the joint coherence eval.joint_samples as well; never the log-likelihood's samples
        n = section.count("not scored: another budget than the paper's (train.epochs 1 (paper: 150); 3 more settings)")
        joint = section.count("not scored: another budget than the paper's (train.epochs 1 (paper: 150); 4 more settings)")
        assert (n, joint) == {"MoPoE Table 2": (21, 0), "MoPoE Table 3": (27, 3)}[table], section
        n += joint
        assert f"0 of {n} cells within tolerance, 0 failing, 0 missing, {n} at another budget" in section, section
        assert "✓" not in section and "✗" not in section
    assert rep.returncode == 1
    assert "### Sutter, Daunhawer & Vogt, Generalized Multimodal ELBO (MoPoE-VAE), ICLR 2021 — MoPoE Table 2" in rep.stdout


def test_evaluation_reads_a_class_sorted_test_split_in_shuffled_batches():
    """pair() stores the tuples class by class; whole-split evaluation reads them in a seeded shuffled order, so a
    batch-norm classifier in training mode (classifier_dropout: as_authors) never normalises a one-digit batch."""
    from mmbench.data.base import DataSplit, Modality
    from mmbench.data.mnist_svhn_text import pair
    from mmbench.evaluate import evaluation_split

    rng = np.random.default_rng(0)
    l1, l2 = rng.integers(0, 10, 3000), rng.integers(0, 10, 3000)
    i1, _ = pair(l1, l2, 200, 2, np.random.default_rng(1))
    y = torch.as_tensor(l1[i1])
    assert (y[:256] == y[0]).all()  # stored sorted: the first batch holds one digit
    split = DataSplit([Modality("m", (1,), kind="vector")], {"m": y[:, None].float()}, y)
    whole = evaluation_split(split, None)
    assert torch.equal(whole.labels.sort().values, y.sort().values)  # every tuple once
    assert torch.equal(whole.labels, evaluation_split(split, None).labels)  # seeded
    assert all(len(whole.labels[b:b + 256].unique()) == 10 for b in range(0, len(y) - 255, 256))
    assert torch.equal(whole.x["m"][:, 0].long(), whole.labels)  # rows stay aligned with their labels
    part = evaluation_split(split, 100)
    assert torch.equal(part.labels, split.subset(100, seed=2).labels)  # a subset is drawn as before


def test_a_damaged_mat_file_from_source_is_the_users_to_replace(tmp_path):
    bad = tmp_path / "train_32x32.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(MMBenchError) as e:
        mst.load_svhn(bad, user_copy=True)
    assert "your copy (from --source)" in str(e.value) and mst.SVHN["train"].urls[0] in str(e.value)
    assert "delete" not in str(e.value) and bad.exists()
    with pytest.raises(MMBenchError, match="not a readable MATLAB file .*delete it and prepare again"):
        mst.load_svhn(bad)


def test_pairing_rounds_draw_independent_matchings():
    """Each of the rounds matches the class's images afresh: 20 rounds over 50 × 50 same-class images give far
    more than the 50 distinct pairs one repeated matching would."""
    lab = np.zeros(50, np.int64)
    i1, i2 = mst.pair(lab, lab.copy(), 10_000, 20, np.random.default_rng(0))
    assert len(set(zip(i1.tolist(), i2.tolist()))) > 500


# ----- behaviours a mutation pass found unguarded -----
def test_pairing_keeps_the_first_images_of_each_class_in_file_order():
    # mnist_svhn_text docstring (rand_match_on_idx): per class the first n = min(#MNIST, #SVHN, cap) indices in
    # label-sorted order, i.e. the class's first n images in file order (a stable sort), each once per round
    rng = np.random.default_rng(0)
    l1, l2 = rng.integers(0, 3, 300), rng.integers(0, 3, 400)
    i1, i2 = mst.pair(l1, l2, 20, 3, np.random.default_rng(1))
    for c in range(3):
        for idx, lab in ((i1, l1), (i2, l2)):
            kept = idx[lab[idx] == c]
            assert sorted(kept.tolist()) == sorted(np.tile(np.flatnonzero(lab == c)[:20], 3).tolist())


def test_svhn_images_keep_rows_columns_and_channels(tmp_path):
    # load_svhn: the .mat's X is rows × columns × channels × N; stored N × channels × rows × columns
    x = np.zeros((32, 32, 3, 2), np.uint8)
    x[3, 20, 1, 1] = 255  # image 1, row 3, column 20, green
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [4]])})
    images, labels = mst.load_svhn(tmp_path / "test_32x32.mat")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 4]
    assert images[1, 1, 3, 20] == 255 and int(images.astype(int).sum()) == 255
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x})  # a .mat without labels
    with pytest.raises(MMBenchError, match="has no X/y arrays; is it SVHN's train_32x32.mat"):
        mst.load_svhn(tmp_path / "train_32x32.mat")


def test_default_rounds_and_cap_are_the_authors_and_are_checked(tmp_path, raw, monkeypatch):
    # mnist_svhn_text docstring: 20 pairings per class of at most 10,000 images by default; rounds and max_per_class
    # below 1 are refused
    src, truth = raw
    seen = []
    real_pair = mst.pair

    def spy(l1, l2, cap, rounds, rng):
        seen.append((cap, rounds))
        return real_pair(l1, l2, cap, rounds, rng)

    monkeypatch.setattr(mst, "pair", spy)
    spec = DATASETS.get("mnist-svhn-text")()
    path = prepare(spec, None, seed=0, data_root=tmp_path / "d", options={"source": str(src)})
    assert seen == [(10_000, 20)] * 2
    assert read_manifest(path)["counts"]["test"] == expected_count(*truth["test"], 10_000, 20)
    for bad in ({"rounds": 0}, {"max_per_class": 0}):
        with pytest.raises(MMBenchError, match="rounds and max_per_class must be whole numbers >= 1"):
            prepare(spec, None, data_root=tmp_path / "x", options={"source": str(src), **bad})
    for name, bad in (("rounds", 2.5), ("max_per_class", "many")):  # int(2.5) would have paired 2 rounds
        with pytest.raises(MMBenchError, match=f"option {name}={bad!r} is not allowed; give a whole number"):
            prepare(spec, None, data_root=tmp_path / "x", options={"source": str(src), name: bad})


def test_reconstruction_weights_are_the_authors():
    # MoPoE mnistsvhntext/experiment.py set_rec_weights: each modality weighted by 3,072 (SVHN's values) over its own
    mods = {m.name: m for m in DATASETS.get("mnist-svhn-text")().modalities("default")}
    assert (mods["mnist"].rec_weight, mods["svhn"].rec_weight, mods["text"].rec_weight) == (3072 / 784, 1.0, 3072 / 8)


def test_idx_files_that_are_longer_of_an_unknown_type_or_unpaired_are_refused(tmp_path, monkeypatch):
    # mnist.read_idx: the data must be exactly what the header promises, of a known IDX type; mnist.load: one label
    # per image
    from test_download import write_idx

    write_idx(tmp_path / "y", np.array([3, 7], np.uint8))
    (tmp_path / "long").write_bytes((tmp_path / "y").read_bytes() + b"\x00")
    with pytest.raises(MMBenchError, match="IDX header promises 2 values"):
        mnist.read_idx(tmp_path / "long")
    data = bytearray((tmp_path / "y").read_bytes())
    data[2] = 0x07
    (tmp_path / "odd").write_bytes(bytes(data))
    with pytest.raises(MMBenchError, match="not an IDX file"):
        mnist.read_idx(tmp_path / "odd")
    src = tmp_path / "src"
    src.mkdir()
    write_idx(src / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        monkeypatch.setitem(mnist.FILES, name, hashlib.md5((src / name).read_bytes()).hexdigest())
    with pytest.raises(MMBenchError, match="MNIST test: 3 images but 2 labels"):
        mnist.load("test", tmp_path / "raw", src)


def test_pairing_and_text_follow_the_seed(tmp_path, raw):
    # mnist_svhn_text docstring: the pairing and the text starts are seeded by the prepare seed
    src, _ = raw
    spec = DATASETS.get("mnist-svhn-text")()
    opts = {"source": str(src), "rounds": 2, "max_per_class": 3}
    arrays = [read_manifest(prepare(spec, None, seed=s, data_root=tmp_path / str(s), options=opts))["arrays"]
              for s in (3, 4)]
    for key in ("test_index_mnist", "test_index_svhn", "test_text"):
        assert arrays[0][key]["sha256"] != arrays[1][key]["sha256"], key


# ----- behaviours a third mutation pass found unguarded -----
def test_each_label_is_written_as_its_english_number_word():
    # MoPoE utils/text.py create_text_from_label_mnist: the text of digit d is the English word for d (its list
    # digit_text_english), so the text modality carries the same digit as the images
    english = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
               9: "nine"}
    rows = mst.make_text(np.arange(10), np.random.default_rng(0))
    for label, row in enumerate(rows.tolist()):
        assert "".join(mst.ALPHABET[c] for c in row).strip() == english[label], label


# ----- behaviours a fourth mutation pass found unguarded -----
def test_each_round_draws_every_matching_of_a_class():
    # mnist_svhn_text docstring (rand_match_on_idx): each round permutes the MNIST and the SVHN slice independently,
    # so a round's matching of a class's 3 + 3 images is any of the 3! = 6 one-to-one matchings, not only some
    # (a permutation derived from the other slice's, e.g. its square, reaches only the even ones)
    lab = np.zeros(3, np.int64)
    i1, i2 = mst.pair(lab, lab.copy(), 10_000, 200, np.random.default_rng(0))
    matchings = {tuple(b for _, b in sorted(zip(r1, r2))) for r1, r2 in zip(i1.reshape(200, 3).tolist(),
                                                                          i2.reshape(200, 3).tolist())}
    assert len(matchings) == 6


def test_paired_images_are_the_source_images_as_they_are(tmp_path, raw):
    # mnist_svhn_text docstring: each source image is stored once and paired by index: a tuple's MNIST image is an
    # image of the IDX file (rows and columns kept), and its SVHN image one of the .mat's
    src, _ = raw
    spec = DATASETS.get("mnist-svhn-text")()
    prepare(spec, None, seed=0, data_root=tmp_path / "d", options={"source": str(src), "rounds": 1, "max_per_class": 3})
    m_x, m_y = mnist.read_idx(src / "t10k-images-idx3-ubyte.gz"), mnist.read_idx(src / "t10k-labels-idx1-ubyte.gz")
    s_x, s_y = mst.load_svhn(src / "test_32x32.mat")
    sources = {("mnist", m_x[i, None].tobytes()): int(m_y[i]) for i in range(len(m_y))}
    sources.update({("svhn", s_x[i].tobytes()): int(s_y[i]) for i in range(len(s_y))})
    test = load_split(spec, None, "test", tmp_path / "d")
    for name in ("mnist", "svhn"):
        images = test.x[name][:].numpy()
        assert [sources.get((name, x.tobytes())) for x in images] == test.labels.tolist(), name
