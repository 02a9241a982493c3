"""Known answers and invariances of the MM-VAMP baselines, SMVAE/VGON and mrVAE objectives that a wrong edit of the
loss could otherwise change unnoticed (each test names what it pins down)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mmbench.data.base import Modality
from mmbench.methods.base import Gaussian, MethodConfig
from mmbench.methods.smvgon import vgon_elbo
from mmbench.registry import METHODS
from test_methods import KA_A, KA_C, KA_MODS, KA_MU, KA_X, ka_model

IMG = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]


def img_batch(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {m.name: torch.rand(n, 3, 28, 28, generator=g).to(dtype) for m in IMG}


def img_model(name, latent=4, beta=1.0, **options):
    torch.manual_seed(0)
    return METHODS.get(name)(IMG, MethodConfig(name, latent_dim=latent, beta=beta, options=options), "polymnist_cnn")


def laplace_nll(z, weights):
    """Σ_m w_m · -log Laplace(x_m; A_m z + c_m, b = 0.75) of the two-modality known-answer setting, in numpy."""
    return sum(weights[m] * np.sum(np.log(1.5) + np.abs(KA_X[m] - KA_A[m] @ z - KA_C[m]) / 0.75) for m in KA_X)


def ka_batch(B=3):
    return {m: torch.tensor(v).expand(B, -1) for m, v in KA_X.items()}


# ----- aggregated VAE (MM-VAMP App. B.2) --------------------------------------------------------------------

def test_aggregated_defaults_average_variances_and_weigh_the_kl_by_beta():
    """With no options the aggregated VAE is the paper's: Eq. 16 averages the variances (σ I is the covariance of
    N(μ, σ I), Eq. 11) and the KL weighs β, not β·M. Experts of variance 0.5 and 2 (mean 1.25; the mean of the
    standard deviations squared would be ≈ 1.13), zeroed decoders, β = 1.5: loss = nll + 1.5 · KL, in numpy."""
    var = np.array([0.5, 2.0])
    model = ka_model("aggregated", (var[0], var[1]), beta=1.5)
    with torch.no_grad():
        for m in model.names:
            model.decoders[m].weight.zero_()
    q = model.encode(ka_batch(), ("m0", "m1"))
    assert torch.allclose(q.logvar.exp(), torch.full((3, 2), var.mean(), dtype=torch.float64), rtol=1e-12)
    torch.manual_seed(0)
    loss, logs = model.loss(ka_batch())
    mu = KA_MU.mean(0)
    kl = 0.5 * np.sum(mu ** 2 + var.mean() - 1 - np.log(var.mean()))
    assert float(logs["kl"]) == pytest.approx(kl, rel=1e-12)
    nll = sum(w * np.sum(np.log(1.5) + np.abs(KA_X[m] - KA_C[m]) / 0.75) for m, w in (("m0", 1.0), ("m1", 2.0)))
    assert loss.item() == pytest.approx(nll + 1.5 * kl, rel=1e-12)


@pytest.mark.parametrize("aggregation", ["avg", "poe"])
def test_aggregated_nll_weighs_each_modality_by_its_rec_weight_at_the_joint_latent(aggregation):
    """MM-VAMP App. B.2: one joint z decodes every modality; Σ_m w_m · -log p(x_m | z) with rec_weights (1, 2). Sharp
    experts (σ² = e^-40): z is the aggregate's mean (avg: the mean of the means, Eq. 15; poe of equal precisions: the
    same), written out in numpy."""
    model = ka_model("aggregated", (math.exp(-40.0), math.exp(-40.0)), beta=1.0, aggregation=aggregation)
    torch.manual_seed(0)
    _, logs = model.loss(ka_batch())
    # poe: precision capped at 1/(σ² + 1e-8), so z = mean ± 1e-4 there (abs 1e-2 on ~6.8; the weights move it by >1)
    want = laplace_nll(KA_MU.mean(0), {"m0": 1.0, "m1": 2.0})
    assert float(logs["nll"]) == pytest.approx(want, rel=1e-7, abs=1e-2 if aggregation == "poe" else 0)


def test_aggregated_and_independent_decode_a_sample_not_the_mean():
    """The reconstruction term is an expectation under q (a reparameterised sample, MM-VAMP Eq. 2): with wide experts
    (σ² = 0.5, 2) the nll averaged over many rows is E_q[nll], which is above nll(mean) (Jensen, convex in z for
    the Laplace likelihood and linear decoders; here by a margin of several nats)."""
    var = (0.5, 2.0)
    B = 4000
    for name in ("aggregated", "independent", "mmvamp"):
        model = ka_model(name, var, beta=1.0)
        torch.manual_seed(0)
        _, logs = model.loss(ka_batch(B))
        if name == "aggregated":
            at_mean = laplace_nll(KA_MU.mean(0), {"m0": 1.0, "m1": 2.0})
        else:  # each modality from its own latent (Fig. 1a)
            at_mean = laplace_nll(KA_MU[0], {"m0": 1.0, "m1": 0.0}) + laplace_nll(KA_MU[1], {"m0": 0.0, "m1": 2.0})
        assert float(logs["nll"]) > at_mean + 1.0, name


# ----- SMVAE (Eq. 11, App. D) and the VGON step (Eqs. 8-9) --------------------------------------------------

def test_smvae_second_stage_loss_is_the_divergence_alone():
    """App. D: stage 1 maximises the surrogate ELBO alone (KL weight 1, whatever β = 0.7); in stage 2 the surrogate
    and decoders are fixed and only Eq. 10 (the subset divergence) is minimised, so the reported training loss is
    that divergence, not the surrogate's ELBO added to it."""
    model = img_model("smvae", beta=0.7, schedule="two_stage", stage1_steps=1)
    x = img_batch(4)
    loss1, logs1 = model.loss(x)  # stage 1: the surrogate ELBO
    assert loss1.item() == pytest.approx(float(logs1["nll"]) + float(logs1["kl"]), rel=1e-6)
    assert model.stage() == "stage2"
    loss2, logs2 = model.loss(x)
    assert float(logs2["div"]) > 0 and float(logs2["nll"]) > 0
    assert loss2.item() == pytest.approx(float(logs2["div"]), rel=1e-6)


def test_smvae_divergence_trains_the_surrogate_by_default():
    """SMVAE Eq. 11 is one objective over all parameters (App. D: end-to-end training moves both distributions), so
    with no options the subset divergence's gradient reaches the surrogate network too."""
    model = img_model("smvae")
    model.surrogate_elbo = lambda x, q: (torch.zeros(()), torch.zeros(()))  # the divergence is the whole loss
    torch.manual_seed(1)
    model.loss(img_batch(4))[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.surrogate_fusion.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.surrogate_encoders.parameters())


def vgon_vec_model(name, beta):
    """Two 2-dim Laplace modalities (m1 rec_weight 2), latent 2, linear decoders x̂_m = A_m z + c_m."""
    torch.manual_seed(0)
    model = METHODS.get(name)(KA_MODS, MethodConfig(name, latent_dim=2, beta=beta), "rat_mlp").double()
    for m in model.names:
        lin = nn.Linear(2, 2).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(KA_A[m]))
            lin.bias.copy_(torch.tensor(KA_C[m]))
        model.decoders[m] = lin
    return model


@pytest.mark.parametrize("name", ["vgon", "smvgon"])
def test_vgon_inner_elbo_weighs_each_modality_by_its_rec_weight(name):
    """SMVAE Eq. 8 with the paper's likelihood rescaling (§5): the ELBO whose gradient is the step of Eq. 9 is
    Σ_m w_m log p(x_m | z) - kl_weight · KL(q_λ,z0 || N(0, I)), rec_weights (1, 2), written out in numpy."""
    model = vgon_vec_model(name, beta=1.0)
    head = model.head if name == "vgon" else model.surrogate_head
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(3, 2, generator=g, dtype=torch.float64) * 0.3
    eps = torch.randn(3, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = vgon_elbo(model, head, z0, ka_batch(), model.names, eps, 0.7)
        q = head(z0)
    mu, logvar = q.mu.numpy(), q.logvar.numpy()
    z = mu + eps.numpy() * np.exp(0.5 * logvar)
    for b in range(3):
        kl = 0.5 * np.sum(mu[b] ** 2 + np.exp(logvar[b]) - 1 - logvar[b])
        want = -laplace_nll(z[b], {"m0": 1.0, "m1": 2.0}) - 0.7 * kl
        assert float(got[b]) == pytest.approx(want, rel=1e-7)


def test_vgon_loss_weighs_its_kl_by_beta():
    """vgon (SMVAE Eqs. 8-9 as a model on its own): loss = Σ_m w_m (-log p(x_m | z)) + β · KL(q_λ,ẑ0 || N(0, I)) with
    cfg.beta = 2.5 (not 1), in float64."""
    model = vgon_vec_model("vgon", beta=2.5)
    torch.manual_seed(0)
    loss, logs = model.loss(ka_batch())
    assert float(logs["kl"]) > 0
    assert loss.item() - float(logs["nll"]) == pytest.approx(2.5 * float(logs["kl"]), rel=1e-9)


def test_jmvae_joint_elbo_reconstructs_each_modality_with_its_rec_weight():
    """JMVAE Eq. 13's ELBO term with the likelihood rescaling (SMVAE §5): at a sharp joint posterior (σ² = e^-40) the
    nll is Σ_m w_m Laplace NLL(x_m; A_m μ + c_m), rec_weights (1, 2), written out in numpy."""
    model = vgon_vec_model("jmvae", beta=1.0)
    mu = np.array([0.6, -0.4])
    model.joint = lambda x: Gaussian(torch.tensor(mu).expand(3, -1), torch.full((3, 2), -40.0, dtype=torch.float64))
    torch.manual_seed(0)
    _, logs = model.loss(ka_batch())
    assert float(logs["nll"]) == pytest.approx(laplace_nll(mu, {"m0": 1.0, "m1": 2.0}), rel=1e-7)


# ----- mrVAE (App. A.1 second case, Eqs. 4 and 8) ------------------------------------------------------------

@pytest.mark.parametrize("objective", ["q", "r"])
def test_mrvae_structure_terms_are_kl_divergences_so_positive_on_average(objective):
    """objective q draws (n, y) from the prior q and adds log q(n, y) - log r(n, y | z) (Eq. 4's third term, negated):
    averaged over the draws that is KL(q || r) >= 0 (Gibbs). objective r (App. A.1 Eq. 7) draws them from r and adds
    KL(r(n) || q(n)) exactly and log r(y) - log q(y) at the drawn y, on average KL(r(y) || q(y)) >= 0. With r's
    scores and size logits pushed far from the prior both are clearly positive, for the sizes and the selections."""
    torch.manual_seed(0)
    cfg = MethodConfig("mrvae", latent_dim=4, beta=1.0, options={"hidden": 8, "objective": objective})
    model = METHODS.get("mrvae")(IMG, cfg, "polymnist_cnn")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.score_net.b2.add_(torch.rand(model.score_net.b2.shape, generator=g) * 6)
        model.size_net.b2.add_(torch.rand(model.size_net.b2.shape, generator=g) * 6)
        torch.manual_seed(2)
        _, logs = model.loss(img_batch(64))
    assert float(logs["kl_y"]) > 0.5 and float(logs["kl_n"]) > 0.5, logs


def mrvae_model(rec_weights=None, **options):
    torch.manual_seed(0)
    cfg = MethodConfig("mrvae", latent_dim=4, beta=1.0, rec_weights=rec_weights, options={"hidden": 8, **options})
    return METHODS.get("mrvae")(IMG, cfg, "polymnist_cnn")


@pytest.mark.parametrize("objective", ["q", "r"])
def test_mrvae_nll_is_the_rec_weighted_sum_of_the_modalities_terms(objective):
    """Eq. 26 with the dataset's likelihood rescaling: nll = Σ_m w_m · (-log p(x_m | z_m)). The same networks and
    draws under rec_weights (1,1,1), (2,1,1), (1,2,1), (1,1,2) give each modality's term c_m; weights (0.5, 3, 2)
    must then give 0.5 c_0 + 3 c_1 + 2 c_2, and the terms must add up to the unit-weight nll."""
    x = img_batch(4)

    def nll(w):
        model = mrvae_model(dict(zip(["m0", "m1", "m2"], w)), objective=objective)
        torch.manual_seed(5)
        with torch.no_grad():
            return float(model.loss(x)[1]["nll"].double())

    ones = nll((1.0, 1.0, 1.0))
    c = [nll(tuple(2.0 if i == m else 1.0 for i in range(3))) - ones for m in range(3)]
    assert sum(c) == pytest.approx(ones, rel=1e-5)
    assert nll((0.5, 3.0, 2.0)) == pytest.approx(0.5 * c[0] + 3 * c[1] + 2 * c[2], rel=1e-5)


def test_mrvae_relation_networks_read_a_sample_of_the_unimodal_posteriors_when_sampling():
    """App. E.1 / Eqs. 33-38: r_ψ(n, y | z) reads z ~ q(z_j | x_j) when the relation is sampled (training, objective
    r) and the posterior means otherwise. Posteriors N(0, 4): the networks' inputs have standard deviation 2."""
    model = mrvae_model(objective="r")
    seen = []
    hooks = [net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
             for net in (model.size_net, model.score_net)]
    mu = torch.zeros(3, 512, 4)
    logvar = torch.full((3, 512, 4), math.log(4.0))
    with torch.no_grad():
        torch.manual_seed(0)
        model.relate(mu, logvar, [True] * 3, sample=True)
        assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # one z for both networks
        assert abs(float(seen[0].std()) - 2.0) < 0.1 and abs(float(seen[0].mean())) < 0.1
        seen.clear()
        model.relate(mu, logvar, [True] * 3, sample=False)
        assert torch.equal(seen[0], mu)
    for h in hooks:
        h.remove()


def test_mmvamp_mc_rate_is_read_at_the_latent_that_is_reconstructed():
    """MM-VAMP Eq. 4, rate "mc": log q_m(z_m) - log h(z_m) at the one sample z_m ~ q_m that decoder m reconstructs
    (not at a second draw). The loss's first draw is replayed with the same seed; wide experts (σ² = 0.5, 2)."""
    from mmbench.methods.mmvamp import rate_mc

    model = ka_model("mmvamp", (0.5, 2.0), beta=1.0, rate="mc")
    x = ka_batch(8)
    torch.manual_seed(4)
    _, logs = model.loss(x)
    torch.manual_seed(4)
    mu, logvar = model.unimodal(x, model.names)
    z = Gaussian(mu, logvar).rsample()
    assert float(logs["kl"]) == pytest.approx(float(rate_mc(z, mu, logvar).sum(0).mean()), rel=1e-12)
    nll = sum(w * (np.log(1.5) + np.abs(KA_X[m] - z[i].detach().numpy() @ KA_A[m].T - KA_C[m]) / 0.75).sum(-1)
              for i, (m, w) in enumerate((("m0", 1.0), ("m1", 2.0))))
    assert float(logs["nll"]) == pytest.approx(nll.mean(), rel=1e-7)


class FixedPosterior(nn.Module):
    """An encoder whose posterior is N(0, 4) in every coordinate, whatever the input."""

    def __init__(self, d):
        super().__init__()
        self.d = d

    def forward(self, x):
        return x.new_zeros(len(x), self.d), x.new_full((len(x), self.d), math.log(4.0))


@pytest.mark.parametrize("objective", ["q", "r"])
def test_mrvae_decoders_and_relation_networks_read_a_sample_of_q_z_given_the_relation(objective):
    """Eq. 4's reconstruction term is an expectation under q(z | n, y, X) (App. C.1 Eqs. 20-21: z ~ q(z | n, y, X)),
    and under objective q r_ψ(n, y | z) reads that same z. Posteriors N(0, 4): every private factor and every shared
    slot (a PoE of N(0, 4) experts) is a continuous draw around 0, so no decoder input is exactly the mean 0, and
    their spread is that of the draws (standard deviation between 2/√3 and 2)."""
    model = mrvae_model(objective=objective)
    for m in model.names:
        model.encoders[m] = FixedPosterior(4)
    dec_in, net_in = {}, []
    for m in model.names:
        model.decoders[m].register_forward_pre_hook(
            lambda mod, args, m=m: dec_in.__setitem__(m, args[0].detach().clone()))
    model.size_net.register_forward_pre_hook(lambda mod, args: net_in.append(args[0].detach().clone()))
    torch.manual_seed(3)
    with torch.no_grad():
        model.loss(img_batch(256))
    for j, m in enumerate(model.names):
        u = dec_in[m]
        assert u.shape == (256, 4) and not (u == 0).any(), m
        assert 1.0 < float(u.std()) < 2.1, (m, float(u.std()))
        if objective == "q":  # r reads the decoded z (the relation-applied latents), not the unimodal ones
            assert torch.equal(net_in[-1][j], u)


def test_mrvae_anneals_each_temperature_from_its_own_start():
    """Jang et al. 2016's schedule per temperature: τ = max(τ_min, τ_0 · exp(-rate · step)), τ_n from tau_n and τ_y
    from tau_y (here 1 and 3, rate 0.1, τ_min 0.3, after 5 steps: 0.607 and 1.820; training step 6 anneals at 6)."""
    model = mrvae_model(tau_n=1.0, tau_y=3.0, anneal_rate=0.1, tau_min=0.3)
    model.step.fill_(5)
    assert float(model.train().temperatures()[0]) == pytest.approx(math.exp(-0.6), rel=1e-12)
    model.eval()
    tau_n, tau_y = model.temperatures()
    assert float(tau_n) == pytest.approx(math.exp(-0.5), rel=1e-12)
    assert float(tau_y) == pytest.approx(3 * math.exp(-0.5), rel=1e-12)
    model.step.fill_(15)
    assert [float(t) for t in model.temperatures()] == pytest.approx([0.3, 3 * math.exp(-1.5)], rel=1e-12)


def test_mrvae_default_objective_draws_the_relation_from_the_prior():
    """mrVAE App. A.1: "We will focus on this second case" (objective q): with no options the relation (n, y) comes
    from the prior q(n, y), whatever r says. An r pinned on n_A = 0 (nothing shared) does not stop sharing; the
    structure terms then score the prior's draws against that confident r."""
    model = mrvae_model()
    with torch.no_grad():
        model.size_net.b2[:, 0] += 50.0  # r(n_A = 0 | z) ~ 1
        torch.manual_seed(0)
        _, logs = model.loss(img_batch(64))
    assert float(logs["shared_fraction"]) > 0.3 and float(logs["kl_n"]) > 20


def test_gaussian_reparameterised_sample_has_the_posterior_variance():
    """z = μ + ε · exp(logvar / 2) (Kingma & Welling 2014, the sample every method's reconstruction term decodes): mean
    μ and variance exp(logvar) (here 4 and 0.25)."""
    from mmbench.methods.base import Gaussian as G

    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64).expand(200_000, 2)
    logvar = torch.tensor([math.log(4.0), math.log(0.25)], dtype=torch.float64).expand(200_000, 2)
    z = G(mu, logvar).rsample()
    assert torch.allclose(z.mean(0), mu[0], atol=0.02)
    assert torch.allclose(z.var(0), logvar[0].exp(), rtol=0.02)


# ----- posteriors many subsets at once; the interface latent; log densities -----------------------------------

@pytest.mark.parametrize("name", ["aggregated", "independent", "mmvamp", "smvae", "jmvae"])
def test_subset_posteriors_do_not_depend_on_which_other_subsets_are_encoded_with_them(name):
    """Metrics encode every subset in one call (encode_subsets); each subset's posterior (MM-VAMP Eqs. 15-16 over the
    subset's own modalities, the PoEs of SMVAE Eq. 3, ...) must be the one it gets when encoded alone."""
    from mmbench.methods.base import all_subsets

    model = img_model(name).eval()
    x = img_batch(4)
    subsets = all_subsets(model.names)
    with torch.no_grad():
        together = model.encode_subsets(x, subsets)
        for s, q in zip(subsets, together):
            alone = model.encode(x, s)
            assert torch.allclose(q.mean, alone.mean, rtol=1e-5, atol=1e-6), s
            z = alone.mean + 0.1
            assert torch.allclose(q.log_prob(z), alone.log_prob(z), rtol=1e-5, atol=1e-5), s


def test_mmvamp_rate_uses_the_annealed_alpha():
    """The authors' exp_annealing: after training steps the rate's prior h_α = (1-α) h + α N(0, I) has the annealed α
    (here 1 -> 1e-10 over 4 steps: α = 10^-5 after 2 steps), not the initial one, for both rates."""
    from mmbench.methods.mmvamp import rate_bound, rate_mc

    for rate in ("bound", "mc"):
        model = ka_model("mmvamp", (0.5, 2.0), beta=1.0, rate=rate, alpha=1.0, alpha_anneal_steps=4)
        x = ka_batch(4)
        for _ in range(2):
            model.loss(x)
        assert model.alpha() == pytest.approx(1e-5, rel=1e-6)
        torch.manual_seed(7)
        _, logs = model.loss(x)
        torch.manual_seed(7)
        mu, logvar = model.unimodal(x, model.names)
        z = Gaussian(mu, logvar).rsample()
        want = rate_bound(mu, logvar, 1e-5) if rate == "bound" else rate_mc(z, mu, logvar, 1e-5)
        first = rate_bound(mu, logvar, 1.0) if rate == "bound" else rate_mc(z, mu, logvar, 1.0)
        assert float(logs["kl"]) == pytest.approx(float(want.sum(0).mean()), rel=1e-9), rate
        assert abs(float(want.sum(0).mean()) - float(first.sum(0).mean())) > 0.1


def test_mrvae_decodes_each_modality_from_its_own_block_of_the_interface_latent():
    """Eq. 26: z = [z_1; z_2; z_3], modality j decoded from its D factors z_j only: changing another block leaves
    decode(z, m_j) and log p(x_j | z) unchanged; changing block j changes them."""
    model = mrvae_model().eval()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 12, generator=g)
    x = img_batch(3)
    with torch.no_grad():
        for j, m in enumerate(model.names):
            own = torch.zeros_like(z)
            own[:, 4 * j:4 * (j + 1)] = 1.0
            assert torch.equal(model.decode(z, m), model.decode(z + 5.0 * (1 - own), m)), m
            assert torch.equal(model.rec_log_prob(z, x, m), model.rec_log_prob(z + 5.0 * (1 - own), x, m)), m
            assert not torch.allclose(model.decode(z, m), model.decode(z + 5.0 * own, m)), m


def test_mrvae_prior_samples_draw_a_relation_per_sample():
    """sample_prior draws a relation (n, y) from the prior of Defs. 1-2 per sample, then N(0, 1) slots: which
    coordinates of different modalities' blocks share a value (a shared slot) varies from sample to sample."""
    model = mrvae_model()
    torch.manual_seed(0)
    with torch.no_grad():
        z = model.sample_prior(200).view(200, 3, 4)
    same = torch.stack([(z[:, j, :, None] == z[:, k, None, :]).flatten(1) for j, k in ((0, 1), (0, 2), (1, 2))], 1)
    patterns = {tuple(r.tolist()) for r in same.flatten(1)}
    assert len(patterns) > 20
    assert same.any(-1).any(-1).float().mean() > 0.5  # most prior draws share something


def test_mmvamp_mc_rate_is_differentiated_through_the_reparameterised_sample():
    """rate "mc" (MM-VAMP Eq. 4) estimates KL(q_m || h_α) at z_m = μ_m + ε σ_m, and its gradient flows through that
    sample (pathwise). At α = 1 the prior is N(0, I), so the expected gradient w.r.t. μ_m is ∇ KL(q_m || N(0, I)) = μ_m
    (a gradient with z held fixed would average to 0). Zeroed decoders: the rate is the only term that moves μ."""
    model = ka_model("mmvamp", (0.5, 0.5), beta=1.0, rate="mc", alpha=1.0)
    with torch.no_grad():
        for m in model.names:
            model.decoders[m].weight.zero_()
    for m in model.names:
        model.encoders[m].mu = model.encoders[m].mu.clone().requires_grad_(True)
    torch.manual_seed(0)
    model.loss(ka_batch(20_000))[0].backward()
    for i, m in enumerate(model.names):  # loss = batch mean: the gradient is the mean per-row gradient, ± 0.005
        assert np.allclose(model.encoders[m].mu.grad.numpy(), KA_MU[i], atol=0.03), m


@pytest.mark.parametrize("pool", ["mean", "product"])
def test_mrvae_relation_from_r_is_scored_against_the_size_prior_the_option_names(pool):
    """Def. 1 in its sequential form: the first subspace S_{0,1,2} is allocated from nothing; each modality's law of its
    size is HG(k; population 4·D = 16, D = 4 marked, D = 4 drawn) (four subspaces per modality when M = 3). Pooled by
    `size_prior` ("mean": that law; "product": the normalised cube) in the prior of a relation inferred by r (which
    objective r's KL_n and the uncovered subspaces use) and of a prior draw alike."""
    from scipy import stats

    model = mrvae_model(size_prior=pool).eval()
    mu, logvar = torch.zeros(3, 2, 4), torch.zeros(3, 2, 4)
    log_hg = torch.tensor(stats.hypergeom.logpmf(np.arange(5), 16, 4, 4), dtype=torch.float64)
    want = torch.log_softmax(log_hg * (3 if pool == "product" else 1), -1)
    with torch.no_grad():
        from_r = model.relate(mu, logvar, [True] * 3, sample=False).structure[0][2]
        torch.manual_seed(0)
        from_prior = model.relate(mu, logvar, [True] * 3, sample=True, from_prior=True).size_terms[2][0]
    assert torch.allclose(from_r.double(), want.expand(2, 5), atol=1e-6)
    assert torch.allclose(from_prior.double(), want.expand(2, 5), atol=1e-6)


def test_mrvae_posterior_of_an_unshared_relation_is_the_unimodal_posteriors():
    """With r sure that nothing is shared (n_A = 0 for every subspace), every factor is private: q(z | n, y, X) on
    z = [z_1; z_2; z_3] is the concatenation of the unimodal posteriors q(z_j | x_j), block by block."""
    model = mrvae_model().eval()
    x = img_batch(5)
    with torch.no_grad():
        model.size_net.b2[:, 0] += 50.0
        q = model.encode(x, ("m0", "m1", "m2"))
        mu, logvar = model.unimodal(x, model.names)
    assert torch.equal(q.mean, torch.cat(list(mu), -1))
    assert torch.equal(q.logvar, torch.cat(list(logvar), -1))


@pytest.mark.parametrize("name", ["vgon", "smvgon"])
def test_vgon_default_step_is_the_gon_batch_mean_step_at_the_papers_batch_size(name):
    """Eq. 9 with the GON code's batch-mean gradient at SMVAE's batch size 256 (§5): ẑ0 = 0 + ∇_z0 L / 256."""
    from mmbench.methods.smvgon import vgon_posterior

    model = img_model(name).eval()
    head = model.head if name == "vgon" else model.surrogate_head
    x = img_batch(3)
    _, grad = vgon_posterior(model, head, x, model.names, 1.0, 1.0)
    q = model.surrogate(x) if name == "smvgon" else model.posterior(x, model.names)
    with torch.no_grad():
        assert torch.allclose(q.mu, head.mu(grad / 256), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["smvae", "smvgon", "jmvae", "vae", "vgon"])
def test_joint_elbos_decode_a_sample_of_the_joint_posterior(name):
    """The reconstruction term of the surrogate's / joint encoder's ELBO (SMVAE Eqs. 1, 8, 11; JMVAE Eq. 13) is
    E_q[log p(X | z)], estimated at a reparameterised sample: with a wide joint posterior N(μ, 2 I) the nll averaged
    over many rows is above the nll at μ (Jensen: convex in z for the Laplace likelihood and linear decoders)."""
    B = 4000
    model = vgon_vec_model(name, beta=1.0)
    mu = torch.tensor(KA_MU[0]).expand(B, -1)
    q = Gaussian(mu, torch.full((B, 2), math.log(2.0), dtype=torch.float64))
    if name in ("smvae", "smvgon"):
        model.surrogate = lambda x: q
    elif name == "jmvae":
        model.joint = lambda x: q
    elif name == "vgon":
        model.posterior = lambda x, names: q
    else:  # vae: a constant joint encoder (fusion output = its bias)
        with torch.no_grad():
            model.fusion.net[2].weight.zero_()
            model.fusion.net[2].bias.copy_(torch.tensor([KA_MU[0][0], KA_MU[0][1], math.log(2.0), math.log(2.0)]))
    torch.manual_seed(0)
    with torch.no_grad():
        _, logs = model.loss(ka_batch(B))
    assert float(logs["nll"]) > laplace_nll(KA_MU[0], {"m0": 1.0, "m1": 2.0}) + 1.0
