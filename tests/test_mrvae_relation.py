"""mrVAE's relation against known answers: temperatures and straight-through gradients of the relaxations, each
modality ranked by its own pair's scores, the selection KL, masking of private factors, the size terms of the
log-ratio summed over subspaces, objective q's r-term reaching the encoders, and the logged shared fraction."""
import math

import torch

from mmbench.data.base import Modality
from mmbench.methods.base import MethodConfig
from mmbench.methods.mrvae import gumbel_softmax, rank
from mmbench.registry import METHODS

MODS = [Modality(f"m{i}", (3, 28, 28)) for i in range(3)]


def model2(d=3, **options):
    torch.manual_seed(0)
    return METHODS.get("mrvae")(MODS[:2], MethodConfig("mrvae", latent_dim=d, options={"hidden": 8, **options}),
                                "polymnist_cnn")


def pin(model, size_logits=None, scores=None):
    """Replace r's networks by fixed outputs (size logits #shared×B×(D+1), scores #pairs×B×D), all covered."""
    if size_logits is not None:
        object.__setattr__(model, "size_net", lambda z, avail: (size_logits, [True] * size_logits.shape[0]))
    if scores is not None:
        object.__setattr__(model, "score_net", lambda z, avail: (scores, [True] * scores.shape[0]))


def test_gumbel_softmax_gradient_is_that_of_softmax_over_tau():
    # noise-free, straight-through: forward one-hot, backward d softmax(l / tau) = p(1-p)/tau at p = 1/2
    logits = torch.zeros(1, 2, requires_grad=True)
    out = gumbel_softmax(logits, 0.5, hard=True, noise=False)
    (out * torch.tensor([1.0, 0.0])).sum().backward()
    assert torch.allclose(logits.grad, torch.tensor([[0.5, -0.5]]))


def test_relaxed_rank_rows_past_the_free_items_carry_no_gradient():
    w = torch.tensor([[0.3, -1.0, 0.8, 0.1]], requires_grad=True)
    free = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # 2 free items, 3 rows: row 2 does not exist
    Y = rank(w, free, 3, 1.0, sample=False, relax=True)
    assert torch.equal(Y[0, 2].detach(), torch.zeros(4))
    (Y[:, 2] * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_size_gradient_is_exact_up_to_one_past_the_drawn_size():
    # M = 2, D = 3, one shared subspace; n = argmax = 2 = D - 1: the rows computed (n + 1 = D) give the exact
    # straight-through gradient of n = Σ_k k·onehot_k: dn/dl_i = p_i (i - E_p[k]) / tau
    d = 3
    model = model2(d)
    logits = torch.tensor([[[0.0, 0.1, 1.0, 0.5]]], requires_grad=True)
    pin(model, logits, torch.zeros(2, 1, d))
    mu = torch.zeros(2, 1, d)
    rel = model.relate(mu, mu, [True, True], sample=False, with_kl=True)
    assert int(rel.sizes()[0, 0]) == 2
    rel.sizes().sum().backward()
    p = torch.softmax(logits.detach()[0, 0], -1)
    k = torch.arange(d + 1.0)
    assert torch.allclose(logits.grad[0, 0], p * (k - (p * k).sum()), atol=1e-6)


def test_each_modality_is_ranked_by_its_own_pair_scores():
    d = 3
    model = model2(d)
    size_logits = torch.tensor([[[0.0, 50.0, 0.0, 0.0]]])  # n_{01} = 1
    scores = torch.tensor([[[5.0, 0.0, 0.0]], [[0.0, 0.0, 5.0]]])  # pair (0, m0) picks factor 0, (0, m1) factor 2
    assert model.pair_index == {(0, 0): 0, (0, 1): 1}
    pin(model, size_logits, scores)
    mu = torch.zeros(2, 1, d)
    with torch.no_grad():
        rel = model.relate(mu, mu, [True, True], sample=False)
    _, _, Ys, _ = rel.blocks[0]
    assert int(Ys[0].argmax()[0, 0]) == 0 and int(Ys[1].argmax()[0, 0]) == 2
    assert torch.equal(rel.free, torch.tensor([[[0.0, 1, 1]], [[1.0, 1, 0]]]))


def test_selection_kl_is_zero_for_uniform_scores():
    # r(y | n, z) with equal scores is the uniform Plackett-Luce law, i.e. the prior: KL_y = 0 exactly
    d = 3
    model = model2(d)
    pin(model, torch.tensor([[[0.0, 50.0, 0.0, 0.0]]]), torch.zeros(2, 1, d))
    mu = torch.zeros(2, 1, d)
    with torch.no_grad():
        rel = model.relate(mu, mu, [True, True], sample=True, with_kl=True)
    assert int(rel.sizes()[0, 0]) == 1
    assert abs(float(rel.kl_y)) < 1e-6


def test_fully_shared_relation_kl_and_decoder_inputs_are_the_slots_only():
    # n_{01} = D: every factor shared, none private; m0 = +m and m1 = -m at unit variance (same ranking): each slot is
    # N(0, 1/2), the decoder input is 0 everywhere and KL_z = D · (1/2 - 1 + log 2) / 2
    d = 3
    model = model2(d)
    pin(model, torch.tensor([[[0.0, 0.0, 0.0, 50.0]]]), torch.tensor([[[3.0, 2.0, 1.0]], [[3.0, 2.0, 1.0]]]))
    m = torch.tensor([[0.7, -1.2, 2.0]])
    mu, logvar = torch.stack([m, -m]), torch.zeros(2, 1, d)
    with torch.no_grad():
        rel = model.relate(mu, logvar, [True, True], sample=False)
        assert torch.equal(rel.free, torch.zeros(2, 1, d))
        assert torch.allclose(rel.inputs(sample=False), torch.zeros(2, 1, d), atol=1e-6)
        assert torch.allclose(rel.kl(), torch.tensor([d * 0.5 * (0.5 - 1 + math.log(2))]), atol=1e-6)


def test_log_ratio_sums_the_size_terms_over_subspaces():
    # r uniform over the allowed sizes (zero logits): log r(n) - log q(n) = -Σ_A log #allowed_A - log q(n)
    torch.manual_seed(0)
    model = METHODS.get("mrvae")(MODS, MethodConfig("mrvae", latent_dim=2, options={"hidden": 8}), "polymnist_cnn")
    zero = torch.zeros(3, 50, 2)
    with torch.no_grad():
        rel = model.relate(zero, zero, [True] * 3, sample=True, from_prior=True)
        S = len(model.shared)
        lr_n, _ = rel.log_ratio(torch.zeros(S, 50, 3), torch.zeros(len(model.pairs), 50, 2), model.pair_index)
    allowed = rel.size_terms[1].sum(-1).double()  # #shared×B
    assert torch.allclose(lr_n.double(), -allowed.log().sum(0) - rel.log_q_n.double(), atol=1e-5)


def test_size_relaxation_uses_tau_n_and_not_tau_y():
    # as test_size_gradient_is_exact_up_to_one_past_the_drawn_size, with tau_n = 0.5 and tau_y = 4:
    # dn/dl_i = p_i (i - E_p[k]) / tau_n with p = softmax(l / tau_n)
    d = 3
    model = model2(d, tau_n=0.5, tau_y=4.0)
    logits = torch.tensor([[[0.0, 0.1, 1.0, 0.5]]], requires_grad=True)
    pin(model, logits, torch.zeros(2, 1, d))
    mu = torch.zeros(2, 1, d)
    rel = model.relate(mu, mu, [True, True], sample=False, with_kl=True)
    rel.sizes().sum().backward()
    p = torch.softmax(logits.detach()[0, 0] / 0.5, -1)
    k = torch.arange(d + 1.0)
    assert torch.allclose(logits.grad[0, 0], p * (k - (p * k).sum()) / 0.5, atol=1e-6)


def test_objective_q_r_term_reaches_the_encoders_through_z():
    # Eq. (4)'s E_q[log r(n, y | z)] with z ~ q(z | n, y, X) reparameterised: with β = 0 and no reconstruction term the
    # loss is log q(n, y) - log r(n, y | z) alone, and its gradient still reaches the encoders (through z)
    torch.manual_seed(0)
    model = METHODS.get("mrvae")(MODS[:2], MethodConfig("mrvae", latent_dim=3, beta=0.0, options={"hidden": 8}),
                                 "polymnist_cnn")
    model.rec_weights = {m: 0.0 for m in model.names}
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(4, 3, 28, 28, generator=g) for m in MODS[:2]}
    torch.manual_seed(1)
    loss, _ = model.loss(x)
    loss.backward()
    enc = [p for n, p in model.named_parameters() if n.startswith("encoders.")]
    assert enc and sum(float(p.grad.abs().sum()) for p in enc if p.grad is not None) > 0


def test_shared_fraction_counts_a_shared_factor_once_per_modality():
    # n_{01} = D pinned: every factor of both modalities is shared, shared_fraction = 1
    d = 3
    model = model2(d, objective="r")
    pin(model, torch.tensor([[[0.0, 0.0, 0.0, 50.0]]]).expand(1, 4, 4), torch.zeros(2, 4, d))
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(4, 3, 28, 28, generator=g) for m in MODS[:2]}
    with torch.no_grad():
        _, logs = model.loss(x)
    assert float(logs["shared_fraction"]) == 1.0
