"""FID: the Fréchet distance against closed forms and pytorch-fid, and the whole pipeline with weights made here.

The real Inception weights cannot be downloaded in the tests: a randomly initialised FID-Inception state
dict is saved to a temporary file and its sha256 passed in, so every check of the real path runs.
"""
import math
import re

import numpy as np
import pytest
import torch
from pytorch_fid import inception as pfid
from pytorch_fid.fid_score import calculate_frechet_distance
from torch import nn

from mmbench.config import EvalConfig
from mmbench.data.base import load_split
from mmbench.data.download import file_digest
from mmbench.errors import MMBenchError
from mmbench.methods.base import MethodConfig
from mmbench.metrics import fid as fidm
from mmbench.metrics.context import EvalContext
from mmbench.registry import DATASETS, METHODS


@pytest.fixture
def their_distance(monkeypatch):
    """pytorch-fid 0.3.0's `calculate_frechet_distance`, its formula as it is. It calls `scipy.linalg.sqrtm(...,
    disp=False)`, which SciPy 1.18 removed (a TypeError there); where it is gone, its sqrtm is given that signature
    back: the square root, and an error estimate pytorch-fid does not read."""
    import inspect

    from pytorch_fid import fid_score
    from scipy import linalg

    if "disp" not in inspect.signature(linalg.sqrtm).parameters:
        monkeypatch.setattr(fid_score, "linalg", type("linalg", (), {"sqrtm": staticmethod(
            lambda a, disp=True: (linalg.sqrtm(a), None))}))
    return calculate_frechet_distance


def random_spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()  # commuting covariances
    assert fidm.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected.item(), rel=1e-10)
    assert fidm.frechet_distance(mu1, torch.diag(a), mu1, torch.diag(a)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_matches_pytorch_fid_sqrtm_formula(their_distance):
    s1, s2 = random_spd(30, 1), random_spd(30, 2)
    mu1, mu2 = torch.linspace(0, 1, 30, dtype=torch.float64), torch.zeros(30, dtype=torch.float64)
    ours = fidm.frechet_distance(mu1, s1, mu2, s2)
    theirs = their_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
    assert ours == pytest.approx(theirs, rel=1e-8)


@pytest.mark.parametrize("n", [5, 400])  # fewer and more samples than feature dims
def test_reference_distance_from_features_equals_distance_of_their_statistics(n, their_distance):
    d = 40
    g = torch.Generator().manual_seed(n)
    real = torch.randn(300, d, generator=g) @ torch.randn(d, d, generator=g) / d
    fake = torch.randn(n, d, generator=g) * 0.5 + 0.3
    mu1, s1 = fidm.feature_stats(real)
    mu2, s2 = fidm.feature_stats(fake)
    assert np.allclose(s2.numpy(), np.cov(fake.double().numpy(), rowvar=False))
    expected = their_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
    assert fidm.Reference(mu1, s1).distance(fake) == pytest.approx(expected, rel=1e-6)
    assert fidm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_fid_of_two_gaussian_samples_converges_to_the_closed_form():
    d, n = 4, 40000
    s1, s2 = random_spd(d, 3), random_spd(d, 4)
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.5, dtype=torch.float64)
    # Closed form via the eigenvalues of S1 S2 (independent of both implementations' square roots).
    lam = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0)
    exact = (((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * lam.sqrt().sum()).item()
    g = torch.Generator().manual_seed(5)
    x1 = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    x2 = mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    ref = fidm.Reference(*fidm.feature_stats(x1))
    assert ref.distance(x2) == pytest.approx(exact, abs=0.02)


# ----- the pipeline with a generated weights file ------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random FID-Inception state dict (He-initialised so features neither vanish nor explode) and its sha256."""
    torch.manual_seed(0)
    net = fidm.build_inception()
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("fid") / fidm.FID_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path, file_digest(path, "sha256")


def test_network_equals_pytorch_fid_inception_v3(weights, monkeypatch):
    path, sha = weights
    state = torch.load(path, weights_only=True)
    monkeypatch.setattr(pfid, "load_state_dict_from_url", lambda *a, **k: state)  # their loader, our file
    theirs = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    fidm._NETWORKS.clear()
    before = torch.get_rng_state()
    ours = fidm.fid_network(str(path), "cpu", sha)
    assert torch.equal(torch.get_rng_state(), before)  # building it drew nothing from the evaluation's stream
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(x)[0].flatten(1)
        got = ours(x)
    assert got.shape == (2, 2048)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got.abs().mean() > 1e-3


def test_weights_url_is_pytorch_fids_and_the_cli_starts_without_torchvision():
    """The URL is written out in mmbench so that loading the metric registry (every CLI call, every worker and
    Slurm task) does not import torchvision and, through it, torch._dynamo (~3 s a process)."""
    import subprocess
    import sys
    assert fidm.FID_WEIGHTS_URL == pfid.FID_WEIGHTS_URL
    code = ("import sys, mmbench.cli, mmbench.train, mmbench.evaluate, mmbench.runner\n"
            "from mmbench.registry import DATASETS, METHODS, METRICS\n"
            "assert METRICS.names() and METHODS.names() and DATASETS.names()\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'pytorch_fid') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_missing_or_wrong_weights_are_refused_with_instructions(weights, tmp_path, monkeypatch):
    path, sha = weights
    with pytest.raises(MMBenchError, match="--fid-weights") as e:
        fidm.resolve_weights(str(tmp_path / "nope.pth"), sha)
    assert fidm.FID_WEIGHTS_URL in str(e.value)
    with pytest.raises(MMBenchError, match="sha256") as e:
        fidm.resolve_weights(str(path))  # the published sha256: the random file is not it
    assert fidm.FID_WEIGHTS_URL in str(e.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(MMBenchError, match="checkpoints") as e:
        fidm.resolve_weights(None, sha, download=False)
    assert fidm.FID_WEIGHTS_URL in str(e.value)
    assert fidm.resolve_weights(str(path), sha) == path


def test_weights_given_by_path_are_verified_before_loading(weights):
    """fid_network with --fid-weights PATH checks the file's sha256 (the published one by default) before it loads
    anything: a checkpoint that is not the published file never becomes the FID network."""
    path, sha = weights
    fidm._NETWORKS.clear()
    with pytest.raises(MMBenchError, match="is not the FID Inception weights file"):
        fidm.fid_network(str(path), "cpu")
    assert not fidm._NETWORKS


def test_a_state_dict_that_does_not_fit_is_refused(weights):
    """Missing or extra tensors are an error, never a partly random Inception (strict loading)."""
    path, _ = weights
    state = torch.load(path, weights_only=True)
    missing = {k: v for k, v in state.items() if not k.startswith("Mixed_7c.")}
    with pytest.raises(MMBenchError, match="do not fit pytorch-fid's InceptionV3"):
        fidm.FIDInception(missing)
    with pytest.raises(MMBenchError, match="do not fit pytorch-fid's InceptionV3"):
        fidm.FIDInception({**state, "fc.extra": torch.zeros(1)})


def test_fid_metric_end_to_end(weights, data_root):
    """Two modalities, 4 samples per FID (batches of 3 and 1): 40 Inception passes on the CPU."""
    path, sha = weights
    spec = DATASETS.get("polydigits")()
    test = load_split(spec, "vanilla", "test", data_root)
    mods = test.modalities[:2]
    test = type(test)(mods, {m.name: test.x[m.name] for m in mods}, test.labels)
    torch.manual_seed(0)
    model = METHODS.get("mopoe")(mods, MethodConfig("mopoe", latent_dim=4, beta=1.0), "polymnist_cnn").eval()
    cfg = EvalConfig(fid_samples=4, fid_batch_size=3, fid_weights=str(path), fid_subsets="all")
    ctx = EvalContext(model=model, spec=spec, variant="vanilla", train=test, test=test, test_full=test, cfg=cfg,
                      device=torch.device("cpu"), data_root=data_root)
    torch.manual_seed(1)
    out = fidm.compute_fid(ctx, weights_sha256=sha)
    a, b = (m.name for m in mods)
    # the conditional passes, batched over subsets, equal a loop over test batches and subsets (the same draws)
    net = fidm.fid_network(str(path), "cpu", sha)
    split = test.subset(4, seed=3)
    subsets = fidm.fid_subsets([a, b], "all")
    torch.manual_seed(1)
    with torch.no_grad():
        prior = {t: [] for t in (a, b)}
        for start in (0, 3):
            z = model.sample_prior(min(3, 4 - start))  # the prior part's draws come first, every target from one z
            for t in (a, b):
                prior[t].append(net(fidm.inception_input(model.decode(z, t))))
        feats = {(s, t): [] for s in subsets for t in (a, b)}
        for start, stop in ((0, 3), (3, 4)):
            x = split.batch(torch.arange(start, stop))
            for s in subsets:
                z = model.encode_subsets({k: x[k] for k in s}, [s])[0].rsample()
                for t in (a, b):
                    feats[s, t].append(net(fidm.inception_input(model.decode(z, t))))
    for (s, t), f in feats.items():
        ref = fidm.real_reference(ctx, net, split, next(m for m in mods if m.name == t), sha)
        assert out[f"fid/{'+'.join(s)}->{t}"] == pytest.approx(ref.distance(torch.cat(f)), rel=1e-4, abs=1e-3)
    # the unconditional FIDs: the quantised prior samples of each target against that target's own reference
    for t, f in prior.items():
        ref = fidm.real_reference(ctx, net, split, next(m for m in mods if m.name == t), sha)
        assert out[f"fid/prior->{t}"] == pytest.approx(ref.distance(torch.cat(f)), rel=1e-9)  # the same batches
    keys = {f"fid/prior->{a}", f"fid/prior->{b}", "fid_by_n/1"} | {
        f"fid/{s}->{t}" for s in (a, b, f"{a}+{b}") for t in (a, b)}
    assert set(out) == keys
    assert all(math.isfinite(v) and v > 0 for v in out.values())
    assert out["fid_by_n/1"] == pytest.approx((out[f"fid/{a}->{b}"] + out[f"fid/{b}->{a}"]) / 2)
    ctx.cfg = EvalConfig(fid_samples=4, fid_batch_size=3, fid_weights=str(path), fid_subsets="none")
    assert set(fidm.compute_fid(ctx, weights_sha256=sha)) == {f"fid/prior->{a}", f"fid/prior->{b}"}
    cached = sorted((data_root / "fid_stats").glob(f"polydigits-vanilla-test-{a}-n4-*-w{sha[:12]}.npz"))
    assert len(cached) == 1
    # The cached reference is what a recomputation gives; real images against themselves score 0.
    net = fidm.fid_network(str(path), "cpu", sha)
    split = test.subset(4, seed=3)
    ref = fidm.real_reference(ctx, net, split, mods[0], sha)
    with torch.no_grad():
        real = net(fidm.inception_input(split.batch(torch.arange(4))[a]))
    mu, sigma = fidm.feature_stats(real)
    assert torch.allclose(ref.mu, mu, atol=1e-6) and torch.allclose(ref.sigma, sigma, atol=1e-6)
    assert abs(ref.distance(real)) < 1e-6


def test_subset_choices():
    names = ["a", "b", "c"]
    assert len(fidm.fid_subsets(names, "all")) == 7
    assert fidm.fid_subsets(names, "unimodal") == [("a",), ("b",), ("c",)]
    assert fidm.fid_subsets(names, "unimodal_and_full")[-1] == ("a", "b", "c")
    assert fidm.fid_subsets(names, "none") == []


def test_fid_weights_location_is_not_part_of_the_run_id():
    from mmbench.config import build_run_config, parse_overrides
    from mmbench.registry import METRICS

    base = {"dataset": "polydigits", "method": {"name": "mopoe"}}
    plain = build_run_config(base)
    located = build_run_config({**base, **parse_overrides(['eval.fid_weights="/some where/w.pth"'])})
    assert located.eval.fid_weights == "/some where/w.pth"
    assert located.run_id() == plain.run_id()
    assert build_run_config({**base, "eval": {"fid_samples": 500}}).run_id() != plain.run_id()
    assert {"fid", "loglik", "reconstruction"} <= set(METRICS.names())


def test_default_sample_budget_is_mopoes():
    # FID is biased by the number of samples: 10,000 test tuples and prior draws (MoPoE utils/BaseFlags.py
    # num_samples_fid), every input subset
    assert (EvalConfig().fid_samples, EvalConfig().fid_subsets) == (10000, "all")


def test_inception_input_clamps_and_quantises_to_8_bits_like_a_saved_png():
    img = torch.tensor([0.31, 0.50196, -0.2, 1.3, 0.0011]).view(1, 1, 1, 5)
    x = fidm.inception_input(img)
    expected = torch.tensor([79, 128, 0, 255, 0]) / 255.0  # round(255·v) of the clamped values
    assert x.shape == (1, 3, 1, 5)
    assert torch.allclose(x[0, 0, 0], expected, atol=1e-7)
    assert (x[:, 0] == x[:, 1]).all() and (x[:, 0] == x[:, 2]).all()


def test_fid_reference_is_the_evaluated_test_tuples_not_train(data_root, monkeypatch):
    """The real statistics are those of the test tuples FID evaluates (test.subset(fid_samples, seed=3)), as the
    papers' FID against the test set; training images would give another number. Inception replaced by a fixed
    linear map (the metric's plumbing only; the network itself is checked above)."""
    spec = DATASETS.get("polydigits")()
    train, test = (load_split(spec, "vanilla", s, data_root) for s in ("train", "test"))
    proj = torch.randn(3 * 28 * 28, 5, generator=torch.Generator().manual_seed(0))
    net = lambda x: x.flatten(1) @ proj  # noqa: E731 -- 3x28x28 PolyDigits images to 5 features
    monkeypatch.setattr(fidm, "fid_network", lambda path, device, sha=None: net)
    torch.manual_seed(0)
    model = METHODS.get("mopoe")(test.modalities, MethodConfig("mopoe", latent_dim=4, beta=1.0), "polymnist_cnn").eval()
    n = 24
    cfg = EvalConfig(fid_samples=n, fid_batch_size=n, fid_subsets="none")
    ctx = EvalContext(model=model, spec=spec, variant="vanilla", train=train, test=test, test_full=test, cfg=cfg,
                      device=torch.device("cpu"), data_root=data_root)
    torch.manual_seed(1)
    out = fidm.compute_fid(ctx, weights_sha256="0" * 64)
    torch.manual_seed(1)
    with torch.no_grad():
        z = model.sample_prior(n)
        for m in test.modalities:
            generated = net(fidm.inception_input(model.decode(z, m.name)))
            dist = {}
            for name, split in (("test", test), ("train", train)):
                real = net(fidm.inception_input(split.subset(n, seed=3).batch(torch.arange(n))[m.name]))
                dist[name] = fidm.Reference(*fidm.feature_stats(real)).distance(generated)
            assert out[f"fid/prior->{m.name}"] == pytest.approx(dist["test"], rel=1e-6)
            assert abs(dist["train"] - dist["test"]) > 1e-3 * dist["test"], m.name  # the check can tell them apart


def test_fid_reference_is_the_capped_test_split_not_the_full_one(data_root, monkeypatch):
    """compute_fid draws its tuples from ctx.test (capped to eval.test_samples), as every metric, not from test_full
    (which only the classifiers' accuracy reads). Inception replaced by a fixed linear map, as above."""
    spec = DATASETS.get("polydigits")()
    full = load_split(spec, "vanilla", "test", data_root)
    test = full.subset(40, seed=7)  # eval.test_samples = 40
    proj = torch.randn(3 * 28 * 28, 5, generator=torch.Generator().manual_seed(0))
    net = lambda x: x.flatten(1) @ proj  # noqa: E731
    monkeypatch.setattr(fidm, "fid_network", lambda path, device, sha=None: net)
    torch.manual_seed(0)
    model = METHODS.get("mopoe")(test.modalities, MethodConfig("mopoe", latent_dim=4, beta=1.0), "polymnist_cnn").eval()
    n, m = 24, test.modalities[0]
    ctx = EvalContext(model=model, spec=spec, variant="vanilla", train=full, test=test, test_full=full,
                      cfg=EvalConfig(fid_samples=n, fid_batch_size=n, fid_subsets="none"), device=torch.device("cpu"),
                      data_root=data_root)
    torch.manual_seed(1)
    out = fidm.compute_fid(ctx, weights_sha256="0" * 64)
    torch.manual_seed(1)
    with torch.no_grad():
        generated = net(fidm.inception_input(model.decode(model.sample_prior(n), m.name)))
        dist = {}
        for name, split in (("test", test), ("full", full)):
            real = net(fidm.inception_input(split.subset(n, seed=3).batch(torch.arange(n))[m.name]))
            dist[name] = fidm.Reference(*fidm.feature_stats(real)).distance(generated)
    assert out[f"fid/prior->{m.name}"] == pytest.approx(dist["test"], rel=1e-6)
    assert abs(dist["full"] - dist["test"]) > 1e-3 * dist["test"]


@pytest.mark.parametrize("damage", ["truncated", "missing_key", "wrong_shape", "nan", "folder", "mu_shape", "float32"])
def test_a_damaged_reference_statistics_cache_is_set_aside_and_computed_again(data_root, tmp_path, damage, capsys):
    # fid.real_reference read <data_root>/fid_stats/*.npz unchecked: a traceback, or a NaN FID from NaN statistics
    import gc
    import io
    import shutil
    import types
    import warnings

    spec = DATASETS.get("polydigits")()
    split = load_split(spec, "vanilla", "test", data_root).subset(6)
    root = tmp_path / "root"
    ctx = types.SimpleNamespace(data_root=root, spec=spec, variant="vanilla", device=torch.device("cpu"),
                                cfg=EvalConfig(fid_batch_size=4))
    net = lambda x: x.flatten(1)[:, :fidm.FID_DIMS]  # noqa: E731 - a stand-in for the Inception: 2048 features
    good = fidm.real_reference(ctx, net, split, split.modalities[0], "ab" * 32)
    (path,) = (root / "fid_stats").glob("*.npz")
    buf = io.BytesIO()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    else:
        mu, sigma = good.mu.numpy(), good.sigma.numpy()
        np.savez(buf, **{"missing_key": dict(mu=mu), "wrong_shape": dict(mu=mu[:3], sigma=sigma[:3, :3]),
                         "nan": dict(mu=mu * np.nan, sigma=sigma), "mu_shape": dict(mu=mu[:3], sigma=sigma),
                         "float32": dict(mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))}[damage])
        path.write_bytes(buf.getvalue())
    capsys.readouterr()
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:  # the damaged file is closed, not left to the collector
        warnings.simplefilter("always", ResourceWarning)
        again = fidm.real_reference(ctx, net, split, split.modalities[0], "ab" * 32)
        gc.collect()
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert torch.equal(again.mu, good.mu) and torch.equal(again.sigma, good.sigma)
    assert f"note: {path} is corrupt" in capsys.readouterr().err and path.with_name(path.name + ".corrupt").exists()
    shutil.rmtree(root)


def test_two_processes_needing_the_same_reference_statistics_compute_them_once(data_root, tmp_path, capsys,
                                                                                 monkeypatch):
    # fid.real_reference: workers on two GPUs (or Slurm jobs) evaluating at once each ran the Inception over the test
    # split for the same statistics; the second now waits on the file's lock, then reads what the first wrote. Each
    # file has its own lock: one on the whole folder made a process computing other statistics wait too
    import os
    import threading
    import time
    import types

    spec = DATASETS.get("polydigits")()
    split = load_split(spec, "vanilla", "test", data_root).subset(6)
    ctx = types.SimpleNamespace(data_root=tmp_path, spec=spec, variant="vanilla", device=torch.device("cpu"),
                                cfg=EvalConfig(fid_batch_size=6))
    passes, started = [], threading.Event()

    def net(x):  # a stand-in for the Inception: 2048 features, slow
        passes.append(len(x))
        started.set()
        time.sleep(0.5)
        return x.flatten(1)[:, :fidm.FID_DIMS]

    found = []
    first = threading.Thread(target=lambda: found.append(fidm.real_reference(ctx, net, split, split.modalities[0],
                                                                             "ab" * 32)))
    first.start()
    assert started.wait(60)
    second = fidm.real_reference(ctx, net, split, split.modalities[0], "ab" * 32)
    first.join()
    assert passes == [6]  # one Inception pass, the first's
    assert torch.equal(second.mu, found[0].mu.double()) and torch.equal(second.sigma, found[0].sigma.double())
    (stats,) = (tmp_path / "fid_stats").glob("*.npz")
    assert f"waiting for another mmbench process computing the FID reference statistics {stats.name} in " \
           f"{tmp_path / 'fid_stats'}" in capsys.readouterr().err
    # other statistics (another modality here; another dataset alike) have their own lock: not held up by these.
    # The first pass waits for the second to start, which it cannot while waiting for the first (one lock per folder)
    other_started, passes[:] = threading.Event(), []

    def slow(x):
        passes.append(len(x))
        started.set()
        assert other_started.wait(20), "the other statistics waited for these"
        return x.flatten(1)[:, :fidm.FID_DIMS]

    def other(x):
        other_started.set()
        return x.flatten(1)[:, :fidm.FID_DIMS]

    for p in (tmp_path / "fid_stats").glob("*.npz"):
        p.unlink()
    started.clear()
    first = threading.Thread(target=lambda: fidm.real_reference(ctx, slow, split, split.modalities[0], "ab" * 32))
    first.start()
    assert started.wait(60)
    fidm.real_reference(ctx, other, split, split.modalities[1], "ab" * 32)
    first.join()
    assert passes == [6] and len(list((tmp_path / "fid_stats").glob("*.npz"))) == 2
    assert "waiting" not in capsys.readouterr().err
    # a process killed outright while writing statistics left its temporary file: removed when they are computed
    # again, under their lock; another file's is not theirs to remove
    stats.unlink()
    half, others = (tmp_path / "fid_stats" / f".{n}.k1ll3d_x" for n in (stats.name, "other.npz"))
    for p in (half, others):
        p.write_bytes(b"PK half the statistics")
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    fidm.real_reference(ctx, net, split, split.modalities[0], "ab" * 32)
    assert not half.exists() and others.exists()
    assert f"note: removed {half}: a write that a process killed outright left unfinished" in capsys.readouterr().err
    # a colleague's lock file that this user cannot write: the statistics are computed without the lock, not refused
    from mmbench import files
    from pathlib import Path

    for p in (tmp_path / "fid_stats").glob("*.npz"):
        p.unlink()
    passes[:] = [6]
    monkeypatch.setattr(os, "access", lambda path, mode: not Path(path).name.endswith(".lock"))
    monkeypatch.setattr(files, "folder_lock", lambda *a, **k: pytest.fail("locked a colleague's lock file"))
    again = fidm.real_reference(ctx, net, split, split.modalities[0], "ab" * 32)
    assert passes == [6, 6] and torch.equal(again.mu, found[0].mu)


@pytest.mark.parametrize("blocker", ["file", "dangling_link", "file_above"])
def test_a_file_where_the_statistics_folder_belongs_is_named_before_the_features_are_computed(data_root, tmp_path,
                                                                                              blocker):
    # fid.real_reference (metrics/cache.cache_folder): a file at <data_root>/fid_stats was an OS error ("File
    # exists") after the Inception pass over the test split
    import types

    spec = DATASETS.get("polydigits")()
    split = load_split(spec, "vanilla", "test", data_root).subset(6)
    root = tmp_path / "root"
    root.mkdir()
    blocked = root if blocker == "file_above" else root / "fid_stats"
    if blocker == "file_above":
        root.rmdir()
        root.write_text("not a folder")
    elif blocker == "file":
        blocked.write_text("not a folder")
    else:
        blocked.symlink_to(tmp_path / "nowhere")
    ctx = types.SimpleNamespace(data_root=root, spec=spec, variant="vanilla", device=torch.device("cpu"),
                                cfg=EvalConfig(fid_batch_size=4))
    calls = []
    net = lambda x: calls.append(1) or x.flatten(1)[:, :fidm.FID_DIMS]  # noqa: E731
    kind = "a link to nowhere" if blocker == "dangling_link" else "a file"
    message = (f"{blocked} is {kind} where mmbench keeps FID's reference statistics (in the folder "
               f"{root / 'fid_stats'}); move it away, and run again")
    with pytest.raises(MMBenchError, match=f"^{re.escape(message)}$"):
        fidm.real_reference(ctx, net, split, split.modalities[0], "ab" * 32)
    assert calls == []


def test_a_read_only_statistics_folder_is_named_before_the_features_are_computed(data_root, tmp_path, monkeypatch):
    # fid.real_reference (metrics/cache.writable_folder): the Inception pass ran, then the write failed
    import types

    import mmbench.metrics.cache as cachem

    spec = DATASETS.get("polydigits")()
    split = load_split(spec, "vanilla", "test", data_root).subset(6)
    ctx = types.SimpleNamespace(data_root=tmp_path / "root", spec=spec, variant="vanilla", device=torch.device("cpu"),
                                cfg=EvalConfig(fid_batch_size=4))
    monkeypatch.setattr(cachem.os, "access", lambda path, mode: False)
    calls = []
    net = lambda x: calls.append(1) or x.flatten(1)[:, :fidm.FID_DIMS]  # noqa: E731
    with pytest.raises(MMBenchError, match=f"^{re.escape(str(tmp_path))} is not writable, and mmbench keeps FID's "
                                           f"reference statistics in .*; set MMBENCH_CACHE to a writable folder"):
        fidm.real_reference(ctx, net, split, split.modalities[0], "ab" * 32)
    assert calls == []
