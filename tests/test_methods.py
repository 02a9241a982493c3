"""Every method behind the one interface: shapes, batched subsets, a loss that falls on a tiny batch."""
import pytest
import torch

from mmbench.data.base import Modality
from mmbench.methods.base import Gaussian, MethodConfig, Mixture, all_subsets
from mmbench.registry import METHODS
from conftest import train_steps

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]


def make(name, latent=8):
    torch.manual_seed(0)
    return METHODS.get(name)(MODS, MethodConfig(name, latent_dim=latent, beta=1.0), "polymnist_cnn")


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(n, 3, 28, 28, generator=g) for m in MODS}


@pytest.mark.parametrize("name", ["mopoe", "mvae", "mmvae", "mopoe_eq5"])
def test_interface_shapes(name):
    model = make(name)
    x = batch()
    subsets = all_subsets(model.names)
    qs = model.encode_subsets(x, subsets)
    assert len(qs) == len(subsets)
    for q in qs:
        assert isinstance(q, (Gaussian, Mixture))
        assert q.mean.shape == (16, 8) and q.rsample().shape == (16, 8)
    z = model.sample_prior(4)
    assert model.decode(z, "m1").shape == (4, 3, 28, 28)
    # encoding a subset uses only that subset's modalities
    only = {"m1": x["m1"]}
    assert model.encode(only, ("m1",)).mean.shape == (16, 8)


@pytest.mark.parametrize("name", ["mopoe", "mvae", "mmvae", "mopoe_eq5"])
def test_loss_falls_with_finite_gradients(name):
    model = make(name)
    losses, logs = train_steps(model, batch(32), 40)
    assert set(logs) >= {"loss", "nll", "kl"}
    assert losses[-1] < 0.8 * losses[0]


def test_mopoe_subset_posterior_is_poe_with_prior_only_for_full_set():
    model = make("mopoe")
    x = batch()
    mu, logvar = model.unimodal(x, model.names)
    q01 = model.encode(x, ("m0", "m1"))
    prec = 1 / (logvar[:2].exp() + 1e-8)
    assert torch.allclose(q01.mu, (mu[:2] * prec).sum(0) / prec.sum(0), atol=1e-5)
    qall = model.encode(x, tuple(model.names))
    prec = 1 / (logvar.exp() + 1e-8)
    assert torch.allclose(qall.logvar, -torch.log(prec.sum(0) + 1), atol=1e-5)


def test_mmvae_subset_posterior_is_mixture_of_unimodals():
    model = make("mmvae")
    x = batch()
    q = model.encode(x, ("m0", "m2"))
    assert isinstance(q, Mixture)
    mu, _ = model.unimodal(x, ["m0", "m2"])
    assert torch.allclose(q.mean, mu.mean(0), atol=1e-6)


def test_mvae_always_has_prior_expert():
    model = make("mvae")
    x = batch()
    mu, logvar = model.unimodal(x, ["m1"])
    q = model.encode(x, ("m1",))
    assert torch.allclose(q.logvar, -torch.log(1 / (logvar[0].exp() + 1e-8) + 1), atol=1e-5)


def test_eq5_objective_is_the_average_of_subset_elbos():
    """Brute force: for each subset separately, its posterior's sample reconstructs all modalities."""
    model = make("mopoe_eq5")
    x = batch(4)
    torch.manual_seed(3)
    loss, _ = model.loss(x)
    torch.manual_seed(3)
    subsets = all_subsets(model.names)
    mu, logvar = model.unimodal(x, model.names)
    comps = model.poe(mu, logvar, model.names, subsets)
    eps = torch.randn_like(comps.mu)  # the same noise the loss drew (one rsample of the K×B×D posterior)
    terms = []
    for k in range(len(subsets)):
        q = comps[k]
        z = q.mu + eps[k] * (0.5 * q.logvar).exp()
        nll = sum(-model.likelihoods[m].log_prob(model.decoders[m](z), x[m]) for m in model.names)
        terms.append((nll + q.kl_standard_normal()).mean())
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
