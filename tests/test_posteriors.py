"""Gaussian algebra against independent computations: PoE, KL, mixtures, subsets."""
import itertools
import math

import numpy as np
import pytest
import torch

from mmbench.methods.base import Gaussian, Mixture, all_subsets, product_of_experts, stratified_components


def test_poe_matches_brute_force_product_of_densities():
    torch.manual_seed(0)
    mu = torch.randn(3, 1, 1) * 2
    logvar = torch.randn(3, 1, 1) * 0.5
    grid = torch.linspace(-15, 15, 200001, dtype=torch.float64)
    dx = grid[1] - grid[0]
    subsets = [(0,), (0, 1), (1, 2), (0, 1, 2)]
    for prior in (0.0, 1.0):
        mask = torch.tensor([[float(i in s) for i in range(3)] for s in subsets])
        q = product_of_experts(mu, logvar, mask, torch.full((len(subsets),), prior))
        for k, s in enumerate(subsets):
            logp = torch.zeros_like(grid)
            for i in s:
                logp += Gaussian(mu[i].double().view(1), logvar[i].double().view(1)).log_prob(grid[:, None])
            if prior:
                logp += Gaussian(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)).log_prob(grid[:, None])
            p = torch.exp(logp - logp.max())
            p = p / (p.sum() * dx)
            mean = (grid * p).sum() * dx
            var = ((grid - mean) ** 2 * p).sum() * dx
            assert q.mu[k].item() == pytest.approx(mean.item(), abs=1e-4)
            assert q.logvar[k].exp().item() == pytest.approx(var.item(), rel=1e-3)


def test_batched_poe_equals_one_subset_at_a_time():
    torch.manual_seed(1)
    mu, logvar = torch.randn(4, 7, 3), torch.randn(4, 7, 3)
    subsets = all_subsets(["a", "b", "c", "d"])
    mask = torch.tensor([[float(n in s) for n in "abcd"] for s in subsets])
    prior = torch.tensor([float(len(s) == 4) for s in subsets])
    batched = product_of_experts(mu, logvar, mask, prior)
    for k, s in enumerate(subsets):
        idx = ["abcd".index(n) for n in s]
        prec = (1 / (logvar[idx].exp() + 1e-8)).sum(0) + prior[k]
        m = (mu[idx] / (logvar[idx].exp() + 1e-8)).sum(0) / prec
        assert torch.allclose(batched.mu[k], m, atol=1e-5)
        assert torch.allclose(batched.logvar[k], -prec.log(), atol=1e-5)


def test_poe_gradients_stay_finite_for_extreme_log_variances():
    # Regression: 1 / (exp(logvar) + eps) gave NaN gradients once an expert's logvar passed 88 (seen when
    # MVAE's unimodal experts switched off on PolyMNIST at latent 512, lr 1e-3, on a GPU).
    logvar = torch.tensor([[[100.0, -100.0, 0.0]], [[95.0, 0.5, -30.0]]], requires_grad=True)
    mu = torch.tensor([[[1.0, -2.0, 0.3]], [[0.5, 0.1, 4.0]]], requires_grad=True)
    q = product_of_experts(mu, logvar, torch.ones(1, 2), torch.ones(1))
    (q.mu.sum() + q.logvar.sum() + q.kl_standard_normal().sum()).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()
    assert torch.isfinite(q.mu).all() and torch.isfinite(q.logvar).all()
    # An expert with huge variance contributes nothing; one with tiny variance is capped at precision 1e8.
    assert q.mu[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6) and q.logvar[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert q.logvar[0, 0, 1].item() == pytest.approx(-math.log(1e8 + 1 / (math.exp(0.5) + 1e-8) + 1), rel=1e-6)


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(2)
    q = Gaussian(torch.tensor([[0.7, -1.2]]), torch.tensor([[-0.5, 0.4]]))
    z = q.mu + torch.randn(400_000, 2) * (0.5 * q.logvar).exp()
    prior = Gaussian(torch.zeros(2), torch.zeros(2))
    mc = (q.log_prob(z) - prior.log_prob(z)).mean()
    assert q.kl_standard_normal().item() == pytest.approx(mc.item(), abs=0.01)


def test_gaussian_log_prob_matches_torch():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    z = torch.randn(5, 3)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert torch.allclose(Gaussian(mu, logvar).log_prob(z), ref, atol=1e-5)


def test_mixture_density_and_sampling():
    torch.manual_seed(3)
    comps = Gaussian(torch.tensor([[[-3.0]], [[3.0]]]), torch.zeros(2, 1, 1))
    mix = Mixture(comps)
    z = torch.tensor([[0.5]])
    manual = math.log(0.5 * math.exp(-0.5 * 3.5 ** 2) / math.sqrt(2 * math.pi)
                      + 0.5 * math.exp(-0.5 * 2.5 ** 2) / math.sqrt(2 * math.pi))
    assert mix.log_prob(z).item() == pytest.approx(manual, abs=1e-5)
    big = Mixture(Gaussian(comps.mu.expand(2, 20000, 1), comps.logvar.expand(2, 20000, 1)))
    s = big.rsample()
    assert abs((s > 0).float().mean().item() - 0.5) < 0.02  # both components drawn equally often
    assert torch.allclose(big.mean, torch.zeros(20000, 1))


def test_subset_enumeration():
    names = ["m0", "m1", "m2", "m3", "m4"]
    subs = all_subsets(names)
    assert len(subs) == 31 and len(set(subs)) == 31
    assert subs[:5] == [(n,) for n in names] and subs[-1] == tuple(names)
    assert [len(s) for s in subs] == sorted(len(s) for s in subs)
    for s in subs:
        assert list(s) == sorted(s, key=names.index)
    assert set(subs) == {c for k in range(1, 6) for c in itertools.combinations(names, k)}


def test_stratified_components_blocks():
    k = stratified_components(256, 31)
    counts = np.bincount(k.numpy(), minlength=31)
    assert counts[:30].tolist() == [8] * 30 and counts[30] == 16  # MoPoE utils/utils.py mixture_component_selection
    assert (np.diff(k.numpy()) >= 0).all()
