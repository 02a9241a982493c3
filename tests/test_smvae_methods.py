"""SMVAE paper methods: jmvae, smvae, smvgon and the surrogate-only vae/vgon (interface, known answers, schedule)."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from mmbench.config import build_run_config
from mmbench.data.base import Modality
from mmbench.errors import ConfigError, MMBenchError
from mmbench.evaluate import execute
from mmbench.methods.base import Gaussian, MethodConfig, all_subsets
from mmbench.methods.smvgon import vgon_elbo, vgon_posterior
from mmbench.registry import METHODS
from mmbench.results import Run
from mmbench.train import train
from conftest import assert_latent_accuracies
from conftest import train_steps
from test_methods import KA_A, KA_C, KA_MODS, KA_X

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
NAMES = ["jmvae", "smvae", "smvgon", "vae", "vgon"]


def make(name, latent=8, beta=1.0, **kw):
    torch.manual_seed(0)
    cfg = MethodConfig(name, latent_dim=latent, beta=beta, image_likelihood=kw.pop("likelihood", None), options=kw)
    return METHODS.get(name)(MODS, cfg, "polymnist_cnn")


def batch(n=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(n, 3, 28, 28, generator=g).to(dtype) for m in MODS}


def kl_diag(mu_q, var_q, mu_p, var_p):
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last dim (written out)."""
    return 0.5 * (torch.log(var_p / var_q) + var_q / var_p + (mu_q - mu_p) ** 2 / var_p - 1).sum(-1)


class Fixed(nn.Module):
    """An 'encoder' that returns given (mu, logvar), whatever the input."""

    def __init__(self, mu, logvar):
        super().__init__()
        self.mu, self.logvar = mu, logvar

    def forward(self, x):
        return self.mu, self.logvar


@pytest.mark.parametrize("name", NAMES)
def test_interface_shapes(name):
    model = make(name)
    x = batch()
    full = tuple(model.names)
    subsets = [full] if name == "vae" else all_subsets(model.names)
    qs = model.encode_subsets(x, subsets)
    assert len(qs) == len(subsets)
    for q in qs:
        assert isinstance(q, Gaussian)
        assert q.mean.shape == (16, 8) and q.rsample().shape == (16, 8)
    assert model.decode(model.sample_prior(4), "m1").shape == (4, 3, 28, 28)
    if name == "vae":
        assert model.supports(full) and not model.supports(("m0", "m1"))
        with pytest.raises(MMBenchError, match="only from all modalities"):
            model.encode(x, ("m0", "m1"))
    else:
        assert all(model.supports(s) for s in subsets)
        assert model.encode({"m1": x["m1"]}, ("m1",)).mean.shape == (16, 8)  # only the subset's inputs needed
    with torch.no_grad():  # evaluation encodes under no_grad (vgon still takes its inner gradient)
        assert model.encode(x, full).mean.shape == (16, 8)


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_with_finite_gradients(name):
    model = make(name)
    losses, logs = train_steps(model, batch(16), 30, require_grad=True)
    assert set(logs) >= {"loss", "nll", "kl"}
    assert losses[-1] < 0.8 * losses[0]


def random_experts(B=4, D=2, M=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    mus = [torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(M)]
    lvs = [torch.randn(B, D, generator=g, dtype=torch.float64) * 0.7 for _ in range(M)]
    sur = (torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64))
    return mus, lvs, sur


@pytest.mark.parametrize("prior", ["full", "all", "none"])
def test_smvae_divergence_known_answer(prior):
    beta = 0.7
    model = make("smvae", latent=2, beta=beta, prior_expert=prior).double()
    mus, lvs, (mu_s, lv_s) = random_experts()
    for i, n in enumerate(model.names):
        model.encoders[n] = Fixed(mus[i], lvs[i])
    model.surrogate = lambda x: Gaussian(mu_s, lv_s)
    _, logs = model.loss(batch(4, dtype=torch.float64))
    # Independent: PoE (with the N(0, I) expert where the option says) for every non-empty subset, closed-form KL.
    total = 0.0
    for k in range(1, 4):
        for c in itertools.combinations(range(3), k):
            with_prior = prior == "all" or (prior == "full" and k == 3)
            prec = float(with_prior) + sum(torch.exp(-lvs[i]) for i in c)
            mu_c = sum(mus[i] * torch.exp(-lvs[i]) for i in c) / prec
            total = total + kl_diag(mu_c, 1 / prec, mu_s, lv_s.exp())
    expected = (beta / 2 ** 3 * total).mean().item()
    assert logs["div"] == pytest.approx(expected, rel=1e-6)


def test_smvae_subset_posteriors_are_poe_prior_expert_on_full_set_by_default():
    model = make("smvae")
    x = batch()
    mu, logvar = model.unimodal(x, model.names)
    q_sub, q_full = model.encode_subsets(x, [("m0", "m2"), tuple(model.names)])
    prec = (1 / (logvar[[0, 2]].exp() + 1e-8)).sum(0)
    assert torch.allclose(q_sub.logvar, -torch.log(prec), atol=1e-5)
    assert torch.allclose(q_sub.mu, (mu[[0, 2]] / (logvar[[0, 2]].exp() + 1e-8)).sum(0) / prec, atol=1e-5)
    prec = 1 + (1 / (logvar.exp() + 1e-8)).sum(0)
    assert torch.allclose(q_full.logvar, -torch.log(prec), atol=1e-5)


def test_jmvae_divergence_known_answer_and_subsets():
    model = make("jmvae", latent=2, beta=5.0, alpha=0.3).double()
    assert model.alpha == 0.3 and make("jmvae", beta=2.0).alpha == 2.0  # alpha defaults to beta (Eq. 13)
    mus, lvs, (mu_j, lv_j) = random_experts(seed=4)
    for i, n in enumerate(model.names):
        model.encoders[n] = Fixed(mus[i], lvs[i])
    model.joint = lambda x: Gaussian(mu_j, lv_j)
    x = batch(4, dtype=torch.float64)
    _, logs = model.loss(x)
    expected = 0.3 * sum(kl_diag(mu_j, lv_j.exp(), mus[i], lvs[i].exp()) for i in range(3)).mean().item()
    assert logs["div"] == pytest.approx(expected, rel=1e-6)
    q_full, q_one, q_two = model.encode_subsets(x, [("m0", "m1", "m2"), ("m1",), ("m0", "m2")])
    assert torch.equal(q_full.mu, mu_j)
    assert torch.allclose(q_one.mu, mus[1]) and torch.allclose(q_one.logvar, lvs[1], atol=1e-6)  # no prior expert
    prec = torch.exp(-lvs[0]) + torch.exp(-lvs[2])
    assert torch.allclose(q_two.logvar, -torch.log(prec), atol=1e-6)


def test_vgon_inner_gradient_matches_finite_differences():
    model = make("vgon", latent=2, beta=1.0, likelihood="gaussian").double()
    model.train()
    x = batch(3, dtype=torch.float64)
    step = 0.01
    torch.manual_seed(5)
    q, grad = vgon_posterior(model, model.head, x, model.names, 1.0, step)
    torch.manual_seed(5)
    eps = torch.randn(3, 2, dtype=torch.float64)  # the noise the inner ELBO drew
    h = 1e-5
    fd = torch.zeros(3, 2, dtype=torch.float64)
    with torch.no_grad():
        for d in range(2):
            e = torch.zeros(3, 2, dtype=torch.float64)
            e[:, d] = h
            up = vgon_elbo(model, model.head, e, x, model.names, eps, 1.0)
            down = vgon_elbo(model, model.head, -e, x, model.names, eps, 1.0)
            fd[:, d] = (up - down) / (2 * h)  # rows are independent samples
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-6)
    assert grad.abs().max() > 0
    with torch.no_grad():  # Eq. 9: the posterior is read off z0 + step * grad
        assert torch.allclose(q.mu, model.head.mu(step * grad)) and torch.allclose(q.logvar, model.head.logvar(step * grad))


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_vgon_elbo_and_step_closed_form_with_linear_decoders(beta):
    """Linear decoders x̂_m = A_m z + c_m under the Gaussian likelihood (σ = 0.1) and a linear head: the
    ELBO at z0 (SMVAE Eq. 8) and its gradient at the origin (the step of Eq. 9) written out in closed form,
    independently of autograd and of the package's finite differences. The KL term (ELBO and inner step alike)
    carries vgon's β (the class docstring: "the inner step uses the same β")."""
    D, B = 2, 3
    model = make("vgon", latent=D, beta=beta, likelihood="gaussian").double()
    g = torch.Generator().manual_seed(11)
    A = {n: torch.randn(3 * 28 * 28, D, generator=g, dtype=torch.float64) * 0.05 for n in model.names}
    c = {n: torch.rand(3 * 28 * 28, generator=g, dtype=torch.float64) for n in model.names}
    for n in model.names:
        lin = nn.Linear(D, 3 * 28 * 28).double()
        with torch.no_grad():
            lin.weight.copy_(A[n])
            lin.bias.copy_(c[n])
        model.decoders[n] = nn.Sequential(lin, nn.Unflatten(1, (3, 28, 28)))
    with torch.no_grad():
        for layer in (model.head.mu, model.head.logvar):
            layer.weight.copy_(torch.randn(D, D, generator=g, dtype=torch.float64) * 0.5)
            layer.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64) * 0.3)
    Wm, bm = model.head.mu.weight.detach(), model.head.mu.bias.detach()
    Wv, bv = model.head.logvar.weight.detach(), model.head.logvar.bias.detach()
    x = batch(B, dtype=torch.float64)
    z0 = torch.randn(B, D, generator=g, dtype=torch.float64) * 0.1
    eps = torch.randn(B, D, generator=g, dtype=torch.float64)
    s2 = 0.1 ** 2
    P = 3 * 28 * 28

    def closed_form(z0):
        mu, logvar = z0 @ Wm.T + bm, z0 @ Wv.T + bv
        z = mu + eps * torch.exp(0.5 * logvar)
        ll = sum(-0.5 * ((x[n].flatten(1) - z @ A[n].T - c[n]) ** 2).sum(1) / s2 - 0.5 * P * math.log(2 * math.pi * s2)
                 for n in model.names)
        kl = 0.5 * (mu ** 2 + torch.exp(logvar) - 1 - logvar).sum(1)
        return ll - beta * kl, mu, logvar, z

    want, _, _, _ = closed_form(z0)
    with torch.no_grad():
        got = vgon_elbo(model, model.head, z0, x, model.names, eps, beta)
    # rtol 1e-7: the likelihood's normalising constant is a float32 scalar (error ~1e-7 in each pixel's log)
    assert torch.allclose(got, want, rtol=1e-7, atol=0)
    assert not torch.allclose(got, want + 0.1 * want.abs().max() * 1e-4, rtol=1e-7, atol=0)

    # gradient at the origin: dELBO/dz0 = J^T Σ_m A_m^T (x_m - A_m z - c_m) / σ² - dKL/dz0, with
    # dz/dz0 = W_μ + diag(ε · σ/2) W_v, dKL/dz0 = W_μ^T μ + W_v^T (σ² - 1) / 2 (times β)
    model.train()
    torch.manual_seed(5)
    eps = torch.randn(B, D, dtype=torch.float64)  # the noise the inner ELBO will draw
    _, mu, logvar, z = closed_form(torch.zeros(B, D, dtype=torch.float64))
    dll_dz = sum((x[n].flatten(1) - z @ A[n].T - c[n]) @ A[n] / s2 for n in model.names)  # B×D
    sd = torch.exp(0.5 * logvar)
    grad = torch.stack([(Wm + (eps[b] * sd[b] / 2)[:, None] * Wv).T @ dll_dz[b]
                        - beta * (Wm.T @ mu[b] + Wv.T @ (sd[b] ** 2 - 1) / 2) for b in range(B)])
    torch.manual_seed(5)
    q, step_grad = vgon_posterior(model, model.head, x, model.names, beta, 0.01)
    assert torch.allclose(step_grad, grad, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        assert torch.allclose(q.mu, 0.01 * grad @ Wm.T + bm) and torch.allclose(q.logvar, 0.01 * grad @ Wv.T + bv)
    # the model's own posterior (what its loss and encode_subsets use) takes that step with the model's β
    torch.manual_seed(5)
    q = model.posterior(x, model.names)
    with torch.no_grad():
        h = model.step_size
        assert torch.allclose(q.mu, h * grad @ Wm.T + bm, rtol=1e-9, atol=1e-12)
        assert torch.allclose(q.logvar, h * grad @ Wv.T + bv, rtol=1e-9, atol=1e-12)


def test_vgon_second_order_path_reaches_decoders():
    model = make("vgon", latent=2)
    x = batch(4)
    q, _ = vgon_posterior(model, model.head, x, model.names, 1.0, 1 / 256)
    # q depends on the decoders only through the inner gradient: their gradients are second order.
    (q.mu.sum() + q.logvar.sum()).backward()
    for n in model.names:
        grads = [p.grad for p in model.decoders[n].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    with torch.no_grad():
        q2, _ = vgon_posterior(model, model.head, x, model.names, 1.0, 1 / 256)
    assert q2.mu.grad_fn is None


def test_vgon_step_is_differentiated_as_autograd_with_create_graph():
    """vgon_posterior takes its inner gradient with torch.func.grad (so that a pack's vmap batches it); the outer
    gradient must be the one through torch.autograd.grad(create_graph=True) written out here, second order included:
    the posterior and every parameter's gradient (decoders and head) to float64 rounding, in training mode (a sampled
    inner ELBO) and evaluation mode (no graph kept)."""
    model = make("vgon", latent=4).double().train()
    x = batch(6, dtype=torch.float64)
    step = 1 / 16  # a large step: the second-order part is a sizeable share of the decoders' gradients
    torch.manual_seed(3)
    eps = torch.randn(6, 4, dtype=torch.float64)  # the inner ELBO's sample, as vgon_posterior draws it after seed 3

    def reference():
        z0 = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
        inner = vgon_elbo(model, model.head, z0, x, model.names, eps, 1.0).sum()
        (g,) = torch.autograd.grad(inner, z0, create_graph=True)
        return model.head(z0.detach() + step * g)

    def first_order():  # the step's gradient taken as a constant: what a lost create_graph would give
        z0 = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(vgon_elbo(model, model.head, z0, x, model.names, eps, 1.0).sum(), z0)
        return model.head(z0.detach() + step * g)

    def grads(posterior):
        model.zero_grad(set_to_none=True)
        q = posterior()
        (q.mu.square().sum() + q.logvar.exp().sum()).backward()
        return q, torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in model.parameters()])

    torch.manual_seed(3)
    q, got = grads(lambda: vgon_posterior(model, model.head, x, model.names, 1.0, step)[0])
    q_ref, want = grads(reference)
    _, first = grads(first_order)
    torch.testing.assert_close(q.mu, q_ref.mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert float((first - want).norm() / want.norm()) > 1e-3  # the second-order part is there to be missed
    model.eval()
    with torch.no_grad():
        q_eval, _ = vgon_posterior(model, model.head, x, model.names, 1.0, step)
    z0 = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)  # evaluation steps from the inner ELBO's mean
    (g,) = torch.autograd.grad(vgon_elbo(model, model.head, z0, x, model.names, torch.zeros_like(eps), 1.0).sum(), z0)
    with torch.no_grad():
        mu = model.head(step * g).mu
    assert q_eval.mu.grad_fn is None
    torch.testing.assert_close(q_eval.mu, mu, rtol=1e-12, atol=1e-12)


def test_vgon_step_through_batchnorm_decoders_updates_their_statistics_as_autograd():
    """On CelebA's networks (BatchNorm in the decoders) the inner pass updates the running statistics in place, as the
    torch.autograd.grad step did: the model's buffers go into the transform as its arguments (a transform refuses to
    mutate a captured tensor). Posterior, gradients and statistics equal those of the step written out with
    torch.autograd.grad(create_graph=True) on a copy of the model."""
    import copy

    from mmbench.registry import DATASETS

    mods = DATASETS.get("celeba")().modalities("default")
    torch.manual_seed(0)
    model = METHODS.get("vgon")(mods, MethodConfig("vgon", latent_dim=4), "celeba_resnet_lv0").train()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x = {"img": torch.rand(3, 3, 64, 64, generator=g),
         "text": torch.nn.functional.one_hot(torch.randint(0, mods[1].shape[1], (3, mods[1].shape[0]), generator=g),
                                             mods[1].shape[1]).float()}
    torch.manual_seed(3)
    q, _ = vgon_posterior(model, model.head, x, model.names, 1.0, 1 / 256)
    torch.manual_seed(3)
    z0 = torch.zeros(3, 4, requires_grad=True)
    eps = torch.randn(3, 4)
    (gz,) = torch.autograd.grad(vgon_elbo(ref, ref.head, z0, x, ref.names, eps, 1.0).sum(), z0, create_graph=True)
    q_ref = ref.head(z0.detach() + gz / 256)
    torch.testing.assert_close(q.mu, q_ref.mu, rtol=1e-6, atol=1e-7)
    stats = {n: b for n, b in model.named_buffers() if n.endswith("running_mean")}
    assert stats and all(torch.equal(b, dict(ref.named_buffers())[n]) for n, b in stats.items())
    assert any(not torch.equal(b, torch.zeros_like(b)) for b in stats.values())  # the inner pass moved them
    got = torch.autograd.grad(q.mu.sum() + q.logvar.sum(), list(model.parameters()), allow_unused=True)
    want = torch.autograd.grad(q_ref.mu.sum() + q_ref.logvar.sum(), list(ref.parameters()), allow_unused=True)
    assert [a is None for a in got] == [b is None for b in want]
    for a, b in zip(got, want):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_vgon_subset_uses_present_modalities_only():
    model = make("vgon").eval()
    x = batch()
    a = model.encode({"m1": x["m1"]}, ("m1",))
    b = model.encode({**x, "m0": torch.zeros_like(x["m0"])}, ("m1",))
    assert torch.equal(a.mu, b.mu)  # deterministic in eval mode, independent of the absent modalities
    assert not torch.allclose(a.mu, model.encode(x, tuple(model.names)).mu)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(module, before):
    return {k for k, v in module.named_parameters() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("name", ["smvae", "smvgon"])
def test_two_stage_schedule_freezes_the_right_parameters(name):
    model = make(name, schedule="two_stage", stage1_steps=3)
    x = batch(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    groups = {"experts": model.encoders, "decoders": model.decoders,
              "surrogate": model.surrogate_head if name == "smvgon" else model.surrogate_encoders}

    def steps(n):
        for _ in range(n):
            loss, _ = model.loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    before = {k: snapshot(m) for k, m in groups.items()}
    steps(3)  # stage 1: the surrogate ELBO only
    assert not changed(groups["experts"], before["experts"])
    assert changed(groups["decoders"], before["decoders"]) and changed(groups["surrogate"], before["surrogate"])
    with torch.no_grad():
        model.eval()
        model.loss(x)  # evaluation does not advance the schedule
        model.train()
    assert int(model.train_steps) == 3 and model.stage() == "stage2"
    mid = {k: snapshot(m) for k, m in groups.items()}
    steps(3)  # stage 2: surrogate and decoders fixed, the divergence trains the experts
    assert not changed(groups["decoders"], mid["decoders"]) and not changed(groups["surrogate"], mid["surrogate"])
    assert changed(groups["experts"], mid["experts"])
    assert int(model.state_dict()["train_steps"]) == 6  # saved with the weights, so a resumed run keeps its stage


def test_two_stage_schedule_resumes_in_its_stage_from_a_checkpoint():
    """The schedule reads a host copy of the step counter (no device read per step); a model loaded from a
    checkpoint takes it from the saved counter, so a resumed run is in the stage the saved one was in."""
    model = make("smvae", schedule="two_stage", stage1_steps=3)
    x = batch(4)
    for _ in range(3):
        model.loss(x)
    assert model.stage() == "stage2" and model.steps == 3
    resumed = make("smvae", schedule="two_stage", stage1_steps=3)
    assert resumed.stage() == "stage1"
    resumed.load_state_dict(model.state_dict())
    assert resumed.stage() == "stage2" and resumed.steps == 3


def test_two_stage_fraction_uses_the_planned_length():
    model = make("smvae", schedule="two_stage", stage1_fraction=0.25)
    with pytest.raises(MMBenchError, match="plan_steps"):
        model.loss(batch(4))
    model.plan_steps(12)
    assert model.stage1_steps() == 3
    assert make("smvae", schedule="two_stage").opt["stage1_fraction"] == pytest.approx(2 / 3)  # App. D: 200 of 300


def test_two_stage_through_the_trainer(tmp_path, data_root):
    cfg = build_run_config({
        "dataset": "polydigits", "method": {"name": "smvae", "latent_dim": 4,
                                            "options": {"schedule": "two_stage", "stage1_fraction": 0.5}},
        "train": {"epochs": 2, "batch_size": 32, "max_train": 64},
    })
    run = Run(cfg, tmp_path / "run")
    run.init()
    history = train(run, data_root)["history"]  # 2 epochs × 2 steps: stage 1 is the first epoch
    assert history[0]["train_div"] == 0.0 and history[1]["train_div"] > 0.0
    assert int(torch.load(run.ckpt_dir / "last.pt", weights_only=False)["model"]["train_steps"]) == 4


def test_schedule_options_are_checked():
    with pytest.raises(ConfigError, match="not both"):
        make("smvae", schedule="two_stage", stage1_steps=3, stage1_fraction=0.5)
    with pytest.raises(ConfigError, match="stage1_fraction"):
        make("smvae", schedule="two_stage", stage1_fraction=1.5)
    with pytest.raises(ConfigError, match="stage1_steps"):
        make("smvae", schedule="two_stage", stage1_steps=0)
    with pytest.raises(ConfigError, match="schedule"):
        make("smvae", schedule="sometimes")
    with pytest.raises(ConfigError, match="prior_expert"):
        make("smvae", prior_expert="some")
    with pytest.raises(ConfigError, match="inner_step"):
        make("vgon", inner_step=0)


def test_smvae_one_epoch_through_the_pipeline(tmp_path, data_root):
    cfg = build_run_config({
        "dataset": "polydigits", "method": {"name": "smvae", "latent_dim": 8},
        "train": {"epochs": 1, "batch_size": 32, "max_train": 192},
        "eval": {"metrics": ["latent_classification"], "test_samples": 100, "lr_train_samples": 100},
    })
    metrics = execute(Run(cfg, tmp_path / "run"), data_root)["metrics"]
    n = 5  # polydigits modalities
    assert sum(k.startswith("latent_acc/") for k in metrics) == 2 ** n - 1
    assert_latent_accuracies(metrics, n_test=100)


@pytest.mark.parametrize("name", ["smvae", "smvgon", "jmvae"])
def test_objective_weighs_the_joint_elbo_one_and_beta_only_in_the_divergence(name):
    """SMVAE Eq. 11 / JMVAE Eq. 13: loss = nll + KL (weight 1, whatever β) + the β-weighted divergence term."""
    model = make(name, beta=0.7)
    torch.manual_seed(1)
    loss, logs = model.loss(batch())
    assert float(logs["div"]) > 0
    assert float(loss.detach()) == pytest.approx(float(logs["nll"]) + float(logs["kl"]) + float(logs["div"]), rel=1e-5)
    moved = make(name, beta=1.4)  # the same networks and noise; only the divergence's weight doubles
    torch.manual_seed(1)
    _, logs2 = moved.loss(batch())
    assert float(logs2["kl"]) == pytest.approx(float(logs["kl"]), rel=1e-5)
    assert float(logs2["div"]) == pytest.approx(2 * float(logs["div"]), rel=1e-5)


@pytest.mark.parametrize("detach", [False, True])
def test_the_subset_divergence_trains_the_surrogate_unless_detached(detach):
    """Eq. 11's KL(q_PoE(z | X_S) || q_Λ(z | X)) moves the surrogate too (option detach_surrogate: false, the
    default); with the option set only the experts learn from it."""
    model = make("smvae", beta=1.0, detach_surrogate=detach)
    model.surrogate_elbo = lambda x, q: (torch.zeros(()), torch.zeros(()))  # the divergence is the whole loss
    torch.manual_seed(1)
    model.loss(batch())[0].backward()
    grads = [p.grad for p in model.surrogate_fusion.parameters()]
    moved = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert moved is not detach
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders.parameters())


# ----- known answers with unequal rec_weights and β ≠ 1 (numpy, independent of the package) -----------------
# the two-modality known-answer setting of tests/test_methods.py: m1 with rec_weight 2, linear decoders
VEC, VEC_X, VEC_A, VEC_C = KA_MODS, KA_X, KA_A, KA_C


def vec_model(name, beta, zero_decoders=False):
    """Two 2-dim Laplace modalities (m1 rec_weight 2), latent 2, linear decoders x̂_m = A_m z + c_m."""
    torch.manual_seed(0)
    model = METHODS.get(name)(VEC, MethodConfig(name, latent_dim=2, beta=beta), "rat_mlp").double()
    for m in model.names:
        lin = nn.Linear(2, 2).double()
        with torch.no_grad():
            lin.weight.copy_(torch.zeros(2, 2) if zero_decoders else torch.tensor(VEC_A[m]))
            lin.bias.copy_(torch.tensor(VEC_C[m]))
        model.decoders[m] = lin
    return model


def vec_nll(z, weights):
    """Σ_m w_m · -log Laplace(x_m; A_m z + c_m, b = 0.75), written out."""
    return sum(weights[m] * np.sum(np.log(1.5) + np.abs(VEC_X[m] - VEC_A[m] @ z - VEC_C[m]) / 0.75) for m in VEC_X)


def vec_batch(B=3):
    return {m: torch.tensor(v).expand(B, -1) for m, v in VEC_X.items()}


def test_smvae_surrogate_elbo_weighs_each_modality_by_its_rec_weight():
    """SMVAE's surrogate ELBO reconstructs X with the rec_weights (1, 2): at a sharp fixed surrogate
    (σ ≈ 2e-9) the logged NLL is Σ_m w_m Laplace NLL at z = μ, written out in numpy."""
    model = vec_model("smvae", beta=1.0)
    mu = np.array([0.6, -0.4])
    model.surrogate = lambda x: Gaussian(torch.tensor(mu).expand(3, -1), torch.full((3, 2), -40.0, dtype=torch.float64))
    _, logs = model.loss(vec_batch())
    assert float(logs["nll"]) == pytest.approx(vec_nll(mu, {"m0": 1.0, "m1": 2.0}), rel=1e-7)


def test_joint_vae_loss_is_weighted_nll_plus_beta_kl():
    """`vae` (SMVAE Eq. 1 with cfg.beta): a constant joint posterior (fusion output = its bias) and zeroed decoders
    make loss = Σ_m w_m NLL(x_m; c_m) + β·KL(N(μ, σ²) || N(0, I)), β = 0.7, written out in numpy."""
    model = vec_model("vae", beta=0.7, zero_decoders=True)
    mu, logvar = np.array([0.3, -1.1]), np.array([-0.5, 0.4])
    with torch.no_grad():
        model.fusion.net[2].weight.zero_()
        model.fusion.net[2].bias.copy_(torch.tensor(np.concatenate([mu, logvar])))
    loss, _ = model.loss(vec_batch())
    kl = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar)
    assert loss.item() == pytest.approx(vec_nll(np.zeros(2), {"m0": 1.0, "m1": 2.0}) + 0.7 * kl, rel=1e-9)


def test_two_stage_default_fraction_rounds_the_stage1_length():
    """App. D's default 2/3 of a 4-step run: stage 1 lasts round(8/3) = 3 steps (not the truncated 2)."""
    model = make("smvae", schedule="two_stage")
    model.plan_steps(4)
    assert model.stage1_steps() == 3


def test_jmvae_joint_elbo_kl_has_weight_one():
    """JMVAE Eq. 13: loss − nll = KL(q(z|X) || N(0, I)) (weight 1, whatever β = 5) + α Σ_m KL(q(z|X) || q(z|x_m)),
    both written out in numpy, float64, tight tolerance (the nll term cancels exactly)."""
    model = make("jmvae", latent=2, beta=5.0, alpha=0.3).double()
    mus, lvs, (mu_j, lv_j) = random_experts(seed=4)
    for i, n in enumerate(model.names):
        model.encoders[n] = Fixed(mus[i], lvs[i])
    model.joint = lambda x: Gaussian(mu_j, lv_j)
    loss, logs = model.loss(batch(4, dtype=torch.float64))
    mj, vj = mu_j.numpy(), np.exp(lv_j.numpy())
    kl = 0.5 * (mj ** 2 + vj - 1 - np.log(vj)).sum(-1)
    div = sum(0.5 * (np.log(np.exp(lvs[i].numpy()) / vj) + (vj + (mj - mus[i].numpy()) ** 2) / np.exp(lvs[i].numpy()) - 1).sum(-1)
              for i in range(3))
    assert loss.item() - float(logs["nll"]) == pytest.approx(np.mean(kl + 0.3 * div), rel=1e-9)


def test_smvae_end_to_end_loss_is_nll_plus_unit_weight_kl_plus_divergence_exactly():
    """SMVAE Eq. 11: -L = -E_q_Λ[log p(X | z)] + KL(q_Λ(z | X) || p(z)) (weight 1, Eq. 1) + β/2^M Σ_c KL(q_c || q_Λ).
    β = 0.7, a fixed wide surrogate, float64: loss - nll is KL + div to 1e-10 (a β on the KL would move it by
    0.3 KL), and the logged KL is the closed form of the surrogate against N(0, I), in numpy."""
    model = vec_model("smvae", beta=0.7)
    mu, logvar = np.array([0.6, -0.4]), np.array([0.3, -0.2])
    model.surrogate = lambda x: Gaussian(torch.tensor(mu).expand(3, -1), torch.tensor(logvar).expand(3, -1))
    torch.manual_seed(0)
    loss, logs = model.loss(vec_batch())
    kl = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar)
    assert float(logs["kl"]) == pytest.approx(kl, rel=1e-12) and float(logs["div"]) > 0.1
    assert loss.item() - float(logs["nll"]) == pytest.approx(kl + float(logs["div"]), rel=1e-10)


def test_jmvae_objective_term_by_term_with_its_gradient():
    """JMVAE-kl (SMVAE App. A, Eq. 13; Suzuki et al. 2016): -log p(X | z) at a reparameterised sample of the joint
    q(z | X) (rec_weights) + KL(q(z | X) || N(0, I)) (weight 1) + α Σ_m KL(q(z | X) || q(z | x_m)). A spy likelihood
    -c_m ||z - x_m||² keeps every term the same size; the loss and its gradient w.r.t. the joint and unimodal
    posteriors (the divergence trains both networks) equal the objective written out, β = 5, α = 0.3."""
    B, D = 5, 2
    model = make("jmvae", latent=D, beta=5.0, alpha=0.3).double()
    model.rec_weights = {"m0": 1.0, "m1": 0.25, "m2": 3.0}
    c = {"m0": 1.0, "m1": 2.0, "m2": 0.5}
    g = torch.Generator().manual_seed(1)
    mu, lv = (torch.randn(4, B, D, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(2))
    x = {m: torch.randn(B, D, generator=g, dtype=torch.float64) for m in model.names}
    model.joint = lambda x: Gaussian(mu[0], lv[0])
    model.unimodal = lambda x, names: (mu[1:], lv[1:])
    model.rec_log_prob = lambda z, x, m: -c[m] * ((z - x[m]) ** 2).sum(-1)
    torch.manual_seed(3)
    loss, logs = model.loss(x)
    torch.manual_seed(3)
    z = mu[0] + torch.randn(B, D, dtype=torch.float64) * (0.5 * lv[0]).exp()
    nll = sum(model.rec_weights[m] * c[m] * ((z - x[m]) ** 2).sum(-1) for m in model.names)
    kl = kl_diag(mu[0], lv[0].exp(), torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64))
    div = sum(kl_diag(mu[0], lv[0].exp(), mu[i], lv[i].exp()) for i in (1, 2, 3))
    want = (nll + kl + 0.3 * div).mean()
    assert float(logs["div"]) == pytest.approx((0.3 * div).mean().item(), rel=1e-12)
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    got, ref = torch.autograd.grad(loss, (mu, lv), retain_graph=True), torch.autograd.grad(want, (mu, lv))
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
