"""MM-VAMP paper methods (independent, aggregated, mmvamp) and the PolyMNIST ResNet: interface, known answers, pipeline."""
import math

import numpy as np
import pytest
import torch

from mmbench.config import build_run_config
from mmbench.data.base import Modality
from mmbench.errors import MMBenchError
from mmbench.evaluate import execute
from mmbench.methods.base import Gaussian, MethodConfig, Mixture, all_subsets
from mmbench.methods.mmvamp import annealed_alpha, rate_bound, rate_mc
from mmbench.registry import ARCHITECTURES, METHODS
from mmbench.results import Run
from conftest import assert_latent_accuracies, gpu_tests_asked, on_gpu_if_asked, train_steps
from test_methods import KA_A, KA_C, KA_MU, KA_X, ka_model

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]
NEW = ["independent", "aggregated", "mmvamp"]


def make(name, latent=8, beta=1.0, **options):
    torch.manual_seed(0)
    return METHODS.get(name)(MODS, MethodConfig(name, latent_dim=latent, beta=beta, options=options), "polymnist_cnn")


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(n, 3, 28, 28, generator=g) for m in MODS}


# ----- interface ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_interface_shapes(name):
    model = make(name)
    x = batch()
    subsets = all_subsets(model.names)
    qs = model.encode_subsets(x, subsets)
    assert len(qs) == len(subsets)
    for s, q in zip(subsets, qs):
        assert isinstance(q, (Gaussian, Mixture))
        assert q.mean.shape == (16, 8) and q.rsample().shape == (16, 8) and q.log_prob(q.rsample()).shape == (16,)
        for m in model.names:  # every subset's latent decodes to every modality
            assert model.decode(q.rsample(), m).shape == (16, 3, 28, 28)
    assert model.decode(model.sample_prior(4), "m1").shape == (4, 3, 28, 28)
    only = {"m1": x["m1"]}
    q1 = model.encode(only, ("m1",))
    mu, _ = model.unimodal(x, ["m1"])
    assert isinstance(q1, Gaussian) and torch.allclose(q1.mean, mu[0])  # one modality: its own posterior


@pytest.mark.parametrize("name,options", [("independent", {}), ("aggregated", {}), ("aggregated", {"aggregation": "poe"}),
                                          ("mmvamp", {}), ("mmvamp", {"rate": "mc"}),
                                          ("mmvamp", {"alpha": 1.0, "alpha_anneal_steps": 20})])
def test_loss_falls_with_finite_gradients(name, options):
    model = make(name, **options)
    losses, logs = train_steps(model, batch(16), 30, require_grad=True)
    assert set(logs) >= {"loss", "nll", "kl"} and all(math.isfinite(v) for v in logs.values())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", ["independent", "mmvamp"])
def test_per_modality_latents_mixture_for_subsets(name):
    model = make(name)
    x = batch()
    q = model.encode(x, ("m0", "m2"))
    mu, logvar = model.unimodal(x, ["m0", "m2"])
    assert isinstance(q, Mixture)
    assert torch.allclose(q.mean, mu.mean(0), atol=1e-6)
    z = torch.randn(16, 8)
    h = torch.logsumexp(torch.stack([Gaussian(mu[i], logvar[i]).log_prob(z) for i in range(2)]), 0) - math.log(2)
    assert torch.allclose(q.log_prob(z), h, atol=1e-5)


def test_bad_options_are_refused():
    with pytest.raises(MMBenchError, match="rate"):
        make("mmvamp", rate="exact")
    with pytest.raises(MMBenchError, match="alpha"):
        make("mmvamp", alpha=1.5)
    with pytest.raises(MMBenchError, match="beta_convention"):
        make("independent", beta_convention="sometimes")
    with pytest.raises(MMBenchError, match="average"):
        make("aggregated", average="median")


# ----- known answers ------------------------------------------------------------------------

def test_aggregated_posterior_is_mean_of_unimodal_means_and_scales():
    x = batch()
    for average in ("variance", "std"):
        model = make("aggregated", average=average)
        mu, logvar = model.unimodal(x, model.names)
        for s, idx in [(("m0", "m2"), [0, 2]), (("m0", "m1", "m2"), [0, 1, 2])]:
            q = model.encode(x, s)
            assert torch.allclose(q.mean, mu[idx].mean(0), atol=1e-6)  # Eq. 15
            if average == "variance":  # Eq. 16 with σ the variance (N(μ, σI), Eq. 11)
                assert torch.allclose(q.logvar.exp(), logvar[idx].exp().mean(0), rtol=1e-5)
            else:
                assert torch.allclose((0.5 * q.logvar).exp(), (0.5 * logvar[idx]).exp().mean(0), rtol=1e-5)
    poe = make("aggregated", aggregation="poe")
    mu, logvar = poe.unimodal(x, poe.names)
    prec = 1 / (logvar.exp() + 1e-8)
    assert torch.allclose(poe.encode(x, tuple(poe.names)).logvar, -torch.log(prec.sum(0)), atol=1e-5)


def test_beta_conventions():
    """loss - nll = β·KL (paper) or the code's weight·KL: β·M for the aggregated VAE (M = 3), β² for independent
    VAEs, at β = 4 (so β·M, β², 2β and β all differ). In float64: beside the NLL the KL term is small, and float32's
    rounding of the loss would hide a wrong weight."""
    x = {k: v.double() for k, v in batch().items()}
    beta = 4.0
    for name, factor in [("aggregated", 3.0), ("independent", beta)]:
        logs = {}
        for conv in ("paper", "code"):
            model = make(name, beta=beta, beta_convention=conv).double()
            torch.manual_seed(5)
            loss, out = model.loss(x)
            logs[conv] = {k: float(v) for k, v in out.items()}  # logs are detached 0-d tensors
        assert logs["code"]["nll"] == pytest.approx(logs["paper"]["nll"], rel=1e-12)
        assert logs["code"]["kl"] == pytest.approx(logs["paper"]["kl"], rel=1e-12) and logs["paper"]["kl"] > 0
        assert logs["paper"]["loss"] - logs["paper"]["nll"] == pytest.approx(beta * logs["paper"]["kl"], rel=1e-9)
        assert logs["code"]["loss"] - logs["code"]["nll"] == pytest.approx(factor * beta * logs["paper"]["kl"],
                                                                           rel=1e-9), name


# Tiny case: M = 3 Gaussians in 2-d, densities on a grid, computed with numpy independently of the package.
MU = np.array([[0.0, 0.0], [1.5, -0.5], [-1.0, 1.2]])
STD = np.array([[1.0, 0.6], [0.5, 1.1], [1.3, 0.8]])
AX = np.linspace(-12, 12, 1201)
DA = (AX[1] - AX[0]) ** 2
GX, GY = np.meshgrid(AX, AX, indexing="ij")


def grid_density(mu, std):
    return np.exp(-0.5 * (((GX - mu[0]) / std[0]) ** 2 + ((GY - mu[1]) / std[1]) ** 2)) / (2 * np.pi * std[0] * std[1])


def grid_kl(p, q):
    mask = p > 1e-300
    return float((p[mask] * (np.log(p[mask]) - np.log(q[mask]))).sum() * DA)


def torch_params():
    return torch.tensor(MU, dtype=torch.float64)[:, None], torch.tensor(2 * np.log(STD), dtype=torch.float64)[:, None]


def mc_rate(alpha, n=200_000):
    mu, logvar = torch_params()
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(3, n, 2, generator=g, dtype=torch.float64)
    mu_n, lv_n = mu.expand(3, n, 2), logvar.expand(3, n, 2)
    r = rate_mc(mu_n + eps * (0.5 * lv_n).exp(), mu_n, lv_n, alpha)  # 3×n
    return r.mean(1).numpy(), r.std(1).numpy() / math.sqrt(n)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_mc_rate_matches_grid_kl_and_bound_upper_bounds_it(alpha):
    qs = [grid_density(MU[m], STD[m]) for m in range(3)]
    std_normal = grid_density(np.zeros(2), np.ones(2))
    h = (1 - alpha) * sum(qs) / 3 + alpha * std_normal
    assert h.sum() * DA == pytest.approx(1.0, abs=1e-6)  # the grid holds the whole mass
    kl = np.array([grid_kl(q, h) for q in qs])
    est, se = mc_rate(alpha)
    assert np.all(np.abs(est - kl) < 4 * se + 2e-3), (est, kl, se)
    # the closed-form bound, computed independently: (1-α)/M Σ_k KL(q_m||q_k) + α KL(q_m||N(0,I))
    var = STD ** 2

    def kl_gauss(m1, v1, m2, v2):
        return 0.5 * np.sum(np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)

    bound = np.array([(1 - alpha) / 3 * sum(kl_gauss(MU[m], var[m], MU[k], var[k]) for k in range(3))
                      + alpha * kl_gauss(MU[m], var[m], np.zeros(2), np.ones(2)) for m in range(3)])
    mu, logvar = torch_params()
    package_bound = rate_bound(mu, logvar, alpha)[:, 0].numpy()
    assert np.allclose(package_bound, bound, rtol=1e-10)
    assert np.all(package_bound >= kl - 1e-6)  # Jensen: the package's bound is above the grid KL
    assert np.all(package_bound > est)  # ... and above its own MC estimate of the rate


def test_sum_of_kls_is_m_times_jensen_shannon():
    qs = [grid_density(MU[m], STD[m]) for m in range(3)]
    h = sum(qs) / 3

    def entropy(p):
        mask = p > 1e-300
        return float(-(p[mask] * np.log(p[mask])).sum() * DA)

    js = entropy(h) - np.mean([entropy(q) for q in qs])  # generalised JS with uniform weights (Lin 1991)
    est, se = mc_rate(0.0)
    # MM-VAMP Eq. 4: the summed rate of the package is M times the JS divergence of the unimodal posteriors
    assert est.sum() == pytest.approx(3 * js, abs=4 * np.sqrt((se ** 2).sum()) + 3e-3)
    mu, logvar = torch_params()
    assert rate_bound(mu, logvar, 0.0).sum().item() > 3 * js  # the Jensen bound is strictly looser here


def test_mmvamp_loss_uses_the_chosen_rate():
    x = batch()
    model = make("mmvamp")
    mu, logvar = model.unimodal(x, model.names)
    torch.manual_seed(3)
    _, logs = model.loss(x)
    assert logs["kl"] == pytest.approx(rate_bound(mu, logvar).sum(0).mean().item(), rel=1e-5)
    # identical posteriors: h = q_m, the bound and the MC rate are both exactly zero
    same = {m: x["m0"] for m in model.names}
    for m in ("m1", "m2"):
        model.encoders[m].load_state_dict(model.encoders["m0"].state_dict())
    for rate in ("bound", "mc"):
        model.opt["rate"] = rate
        _, logs = model.loss(same)
        assert abs(logs["kl"]) < 1e-4


@pytest.mark.parametrize("conv", ["paper", "code"])
def test_mmvamp_loss_weights_its_rate_by_beta_and_decodes_each_modality_from_its_own_latent(conv):
    """MM-VAMP §5: loss = nll + β·rate under both conventions (not β², not β·M), and z_m decodes x_m only (Eq. 2):
    changing x_m1 leaves modality m0's reconstruction term as it was."""
    x = batch()
    model = make("mmvamp", beta=2.0, beta_convention=conv)
    torch.manual_seed(5)
    loss, logs = model.loss(x)
    assert float(loss.detach()) == pytest.approx(float(logs["nll"]) + 2.0 * float(logs["kl"]), rel=1e-5)

    def decoder_m0_grads(xx):  # decoder m0 sees only z_0 ~ q_0(z | x_m0) and x_m0
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        model.loss(xx)[0].backward()
        return [p.grad.clone() for p in model.decoders["m0"].parameters()]

    other = dict(x, m1=batch(seed=9)["m1"])
    for a, b in zip(decoder_m0_grads(x), decoder_m0_grads(other)):
        assert torch.equal(a, b)
    changed = [p.grad for p in model.decoders["m1"].parameters()]
    decoder_m0_grads(x)
    assert any(not torch.equal(a, p.grad) for a, p in zip(changed, model.decoders["m1"].parameters()))


@pytest.mark.parametrize("tier", ["full", "quick"])
def test_mmvamp_suite_anneals_to_the_mixture_prior_within_each_tiers_training(tier):
    """MM-VAMP's prior is the mixture (Eq. 3, alpha 0): in every tier that trains for real, alpha has annealed below
    0.01 by the last step (the quick tier once kept the full 300,000-step schedule: alpha 0.70 after 10 epochs)."""
    from pathlib import Path

    from mmbench.suite import load_suite

    train_size = {"polymnist": 60_000, "celeba": 162_770}  # translated PolyMNIST, CelebA's train partition
    suite = load_suite(Path(__file__).resolve().parent.parent / "suites" / "mmvamp.yaml")
    annealed = [r for r in suite.runs(tier) if r.method.name == "mmvamp" and r.method.options.get("alpha", 0) > 0]
    assert {r.dataset for r in annealed} == set(train_size)
    for r in annealed:
        o = r.method.options
        samples = r.train.epochs * min(train_size[r.dataset], r.train.max_train or train_size[r.dataset])
        end = annealed_alpha(o["alpha"], o["alpha_anneal_steps"], samples / o["alpha_anneal_batch"])
        assert end < 0.01, (r.dataset, o, end)


def test_mmvamp_suite_coherence_classifiers_as_the_paper_and_its_code():
    """Translated PolyMNIST: refused below the paper's "above 98%" (App. B.2.2), 50 epochs (mmvampvae MyClfConfig);
    rats: 51 epochs (MyClfRatsConfig) and a floor above the majority odor (it was 10 epochs and no floor)."""
    from pathlib import Path

    from mmbench.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parent.parent / "suites" / "mmvamp.yaml")
    for tier in ("full", "quick"):
        got = {(r.dataset, r.eval.classifier_epochs, r.eval.classifier_min_accuracy) for r in suite.runs(tier)
               if r.dataset != "celeba"}
        assert got == {("polymnist", 50, 0.98), ("rats", 51, 0.5)}, (tier, got)


def test_alpha_annealing_schedule_and_step_counter():
    assert annealed_alpha(1.0, 100, 0) == 1.0
    assert annealed_alpha(1.0, 100, 50) == pytest.approx(math.sqrt(1e-10), rel=1e-6)
    assert annealed_alpha(1.0, 100, 100) == pytest.approx(1e-10, rel=1e-6)
    assert annealed_alpha(0.4, 0, 1000) == 0.4
    mu, logvar = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    assert torch.allclose(rate_bound(mu, logvar, 1.0), Gaussian(mu, logvar).kl_standard_normal())
    model = make("mmvamp", alpha=1.0, alpha_anneal_steps=10)
    x = batch(4)
    model.loss(x)
    model.loss(x)
    with torch.no_grad():
        model.loss(x)
    model.eval()
    model.loss(x)
    assert int(model.train_steps) == 2 and "train_steps" in model.state_dict()
    assert float(model.alpha()) == pytest.approx(annealed_alpha(1.0, 10, 2), rel=1e-12)  # at step 2 of 10, not row 8


# the two-modality known-answer setting of tests/test_methods.py: m1 with rec_weight 2, fixed experts, linear decoders
VEC_X, VEC_A, VEC_C = KA_X, KA_A, KA_C
VEC_MU = {"m0": KA_MU[0], "m1": KA_MU[1]}


def vec_model(name, **options):
    """Two 2-dim Laplace modalities (m1 rec_weight 2), latent 2, sharp fixed experts (σ² = e^-40), linear decoders."""
    torch.manual_seed(0)
    return ka_model(name, (math.exp(-40.0), math.exp(-40.0)), beta=1.0, **options)


def vec_batch(B=3):
    return {m: torch.tensor(v).expand(B, -1) for m, v in VEC_X.items()}


@pytest.mark.parametrize("name", ["independent", "mmvamp"])
def test_per_modality_nll_is_weighted_by_rec_weight(name):
    """MM-VAMP Eq. 2 / Fig. 1a: nll = Σ_m w_m · -log Laplace(x_m; A_m μ_m + c_m, 0.75), each modality from its own
    (sharp) latent, rec_weights (1, 2); written out in numpy."""
    _, logs = vec_model(name).loss(vec_batch())
    want = sum(w * np.sum(np.log(1.5) + np.abs(VEC_X[m] - VEC_A[m] @ VEC_MU[m] - VEC_C[m]) / 0.75)
               for m, w in (("m0", 1.0), ("m1", 2.0)))
    assert float(logs["nll"]) == pytest.approx(want, rel=1e-7)


def test_alpha_schedule_counts_fractional_steps_of_the_anneal_batch():
    """alpha_anneal_batch 128, three training steps of 100 rows: the schedule stands at t = 300/128 = 2.34375 of
    its 10 steps, α = α0 · exp(t/10 · (log 1e-10 − log(α0 + 1e-10))) (the exp_annealing formula, in numpy)."""
    model = vec_model("mmvamp", alpha=0.8, alpha_anneal_steps=10, alpha_anneal_batch=128)
    x = vec_batch(100)
    for _ in range(3):
        model.loss(x)
    want = 0.8 * np.exp(300 / 128 / 10 * (np.log(1e-10) - np.log(0.8 + 1e-10)))
    assert model.alpha() == pytest.approx(want, rel=1e-12)


# ----- the ResNet -----------------------------------------------------------------------------

def test_polymnist_resnet_shapes():
    torch.manual_seed(0)
    arch = ARCHITECTURES.get("polymnist_resnet")
    enc, dec = arch.encoder(MODS[0], 8), arch.decoder(MODS[0], 8)
    mu, logvar = enc(torch.rand(2, 3, 28, 28))
    assert mu.shape == logvar.shape == (2, 8)
    assert dec(mu).shape == (2, 3, 28, 28)
    clf = ARCHITECTURES.get("polymnist_resnet_clf").classifier(MODS[0], 10)
    assert clf(torch.rand(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(MMBenchError, match="28×28"):
        arch.encoder(Modality("svhn", (3, 32, 32)), 8)


# ----- the real pipeline --------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_one_epoch_through_train_and_evaluate(name, tmp_path, data_root):
    cfg = build_run_config({
        "dataset": "polydigits", "method": {"name": name, "latent_dim": 8},
        "train": {"epochs": 1, "batch_size": 32, "max_train": 200},
        "eval": {"metrics": ["latent_classification"], "test_samples": 100, "lr_train_samples": 100}})
    metrics = execute(Run(cfg, tmp_path / name), data_root)["metrics"]
    names = [f"m{i}" for i in range(5)]
    assert_latent_accuracies(metrics, n_test=100)
    assert f"latent_acc/{'+'.join(names)}" in metrics and "latent_acc_by_n/5" in metrics


@pytest.mark.parametrize("alpha", [1.0, 0.5, 1e-3, 1e-12])
def test_an_annealed_device_alpha_gives_the_rates_and_schedule_of_a_host_alpha(alpha):
    """An annealed MM-VAMP α is computed on the device (a float64 tensor from the run's counters); the rates at a
    tensor α equal those at the same α as a Python float (a constant α; both rates, α = 1 where "mc" has one term on
    the host and a log-0 term on the device), and the device schedule is the host's at every position."""
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g) * 0.3
    z = mu + torch.randn(3, 5, 4, generator=g) * (0.5 * logvar).exp()
    a = torch.tensor(alpha, dtype=torch.float64)
    torch.testing.assert_close(rate_bound(mu, logvar, a), rate_bound(mu, logvar, alpha), rtol=1e-6, atol=0)
    torch.testing.assert_close(rate_mc(z, mu, logvar, a), rate_mc(z, mu, logvar, alpha), rtol=1e-6, atol=1e-6)
    # bf16 autocast (an unpacked bf16 run's rates, and a bf16 pack's: it loops, α still a device tensor); under
    # MMBENCH_GPU_TESTS=1 (device-check.sh) on the GPU, whose autocast keeps exp and pow in fp32 (the CPU's does not):
    # there a bf16 rate would scale by α rounded to bf16, a float32 rate by α rounded to float32, as a Python α does
    on_gpu_if_asked()
    dev = "cuda" if gpu_tests_asked() else "cpu"
    with torch.autocast(dev, dtype=torch.bfloat16):
        hb, lb, zb = (t.to(dev, torch.bfloat16) for t in (mu, logvar, z))
        ad = a.to(dev)  # float64 on the device, as MMVAMP.alpha() gives it
        assert torch.equal(rate_bound(hb, lb, ad), rate_bound(hb, lb, alpha))
        assert torch.equal(rate_mc(zb, hb, lb, ad), rate_mc(zb, hb, lb, alpha))
    t = torch.tensor([0.0, 0.5, 3.0, 17.25, 300.0], dtype=torch.float64)
    want = [annealed_alpha(alpha, 20, float(ti)) for ti in t]
    assert annealed_alpha(alpha, 20, t).tolist() == pytest.approx(want, rel=1e-12, abs=0)
