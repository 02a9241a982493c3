"""Coherence on known answers: a model that copies its input scores 1, a random one scores chance."""
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


def test_translated_polymnist_is_judged_by_the_resnet_classifier(tmp_path):
    from mmbench.metrics.classifiers import build, cache_dir

    spec = DATASETS.get("polymnist")()
    assert spec.classifier_for("vanilla") == "polymnist_clf"
    assert spec.classifier_for("translated") == "polymnist_resnet_clf"  # the MM-VAMP translated PolyMNIST classifier is a ResNet (mmvmvae)
    assert cache_dir(spec, "translated", 10, tmp_path).name.endswith("-e10-polymnist_resnet_clf")
    clf = build(spec, Modality("m0", (3, 28, 28)), "translated")
    assert clf(torch.rand(2, 3, 28, 28)).shape == (2, 10)
