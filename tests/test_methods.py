"""Every method behind the one interface: shapes, batched subsets, a loss that falls on a tiny batch."""
import numpy as np
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
    losses, logs = train_steps(model, batch(32), 25, require_grad=True)
    assert set(logs) >= {"loss", "nll", "kl"}
    # Measured last/first (sampling seeds 1, 2, 3): mopoe 0.73, 0.73, 0.73; mvae 0.72, 0.72, 0.72; mmvae 0.73, 0.72,
    # 0.72; mopoe_eq5 0.72, 0.72, 0.72 (40 steps: 0.70-0.71); untrained (lr 1e-9) 1.000
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


# ----- known answers of the objectives -------------------------------------------------------
# Two vector modalities (D = 2 latent, 2 dims each, Laplace b = 0.75), m1 with rec_weight 2; fixed experts
# (whatever the input) and fixed linear decoders x̂_m = A_m z + c_m. The expected loss is written out in numpy.
KA_MODS = [Modality("m0", (2,), kind="vector"), Modality("m1", (2,), kind="vector", rec_weight=2.0)]
KA_MU = np.array([[0.6, -0.4], [-0.2, 0.9]])
KA_A = {"m0": np.array([[1.0, 0.5], [-0.3, 2.0]]), "m1": np.array([[0.7, -1.2], [0.4, 0.1]])}
KA_C = {"m0": np.array([0.1, -0.2]), "m1": np.array([0.3, 0.0])}
KA_X = {"m0": np.array([0.5, 1.0]), "m1": np.array([-0.4, 0.8])}


class FixedExpert(torch.nn.Module):
    def __init__(self, mu, logvar):
        super().__init__()
        self.mu, self.logvar = torch.tensor(mu, dtype=torch.float64), torch.tensor(logvar, dtype=torch.float64)

    def forward(self, x):
        return self.mu.expand(len(x), -1), self.logvar.expand(len(x), -1)


def ka_model(name, var, beta=1.5, **options):
    model = METHODS.get(name)(KA_MODS, MethodConfig(name, latent_dim=2, beta=beta, options=options), "rat_mlp").double()
    for i, m in enumerate(["m0", "m1"]):
        model.encoders[m] = FixedExpert(KA_MU[i], np.full(2, np.log(var[i])))
        lin = torch.nn.Linear(2, 2).double()
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(KA_A[m]))
            lin.bias.copy_(torch.tensor(KA_C[m]))
        model.decoders[m] = lin
    return model


def ka_poe(members, var, prior):
    """Precision-weighted product of the experts in `members` (+ N(0, I) if prior); precision 1/(σ² + 1e-8)."""
    prec = sum(1 / (var[i] + 1e-8) for i in members) + (1.0 if prior else 0.0)
    mu = sum(KA_MU[i] / (var[i] + 1e-8) for i in members) / prec
    return mu, 1 / prec


def ka_kl(mu, v):
    return 0.5 * np.sum(mu ** 2 + v - 1 - np.log(v))


def ka_nll(z, names, weighted=True):
    w = {"m0": 1.0, "m1": 2.0 if weighted else 1.0}
    return sum(w[m] * np.sum(np.log(2 * 0.75) + np.abs(KA_X[m] - KA_A[m] @ z - KA_C[m]) / 0.75) for m in names)


def expected_loss(name, var, unimodal_weighted=False):
    """The objective with z at the posterior mean (sharp: σ² = 1e-12, a sample is the mean ± 1e-4)."""
    both, beta = ["m0", "m1"], 1.5
    if name == "mvae":  # joint ELBO with PoE(prior, m0, m1) + one ELBO per modality with PoE(prior, m), weight 1
        comps = [ka_poe([0, 1], var, True), ka_poe([0], var, True), ka_poe([1], var, True)]
        uw = unimodal_weighted  # unimodal_weights: rec_weights (SMVAE §5) weighs each unimodal term as the joint's
        nll = ka_nll(comps[0][0], both) + ka_nll(comps[1][0], ["m0"], uw) + ka_nll(comps[2][0], ["m1"], uw)
        return nll + beta * sum(ka_kl(*c) for c in comps)
    if name in ("mopoe", "mopoe_eq5"):  # the subsets' PoEs (prior expert on the full set only), KL averaged;
        # mopoe_eq5 (MoPoE Eq. 5): every subset's ELBO, uniformly averaged -- the same number at a sharp posterior
        comps = [ka_poe([0], var, False), ka_poe([1], var, False), ka_poe([0, 1], var, True)]
    else:  # mmvae: mixture of the unimodal posteriors
        comps = [ka_poe([0], var, False), ka_poe([1], var, False)]
    # one row per mixture component (stratified), each reconstructing every modality
    return np.mean([ka_nll(mu, both) for mu, _ in comps]) + beta * np.mean([ka_kl(*c) for c in comps])


@pytest.mark.parametrize("name", ["mopoe", "mvae", "mmvae", "mopoe_eq5"])
@pytest.mark.parametrize("var", [(1e-12, 1e-12), (0.5, 2.0)], ids=["sharp", "wide"])
def test_objective_known_answer(name, var):
    """sharp: σ² ≈ 0, so the sampled z is the component's mean and the whole loss is known (which subset
    posterior reconstructs which modality, with which weight). wide: σ² 0.5 and 2 make the prior expert and
    the precision weighting visible in the KL; the decoders are then zeroed so the sample does not matter."""
    B = {"mopoe": 3, "mvae": 4, "mmvae": 2, "mopoe_eq5": 2}[name]  # one row per mixture component (eq5: any B)
    model = ka_model(name, var)
    x = {m: torch.tensor(KA_X[m]).expand(B, -1) for m in KA_X}
    if var[0] > 1e-6:
        for m in KA_A:
            with torch.no_grad():
                model.decoders[m].weight.zero_()
        saved = dict(KA_A)
        KA_A.update({m: np.zeros((2, 2)) for m in KA_A})
        try:
            want = expected_loss(name, np.array(var))
        finally:
            KA_A.update(saved)
    else:
        want = expected_loss(name, np.array(var))
    torch.manual_seed(0)
    loss, logs = model.loss(x)
    # sharp: the PoE variance is ≥ 1e-8 (the 1e-8 in the precision), so z = mean ± 1e-4: abs 0.01 on a loss ~36
    # wide: rel 1e-7 (the Laplace normaliser log(2b) is a float32 scalar)
    assert loss.item() == pytest.approx(want, rel=1e-7, abs=1e-2 if var[0] < 1e-6 else 0)


@pytest.mark.parametrize("weights", [None, "one", "rec_weights"])
def test_mvae_unimodal_elbos_weigh_their_reconstruction_as_the_option_says(weights):
    """MVAE's unimodal ELBOs: weight 1 by default (None: the option left out; MoPoE run_epochs.py, the authors' MVAE);
    with unimodal_weights rec_weights, each modality's reconstruction weight (SMVAE §5 scales every likelihood); m1
    weighs 2 here."""
    model = ka_model("mvae", (1e-12, 1e-12), **({} if weights is None else {"unimodal_weights": weights}))
    x = {m: torch.tensor(KA_X[m]).expand(4, -1) for m in KA_X}
    torch.manual_seed(0)
    loss, _ = model.loss(x)
    want = expected_loss("mvae", np.array((1e-12, 1e-12)), unimodal_weighted=weights == "rec_weights")
    other = expected_loss("mvae", np.array((1e-12, 1e-12)), unimodal_weighted=weights != "rec_weights")
    assert loss.item() == pytest.approx(want, abs=1e-2) and abs(want - other) > 1.0


def test_mvae_refuses_an_unknown_unimodal_weighting():
    with pytest.raises(Exception, match="^method.options.unimodal_weights: 'all' is not allowed; choose one of: one, rec_weights$"):
        ka_model("mvae", (1e-12, 1e-12), unimodal_weights="all")


def test_subset_masks_of_the_same_subsets_over_other_inputs_are_kept_apart():
    """subset_mask is built once per (subsets, input names): the same subsets over other inputs get their own mask."""
    model = make("mopoe")
    assert model.subset_mask([("m1",)], ["m1"]).tolist() == [[1.0]]
    assert model.subset_mask([("m1",)], model.names).tolist() == [[0.0, 1.0, 0.0]]
    assert model.subset_mask([("m1",)], ["m1", "m2"]).tolist() == [[1.0, 0.0]]


# ----- each objective term by term: a spy likelihood, leaf experts, replayed noise, the gradient ---------------
# The reconstruction term of a real model is ~1e3 nats, so a whole-loss comparison cannot see a wrong sample, a
# dropped β or a wrong subset weight. Here log p(x_m | z) is replaced by a tag -c_m ||z - x_m||² (x_m: B×D
# targets, distinct rows), the unimodal experts are float64 leaves, and the loss *and its gradient* must equal
# the objective written out independently (the KL term is then the same size as the reconstruction term).
SPY_W = {"m0": 1.0, "m1": 0.25, "m2": 3.0}  # rec_weights, one of them small
SPY_C = {"m0": 1.0, "m1": 2.0, "m2": 0.5}


def spy_setup(name, B=10, D=3, beta=1.7, **options):
    torch.manual_seed(0)
    cfg = MethodConfig(name, latent_dim=D, beta=beta, rec_weights=SPY_W, options=options)
    model = METHODS.get(name)(MODS, cfg, "polymnist_cnn").double()
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(3, B, D, generator=g, dtype=torch.float64).requires_grad_(True)
    logvar = (0.5 * torch.randn(3, B, D, generator=g, dtype=torch.float64)).requires_grad_(True)
    x = {m: torch.randn(B, D, generator=g, dtype=torch.float64) for m in model.names}
    model.unimodal = lambda x, names: (mu[[model.names.index(n) for n in names]],
                                       logvar[[model.names.index(n) for n in names]])
    model.rec_log_prob = lambda z, x, m: -SPY_C[m] * ((z - x[m]) ** 2).sum(-1)
    return model, mu, logvar, x


def spy_nll(z, x, weights):
    return sum(weights[m] * SPY_C[m] * ((z - x[m]) ** 2).sum(-1) for m in x)


def ref_poe(mu, logvar, idx, prior):
    """MoPoE divergence_measures/mm_div.py poe: precisions 1/(σ² + 1e-8), plus 1 for the N(0, I) expert."""
    prec = sum(1 / (logvar[i].exp() + 1e-8) for i in idx) + float(prior)
    return sum(mu[i] / (logvar[i].exp() + 1e-8) for i in idx) / prec, -torch.log(prec)


def ref_kl(mu, logvar):
    return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)


def ref_blocks(B, K):
    """MoPoE utils/utils.py mixture_component_selection: blocks of floor(B/K) rows, the last takes the rest."""
    size = B // K
    return [K - 1 if size == 0 else min(b // size, K - 1) for b in range(B)]


def assert_loss_and_gradient(loss, want, leaves):
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    got = torch.autograd.grad(loss, leaves, retain_graph=True)
    ref = torch.autograd.grad(want, leaves)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["mopoe", "mmvae"])
def test_mixture_objective_term_by_term_with_its_gradient(name):
    """MoPoE Def. 1 / Eq. (6) as the authors train it (run_epochs.py basic_routine_epoch): row b decodes one
    reparameterised sample of its stratified subset posterior (utils/utils.py mixture_component_selection) into
    every modality, weighted by rec_weights, + β · the subsets' KLs averaged per row (mm_div.py
    calc_group_divergence_moe); PoE prior expert on the full set only (BaseMMVae.py poe_fusion). mmvae: the same
    over the unimodal posteriors (MoPoE Eqs. 9-10)."""
    B = 10
    model, mu, logvar, x = spy_setup(name, B=B)
    subsets = [(0,), (1,), (2,)] + ([] if name == "mmvae" else [(0, 1), (0, 2), (1, 2), (0, 1, 2)])
    torch.manual_seed(7)
    loss, logs = model.loss(x)
    torch.manual_seed(7)
    eps = torch.randn(B, 3, dtype=torch.float64)
    comps = [ref_poe(mu, logvar, s, prior=len(s) == 3) for s in subsets]
    rows = ref_blocks(B, len(subsets))
    z = torch.stack([comps[k][0][b] + eps[b] * (0.5 * comps[k][1][b]).exp() for b, k in enumerate(rows)])
    kl = torch.stack([ref_kl(*c) for c in comps]).mean(0)
    want = (spy_nll(z, x, SPY_W) + 1.7 * kl).mean()
    assert float(logs["kl"]) == pytest.approx(kl.mean().item(), rel=1e-12)
    assert_loss_and_gradient(loss, want, (mu, logvar))


@pytest.mark.parametrize("weights", ["one", "rec_weights"])
def test_mvae_objective_term_by_term_with_its_gradient(weights):
    """MVAE as the MoPoE authors train it (run_epochs.py basic_routine_epoch, poe_unimodal_elbos; utils.py
    calc_elbo): joint ELBO of PoE(prior, all) decoding every modality with rec_weights, + one ELBO per modality
    whose own PoE(prior, x_m) sample reconstructs x_m alone (weight 1, or its rec_weight with the option), every
    KL weighted by β."""
    B = 6
    model, mu, logvar, x = spy_setup("mvae", B=B, unimodal_weights=weights)
    torch.manual_seed(7)
    loss, logs = model.loss(x)
    torch.manual_seed(7)
    eps = torch.randn(4, B, 3, dtype=torch.float64)
    comps = [ref_poe(mu, logvar, s, prior=True) for s in [(0, 1, 2), (0,), (1,), (2,)]]
    z = [m_ + e * (0.5 * lv).exp() for (m_, lv), e in zip(comps, eps)]
    want = spy_nll(z[0], x, SPY_W) + 1.7 * sum(ref_kl(*c) for c in comps)
    for i, m in enumerate(model.names):
        want = want + spy_nll(z[i + 1], {m: x[m]}, SPY_W if weights == "rec_weights" else {m: 1.0})
    assert float(logs["nll"]) == pytest.approx(spy_nll(z[0], x, SPY_W).mean().item(), rel=1e-12)
    assert_loss_and_gradient(loss, want.mean(), (mu, logvar))


def test_eq5_objective_term_by_term_with_its_gradient():
    """MoPoE Eqs. (4)-(5) (Table 7): every subset posterior's reparameterised sample reconstructs every modality of
    the same row (rec_weights), + β · its KL, averaged uniformly over the 2^M - 1 subsets and the batch."""
    B = 5
    model, mu, logvar, x = spy_setup("mopoe_eq5", B=B)
    subsets = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    torch.manual_seed(7)
    loss, _ = model.loss(x)
    torch.manual_seed(7)
    eps = torch.randn(len(subsets), B, 3, dtype=torch.float64)
    terms = []
    for s, e in zip(subsets, eps):
        m_, lv = ref_poe(mu, logvar, s, prior=len(s) == 3)
        terms.append(spy_nll(m_ + e * (0.5 * lv).exp(), x, SPY_W) + 1.7 * ref_kl(m_, lv))
    assert_loss_and_gradient(loss, torch.stack(terms).mean(), (mu, logvar))


@pytest.mark.parametrize("name", ["mopoe", "mvae", "mmvae", "mopoe_eq5"])
def test_reconstruction_term_trains_the_encoders(name):
    """The reconstruction term is E_q[log p(X | z)] with z = μ + ε σ (reparameterised, MoPoE BaseMMVae.py
    reparameterize): with β = 0 (no KL) the encoders still get a gradient, through the decoded sample."""
    model = make(name, latent=4)
    model.beta = 0.0
    torch.manual_seed(0)
    model.loss(batch(4))[0].backward()
    for m in model.names:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[m].parameters()), m
