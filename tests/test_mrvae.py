"""mrVAE: interface, training signal, the relaxations and priors, and one epoch through the real pipeline."""
import copy
import itertools
import math

import pytest
import torch
from scipy import stats

from mmbench.config import build_run_config
from mmbench.data.base import Modality
from mmbench.errors import MMBenchError
from mmbench.evaluate import execute
from mmbench.methods.base import LOG_2PI, Gaussian, MethodConfig, all_subsets
from mmbench.methods.mrvae import (RelationalPosterior, gumbel_softmax, kl_elem, log_hypergeom, log_mvhg, log_pl,
                                   neuralsort, put, select, sort_matrix)
from mmbench.registry import METHODS
from mmbench.results import Run
from conftest import assert_latent_accuracies, train_steps

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


def test_evaluation_encoding_runs_under_bf16_autocast():
    # under autocast the exact picks' `exists` (fp32) and a row value (bf16) meet in one scatter: it must take both
    model, x = make().eval(), batch()
    subsets = all_subsets(model.names)
    with torch.no_grad():
        exact = [q.mean for q in model.encode_subsets(x, subsets)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = [q.mean for q in model.encode_subsets(x, subsets)]
    for a, b in zip(exact, low):
        assert torch.allclose(a, b.float(), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("objective", ["q", "r"])
def test_loss_falls_with_finite_gradients(objective):
    model = make(objective=objective)
    # every network, incl. those of Eqs. 33-38, gets a gradient
    losses, logs = train_steps(model, batch(), 30, require_grad=True, every_step=True)
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
        owner = rel.free[j] + sum(put(Ys[j], act) for A, act, Ys, _ in rel.blocks if j in A)
        assert torch.equal(owner, torch.ones(16, D))


# ----- brute-force enumerations (scipy and itertools only, none of the model's code) -------------------------------
def valid_sizes(shared, M, d):
    """Every n = (n_A for the shared A) with Σ_{A∋j} n_A <= d for each modality j (the private size is the rest)."""
    for n in itertools.product(range(d + 1), repeat=len(shared)):
        if all(sum(k for k, A in zip(n, shared) if j in A) <= d for j in range(M)):
            yield n


def size_step_laws(shared, M, d, n, pool="mean"):
    """For each shared A in allocation order, q(n_A = · | the sizes before it in n): Def. 1 per modality j of A as
    scipy's hypergeometric (j's factors left drawn from the Σ |S_B| of its unallocated subspaces), pooled over A."""
    used, pop, laws = [0] * M, [d * (sum(j in A for A in shared) + 1) for j in range(M)], []
    for a, A in enumerate(shared):
        log_hg = [[stats.hypergeom.logpmf(k, pop[j], d, d - used[j]) for k in range(d + 1)] for j in A]
        log_f = torch.tensor(log_hg, dtype=torch.float64)
        log_f = log_f.mean(0) if pool == "mean" else log_f.sum(0)
        laws.append(torch.softmax(log_f, 0))
        for j in A:
            used[j], pop[j] = used[j] + n[a], pop[j] - d
    return laws


def size_law(shared, M, d, pool="mean"):
    """{n: q(n)}: the sequential prior, by enumeration."""
    out = {}
    for n in valid_sizes(shared, M, d):
        laws = size_step_laws(shared, M, d, n, pool)
        out[n] = math.prod(float(laws[a][k]) for a, k in enumerate(n))
    return out


def tiny(M=3, d=2, **options):
    torch.manual_seed(0)
    return METHODS.get("mrvae")(MODS[:M], MethodConfig("mrvae", latent_dim=d, options={"hidden": 8, **options}),
                                "polymnist_cnn")


def rows_sizes(rel):
    return [tuple(int(v) for v in row) for row in rel.sizes()]


@pytest.mark.parametrize("pool", ["mean", "product"])
def test_size_prior_is_normalised_and_sampled_as_the_sequential_form(pool):
    """Def. 1 (point 3 of issue 18): the prior the model samples and scores is a normalised law over every valid n,
    the sequential form enumerated here; each row's log q(n) is exact and the draws follow it."""
    model, M, d = tiny(size_prior=pool), 3, 2
    law = size_law(model.shared, M, d, pool)
    assert math.isclose(sum(law.values()), 1.0, rel_tol=1e-12) and len(law) == 16
    zero = torch.zeros(M, 6000, d)
    with torch.no_grad():
        rel = model.relate(zero, zero, [True] * M, sample=True, from_prior=True)
    sizes = rows_sizes(rel)
    expected = torch.tensor([math.log(law[n]) for n in sizes], dtype=torch.float64)
    assert torch.allclose(rel.log_q_n.double(), expected, atol=1e-5)
    for n, p in law.items():
        assert abs(sizes.count(n) / len(sizes) - p) < 0.02, (n, p)


def test_two_modality_model_draws_and_scores_sizes_by_def1_hypergeometric():
    """The model itself (not a helper): with M = 2 and D = 3 its prior draws n_{01} ~ Hypergeom(2D, D, D) and scores
    each row's log q(n) by that law (Def. 1)."""
    d = 3
    model = tiny(M=2, d=d)
    zero = torch.zeros(2, 8000, d)
    with torch.no_grad():
        rel = model.relate(zero, zero, [True, True], sample=True, from_prior=True)
    sizes = [n[0] for n in rows_sizes(rel)]
    law = stats.hypergeom(2 * d, d, d)
    assert torch.allclose(rel.log_q_n.double(), torch.tensor(law.logpmf(sizes), dtype=torch.float64), atol=1e-5)
    for k in range(d + 1):
        assert abs(sizes.count(k) / len(sizes) - law.pmf(k)) < 0.02, k


def test_size_prior_is_def1_for_two_modalities_and_pools_the_modalities_beyond():
    # M = 2: both modalities' Def. 1 laws of n_{01} are the same hypergeometric; the default prior is that law.
    shared, d = [(0, 1)], 3
    law = size_law(shared, 2, d)
    for (k,), p in law.items():
        assert math.isclose(p, stats.hypergeom.pmf(k, 2 * d, d, d), rel_tol=1e-9)
    product = size_law(shared, 2, d, "product")
    assert not math.isclose(product[(1,)], law[(1,)], rel_tol=1e-3)  # the product is sharper
    # M = 3: each modality's own chain of hypergeometrics telescopes to its multivariate law (Def. 1)
    shared, M, d = tiny().shared, 3, 3
    for n in valid_sizes(shared, M, d):
        for j in range(M):
            counts = [k for k, A in zip(n, shared) if j in A]
            counts.append(d - sum(counts))
            pop, left, seq = d * len(counts), d, 0.0
            for c in counts:
                seq += log_hypergeom(c, pop, d, left).item()
                pop, left = pop - d, left - c
            assert math.isclose(seq, stats.multivariate_hypergeom.logpmf(counts, [d] * len(counts), d), abs_tol=1e-9)


def test_size_kl_is_exact_per_step_and_unbiased_for_the_joint_kl():
    """KL_n (point 6): per row, Σ_A KL(r(n_A | z, earlier) || q(n_A | earlier)) enumerated; its mean over the sampled
    sizes is KL(r(n | z) || q(n)) over the joint, enumerated (chain rule)."""
    model, M, d, B = tiny(), 3, 2, 20000
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(M, 1, d, generator=g).expand(M, B, d) * 3
    logvar = torch.full_like(mu, -30.0)  # z = mu: one r for every row
    with torch.no_grad():
        logits = model.size_net(mu[:, :1], torch.ones(M, dtype=torch.bool))[0][:, 0].double()  # #shared×(d+1)
        rel = model.relate(mu, logvar, [True] * M, sample=True, with_kl=True)

    def r_laws(n):  # r(n_A | z, earlier sizes): the categorical over the sizes every modality of A still allows
        used, laws = [0] * M, []
        for a, A in enumerate(model.shared):
            cap = d - max(used[j] for j in A)
            laws.append(torch.softmax(logits[a].masked_fill(torch.arange(d + 1) > cap, -math.inf), 0))
            for j in A:
                used[j] += n[a]
        return laws

    def step_kl(n):
        kl = 0.0
        for r, q in zip(r_laws(n), size_step_laws(model.shared, M, d, n)):
            kl += float((r * (r.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum())
        return kl

    sizes = rows_sizes(rel)
    per_row = torch.tensor([step_kl(n) for n in sizes[:200]], dtype=torch.float64)
    assert torch.allclose(rel.kl_n[:200].double(), per_row, atol=1e-4)
    q = size_law(model.shared, M, d)
    r = {n: math.prod(float(law[k]) for law, k in zip(r_laws(n), n)) for n in q}
    assert math.isclose(sum(r.values()), 1.0, rel_tol=1e-9)
    joint_kl = sum(p * math.log(p / q[n]) for n, p in r.items() if p > 0)
    se = rel.kl_n.double().std().item() / math.sqrt(B)
    assert abs(rel.kl_n.double().mean().item() - joint_kl) < 4 * se + 1e-4, (rel.kl_n.mean().item(), joint_kl)
    for n, p in r.items():
        assert abs(sizes.count(n) / B - p) < 0.015  # the sizes drawn follow r


def test_selection_kl_against_enumerated_plackett_luce():
    """KL_y (point 6): the ranked picks follow Plackett-Luce(w); the one-sample term is log PL_w - log PL_0 of the
    picks drawn, and its mean is KL(PL_w || PL_0), both enumerated over every ordered pick of 2 among 4 free factors."""
    B, w0 = 30000, torch.tensor([1.5, -0.5, 0.0, 0.7, 2.0])
    free0 = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])  # factor 2 went to an earlier subspace
    w, free = w0.expand(B, 5), free0.expand(B, 5)
    act = torch.tensor([1.0, 1.0, 0.0]).expand(B, 3)  # n_A = 2, one spare row
    torch.manual_seed(0)
    with torch.no_grad():
        Y, kl = select(w, free, act, 1.0, sample=True, with_kl=True)
    items = [0, 1, 3, 4]
    table = {}
    for seq in itertools.permutations(items, 2):
        left, p_w, p_0 = list(items), 1.0, 1.0
        for i in seq:
            p_w *= math.exp(w0[i]) / sum(math.exp(w0[k]) for k in left)
            p_0 *= 1 / len(left)
            left.remove(i)
        table[seq] = (p_w, p_0)
    assert math.isclose(sum(p for p, _ in table.values()), 1.0, rel_tol=1e-9)
    picks = [tuple(int(i) for i in row) for row in Y[:, :2].argmax(-1)]
    for b in range(100):
        p_w, p_0 = table[picks[b]]
        assert math.isclose(kl[b].item(), math.log(p_w / p_0), abs_tol=1e-5)
    for seq, (p_w, _) in table.items():
        assert abs(picks.count(seq) / B - p_w) < 0.01
    exact = sum(p_w * math.log(p_w / p_0) for p_w, p_0 in table.values())
    assert abs(kl.double().mean().item() - exact) < 4 * kl.double().std().item() / math.sqrt(B)


def _log_pl_float64(w, free, Y, act):
    """The Plackett-Luce log-probability of log_pl's formula (linear in Y and free, as its gradients are), in float64
    without a shift or a floor: the reference for scores far apart."""
    w, free, Y, act = (t.double() for t in (w, free, Y, act))
    e = w.exp()
    picked = torch.einsum("brd,bd->br", Y, e)
    unpicked = ((free - Y.sum(-2)) * e).sum(-1, keepdim=True)
    log_z = (picked.flip(-1).cumsum(-1).flip(-1) + unpicked).log()
    return (act * (torch.einsum("brd,bd->br", Y, w) - log_z)).sum(-1)


@pytest.mark.parametrize("gap", [10.0, 80.0, 120.0])
def test_plackett_luce_term_when_a_taken_factor_scores_far_above_the_free_ones(gap):
    """A factor taken by an earlier subspace never enters the law, and nothing bounds its score: log_pl's value and
    its gradients (scores, relaxed picks, free mask) are those of the float64 formula when that score is `gap` above
    the free ones. Shifting by the largest score of all factors floored the free masses at 1e-30 past a gap of ~69
    (the value -21.0 instead of -2.0 at 80); past 80 the taken factor's mass is capped at e^80, so at 120 only the
    value and the scores' gradient are compared."""
    from mmbench.methods.mrvae import Picks

    w0 = torch.tensor([[gap, 0.3, 0.1, -0.2, 0.5]])
    free0 = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])  # factor 0 went to an earlier subspace
    idx, act = torch.tensor([[4, 2]]), torch.tensor([[1.0, 1.0]])
    ref_in = [w0.double().requires_grad_(), free0.double().requires_grad_(),
              Picks(idx, torch.ones(1, 2), 5).matrix().double().requires_grad_()]
    ref = _log_pl_float64(ref_in[0], ref_in[1], ref_in[2], act)
    ref.sum().backward()
    for dense in (True, False):
        w, free = w0.clone().requires_grad_(), free0.clone().requires_grad_()
        Y = Picks(idx, torch.ones(1, 2), 5)
        Y = Y.matrix().requires_grad_() if dense else Y
        got = log_pl(w, free, Y, act)
        assert got.item() == pytest.approx(ref.item(), abs=1e-5), (dense, got.item(), ref.item())
        got.sum().backward()
        assert torch.allclose(w.grad.double(), ref_in[0].grad, atol=1e-5), (dense, w.grad)
        if gap <= 80:
            assert torch.allclose(free.grad.double(), ref_in[1].grad, rtol=1e-4, atol=1e-5), (dense, free.grad)
            if dense:
                assert torch.allclose(Y.grad.double(), ref_in[2].grad, rtol=1e-4, atol=1e-5), Y.grad


@pytest.mark.parametrize("spread", [30.0, 90.0, 240.0])
def test_plackett_luce_term_when_the_free_scores_spread_far_along_the_picks(spread):
    """The picks score spread, spread·2/3, spread/3 and the others 0: each later pick's normaliser holds only factors
    scoring far below the largest free score, the shift. In float32 their masses floored at 1e-30 past a spread of
    ~69 (-20.9 instead of -2.56 at 90), and a relaxed pick's gradient, a difference of two terms of size e^spread,
    lost its score term at 30. In float64, value and gradients are the formula's; the gradients reaching `free` and
    the relaxed picks are of size e^spread and leave float32's range past a spread of ~88, so at 240 only the value
    and the scores' gradient are compared."""
    from mmbench.methods.mrvae import Picks

    D, picks = 16, [0, 1, 2, 3]
    w0 = torch.zeros(1, D)
    w0[0, picks] = torch.tensor([3.0, 2.0, 1.0, 0.0]) * spread / 3
    free0, act = torch.ones(1, D), torch.ones(1, 4)
    idx = torch.tensor([picks])
    ref_in = [w0.double().requires_grad_(), free0.double().requires_grad_(),
              Picks(idx, torch.ones(1, 4), D).matrix().double().requires_grad_()]
    ref = _log_pl_float64(ref_in[0], ref_in[1], ref_in[2], act)
    ref.sum().backward()
    for dense in (True, False):
        w, free = w0.clone().requires_grad_(), free0.clone().requires_grad_()
        Y = Picks(idx, torch.ones(1, 4), D)
        Y = Y.matrix().requires_grad_() if dense else Y
        got = log_pl(w, free, Y, act)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(ref.item(), abs=1e-4), (dense, got.item(), ref.item())
        got.sum().backward()
        assert torch.allclose(w.grad.double(), ref_in[0].grad, atol=1e-5), (dense, w.grad)
        if spread < 88:
            assert torch.allclose(free.grad.double(), ref_in[1].grad, rtol=1e-4, atol=1e-5), (dense, free.grad)
            if dense:
                assert torch.allclose(Y.grad.double(), ref_in[2].grad, rtol=1e-4, atol=1e-5), Y.grad


def test_prior_samples_draw_the_same_numbers_at_any_cut():
    """sample_prior (no modality given: every subspace uncovered) draws all D rows of slot noise whatever the
    largest size drawn, so its samples and the random stream after them are those of all rows (cut_rows=False)."""
    out = []
    for cut in (None, False):
        model = make()
        model.cut_rows = cut
        torch.manual_seed(7)
        out.append((model.sample_prior(4), torch.rand(3)))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_posterior_samples_in_evaluation_do_not_depend_on_the_other_rows_of_the_batch():
    """In evaluation (the relation's mode) a tuple's posterior sample is drawn from slots of all D rows per subspace
    whatever sizes the batch's other tuples have: the same tuples with other companions (same seed) get the same
    samples, and so does every row computed (cut_rows=False). The slots were cut to the batch's largest size, so the
    noise each tuple got moved with its companions (coherence and FID read these samples)."""
    fixed, others = batch(4, seed=1), [batch(4, seed=2), batch(4, seed=3)]
    out = []
    for companions, cut in ((others[0], None), (others[1], None), (others[0], False)):
        model = make().eval()
        model.cut_rows = cut
        x = {k: torch.cat([fixed[k], companions[k]]) for k in fixed}
        torch.manual_seed(5)
        with torch.no_grad():
            posts = model.encode_subsets(x, [model.names, ["m0"], ["m1", "m2"]])
            out.append([(p.mean[:4], p.rsample()[:4]) for p in posts] + [torch.rand(3)])
    for got in out[1:]:
        for (m0, s0), (m1, s1) in zip(out[0][:-1], got[:-1]):
            assert torch.equal(m0, m1) and torch.equal(s0, s1)
        assert torch.equal(out[0][-1], got[-1])


def test_selection_prior_is_def2_given_the_sizes():
    """Point 2 of issue 18: Def. 2 draws each factor's subspace i.i.d. with probability 1/2^(M-1). Given the sizes
    n_j (Def. 1), that law is uniform over the assignments with those sizes; the model's prior on the ranked picks
    (uniform Plackett-Luce, log_pl with w = 0) is that law times a uniform order within each subspace."""
    M, d = 3, 3
    subspaces = 2 ** (M - 1)  # j's shared subspaces in allocation order, then its private one
    sizes = [1, 1, 0]  # n_A of j's three shared subspaces; the private one gets the remaining 1
    counts = sizes + [d - sum(sizes)]
    # Def. 2 by enumeration: every assignment of d factors to 2^(M-1) subspaces, each with (1/2^(M-1))^d
    def2 = {a: (1 / subspaces) ** d for a in itertools.product(range(subspaces), repeat=d)}
    given = {a: p for a, p in def2.items() if [a.count(s) for s in range(subspaces)] == counts}
    given = {a: p / sum(given.values()) for a, p in given.items()}
    # the model: every ordered pick sequence, scored subspace by subspace with the uniform Plackett-Luce law
    model_law = {}
    for order in itertools.permutations(range(d)):
        free, log_p, assign, pos = torch.ones(1, d, dtype=torch.float64), 0.0, [subspaces - 1] * d, 0
        for s, n in enumerate(sizes):
            R = max(n, 1)
            Y = torch.zeros(1, R, d, dtype=torch.float64)
            for r in range(n):
                Y[0, r, order[pos + r]] = 1
                assign[order[pos + r]] = s
            act = (torch.arange(R) < n).double()[None]
            log_p += log_pl(torch.zeros(1, d, dtype=torch.float64), free, Y, act).item()
            free = free - torch.einsum("br,brd->bd", act, Y)
            pos += n
        model_law[tuple(order[:sum(sizes)])] = (math.exp(log_p), tuple(assign))
    assert math.isclose(sum(p for p, _ in model_law.values()), 1.0, rel_tol=1e-9)
    marginal = {}
    for p, a in model_law.values():
        marginal[a] = marginal.get(a, 0.0) + p
    assert marginal.keys() == given.keys()
    for a, p in given.items():
        assert math.isclose(marginal[a], p, rel_tol=1e-9)
        ranked = [p_ for p_, a_ in model_law.values() if a_ == a]
        assert all(math.isclose(q, p / math.prod(math.factorial(n) for n in counts[:-1]), rel_tol=1e-9) for q in ranked)
    # and Def. 1 (per modality) with this conditional gives Def. 2's per-factor probability 1/2^(M-1)
    per_factor = sum(stats.multivariate_hypergeom.pmf(c, [d] * subspaces, d) * c[0] / d
                     for c in itertools.product(range(d + 1), repeat=subspaces) if sum(c) == d)
    assert math.isclose(per_factor, 1 / subspaces, rel_tol=1e-9)


def test_kl_elem_is_the_per_coordinate_gaussian_kl():
    # closed form KL(N(μ, σ²) || N(0, 1)) = (μ² + σ² - 1 - log σ²)/2: N(1, 1) -> 0.5, N(0, 2) -> (2 - 1 - log 2)/2
    q = Gaussian(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
                 torch.tensor([[0.0, math.log(2.0), 0.0]], dtype=torch.float64))
    want = torch.tensor([[0.5, 0.5 * (2 - 1 - math.log(2)), 0.0]], dtype=torch.float64)
    assert torch.allclose(kl_elem(q), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("objective", ["q", "r"])
def test_beta_weighs_only_the_z_kl(objective):
    # docs/provenance.md (mrVAE, Weights): loss = NLL + β·KL_z + KL_n + KL_y, the structure terms keep weight 1
    torch.manual_seed(0)
    cfg = MethodConfig("mrvae", latent_dim=2, beta=2.0, options={"hidden": 8, "objective": objective})
    model = METHODS.get("mrvae")(MODS, cfg, "polymnist_cnn").double().train()
    x = {m: v.double() for m, v in batch(4).items()}
    with torch.no_grad():
        _, logs = model.loss(x)
    assert logs["loss"].dtype == torch.float64
    lhs = (logs["loss"] - logs["nll"]).item()
    rhs = (2 * logs["kl"] + logs["kl_n"] + logs["kl_y"]).item()
    assert abs(logs["kl_n"] + logs["kl_y"]).item() > 1e-3  # the structure terms are there to be mis-weighted
    assert math.isclose(lhs, rhs, rel_tol=1e-9)


def test_paper_objective_draws_the_relation_from_the_prior_and_scores_it_with_r():
    """objective 'q' (App. A.1's second case): (n, y) come from the prior whatever r says, and r is trained by
    log q(n, y) - log r(n, y | z); objective 'r' samples r. An r pinned on n_A = 0 tells them apart."""
    x = batch(64)
    for objective in ("q", "r"):
        model = make(objective=objective)
        with torch.no_grad():
            model.size_net.b2[:, 0] += 50.0  # r(n_A = 0 | z) ~ 1
            model.eval()
            mu, logvar = model.unimodal(x, model.names)
            torch.manual_seed(0)
            _, logs = model.loss(x)
        if objective == "q":
            assert logs["shared_fraction"] > 0.3 and logs["kl_n"] > 20  # prior draws, scored by a confident r
        else:
            assert logs["shared_fraction"] == 0.0 and logs["kl_n"] > 0  # r's draws: nothing shared


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
    """Training step k (from 1) anneals at k, the step counted after it (count_step); evaluation reads the steps
    trained and does not advance them."""
    model = make(anneal_rate=0.1, tau_min=0.3)
    assert [float(t) for t in model.eval().temperatures()] == [1.0, 1.0]
    x = batch(4)
    model.train()
    logged = [float(model.loss(x)[1]["tau_n"]) for _ in range(3)]
    assert logged == pytest.approx([math.exp(-0.1 * k) for k in (1, 2, 3)], rel=1e-12)
    assert int(model.state_dict()["step"]) == 3
    tau_n, _ = model.temperatures()  # training: the next step's
    assert math.isclose(float(tau_n), math.exp(-0.4)) and tau_n.device == model.step.device  # computed on the device
    with torch.no_grad():
        model.eval().loss(x)  # evaluation does not advance the schedule
    assert int(model.step) == 3
    assert math.isclose(float(model.temperatures()[0]), math.exp(-0.3))
    resumed = make(anneal_rate=0.1, tau_min=0.3).eval()
    resumed.load_state_dict(model.state_dict())  # a resumed run continues the schedule where it was
    assert [float(t) for t in resumed.temperatures()] == [float(t) for t in model.temperatures()]
    model.step.fill_(1000)
    assert [float(t) for t in model.temperatures()] == pytest.approx([0.3, 0.3])
    assert make().temperatures() == (1.0, 1.0)  # no annealing: the options' numbers


def test_bad_options_are_refused():
    with pytest.raises(MMBenchError, match="tau_n"):
        make(tau_n=0)
    with pytest.raises(MMBenchError, match="hidden"):
        make(hidden=0)
    with pytest.raises(MMBenchError, match="objective"):
        make(objective="elbo")
    with pytest.raises(MMBenchError, match="size_prior"):
        make(size_prior="max")


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
    assert_latent_accuracies(metrics, n_test=100)
    assert run.status() == "done"


@pytest.mark.parametrize("objective", ["q", "r"])
def test_index_selections_match_the_one_hot_loop(objective):
    """The exact selections held as indices, with the structure term batched over every (A, j) pair, give the
    loss, gradients and encodings of the one-hot matrices and the per-pair loop (model.dense), on a fixed seed."""
    x = batch(8)
    out = []
    for dense in (True, False):
        model = make(objective=objective)
        model.dense = dense
        torch.manual_seed(5)
        loss, logs = model.loss(x)
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
        model.eval()
        with torch.no_grad():
            q = model.encode(x, ("m0", "m2"))
            torch.manual_seed(6)
            z = model.sample_prior(8)
        out.append((loss, logs, grads, q.mean, q.logvar, q.log_prob(q.mean), z))
    (l0, logs0, g0, *rest0), (l1, logs1, g1, *rest1) = out
    assert torch.allclose(l0, l1, rtol=1e-5) and logs0["shared_fraction"] == logs1["shared_fraction"]
    assert math.isclose(logs0["kl_y"], logs1["kl_y"], rel_tol=1e-4, abs_tol=1e-4)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(rest0, rest1):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_prior_draw_cut_to_the_largest_size_equals_all_rows():
    """relate_prior on a CPU computes the picks only up to the largest size drawn (+1): the loss, its gradients
    and the random stream afterwards equal the relation computed with all D rows (cut_rows=False)."""
    x = batch(8)
    out = []
    for cut in (False, True):
        model = make()
        model.cut_rows = cut
        torch.manual_seed(3)
        loss, logs = model.loss(x)
        loss.backward()
        out.append((loss.detach(), logs, [p.grad.clone() for p in model.parameters() if p.grad is not None],
                    torch.rand(3)))
    (l0, logs0, g0, after0), (l1, logs1, g1, after1) = out
    model = make()
    model.cut_rows = True
    torch.manual_seed(3)
    mu, logvar = model.unimodal(x, model.names)
    rows = model.relate(mu, logvar, [True] * 3, sample=True, from_prior=True).stacked[2].shape[-1]
    assert rows < D  # the cut really drops rows here
    assert torch.allclose(l0, l1, rtol=1e-6) and float(logs0["kl_y"]) == pytest.approx(float(logs1["kl_y"]), rel=1e-5)
    assert len(g0) == len(g1) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g0, g1))
    assert torch.equal(after0, after1)  # the same random numbers were drawn


@pytest.mark.parametrize("dense", [False, True])
def test_objective_r_relaxations_cut_to_the_largest_size_give_the_gradients_of_all_rows(dense, monkeypatch):
    """Objective r relaxes (NeuralSort) only the rows up to the largest size drawn (+1), but act[r] = 1[n_A > r] is
    straight-through, so the size logits' gradient reaches every row: the cut's loss, gradients (the size networks'
    included) and random stream equal those of all D rows relaxed (cut_rows=False)."""
    import mmbench.methods.mrvae as mrvae

    relaxed = []
    sort = mrvae.neuralsort
    monkeypatch.setattr(mrvae, "neuralsort", lambda s, tau, mask=None, rows=None: relaxed.append(rows) or
                        sort(s, tau, mask, rows))
    out = []
    for cut in (None, False):
        model = make(objective="r")
        model.cut_rows, model.dense = cut, dense
        torch.manual_seed(3)
        loss, logs = model.loss(batch(8))
        loss.backward()
        out.append((loss.detach(), logs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                    torch.rand(3)))
    (l0, logs0, g0, after0), (l1, logs1, g1, after1) = out
    assert min(relaxed[:len(relaxed) // 2]) < D and set(relaxed[len(relaxed) // 2:]) == {D}  # the cut dropped rows
    assert torch.allclose(l0, l1, rtol=1e-6)
    assert float(logs0["kl_y"]) == pytest.approx(float(logs1["kl_y"]), rel=1e-5, abs=1e-5)
    assert g0.keys() == g1.keys() and any(n.startswith("size_net") for n in g0)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-6), n
    assert torch.equal(after0, after1)  # the same random numbers were drawn


def test_set_nets_are_per_unit_networks_and_load_the_per_unit_layout():
    """SetNets' grouped first layers compute, per group g, ReLU(W2_g · mean over g's available units u of
    ReLU(W1_u z_src[u] + b1_u) + b2_g) (Eqs. 34-35, 37-38), written here unit by unit; a checkpoint holding w1 as
    U×D×H (the per-unit layout of earlier versions) loads into the same parameters."""
    from mmbench.methods.mrvae import SetNets, linear_params

    src, group, G, D, H, O = [0, 1, 1, 0, 2, 2, 0, 1, 2], [0, 0, 1, 1, 2, 2, 3, 3, 3], 4, 6, 5, 7
    torch.manual_seed(0)
    net = SetNets(src, group, G, D, H, O)
    torch.manual_seed(0)
    w1, b1 = linear_params(len(src), D, H)  # what SetNets draws, per unit in the given order
    w2, b2 = net.w2.detach(), net.b2.detach()
    z = torch.randn(3, 4, D)
    for avail in ([1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]):
        out, has = net(z, torch.tensor(avail, dtype=torch.bool))
        for g in range(G):
            units = [u for u in range(len(src)) if group[u] == g and avail[src[u]]]
            assert bool(has[g]) == bool(units)
            hs = [torch.relu(z[src[u]] @ w1[u] + b1[u]) for u in units]
            mean = torch.stack(hs).mean(0) if hs else torch.zeros(4, H)
            torch.testing.assert_close(out[g], torch.relu(mean @ w2[g] + b2[g]), rtol=1e-5, atol=1e-6)
    torch.manual_seed(1)
    other = SetNets(src, group, G, D, H, O)  # other initial values, then the per-unit checkpoint
    other.load_state_dict({"w1": w1.detach(), "b1": b1.detach(), "w2": w2, "b2": b2})
    for k, v in net.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_resume_from_a_per_unit_checkpoint_converts_the_adam_moments(tmp_path):
    """A run checkpointed before SetNets' grouped layout (w1 U×D×H, b1 U×H, and Adam's moments in those shapes)
    resumes: train.restore converts weights and moments alike, and the next step equals the uninterrupted one; a
    moment of any other shape is refused with the checkpoint's name (Adam would fail only at its next step)."""
    from mmbench.errors import MMBenchError
    from mmbench.methods.mrvae import SetNets
    from mmbench.train import restore

    def ungroup(net: SetNets, t):  # grouped -> per-unit layout, units in the given order
        M = net.w1.shape[0]
        if t.dim() == 3:
            per = t.view(M, t.shape[1], net.n, net.hidden).permute(0, 2, 1, 3).reshape(-1, t.shape[1], net.hidden)
        else:
            per = t.reshape(-1, net.hidden)
        out = torch.empty_like(per)
        out[net.order] = per
        return out

    def step(model, opt):
        torch.manual_seed(1)
        loss, _ = model.loss(batch())
        opt.zero_grad()
        loss.backward()
        opt.step()

    model = make().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(model, opt)
    sd, osd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    names = [n for n, _ in model.named_parameters()]
    nets = {n: model.get_submodule(n.rpartition(".")[0]) for n in names if n.endswith((".w1", ".b1"))}
    assert len(nets) == 4 and all(isinstance(v, SetNets) for v in nets.values())
    old_sd = {k: ungroup(nets[k], v) if k in nets else v for k, v in sd.items()}
    old_osd = copy.deepcopy(osd)
    for i, name in enumerate(names):
        if name in nets:
            for key in ("exp_avg", "exp_avg_sq"):
                old_osd["state"][i][key] = ungroup(nets[name], osd["state"][i][key])
    assert old_sd["score_net.w1"].shape != sd["score_net.w1"].shape

    resumed = make().train()
    ropt = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    restore(resumed, ropt, {"model": old_sd, "optimizer": old_osd}, tmp_path / "last.pt")
    step(model, opt)
    step(resumed, ropt)
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=k)

    bad = copy.deepcopy(osd)
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"][:1]
    with pytest.raises(MMBenchError, match="last.pt.*optimiser state .* has shape .*move it away to train this run "
                                           "from the start"):
        fresh = make()
        restore(fresh, torch.optim.Adam(fresh.parameters()), {"model": sd, "optimizer": bad}, tmp_path / "last.pt")


@pytest.mark.parametrize("how", ["prior", "prior_dense", "r"])
def test_z_kl_is_the_kl_of_the_relational_posterior_over_its_active_slots(how):
    """Eq. (4)'s z-term is KL(q(z | n, y, X) || N(0, I)): one N(0, 1) KL per private factor and per *active* slot
    (r < n_A), each shared slot once. Computed independently from posterior(): kl_elem at each distinct coordinate
    (`primary`) of the interface latent. Wide posteriors make the inactive picked rows' KL far from zero."""
    model = make(objective="r" if how == "r" else "q")
    model.dense = how == "prior_dense"
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(3, 64, D, generator=g) * 2, torch.randn(3, 64, D, generator=g)
    with torch.no_grad():
        torch.manual_seed(0)
        rel = model.relate(mu, logvar, [True] * 3, sample=True, from_prior=how != "r", with_kl=how == "r")
        post = rel.posterior()
        want = (kl_elem(Gaussian(post.mean, post.logvar)) * post.primary).sum(-1)
        sizes = rel.sizes()
    assert (sizes > 0).any() and (sizes < D).any()  # shared slots and inactive picked rows both occur
    assert torch.allclose(rel.kl(), want, rtol=1e-5, atol=1e-4)


def test_objective_r_loss_samples_the_relation_at_a_sample_of_the_unimodal_posteriors():
    """App. A.1 Eq. (7): objective r's expectation is under q(z_j | x_j) and r(n, y | z), so the loss draws the relation
    (Gumbel noise) from r's networks read at z ~ q(z_j | x_j), not at the means: unimodal posteriors N(0, 4) give the
    networks inputs of standard deviation 2, where the mode would feed them exact zeros."""
    model = make(objective="r", hidden=8)
    model.unimodal = lambda x, names: (torch.zeros(3, 256, D), torch.full((3, 256, D), math.log(4.0)))
    seen = []
    model.size_net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(0)
    with torch.no_grad():
        model.loss(batch(256))
    assert seen and abs(float(seen[0].std()) - 2.0) < 0.1


@pytest.mark.parametrize("dense", [False, True])
def test_objective_q_scores_each_subspace_and_pair_with_its_own_network_output(dense):
    """mrVAE Eq. (4), App. A.1 second case: log r(n, y | z) - log q(n, y) = Σ_A [log r(n_A | ·) - log q(n_A | ·)]
    + Σ_(A,j) [log PL_w(y_jA) - log PL_0(y_jA)], subspace A scored by its own size logits c_A (Eq. 35, over the sizes
    every modality of A still allows) and pair (A, j) by its own scores w_jA (Eq. 38). Written out row by row from a
    prior-drawn relation, with distinct random logits and scores per subspace and per pair."""
    from mmbench.methods.mrvae import Picks

    model = make(hidden=8)
    model.dense = dense
    B = 4
    g = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(3, B, D, generator=g), torch.randn(3, B, D, generator=g)
    size_logits = torch.randn(len(model.shared), B, D + 1, generator=g) * 2
    scores = torch.randn(len(model.pairs), B, D, generator=g) * 2
    with torch.no_grad():
        torch.manual_seed(0)
        rel = model.relate(mu, logvar, [True] * 3, sample=True, from_prior=True)
        lr_n, lr_y = rel.log_ratio(size_logits, scores, model.pair_index)
    n = rel.sizes().long()
    assert (n > 0).any()
    for b in range(B):
        left, log_r_n, log_pl = {j: set(range(D)) for j in range(3)}, 0.0, 0.0
        for a, A in enumerate(model.shared):
            k = int(n[b, a])
            log_r_n += float(torch.log_softmax(size_logits[a, b, :min(len(left[j]) for j in A) + 1], -1)[k])
            for j in A:
                Y = rel.blocks[a][2][j]
                picks = (Y.idx[b] if isinstance(Y, Picks) else Y[b].argmax(-1))[:k].tolist()
                w = scores[model.pair_index[(a, j)], b]
                for f in picks:  # Plackett-Luce with scores w against the uniform order, over j's free factors
                    free = sorted(left[j])
                    log_pl += float(w[f] - torch.logsumexp(w[free], 0)) + math.log(len(free))
                    left[j].remove(f)
        assert float(lr_n[b]) == pytest.approx(log_r_n - float(rel.log_q_n[b]), abs=1e-4)
        assert float(lr_y[b]) == pytest.approx(log_pl, abs=1e-4)
