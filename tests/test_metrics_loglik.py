"""Known answers for the importance-sampled log-likelihood and the reconstruction error.

A linear-Gaussian model with 2 modalities and a 2-d latent: z ~ N(0, I), x_m = W_m z + b_m + σ ε. Its
marginals and posteriors are Gaussian in closed form; the columns of every W_m are orthogonal, so each
subset's exact posterior is a diagonal Gaussian the interface can return.
"""
import math

import pytest
import torch
from torch import nn

from mmbench.config import EvalConfig
from mmbench.data.base import DataSplit, Modality
from mmbench.errors import MMBenchError
from mmbench.methods.base import Gaussian, Mixture
from mmbench.metrics.context import EvalContext
from mmbench.metrics.loglik import loglik
from mmbench.metrics.reconstruction import reconstruction

SIGMA = 0.5
W = {"a": torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
     "b": torch.tensor([[0.0, 1.5], [0.5, 0.0], [0.0, 0.0]], dtype=torch.float64)}
BIAS = {"a": torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64), "b": torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64)}
MODS = [Modality(m, (3,), kind="vector", likelihood="gaussian") for m in W]


class LinearGaussian(nn.Module):
    """The interface of a MultimodalVAE around the exact model. `proposal`:
    "exact": q(z | X_S) = p(z | X_S); "wide": p(z | X_S) with 4x the variance;
    "mixture": every subset's q is the uniform mixture of the exact posteriors of {a}, {b} and {a, b}."""

    def __init__(self, proposal="exact", own_latent=False):
        super().__init__()
        self.names, self.latent_dim, self.proposal = list(W), 2, proposal
        self.rec_weights = {m: 1.0 for m in self.names}
        self.own_latent_per_modality = own_latent

    def supports(self, subset):
        return True

    def exact(self, x, subset) -> Gaussian:
        x0 = next(iter(x.values()))
        prec = torch.ones(x0.shape[0], 2, dtype=torch.float64)
        lin = torch.zeros(x0.shape[0], 2, dtype=torch.float64)
        for m in subset:
            prec = prec + (W[m] ** 2).sum(0) / SIGMA ** 2  # WᵀW is diagonal
            lin = lin + (x[m].double() - BIAS[m]) @ W[m] / SIGMA ** 2
        return Gaussian(lin / prec, -prec.log())

    def encode_subsets(self, x, subsets):
        out = []
        for s in subsets:
            if self.proposal == "mixture":
                comps = [self.exact(x, c) for c in (("a",), ("b",), ("a", "b"))]
                out.append(Mixture(Gaussian(torch.stack([c.mu for c in comps]), torch.stack([c.logvar for c in comps]))))
            else:
                q = self.exact(x, s)
                out.append(Gaussian(q.mu, q.logvar + math.log(4.0)) if self.proposal == "wide" else q)
        return out

    def decode(self, z, m):
        return z.double() @ W[m].T + BIAS[m]

    def rec_log_prob(self, z, x, m):
        r = x[m].double() - self.decode(z, m)
        return (-0.5 * math.log(2 * math.pi * SIGMA ** 2) - r ** 2 / (2 * SIGMA ** 2)).sum(-1)

    def sample_prior(self, n):
        return torch.randn(n, 2, dtype=torch.float64)


def exact_log_marginal(x, names):
    """log N(x_S; b_S, W_S W_Sᵀ + σ² I) per row."""
    w = torch.cat([W[m] for m in names])
    b = torch.cat([BIAS[m] for m in names])
    cov = w @ w.T + SIGMA ** 2 * torch.eye(len(b), dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(b, covariance_matrix=cov)
    return dist.log_prob(torch.cat([x[m].double() for m in names], 1))


def data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = {m: (z @ W[m].T + BIAS[m] + SIGMA * torch.randn(n, 3, generator=g, dtype=torch.float64)).float() for m in W}
    return DataSplit(MODS, x, torch.zeros(n, dtype=torch.long))


def context(model, split, **cfg):
    return EvalContext(model=model, spec=None, variant="default", train=split, test=split, test_full=split,
                       cfg=EvalConfig(batch_size=100, **cfg), device=torch.device("cpu"))


def test_exact_posterior_proposal_is_exact_for_any_k():
    split = data()
    x = split.batch(torch.arange(len(split)))
    torch.manual_seed(0)
    out = loglik(context(LinearGaussian("exact"), split, ll_samples=1))
    # q = p(z | X): every weight equals p(X), so one sample gives log p(X) exactly.
    assert out["loglik/a+b"] == pytest.approx(exact_log_marginal(x, ["a", "b"]).mean().item(), abs=1e-6)
    assert out["loglik/joint"] == out["loglik/a+b"]
    # q = p(z | x_a) is exact for log p(x_a) alone.
    assert out["loglik_mod/a->a"] == pytest.approx(exact_log_marginal(x, ["a"]).mean().item(), abs=1e-6)
    assert out["loglik_mod/b->b"] == pytest.approx(exact_log_marginal(x, ["b"]).mean().item(), abs=1e-6)
    assert set(out) >= {"loglik/a", "loglik/b", "loglik_by_n/1", "loglik_by_n/2", "loglik_mod/a+b->b"}
    assert out["loglik_by_n/1"] == pytest.approx((out["loglik/a"] + out["loglik/b"]) / 2)


@pytest.mark.parametrize("proposal", ["wide", "mixture"])
def test_estimate_converges_to_exact_marginal_as_k_grows(proposal):
    split = data(100, seed=1)
    x = split.batch(torch.arange(len(split)))
    exact = exact_log_marginal(x, ["a", "b"]).mean().item()
    errors = {}
    for K in (1, 1000):
        torch.manual_seed(K)
        out = loglik(context(LinearGaussian(proposal), split, ll_samples=K))
        errors[K] = {k: out[f"loglik/{k}"] - exact for k in ("a", "b", "a+b")}
    for k in ("a", "b", "a+b"):
        assert errors[1][k] < 0  # a lower bound in expectation (Jensen), well below at K = 1
        assert abs(errors[1000][k]) < abs(errors[1][k])
        assert abs(errors[1000][k]) < 0.05, (proposal, k, errors)


def test_mixture_weights_use_the_mixture_density():
    """Sampling one component but dividing by the mixture density (a trap of some peer implementations) is biased; the metric is not."""
    split = data(100, seed=2)
    x = split.batch(torch.arange(len(split)))
    exact = exact_log_marginal(x, ["a", "b"]).mean().item()
    model = LinearGaussian("mixture")
    torch.manual_seed(0)
    ours = loglik(context(model, split, ll_samples=2000))["loglik/a+b"]
    q = model.encode_subsets(x, [("a", "b")])[0]
    one = q.components[0]  # the {a} component only
    K = 2000
    z = torch.stack([one.rsample() for _ in range(K)])
    lw = torch.stack([model.rec_log_prob(z[k], x, "a") + model.rec_log_prob(z[k], x, "b")
                      - 0.5 * (math.log(2 * math.pi) * 2 + (z[k] ** 2).sum(-1)) - q.log_prob(z[k]) for k in range(K)])
    trap = (torch.logsumexp(lw, 0) - math.log(K)).mean().item()
    assert abs(ours - exact) < 0.05
    assert abs(trap - exact) > 5 * abs(ours - exact)


def test_loglik_refuses_per_modality_latents():
    with pytest.raises(MMBenchError, match="one per modality"):
        loglik(context(LinearGaussian(own_latent=True), data(10), ll_samples=2))


def expected_squared_error(x, names, m):
    """E_q ||x_m - W_m z - b_m||² for q = p(z | X_names): squared error of the mean plus Σ_ij W_ij² Var(z_j)."""
    q = LinearGaussian().exact(x, names)
    resid = x[m].double() - (q.mu @ W[m].T + BIAS[m])
    return ((resid ** 2).sum(1) + (q.logvar.exp() @ (W[m] ** 2).T).sum(1)).mean().item()


def test_reconstruction_error_of_the_linear_model_has_its_closed_form():
    split = data(4000, seed=3)
    x = split.batch(torch.arange(len(split)))
    torch.manual_seed(0)
    out = reconstruction(context(LinearGaussian("exact"), split))
    const = 3 * 0.5 * math.log(2 * math.pi * SIGMA ** 2)
    for m in ("a", "b"):
        for src, names in (("joint", ["a", "b"]), (m, [m])):
            se = expected_squared_error(x, names, m)
            assert out[f"recon_mse/{src}->{m}"] == pytest.approx(se, rel=0.03)
            assert out[f"recon/{src}->{m}"] == pytest.approx(const + se / (2 * SIGMA ** 2), rel=0.03)
    assert out["recon/joint"] == pytest.approx(out["recon/joint->a"] + out["recon/joint->b"])
    assert out["recon/self"] == pytest.approx(out["recon/a->a"] + out["recon/b->b"])
    assert out["recon/self_mean"] == pytest.approx(out["recon/self"] / 2)


def test_perfect_reconstruction_has_zero_squared_error():
    """With σ_q -> 0 and an invertible decoder the posterior mean decodes x exactly: MSE ~ 0."""

    class Perfect(LinearGaussian):
        def encode_subsets(self, x, subsets):
            return [Gaussian(torch.linalg.lstsq(W["a"], (x["a"].double() - BIAS["a"]).T).solution.T,
                             torch.full((len(x["a"]), 2), -40.0, dtype=torch.float64)) for _ in subsets]

    g = torch.Generator().manual_seed(4)
    z = torch.randn(50, 2, generator=g, dtype=torch.float64)
    split = DataSplit(MODS, {m: (z @ W[m].T + BIAS[m]).float() for m in W}, torch.zeros(50, dtype=torch.long))
    out = reconstruction(context(Perfect(), split))
    assert out["recon_mse/joint"] < 1e-10 and out["recon_mse/self"] < 1e-10


def test_per_modality_latents_reconstruct_from_their_own_posterior():
    split = data(50, seed=5)
    torch.manual_seed(0)
    out = reconstruction(context(LinearGaussian(own_latent=True), split))
    assert out["recon/joint"] == out["recon/self"]
    assert out["recon_mse/joint->a"] == out["recon_mse/a->a"]


def test_metrics_skip_subsets_the_method_cannot_encode():
    class JointOnly(LinearGaussian):
        def supports(self, subset):
            return len(subset) == 2

    split = data(20, seed=6)
    ll = loglik(context(JointOnly(), split, ll_samples=2))
    assert set(ll) == {"loglik/a+b", "loglik/joint", "loglik_by_n/2", "loglik_mod/a+b->a", "loglik_mod/a+b->b"}
    rec = reconstruction(context(JointOnly(), split))
    assert "recon/joint" in rec and "recon/self" not in rec and "recon/a->a" not in rec


def test_loglik_refuses_a_likelihood_without_its_constant():
    """The rats' summed squared error drops the Gaussian's N/2·log π: a 'log-likelihood' from it would be off by
    ~2,100 nats on the five rats, so the metric refuses, naming the modalities and the metric to use instead."""
    from mmbench.config import MethodConfig
    from mmbench.registry import DATASETS, METHODS

    spec = DATASETS.get("rats")()
    mods = spec.modalities("simulated")
    torch.manual_seed(0)
    model = METHODS.get("aggregated")(mods, MethodConfig("aggregated", latent_dim=2), spec.default_architecture)
    x = {m.name: torch.rand(4, *m.shape) for m in mods}
    split = DataSplit(mods, x, torch.zeros(4, dtype=torch.long))
    ctx = EvalContext(model=model.eval(), spec=spec, variant="simulated", train=split, test=split, test_full=split,
                      cfg=EvalConfig(ll_samples=2), device=torch.device("cpu"))
    with pytest.raises(MMBenchError, match=r"loglik needs normalised likelihoods; modalities barat, .*\(use reconstruction\)"):
        loglik(ctx)


def test_loglik_by_n_averages_subsets_of_that_size_only():
    """loglik_by_n/2 is the full set alone, not the mean over subsets of size ≤ 2."""
    split = data()
    torch.manual_seed(0)
    out = loglik(context(LinearGaussian("exact"), split, ll_samples=1))
    assert out["loglik/a"] != pytest.approx(out["loglik/a+b"])
    assert out["loglik_by_n/2"] == out["loglik/a+b"]


def test_reconstruction_weights_the_log_likelihood_only():
    """recon/joint and recon/self are Σ_m rec_w_m · (-log p); the squared errors stay unweighted (module docstring)."""
    split = data(200, seed=3)
    model = LinearGaussian("exact")
    model.rec_weights = {"a": 2.0, "b": 0.5}
    torch.manual_seed(0)
    out = reconstruction(context(model, split))
    assert out["recon/joint"] == pytest.approx(2.0 * out["recon/joint->a"] + 0.5 * out["recon/joint->b"])
    assert out["recon/self"] == pytest.approx(2.0 * out["recon/a->a"] + 0.5 * out["recon/b->b"])
    assert out["recon_mse/joint"] == pytest.approx(out["recon_mse/joint->a"] + out["recon_mse/joint->b"])
    assert out["recon_mse/self"] == pytest.approx(out["recon_mse/a->a"] + out["recon_mse/b->b"])
    assert out["recon/self_mean"] == pytest.approx((out["recon/a->a"] + out["recon/b->b"]) / 2)


def test_metrics_score_the_capped_test_split_only():
    """loglik and reconstruction read ctx.test (capped to eval.test_samples), never test_full or train; a partial last
    batch counts its own rows (130 tuples, batch_size 100)."""
    test, full, train = data(130, seed=7), data(400, seed=8), data(300, seed=9)
    x = test.batch(torch.arange(len(test)))
    ctx = EvalContext(model=LinearGaussian("exact"), spec=None, variant="default", train=train, test=test,
                      test_full=full, cfg=EvalConfig(batch_size=100, ll_samples=1), device=torch.device("cpu"))
    torch.manual_seed(0)
    # exact posterior as proposal: one importance sample is log p(X) exactly (MoPoE App. B estimator with K = 1)
    assert loglik(ctx)["loglik/a+b"] == pytest.approx(exact_log_marginal(x, ["a", "b"]).mean().item(), abs=1e-6)

    class Sharp(LinearGaussian):  # the posterior means with σ_q -> 0: z is deterministic
        def encode_subsets(self, x, subsets):
            return [Gaussian(self.exact(x, s).mu, torch.full((len(x["a"]), 2), -40.0, dtype=torch.float64))
                    for s in subsets]

    ctx.model = Sharp()
    out = reconstruction(ctx)
    for m in ("a", "b"):
        for src, names in (("joint", ["a", "b"]), (m, [m])):
            mu = LinearGaussian().exact(x, names).mu
            se = ((x[m].double() - (mu @ W[m].T + BIAS[m])) ** 2).sum(1)
            assert out[f"recon_mse/{src}->{m}"] == pytest.approx(se.mean().item(), rel=1e-6)
            nll = 3 * 0.5 * math.log(2 * math.pi * SIGMA ** 2) + se / (2 * SIGMA ** 2)  # -log N(x; Wz + b, σ² I)
            assert out[f"recon/{src}->{m}"] == pytest.approx(nll.mean().item(), rel=1e-6)


def test_loglik_uses_the_models_own_prior_density():
    """log p(X) ≈ logsumexp_k[log p(X | z_k) + log p(z_k) - log q(z_k | X_S)] - log K (MoPoE App. B) is linear in
    log p(z): a prior_log_prob shifted by c nats moves every estimate by exactly c."""

    class Shifted(LinearGaussian):
        def prior_log_prob(self, z):
            return -0.5 * (math.log(2 * math.pi) * 2 + (z ** 2).sum(-1)) + 3.0

    split = data(50, seed=10)
    torch.manual_seed(0)
    base = loglik(context(LinearGaussian("wide"), split, ll_samples=4))
    torch.manual_seed(0)
    shifted = loglik(context(Shifted("wide"), split, ll_samples=4))
    for k in ("loglik/a", "loglik/a+b", "loglik_mod/b->a"):
        assert shifted[k] == pytest.approx(base[k] + 3.0, abs=1e-9)


def test_loglik_refuses_a_custom_prior_without_its_density():
    """A method that overrides sample_prior (mrVAE's prior is not N(0, I)) without prior_log_prob is refused."""
    from mmbench.config import MethodConfig
    from mmbench.metrics.loglik import prior_log_prob
    from mmbench.registry import METHODS

    cls = METHODS.get("mopoe")

    class OwnPrior(cls):
        def sample_prior(self, n):
            return 2 * super().sample_prior(n)

    mods = [Modality(m, (3, 28, 28)) for m in ("a", "b")]
    model = OwnPrior(mods, MethodConfig("mopoe", latent_dim=2), "polymnist_cnn")
    with pytest.raises(MMBenchError, match="overrides sample_prior but has no prior_log_prob"):
        prior_log_prob(model, torch.zeros(3, 2))
    z = torch.randn(3, 2)  # the standard-normal default for the base prior: Σ_j log N(z_j; 0, 1)
    want = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(prior_log_prob(cls(mods, MethodConfig("mopoe", latent_dim=2), "polymnist_cnn"), z), want)
