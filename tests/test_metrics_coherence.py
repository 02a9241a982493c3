"""Coherence on known answers: a model that copies its input scores 1, a random one scores chance."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbench.config import EvalConfig
from mmbench.data.base import DataSplit, Modality
from mmbench.methods.base import Gaussian
from mmbench.metrics.coherence import coherence
from mmbench.metrics.context import EvalContext
from mmbench.registry import DATASETS

NAMES = ["m0", "m1", "m2"]
MODS = [Modality(m, (10,), kind="vector") for m in NAMES]


class Copier(torch.nn.Module):
    """Latent = the mean of the inputs' one-hot class vectors; every decoder returns the latent: a
    perfectly coherent model. With `random=True` decoders emit a random class instead."""

    names = NAMES

    def __init__(self, random=False):
        super().__init__()
        self.random = random

    def supports(self, subset):
        return True

    def encode_subsets(self, x, subsets):
        return [Gaussian(torch.stack([x[m] for m in s]).mean(0), torch.full_like(x[s[0]], -30.0)) for s in subsets]

    def decode(self, z, m):
        if self.random:
            return torch.nn.functional.one_hot(torch.randint(0, 10, (len(z),)), 10).float()
        return z

    def sample_prior(self, n):
        return torch.nn.functional.one_hot(torch.randint(0, 10, (n,)), 10).float()


class SelfOnly(torch.nn.Module):
    """Reconstructs only what it is given: the latent holds one 10-slot block per modality, the input's
    one-hot in the blocks of the modalities in S and a random class's one-hot in the others; decoding m
    reads m's block. Coherence S -> m is 1 for m in S and chance (0.1) for m outside S, so including
    the targets inside S in `coherence_by_n` would change it: n=1 -> (1 + 2·0.1)/3, n=2 -> (2 + 0.1)/3."""

    names = NAMES

    def supports(self, subset):
        return True

    def encode_subsets(self, x, subsets):
        B = len(x[NAMES[0]])
        out = []
        for s in subsets:
            blocks = [x[m] if m in s else torch.nn.functional.one_hot(torch.randint(0, 10, (B,)), 10).float()
                      for m in NAMES]
            out.append(Gaussian(torch.cat(blocks, 1), torch.full((B, 10 * len(NAMES)), -30.0)))
        return out

    def decode(self, z, m):
        j = NAMES.index(m)
        return z[:, 10 * j:10 * (j + 1)]

    def sample_prior(self, n):
        return torch.nn.functional.one_hot(torch.randint(0, 10, (n, len(NAMES))), 10).float().flatten(1)


def run(model, joint_samples=2000):
    torch.manual_seed(0)
    y = torch.as_tensor(np.random.default_rng(0).integers(0, 10, 2000))
    onehot = torch.nn.functional.one_hot(y, 10).float()
    split = DataSplit(MODS, {m: onehot for m in NAMES}, y)
    ctx = EvalContext(model=model, spec=DATASETS.get("polydigits")(), variant="vanilla", train=split, test=split,
                      test_full=split, cfg=EvalConfig(joint_samples=joint_samples, batch_size=500),
                      device=torch.device("cpu"))
    ctx._classifiers = {m: torch.nn.Identity() for m in NAMES}  # a perfect classifier reads the one-hot class
    return coherence(ctx)


def test_copying_model_is_perfectly_coherent():
    out = run(Copier())
    assert out["coherence/m0->m1"] == 1.0 and out["coherence/m0+m2->m1"] == 1.0
    assert out["coherence_by_n/1"] == 1.0 and out["coherence_by_n/2"] == 1.0
    assert out["coherence/joint"] == 1.0  # its prior samples decode to one class in every modality


def test_random_model_is_at_chance():
    out = run(Copier(random=True), joint_samples=20000)
    assert out["coherence_by_n/1"] == pytest.approx(0.1, abs=0.03)
    # all three agree with probability 0.1^2 = 0.01; 20,000 samples: standard error 0.0007
    assert out["coherence/joint"] == pytest.approx(0.01, abs=0.003)


def test_coherence_by_n_counts_only_targets_outside_the_subset():
    out = run(SelfOnly())
    assert out["coherence/m0->m0"] == 1.0 and out["coherence/m0+m1->m1"] == 1.0
    assert out["coherence/m0->m1"] == pytest.approx(0.1, abs=0.03)
    for n, pairs in ((1, ["m0->m1", "m0->m2", "m1->m0", "m1->m2", "m2->m0", "m2->m1"]),
                     (2, ["m0+m1->m2", "m0+m2->m1", "m1+m2->m0"])):
        assert out[f"coherence_by_n/{n}"] == pytest.approx(np.mean([out[f"coherence/{p}"] for p in pairs]), abs=1e-12)
        assert out[f"coherence_by_n/{n}"] == pytest.approx(0.1, abs=0.03)  # not 0.4 / 0.7
    assert out["coherence/joint"] == pytest.approx(0.01, abs=0.006)  # independent random classes per modality
    # MM-VAMP's average over all conditional generations from one modality includes m -> m (the 3 x 3 matrix)
    every = [f"coherence/{a}->{b}" for a in NAMES for b in NAMES]
    assert out["coherence_all_by_n/1"] == pytest.approx(np.mean([out[k] for k in every]), abs=1e-12)
    assert out["coherence_all_by_n/1"] == pytest.approx((1 + 2 * 0.1) / 3, abs=0.03)
    assert out["coherence_all_by_n/2"] == pytest.approx((2 + 0.1) / 3, abs=0.03)


def test_translated_polymnist_is_judged_by_the_resnet_classifier(tmp_path):
    from mmbench.metrics.classifiers import build, cache_dir

    spec = DATASETS.get("polymnist")()
    assert spec.classifier_for("vanilla") == "polymnist_clf"
    assert spec.classifier_for("translated") == "polymnist_resnet_clf"  # the MM-VAMP translated PolyMNIST classifier is a ResNet (mmvmvae)
    assert cache_dir(spec, "translated", 10, tmp_path).name.endswith("-e10-polymnist_resnet_clf")
    clf = build(spec, Modality("m0", (3, 28, 28)), "translated")
    assert clf(torch.rand(2, 3, 28, 28)).shape == (2, 10)


class Tagged(Copier):
    """Copier whose latent carries its subset's index in an extra column (prior samples: -1), to see which
    subsets' samples a classifier call mixes."""

    def encode_subsets(self, x, subsets):
        return [Gaussian(torch.cat([q.mu, torch.full_like(q.mu[:, :1], k)], 1), torch.full((len(q.mu), 11), -30.0))
                for k, q in enumerate(super().encode_subsets(x, subsets))]

    def sample_prior(self, n):
        return torch.cat([super().sample_prior(n), torch.full((n, 1), -1.0)], 1)


class Recorder(torch.nn.Module):
    """A classifier with batch norm (as the authors' are; run in training mode under classifier_dropout:
    as_authors) that records the tags and size of every call and reads the one-hot class."""

    def __init__(self, calls):
        super().__init__()
        self.bn, self.calls = torch.nn.BatchNorm1d(10), calls

    def forward(self, x):
        self.calls.append((len(x), set(x[:, 10].round().tolist())))
        return x[:, :10] + 0 * self.bn(x[:, :10])


@pytest.mark.parametrize("training", [True, False])
def test_a_batch_norm_classifier_in_training_mode_sees_one_subset_per_call(monkeypatch, training):
    """In training mode its outputs depend on the call's other rows, so each call holds one subset's samples of
    one test batch (the MoPoE code's call), whatever the chunk size; in eval mode rows are chunked freely."""
    import mmbench.metrics.batched as batched

    monkeypatch.setattr(batched, "CPU_ROWS", 64)
    calls = []
    torch.manual_seed(0)
    y = torch.as_tensor(np.random.default_rng(0).integers(0, 10, 1000))
    onehot = torch.nn.functional.one_hot(y, 10).float()
    split = DataSplit(MODS, {m: onehot for m in NAMES}, y)
    ctx = EvalContext(model=Tagged(), spec=DATASETS.get("polydigits")(), variant="vanilla", train=split, test=split,
                      test_full=split, cfg=EvalConfig(joint_samples=300, batch_size=500), device=torch.device("cpu"))
    ctx._classifiers = {m: Recorder(calls).train(training) for m in NAMES}
    out = coherence(ctx)
    assert out["coherence/m0->m1"] == 1.0 and out["coherence/joint"] == 1.0
    conditional, joint = calls[:-3], calls[-3:]  # 2 test batches × 3 targets × 7 subsets; one prior batch × 3
    if training:
        assert [n for n, _ in conditional] == [500] * 42 and all(len(tags) == 1 for _, tags in conditional)
        assert [tags for _, tags in conditional[:7]] == [{k} for k in range(7)]
        assert joint == [(300, {-1})] * 3
    else:
        assert max(n for n, _ in calls) == 64 and any(len(tags) > 1 for _, tags in conditional)


def test_a_corrupt_classifier_cache_is_set_aside_and_rebuilt(tmp_path, monkeypatch, capsys):
    """A truncated <modality>.pt is moved to <modality>.pt.corrupt and that classifier trained again; an accuracy.json
    that is not JSON is moved aside and the cached classifiers measured again (not retrained); each says so in a
    line on stderr, and the scores are those of the first build."""
    import mmbench.metrics.classifiers as classifiers
    from mmbench.data.base import load_split, prepare
    from mmbench.metrics.classifiers import cache_dir, get_classifiers

    spec = DATASETS.get("polydigits")()
    prepare(spec, "vanilla", seed=0, data_root=tmp_path)
    train, test = (load_split(spec, "vanilla", s, tmp_path).subset(256) for s in ("train", "test"))
    cfg = EvalConfig(classifier_epochs=1)

    def get():
        return get_classifiers(spec, "vanilla", train, test, cfg, tmp_path, lambda *a: None, check=False)

    _, first = get()
    directory = cache_dir(spec, "vanilla", 1, tmp_path)
    m2 = directory / "m2.pt"
    damaged = m2.read_bytes()[:1000]
    m2.write_bytes(damaged)
    capsys.readouterr()
    clfs, again = get()
    assert again == first and (directory / "m2.pt.corrupt").read_bytes() == damaged
    assert f"note: {m2} is corrupt" in capsys.readouterr().err
    assert set(clfs) == {"m0", "m1", "m2", "m3", "m4"}

    (directory / "accuracy.json").write_text("{")
    monkeypatch.setattr(classifiers, "train_one", lambda *a, **k: pytest.fail("a cached classifier was retrained"))
    _, measured = get()
    assert measured == first and (directory / "accuracy.json.corrupt").read_text() == "{"
    assert "accuracy.json is not JSON" in capsys.readouterr().err


def test_classifier_accuracy_is_measured_on_the_full_test_split(monkeypatch):
    # context.EvalContext: `test` is capped to eval.test_samples, `test_full` is the whole split that classifier
    # accuracy is measured on (metrics/context.py field comments)
    import mmbench.metrics.context as context

    seen = {}

    def spy(spec, variant, train, test, cfg, data_root, progress, whole=None):
        seen["test"] = test
        return {}, {}

    monkeypatch.setattr(context, "get_classifiers", spy)
    full = DataSplit(MODS, {m: torch.zeros(20, 10) for m in NAMES}, torch.zeros(20, dtype=torch.long))
    ctx = EvalContext(model=Copier(), spec=DATASETS.get("polydigits")(), variant="vanilla", train=full,
                      test=full.subset(5), test_full=full, cfg=EvalConfig(), device=torch.device("cpu"))
    ctx.classifiers()
    assert seen["test"] is full


def test_a_multilabel_dataset_reports_its_classifiers_mean_ap_not_an_accuracy(monkeypatch):
    """EvalContext.classifiers: on a multi-label dataset (CelebA) the classifiers' quality goes to classifier_ap."""
    import mmbench.metrics.context as context

    monkeypatch.setattr(context, "get_classifiers", lambda *a, **k: ({}, {"img": 0.7}))
    full = DataSplit(MODS, {m: torch.zeros(4, 10) for m in NAMES}, torch.zeros(4, dtype=torch.long))
    ctx = EvalContext(model=Copier(), spec=DATASETS.get("celeba")(), variant="default", train=full, test=full,
                      test_full=full, cfg=EvalConfig(), device=torch.device("cpu"))
    ctx.classifiers()
    assert ctx.extra["classifier_ap"] == {"img": 0.7} and "classifier_accuracy" not in ctx.extra


def test_the_authors_classifiers_are_recorded_as_theirs(monkeypatch):
    """EvalContext.classifiers with eval.classifiers: authors records the architecture as the authors', not mmbench's."""
    import mmbench.metrics.context as context

    monkeypatch.setattr(context, "get_classifiers", lambda *a, **k: ({}, {}))
    full = DataSplit(MODS, {m: torch.zeros(4, 10) for m in NAMES}, torch.zeros(4, dtype=torch.long))
    ctx = EvalContext(model=Copier(), spec=DATASETS.get("polydigits")(), variant="vanilla", train=full, test=full,
                      test_full=full, cfg=EvalConfig(classifiers="authors"), device=torch.device("cpu"))
    ctx.classifiers()
    assert ctx.provenance["classifiers"]["architecture"] == "authors"


def test_the_accuracy_floor_admits_a_classifier_exactly_at_it():
    # classifiers.py docstring: a classifier *below* eval.classifier_min_accuracy makes coherence refuse
    from mmbench.errors import MMBenchError
    from mmbench.metrics.classifiers import _check_floor

    spec, cfg = DATASETS.get("polydigits")(), EvalConfig(classifier_min_accuracy=0.5)
    _check_floor(spec, cfg, {"m0": 0.5, "m1": 0.75})
    with pytest.raises(MMBenchError, match=r"below eval.classifier_min_accuracy=0.5: m0 0\.\d+;"):
        _check_floor(spec, cfg, {"m0": 0.4999, "m1": 0.75})


def test_get_classifiers_refuses_classifiers_below_the_floor_trained_or_cached(tmp_path):
    # classifiers.get_classifiers checks the floor after the cache's lock is let go: trained now, and read back
    from mmbench.errors import MMBenchError
    from mmbench.metrics.classifiers import get_classifiers

    spec = DATASETS.get("polydigits")()
    mods, split = _random_m0_split()  # random images: the classifier is near chance
    cfg = EvalConfig(classifier_epochs=1, classifier_min_accuracy=0.99)
    for _ in ("trained", "cached"):
        with pytest.raises(MMBenchError, match=r"^mmbench coherence classifiers below eval.classifier_min_accuracy"
                                               r"=0.99: m0 0\.\d+; train them longer"):
            get_classifiers(spec, "vanilla", split, split, cfg, tmp_path, lambda *a: None)
    assert get_classifiers(spec, "vanilla", split, split, cfg, tmp_path, lambda *a: None, check=False)[1]["m0"] < 0.99


def fake_manifests(monkeypatch, module, manifests):
    """`module.read_manifest` returns the next of `manifests` at each call (two prepared datasets, no build)."""
    it = iter(manifests)
    monkeypatch.setattr(module, "read_manifest", lambda directory: next(it))


def test_classifier_cache_is_keyed_by_the_dataset_digest(tmp_path, monkeypatch):
    # classifiers.py docstring: cached under <data_root>/classifiers/<dataset>-<variant>-<dataset digest>-e<epochs>/
    import mmbench.metrics.classifiers as classifiers
    from mmbench.data.base import manifest_digest

    manifests = [{"arrays": {"test_m0": {"sha256": c * 64}}} for c in "01"]
    fake_manifests(monkeypatch, classifiers, manifests)
    spec = DATASETS.get("polydigits")()
    dirs = [classifiers.cache_dir(spec, "vanilla", 3, tmp_path) for _ in manifests]
    assert dirs[0] != dirs[1]
    assert [d.name for d in dirs] == [f"polydigits-vanilla-{manifest_digest(m)}-e3-polymnist_clf" for m in manifests]


def _random_m0_split():
    """One image modality of 20 random tuples, labels 0..9 twice: what the classifier-cache tests train on."""
    mods = [Modality("m0", (3, 28, 28), "image")]
    gen = torch.Generator().manual_seed(0)
    return mods, DataSplit(mods, {"m0": torch.randint(0, 256, (20, 3, 28, 28), dtype=torch.uint8, generator=gen)},
                           torch.arange(20) % 10)


def _trained_cache(root):
    """A classifier cache trained once under `root` (floor 0): (spec, modalities, split, get, the cache folder), where
    `get()` asks for the classifiers again."""
    from mmbench.metrics.classifiers import cache_dir, get_classifiers

    spec = DATASETS.get("polydigits")()
    mods, split = _random_m0_split()
    cfg = EvalConfig(classifier_epochs=1, classifier_min_accuracy=0.0)

    def get():
        return get_classifiers(spec, "vanilla", split, split, cfg, root, lambda *a: None)

    get()
    return spec, mods, split, get, cache_dir(spec, "vanilla", 1, root)


def test_a_retrained_classifier_replaces_its_cached_score(tmp_path):
    # classifiers.get_classifiers: a missing <modality>.pt is trained again and its score measured anew; a score
    # left in accuracy.json belonged to the lost classifier
    import json

    from mmbench.metrics.classifiers import accuracy, cache_dir, get_classifiers

    spec = DATASETS.get("polydigits")()
    mods, split = _random_m0_split()
    directory = cache_dir(spec, "vanilla", 1, tmp_path)
    directory.mkdir(parents=True)
    (directory / "accuracy.json").write_text(json.dumps({"m0": 0.123456}))  # stale: no m0.pt next to it
    clfs, accs = get_classifiers(spec, "vanilla", split, split, EvalConfig(classifier_epochs=1), tmp_path,
                                 lambda *a: None, check=False)
    measured = accuracy(clfs["m0"], split, "m0", torch.device("cpu"))
    assert accs == {"m0": measured} and measured != 0.123456
    assert json.loads((directory / "accuracy.json").read_text()) == {"m0": measured}


def test_two_processes_needing_the_same_classifiers_train_them_once(tmp_path, monkeypatch, capsys):
    # classifiers.get_classifiers: two `mmbench run` at once (or Slurm jobs starting together) each trained the same
    # coherence classifiers; the second now waits on the cache folder's lock, then loads what the first trained
    import threading
    import time

    import mmbench.metrics.classifiers as clsm
    from mmbench import files

    spec = DATASETS.get("polydigits")()
    mods, split = _random_m0_split()
    real, trained, started = clsm.train_one, [], threading.Event()

    def slow(*a, **k):
        trained.append(a[3])
        started.set()
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(clsm, "train_one", slow)

    def get():
        return clsm.get_classifiers(spec, "vanilla", split, split, EvalConfig(classifier_epochs=1), tmp_path,
                                    lambda *a: None, check=False)

    found = []
    first = threading.Thread(target=lambda: found.append(get()))
    first.start()
    assert started.wait(60)
    clfs, accs = get()
    first.join()
    assert trained == ["m0"] and accs == found[0][1]
    assert all(torch.equal(v, found[0][0]["m0"].state_dict()[k]) for k, v in clfs["m0"].state_dict().items())
    directory = clsm.cache_dir(spec, "vanilla", 1, tmp_path)
    assert f"waiting for another mmbench process filling {directory}" in capsys.readouterr().err
    # a read-only cache with every classifier trained and scored (a shared copy) is read without taking the lock
    monkeypatch.setattr(files, "folder_lock", lambda *a, **k: pytest.fail("locked a read-only cache"))
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != directory)
    assert get()[1] == accs
    monkeypatch.undo()
    # a colleague's lock file, not writable by this user, in a cache folder it may write: read without the lock too
    monkeypatch.setattr(files, "folder_lock", lambda *a, **k: pytest.fail("locked a colleague's lock file"))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != directory / ".mmbench.lock")
    assert get()[1] == accs
    monkeypatch.undo()
    # a process killed outright while writing a classifier left its temporary file: removed under the lock, named
    half, recent = directory / ".m0.pt.k1ll3d_x", directory / ".m1.pt.wr1t1ng_"
    for p, age in ((half, 3600), (recent, 60)):  # a writer on another node, its lock unseen here: kept 10 minutes
        p.write_bytes(b"PK half a classifier")
        os.utime(p, (time.time() - age, time.time() - age))
    capsys.readouterr()
    assert get()[1] == accs and not half.exists() and recent.exists()
    assert f"note: removed {half}: a write that a process killed outright left unfinished" in capsys.readouterr().err


def test_coherence_scores_against_the_test_tuples_labels():
    """Conditional coherence compares x̂_m's class with the label of the test tuple it was generated from (MoPoE §4):
    a copying model scores 1 on ctx.test even when the train split (and the full test split) hold other labels."""
    torch.manual_seed(0)
    y = torch.as_tensor(np.random.default_rng(0).integers(0, 10, 300))
    onehot = torch.nn.functional.one_hot(y, 10).float()
    test = DataSplit(MODS, {m: onehot for m in NAMES}, y)
    other = DataSplit(MODS, {m: onehot for m in NAMES}, (y + 1) % 10)  # every label wrong
    ctx = EvalContext(model=Copier(), spec=DATASETS.get("polydigits")(), variant="vanilla", train=other, test=test,
                      test_full=other, cfg=EvalConfig(joint_samples=100, batch_size=128), device=torch.device("cpu"))
    ctx._classifiers = {m: torch.nn.Identity() for m in NAMES}
    out = coherence(ctx)
    assert all(out[f"coherence/{k}"] == 1.0 for k in ("m0->m1", "m1+m2->m0", "m0+m1+m2->m2"))


@pytest.mark.parametrize("damage", ["nan", "above_one", "bool", "folder", "replaced_pt"])
def test_a_damaged_score_or_a_replaced_classifier_is_measured_again(tmp_path, damage, capsys):
    # classifiers.get_classifiers: a NaN score passed every `score < floor` check; a folder for accuracy.json was a
    # traceback; a <modality>.pt replaced after its score was measured (an untrained one here) kept the old score
    import json

    from mmbench.metrics.classifiers import accuracy, build

    spec, mods, split, get, directory = _trained_cache(tmp_path)
    acc = directory / "accuracy.json"
    if damage == "folder":
        acc.unlink()
        acc.mkdir()
    elif damage == "replaced_pt":
        torch.manual_seed(7)
        torch.save(build(spec, mods[0], "vanilla").state_dict(), directory / "m0.pt")
    else:
        acc.write_text(json.dumps({"m0": {"nan": float("nan"), "above_one": 7.0, "bool": True}[damage]}))
    capsys.readouterr()
    clfs, accs = get()
    assert accs == {"m0": accuracy(clfs["m0"], split, "m0", torch.device("cpu"))}
    assert "measuring the classifier" in capsys.readouterr().err


@pytest.mark.parametrize("blocker", ["classifiers_file", "cache_file", "dangling_link"])
def test_a_file_where_the_classifier_cache_belongs_is_named_before_any_training(tmp_path, blocker, monkeypatch):
    # classifiers.get_classifiers (metrics/cache.cache_folder): a file at <data_root>/classifiers was an OS error
    # ("File exists" or "Not a directory") once the first classifier had been trained
    import mmbench.metrics.classifiers as clsm
    from mmbench.errors import MMBenchError

    spec = DATASETS.get("polydigits")()
    mods = [Modality("m0", (3, 28, 28), "image")]
    split = DataSplit(mods, {"m0": torch.zeros(20, 3, 28, 28, dtype=torch.uint8)}, torch.arange(20) % 10)
    directory = clsm.cache_dir(spec, "vanilla", 1, tmp_path)
    blocked = directory.parent if blocker == "classifiers_file" else directory
    blocked.parent.mkdir(parents=True, exist_ok=True)
    if blocker == "dangling_link":
        blocked.symlink_to(tmp_path / "nowhere")
    else:
        blocked.write_text("not a folder")
    monkeypatch.setattr(clsm, "train_one", lambda *a, **k: pytest.fail("trained before the cache was checked"))
    kind = "a link to nowhere" if blocker == "dangling_link" else "a file"
    message = (f"{blocked} is {kind} where mmbench keeps the coherence classifiers' cache (in the folder "
               f"{directory}); move it away, and run again")
    with pytest.raises(MMBenchError, match=f"^{re.escape(message)}$"):
        clsm.get_classifiers(spec, "vanilla", split, split, EvalConfig(classifier_epochs=1), tmp_path,
                             lambda *a: None, check=False)


def test_mmbench_cache_moves_the_caches_and_a_read_only_one_is_named_before_any_training(tmp_path, monkeypatch):
    # metrics/cache.cache_root and writable_folder: with the data root read-only (a shared cluster copy), the first
    # classifier was trained and then its write failed; MMBENCH_CACHE now puts the caches elsewhere, and an
    # unwritable cache folder is named, with that fix, before the training
    import mmbench.metrics.cache as cachem
    import mmbench.metrics.classifiers as clsm
    from mmbench.errors import MMBenchError
    from mmbench.metrics import authors_classifiers, fid

    spec = DATASETS.get("polydigits")()
    mods = [Modality("m0", (3, 28, 28), "image")]
    split = DataSplit(mods, {"m0": torch.zeros(20, 3, 28, 28, dtype=torch.uint8)}, torch.arange(20) % 10)
    data, cache = tmp_path / "data", tmp_path / "cache"
    assert clsm.cache_dir(spec, "vanilla", 1, data).parent == data / "classifiers"
    monkeypatch.setenv("MMBENCH_CACHE", str(cache))
    directory = clsm.cache_dir(spec, "vanilla", 1, data)
    assert directory.parent == cache / "classifiers"
    assert authors_classifiers.cache_dir(spec, "vanilla", data).parent == cache / "classifiers-authors"
    assert cachem.cache_root(data) == cache and fid.cache_root is cachem.cache_root
    monkeypatch.setattr(cachem.os, "access", lambda path, mode: Path(path) != tmp_path)  # tmp_path read-only
    monkeypatch.setattr(clsm, "train_one", lambda *a, **k: pytest.fail("trained before the cache was checked"))
    message = (f"{tmp_path} is not writable, and mmbench keeps the coherence classifiers' cache in {directory} (a "
               f"read-only data root?); set MMBENCH_CACHE to a writable folder for mmbench's caches, or make it "
               f"writable")
    with pytest.raises(MMBenchError, match=f"^{re.escape(message)}$"):
        clsm.get_classifiers(spec, "vanilla", split, split, EvalConfig(classifier_epochs=1), data, lambda *a: None,
                             check=False)
    # a cached classifier whose score was lost: named before it is measured, not at accuracy.json's write after it
    directory.mkdir(parents=True)
    torch.save(clsm.build(spec, mods[0], "vanilla").state_dict(), directory / "m0.pt")
    monkeypatch.setattr(cachem.os, "access", lambda path, mode: Path(path) != directory)  # the cache read-only
    monkeypatch.setattr(clsm, "accuracy", lambda *a, **k: pytest.fail("measured before the cache was checked"))
    with pytest.raises(MMBenchError, match=f"^{re.escape(str(directory))} is not writable"):
        clsm.get_classifiers(spec, "vanilla", split, split, EvalConfig(classifier_epochs=1), data, lambda *a: None,
                             check=False)


def test_cached_scores_are_trusted_only_with_this_caches_digest_record(tmp_path, capsys):
    # classifiers._cached_digests: a second evaluation reads the scores back without measuring again (sha256.json
    # written beside accuracy.json); a sha256.json copied in from another cache directory is set aside and measured again
    import hashlib
    import json

    spec, mods, split, get, directory = _trained_cache(tmp_path)
    capsys.readouterr()
    get()
    assert "note:" not in capsys.readouterr().err
    sums = directory / "sha256.json"
    record = json.loads(sums.read_text())
    assert record == {"cache": directory.name,
                      "sha256": {"m0": hashlib.sha256((directory / "m0.pt").read_bytes()).hexdigest()}}
    sums.write_text(json.dumps({**record, "cache": "polydigits-vanilla-0123456789ab-e1"}))
    get()
    assert "is not the digest record of this cache" in capsys.readouterr().err
    assert (directory / "sha256.json.corrupt").exists() and json.loads(sums.read_text()) == record


def test_set_aside_replaces_an_earlier_set_aside_file_or_folder(tmp_path, capsys):
    # cache.set_aside: os.replace cannot put a file over a folder or a folder over a file; the earlier copy goes
    from mmbench.metrics.cache import set_aside

    path, aside = tmp_path / "accuracy.json", tmp_path / "accuracy.json.corrupt"
    aside.mkdir()  # a folder set aside before
    (aside / "x").write_text("x")
    path.write_text("not json")
    set_aside(path, "is not JSON", "measuring the classifiers again")
    assert aside.read_text() == "not json" and not path.exists()
    path.mkdir()  # now a folder in its place, with a file set aside before
    set_aside(path, "cannot be read", "measuring the classifiers again")
    assert aside.is_dir() and not path.exists()
    assert capsys.readouterr().err.count("moved it to accuracy.json.corrupt") == 2
    # another process that read the same damaged file moved it first (a race outside the cache's lock): nothing to do
    set_aside(path, "is not JSON", "measuring the classifiers again")
    assert aside.is_dir() and capsys.readouterr().err == ""


def test_classifiers_trained_in_an_evaluation_learn_the_whole_training_split(tmp_path, data_root, monkeypatch):
    """The classifiers' cache key has no train.max_train: an evaluation of a run trained on 64 tuples trained them on
    those 64 (`mmbench train` + `evaluate` on a cold cache), and every later run of any size read them (coherence/joint
    1.0 against 0.03 for one run, depending on which was evaluated first). They learn the whole split now, as
    `mmbench run` trains them beforehand; the whole split is loaded only when one is not cached."""
    import mmbench.metrics.classifiers as clsm
    from mmbench.config import build_run_config
    from mmbench.data.base import load_split
    from mmbench.evaluate import eval_context
    from mmbench.results import Run

    monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path / "cache"))
    seen = []

    def train_one(spec, variant, split, name, epochs, device, progress):
        seen.append(len(split))
        return clsm.build(spec, next(m for m in split.modalities if m.name == name), variant)

    monkeypatch.setattr(clsm, "train_one", train_one)
    monkeypatch.setattr(clsm, "accuracy", lambda *a, **k: 1.0)
    cfg = build_run_config({"dataset": "polydigits", "method": {"name": "mopoe", "latent_dim": 8},
                            "train": {"max_train": 64}, "eval": {"classifier_epochs": 1, "classifier_min_accuracy": 0}})
    ctx = eval_context(Run(cfg, tmp_path / "runs"), None, torch.device("cpu"), data_root)
    whole = len(load_split(DATASETS.get("polydigits")(), "vanilla", "train", data_root))
    assert len(ctx.train) == 64 < whole
    ctx.classifiers()
    assert seen == [whole] * len(ctx.train.modalities)
    loads = []
    monkeypatch.setattr(ctx, "classifier_train", lambda: loads.append(1))
    ctx._classifiers = None
    ctx.classifiers()  # all cached: the whole split is not loaded again
    assert loads == [] and len(seen) == len(ctx.train.modalities)


def test_mmbench_run_trains_the_classifiers_of_every_metric_that_scores_with_them(data_root, monkeypatch):
    """Before dispatching, `mmbench run` trains each classifier cache once: for coherence_ap too (CelebA's were left to
    the workers), and for a dataset whose first config scores no coherence (it was skipped as already seen)."""
    import mmbench.metrics.classifiers as clsm
    from mmbench.cli import _prepare_for
    from mmbench.config import build_run_config

    calls = []
    monkeypatch.setattr(clsm, "get_classifiers", lambda spec, variant, *a, **k: calls.append(variant) or ({}, {}))

    def cfg(metrics, dataset="polydigits"):
        return build_run_config({"dataset": dataset, "method": {"name": "mopoe"},
                                 "eval": {"metrics": metrics, "classifier_epochs": 1}})

    _prepare_for([cfg(["loglik"]), cfg(["coherence"]), cfg(["coherence", "loglik"])], data_root)
    assert calls == ["vanilla"]  # once per cache, after a config without coherence
    monkeypatch.setattr("mmbench.data.base.read_manifest", lambda directory: {"prepared": True})  # CelebA, as if
    monkeypatch.setattr("mmbench.data.base.load_split", lambda *a, **k: None)
    _prepare_for([cfg(["coherence_ap"], "celeba")], data_root)
    assert calls[1:] == [DATASETS.get("celeba")().check_variant(None)]
