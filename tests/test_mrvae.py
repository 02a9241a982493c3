"""mrVAE: interface, training signal, the relaxations and priors, and one epoch through the real pipeline."""
import itertools
import math

import pytest
import torch
from scipy import stats

from mmbench.config import build_run_config
from mmbench.data.base import Modality
from mmbench.errors import MMBenchError
from mmbench.evaluate import execute
from mmbench.methods.base import LOG_2PI, MethodConfig, all_subsets
from mmbench.methods.mrvae import (RelationalPosterior, gumbel_softmax, log_hypergeom, log_mvhg, neuralsort,
                                   select, sort_matrix)
from mmbench.registry import METHODS
from mmbench.results import Run
from conftest import train_steps

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
D = 6


def make(**options):
    torch.manual_seed(0)
    return METHODS.get("mrvae")(MODS, MethodConfig("mrvae", latent_dim=D, beta=1.0, options=options), "polymnist_cnn")


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(n, 3, 28, 28, generator=g) for m in MODS}


@pytest.mark.parametrize("training", [False, True])
def test_interface_shapes(training):
    model = make().train(training)
    x = batch()
    subsets = all_subsets(model.names)
    with torch.no_grad():
        qs = model.encode_subsets(x, subsets)
        assert len(qs) == len(subsets)
        for q in qs:
            assert isinstance(q, RelationalPosterior)
            assert q.mean.shape == (16, 3 * D) and q.rsample().shape == (16, 3 * D)
            assert q.log_prob(q.rsample()).shape == (16,) and torch.isfinite(q.log_prob(q.mean)).all()
        z = model.sample_prior(4)
        assert z.shape == (4, 3 * D)
        for m in model.names:
            assert model.decode(z, m).shape == (4, 3, 28, 28)
        # encoding a subset needs only that subset's modalities
        assert model.encode({"m1": x["m1"]}, ("m1",)).mean.shape == (16, 3 * D)


def test_loss_falls_with_finite_gradients():
    model = make()
    # every network, incl. those of Eqs. 33-38, gets a gradient
    losses, logs = train_steps(model, batch(), 30, require_grad=True)
    assert set(logs) >= {"loss", "nll", "kl", "kl_n", "kl_y"}
    assert losses[-1] < 0.8 * losses[0]
    assert int(model.step) == 30


@pytest.mark.parametrize("avail", [(True, True, True), (True, False, False), (False, True, True)])
def test_sizes_sum_to_latent_size_and_partition_factors(avail):
    model = make()
    mu, logvar = model.unimodal(batch(), model.names)
    rel = model.relate(mu, logvar, list(avail), sample=True, with_kl=True)  # relaxed (straight-through) sizes
    n = rel.sizes()
    assert torch.equal(n, n.round()) and (n >= 0).all() and (n <= D).all()
    for j in range(3):
        shared = sum(n[:, a] for a, A in enumerate(model.shared) if j in A)
        assert torch.equal(shared + rel.free[j].sum(-1), torch.full((16,), float(D)))  # Σ_{A∋j} n_A = D_j
        # every factor of z_j belongs to exactly one subspace
        owner = rel.free[j] + sum(torch.einsum("br,brd->bd", act, Ys[j]) for A, act, Ys, _ in rel.blocks if j in A)
        assert torch.equal(owner, torch.ones(16, D))


def test_size_prior_is_the_product_of_the_modalities_hypergeometrics():
    model = make()
    mu, logvar = model.unimodal(batch(), model.names)
    with torch.no_grad():
        rel = model.relate(mu, logvar, [True] * 3, sample=True)
    n = rel.sizes()
    expected = 0.0
    for j in range(3):  # Def. 1: n_j = sizes of j's shared subspaces and its private one, D draws, |S_A| = D each
        n_j = torch.stack([n[:, a] for a, A in enumerate(model.shared) if j in A] + [rel.free[j].sum(-1)], -1)
        expected = expected + log_mvhg(n_j, torch.full((n_j.shape[1],), D))
    assert torch.allclose(rel.log_q_n.double(), expected, atol=1e-4)


def test_selection_kl_is_plackett_luce_against_uniform():
    torch.manual_seed(0)
    w, free = torch.rand(3, 6) * 3, torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 0.0]])
    act = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # n = 2, 1, 3
    Y, kl = select(w, free, act, 1.0, sample=False, with_kl=True)
    for b in range(3):
        left, expected = [i for i in range(6) if free[b, i]], 0.0
        for r in range(int(act[b].sum())):
            pick = int(Y[b, r].argmax())
            assert pick == max(left, key=lambda i: w[b, i])  # no noise: the best free factor
            expected += w[b, pick] - torch.logsumexp(w[b, left], 0) + math.log(len(left))
            left.remove(pick)
        assert torch.allclose(kl[b], torch.as_tensor(expected), atol=1e-5)


def test_uncovered_subspaces_and_private_factors_come_from_the_prior():
    model = make().eval()
    mu, logvar = model.unimodal(batch(), model.names)
    with torch.no_grad():
        rel = model.relate(mu, logvar, [True, False, False], sample=False)
    for A, _, _, q in rel.blocks:
        prior = torch.equal(q.mu, torch.zeros_like(q.mu)) and torch.equal(q.logvar, torch.zeros_like(q.logvar))
        assert prior == (0 not in A)
    assert torch.equal(rel.single.mu[1:], torch.zeros(2, 16, D))
    assert torch.equal(rel.single.logvar[1:], torch.zeros(2, 16, D))
    assert torch.equal(rel.single.mu[0], mu[0])


def test_eval_relation_is_deterministic_and_log_prob_counts_each_slot_once():
    model = make().eval()
    x = batch()
    with torch.no_grad():
        a, b = model.encode(x, ("m0", "m2")), model.encode(x, ("m0", "m2"))
    assert torch.equal(a.mean, b.mean)
    # a slot shared by k modalities appears k times in z with one value, and counts once in log_prob
    z = a.rsample()
    for r in range(16):
        for s in a.idx[r].unique():
            assert z[r, a.idx[r] == s].unique().numel() == 1
        assert a.primary[r].sum() == a.idx[r].unique().numel()
    expected = (-0.5 * (LOG_2PI + a.logvar) * a.primary).sum(-1)
    assert torch.allclose(a.log_prob(a.mean), expected, atol=1e-5)


def test_neuralsort_rows_are_relaxed_permutations_that_harden():
    torch.manual_seed(0)
    s = torch.stack([torch.randperm(7) for _ in range(4)]).float() * 0.2 + 0.05 * torch.rand(4, 7)  # gaps >= 0.15
    hard = sort_matrix(s, torch.ones_like(s, dtype=torch.bool), 7)
    assert torch.equal(hard.argmax(-1), s.argsort(-1, descending=True))
    assert torch.equal(hard.sum(-1), torch.ones(4, 7)) and torch.equal(hard.sum(-2), torch.ones(4, 7))
    errors = []
    for tau in (10.0, 1.0, 0.1, 0.01):
        P = neuralsort(s, tau)
        assert P.shape == (4, 7, 7) and (P >= 0).all() and (P <= 1).all()
        assert torch.allclose(P.sum(-1), torch.ones(4, 7), atol=1e-5)
        errors.append((P - hard).abs().max().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3
    # with a mask, only the masked-in items are sorted and the others get no weight
    mask = torch.rand(4, 7) > 0.4
    mask[:, 0] = True
    P = neuralsort(s, 0.01, mask, rows=3)
    hard = sort_matrix(s, mask, 3)
    assert (P * ~mask[:, None, :]).max() < 1e-6
    exists = hard.sum(-1) > 0
    assert torch.equal(P.argmax(-1)[exists], hard.argmax(-1)[exists])


def test_hypergeometric_priors_match_scipy_and_sum_to_one():
    k = torch.arange(0, 6)
    lp = log_hypergeom(k, 12, 5, 6)
    assert torch.allclose(lp, torch.tensor(stats.hypergeom.logpmf(k.numpy(), 12, 5, 6)), atol=1e-10)
    assert math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-10)
    assert log_hypergeom(7, 12, 5, 6).item() == -math.inf
    sizes, draws = [3, 2, 4], 4
    comps = [c for c in itertools.product(*(range(s + 1) for s in sizes)) if sum(c) == draws]
    lp = log_mvhg(torch.tensor(comps), torch.tensor(sizes))
    ref = [stats.multivariate_hypergeom.logpmf(c, sizes, draws) for c in comps]
    assert torch.allclose(lp, torch.tensor(ref, dtype=torch.float64), atol=1e-10)
    assert math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-10)
    # the sequential form the model uses telescopes to the multivariate pmf (Def. 1)
    for c in comps:
        pop, left, seq = sum(sizes), draws, 0.0
        for size, n in zip(sizes, c):
            seq += log_hypergeom(n, pop, size, left).item()
            pop, left = pop - size, left - n
        assert math.isclose(seq, log_mvhg(torch.tensor(c), torch.tensor(sizes)).item(), abs_tol=1e-9)


def test_gumbel_softmax_samples_lie_on_the_simplex_with_the_right_frequencies():
    torch.manual_seed(0)
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]]).repeat(4000, 1).requires_grad_()
    soft = gumbel_softmax(logits, 0.5, hard=False)
    assert (soft >= 0).all() and torch.allclose(soft.sum(-1), torch.ones(4000))
    hard = gumbel_softmax(logits, 0.5, hard=True)
    assert torch.equal(hard.sum(-1), torch.ones(4000)) and torch.equal(hard, hard.round())  # one-hot forward
    (hard * torch.arange(4.0)).sum().backward()
    assert logits.grad.abs().sum() > 0  # relaxed gradient backward
    freq = hard.detach().mean(0)
    assert torch.allclose(freq, torch.softmax(logits[0].detach(), -1), atol=0.03)
    assert torch.equal(gumbel_softmax(logits, 0.5, noise=False)[0].detach(), torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_temperature_annealing_uses_a_saved_step_counter():
    model = make(anneal_rate=0.1, tau_min=0.3)
    assert model.temperatures() == (1.0, 1.0)
    x = batch(4)
    for _ in range(3):
        model.loss(x)
    assert int(model.state_dict()["step"]) == 3
    tau_n, _ = model.temperatures()
    assert math.isclose(tau_n, math.exp(-0.3))
    with torch.no_grad():
        model.eval().loss(x)  # evaluation does not advance the schedule
    assert int(model.step) == 3
    model.step.fill_(1000)
    assert model.temperatures() == (0.3, 0.3)
    assert make().temperatures() == (1.0, 1.0)


def test_bad_options_are_refused():
    with pytest.raises(MMBenchError, match="tau_n"):
        make(tau_n=0)
    with pytest.raises(MMBenchError, match="hidden"):
        make(hidden=0)


def test_one_epoch_through_the_pipeline(tmp_path, data_root):
    cfg = build_run_config({
        "dataset": "polydigits", "method": {"name": "mrvae", "latent_dim": 4, "options": {"hidden": 16}},
        "train": {"epochs": 1, "batch_size": 50, "max_train": 200},
        "eval": {"metrics": ["latent_classification"], "test_samples": 100, "lr_train_samples": 100}})
    run = Run(cfg, tmp_path)
    out = execute(run, data_root)
    metrics = out["metrics"]
    subsets = all_subsets([f"m{i}" for i in range(5)])
    assert len([k for k in metrics if k.startswith("latent_acc/")]) == len(subsets)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert run.status() == "done"
