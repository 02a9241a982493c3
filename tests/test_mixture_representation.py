"""How metrics evaluate a mixture posterior (MMVAE, |S| >= 2): eval.mixture_representation and eval.ll_proposal.

"component" is the MMVAE authors' evaluation: each row gets the one unimodal component the contiguous-block
rule selects (MoPoE utils/utils.py mixture_component_selection); "mean" / "mixture" evaluate the mixture.
"""
import math

import pytest
import torch
from torch import nn

from mmbench.config import EvalConfig, RunConfig, build_run_config
from mmbench.data.base import DataSplit, Modality
from mmbench.errors import ConfigError
from mmbench.methods.base import Gaussian, MethodConfig, Mixture, stratified_components
from mmbench.metrics.context import EvalContext
from mmbench.metrics.latent import encode_means
from mmbench.metrics.loglik import importance_sampled, loglik
from mmbench.registry import METHODS

D = 4
VEC = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]


class KnownExpert(nn.Module):
    """Encoder stub: row b of modality i has mean 100·i + b in every latent dim, log-variance -1."""

    def __init__(self, i):
        super().__init__()
        self.i = i
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        rows = torch.arange(x.shape[0], dtype=torch.float32)[:, None].expand(-1, D)
        return 100.0 * self.i + rows + 0 * self.dummy, torch.full((x.shape[0], D), -1.0)


def mmvae_with_known_experts():
    model = METHODS.get("mmvae")(VEC, MethodConfig("mmvae", latent_dim=D, beta=1.0), "polymnist_cnn")
    model.encoders = nn.ModuleDict({m.name: KnownExpert(i) for i, m in enumerate(VEC)})
    return model


def ctx_for(model, split, **cfg):
    return EvalContext(model=model, spec=None, variant="default", train=split, test=split, test_full=split,
                       cfg=EvalConfig(**cfg), device=torch.device("cpu"))


def test_mmvae_component_representation_reads_the_block_selected_component_mean():
    model = mmvae_with_known_experts()
    B = 9
    split = DataSplit(VEC, {m.name: torch.zeros(B, 3, 28, 28) for m in VEC}, torch.zeros(B, dtype=torch.long))
    subsets = [("m1",), ("m0", "m2"), ("m0", "m1", "m2")]
    rows = torch.arange(B, dtype=torch.float32)[:, None].expand(-1, D).numpy()
    comp = encode_means(ctx_for(model, split, mixture_representation="component", batch_size=B), split, subsets)
    mean = encode_means(ctx_for(model, split, mixture_representation="mean", batch_size=B), split, subsets)
    # One modality: its own expert either way.
    assert (comp[0] == 100 + rows).all() and (mean[0] == 100 + rows).all()
    # {m0, m2}, B = 9, K = 2: blocks of floor(9/2) = 4 rows, the last takes the rest (rows 0-3 -> m0, 4-8 -> m2).
    expect = rows + torch.tensor([0.0] * 4 + [200.0] * 5)[:, None].numpy()
    assert (comp[1] == expect).all()
    assert (mean[1] == rows + 100).all()  # the average of the unimodal means
    # All three, K = 3: rows 0-2 -> m0, 3-5 -> m1, 6-8 -> m2.
    expect = rows + torch.tensor([0.0] * 3 + [100.0] * 3 + [200.0] * 3)[:, None].numpy()
    assert (comp[2] == expect).all()
    assert (mean[2] == rows + 100).all()


def test_component_samples_come_from_the_selected_component_only():
    comps = Gaussian(torch.tensor([-50.0, 50.0])[:, None, None].expand(2, 10, 1).clone(), torch.full((2, 10, 1), -10.0))
    z = Mixture(comps).represent("component").rsample()
    assert (z[:5] < -49).all() and (z[5:] > 49).all()
    assert Mixture(comps).represent("mean") is not None and isinstance(Mixture(comps).represent("mixture"), Mixture)


def test_stratified_components_follow_the_authors_rule_when_the_batch_is_smaller_than_k():
    assert stratified_components(2, 3).tolist() == [2, 2]  # floor(2/3) = 0 rows each; the last takes all
    assert stratified_components(7, 3).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_eval_fields_are_validated_and_leave_existing_run_ids_unchanged():
    with pytest.raises(ConfigError, match="mixture_representation"):
        build_run_config({"eval": {"mixture_representation": "median"}})
    with pytest.raises(ConfigError, match="ll_proposal"):
        build_run_config({"eval": {"ll_proposal": "mean"}})
    base = build_run_config({}).run_id()
    assert build_run_config({"eval": {"mixture_representation": "mean", "ll_proposal": "mixture"}}).run_id() == base
    assert build_run_config({"eval": {"mixture_representation": "component"}}).run_id() != base
    assert build_run_config({"eval": {"ll_proposal": "component"}}).run_id() != base
    assert RunConfig().eval.mixture_representation == "mean"


# ----- log-likelihood proposal: x_a = z + σε, x_b = z + σε, z ~ N(0, 1) (1-d latent) -----------------
SIGMA = 0.5
PAIR = [Modality("a", (1,), kind="vector", likelihood="gaussian"), Modality("b", (1,), kind="vector", likelihood="gaussian")]


class TwoComponent(nn.Module):
    """q(z | a, b) = uniform mixture of [N(μ, 4σ²_post), N(μ, σ²_post)] around the exact posterior N(μ, σ²_post):
    the second component is exact, the first is not."""

    names = ["a", "b"]
    own_latent_per_modality = False

    def supports(self, subset):
        return tuple(subset) == ("a", "b")

    def encode_subsets(self, x, subsets):
        prec = 1 + 2 / SIGMA ** 2
        mu = (x["a"].double() + x["b"].double()) / SIGMA ** 2 / prec
        lv = torch.full_like(mu, -math.log(prec))
        return [Mixture(Gaussian(torch.stack([mu, mu]), torch.stack([lv + math.log(4.0), lv]))) for _ in subsets]

    def rec_log_prob(self, z, x, m):
        return (-0.5 * math.log(2 * math.pi * SIGMA ** 2) - (x[m].double() - z.double()) ** 2 / (2 * SIGMA ** 2)).sum(-1)


def pair_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = {m: (z + SIGMA * torch.randn(n, 1, generator=g, dtype=torch.float64)).float() for m in ("a", "b")}
    cov = torch.ones(2, 2, dtype=torch.float64) + SIGMA ** 2 * torch.eye(2, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(
        torch.cat([x["a"].double(), x["b"].double()], 1))
    return x, exact


def test_component_proposal_is_the_selected_components_gaussian():
    x, exact = pair_data(10)
    torch.manual_seed(0)
    joint, _ = importance_sampled(TwoComponent(), x, [("a", "b")], 1, "component")
    # Rows 5-9 get the exact posterior as proposal: one sample gives log p(X) exactly; rows 0-4 the wide one.
    assert torch.allclose(joint[0, 5:].double(), exact[5:], atol=1e-6)
    assert (joint[0, :5].double() - exact[:5]).abs().min() > 1e-3
    torch.manual_seed(0)
    mix, _ = importance_sampled(TwoComponent(), x, [("a", "b")], 1, "mixture")
    assert (mix[0].double() - exact).abs().min() > 1e-4  # the mixture density is never the exact posterior's


def test_loglik_metric_uses_eval_ll_proposal_and_both_estimators_converge():
    x, exact = pair_data(40, seed=1)
    split = DataSplit(PAIR, x, torch.zeros(40, dtype=torch.long))
    # A row alone in its batch gets the last (exact) component: with "component" one sample is exact.
    torch.manual_seed(0)
    one = loglik(ctx_for(TwoComponent(), split, batch_size=1, ll_samples=1, ll_proposal="component"))
    assert one["loglik/a+b"] == pytest.approx(exact.mean().item(), abs=1e-6)
    torch.manual_seed(0)
    mix = loglik(ctx_for(TwoComponent(), split, batch_size=1, ll_samples=1, ll_proposal="mixture"))
    assert abs(mix["loglik/a+b"] - exact.mean().item()) > 1e-3
    for proposal in ("component", "mixture"):  # both unbiased: close to log p(X) with many samples
        torch.manual_seed(1)
        out = loglik(ctx_for(TwoComponent(), split, batch_size=40, ll_samples=500, ll_proposal=proposal))
        assert out["loglik/a+b"] == pytest.approx(exact.mean().item(), abs=0.02), proposal


@pytest.mark.parametrize("name", METHODS.names())
def test_every_methods_posteriors_give_a_representation(name):
    """Metrics call `represent` on whatever encode_subsets returns (EvalContext.posteriors): every method's do."""
    from mmbench.methods.base import evaluable_subsets

    torch.manual_seed(0)
    mods = VEC[:2]
    model = METHODS.get(name)(mods, MethodConfig(name, latent_dim=D, beta=1.0), "polymnist_cnn").eval()
    x = {m.name: torch.rand(5, 3, 28, 28) for m in mods}
    subsets = evaluable_subsets(model)
    with torch.no_grad():
        for q in model.encode_subsets(x, subsets):
            rep = q.represent("component")
            assert rep.mean.shape[0] == 5 and rep.rsample().shape[0] == 5
            assert (rep is q) != isinstance(q, Mixture)


class BlockRight(nn.Module):
    """Three-component mixture posterior over a 10-slot class code: component k holds the tuple's class on the rows
    the contiguous-block rule assigns to k and the next class elsewhere; every decoder returns z."""

    names = ["m0", "m1", "m2"]

    def supports(self, subset):
        return True

    def encode_subsets(self, x, subsets):
        y = x["m0"].argmax(1)
        B = len(y)
        sel = stratified_components(B, 3)
        comps = torch.stack([nn.functional.one_hot(torch.where(sel == k, y, (y + 1) % 10), 10).float()
                             for k in range(3)])
        return [Mixture(Gaussian(comps, torch.full_like(comps, -30.0))) for _ in subsets]

    def decode(self, z, m):
        return z

    def sample_prior(self, n):
        return nn.functional.one_hot(torch.randint(0, 10, (n,)), 10).float()


@pytest.mark.parametrize("how", ["mean", "component"])
def test_coherence_follows_eval_mixture_representation(how):
    """coherence decodes a draw from EvalContext.posteriors: under "component" the selected component (always the
    right class here: coherence 1), under "mean" the whole mixture (a component drawn per row: right 1/3 of the time)."""
    from mmbench.metrics.coherence import coherence
    from mmbench.registry import DATASETS

    y = torch.arange(600) % 10
    onehot = nn.functional.one_hot(y, 10).float()
    mods = [Modality(m, (10,), kind="vector") for m in BlockRight.names]
    split = DataSplit(mods, {m.name: onehot for m in mods}, y)
    ctx = EvalContext(model=BlockRight(), spec=DATASETS.get("polydigits")(), variant="vanilla", train=split, test=split,
                      test_full=split, cfg=EvalConfig(joint_samples=10, batch_size=300, mixture_representation=how),
                      device=torch.device("cpu"))
    ctx._classifiers = {m: nn.Identity() for m in BlockRight.names}
    torch.manual_seed(0)
    out = coherence(ctx)
    want = 1.0 if how == "component" else 1 / 3  # SE of the mixture's: sqrt(2/9 / 600) = 0.02
    for key in ("m0->m1", "m1+m2->m0"):
        assert out[f"coherence/{key}"] == pytest.approx(want, abs=0.07)
