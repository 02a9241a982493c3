"""mrVAE: the multimodal relational VAE (Sutter & Vogt): subspaces shared by learned subsets of modalities.

Each modality j has its own latent z_j of D factors. Every subset A of modalities has a subspace S_A
(|S_A| = D) for the factors the modalities in A share; S_{j} holds j's private factors. How many
factors each modality of A gives to S_A (n_A, §3.1) and which ones (y_j, §3.2) is latent, inferred by
r_ψ(n, y | z) and trained with the hierarchical ELBO of Eq. (4).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MMBenchError
from ..registry import METHODS
from .base import (LOG_2PI, Gaussian, MultimodalVAE, Posterior, all_subsets, exponential_like, host_constant,
                   product_of_experts, randn_like)


# ----- relaxations and priors ------------------------------------------------------------------
def gumbel(t: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise shaped like t (minus the log of an Exp(1) draw)."""
    return -exponential_like(t).clamp_min(1e-20).log()


def vmapped(t: torch.Tensor) -> bool:
    """Whether t is a tensor inside torch.func.vmap (a packed run's loss, mmbench/pack.py)."""
    return torch._C._functorch.is_batchedtensor(t)


def largest(t: torch.Tensor) -> int:
    """The largest value of t, read back to the host; inside vmap (a packed loss) the largest over every run."""
    while vmapped(t):
        t = torch._C._functorch.get_unwrapped(t)
    return int(t.max())


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool = True, noise: bool = True) -> torch.Tensor:
    """Relaxed one-hot sample of Categorical(softmax(logits)) (Jang et al. 2016, Maddison et al. 2016).

    hard=True: the exact one-hot sample forward and the relaxed sample's gradient backward (straight-through,
    Bengio et al. 2013, as mrVAE App. E.1); noise=False gives the mode instead of a sample.
    """
    y = logits + gumbel(logits) if noise else logits
    if hard:
        one_hot = F.one_hot(y.argmax(-1), y.shape[-1]).to(logits.dtype)
        if not torch.is_grad_enabled():
            return one_hot
    soft = torch.softmax(y / tau, -1)
    return one_hot + (soft - soft.detach()) if hard else soft


def abs_dev_sum(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Σ_k m_k |s_l - s_k| for every l (B×D), in O(D log D) memory-light form via sorted prefix sums."""
    v, order = torch.sort(s, -1)
    w = m.gather(-1, order)
    cw, cws = w.cumsum(-1), (w * v).cumsum(-1)
    below = v * cw - cws  # items sorted at or below l
    above = (cws[..., -1:] - cws) - v * (cw[..., -1:] - cw)  # items sorted above l
    return torch.empty_like(s).scatter(-1, order, below + above)


def neuralsort(s: torch.Tensor, tau: float, mask: torch.Tensor = None, rows: int = None) -> torch.Tensor:
    """Relaxed descending sort (NeuralSort, Grover et al. 2019): B×rows×D, row r a softmax that tends to
    the one-hot of the r-th largest score as tau -> 0. `mask` (B×D, True = item) sorts only the masked-in items."""
    m = torch.ones_like(s) if mask is None else mask.to(s.dtype)
    rows = s.shape[-1] if rows is None else rows
    n = m.sum(-1, keepdim=True)
    r = torch.arange(1, rows + 1, device=s.device, dtype=s.dtype)
    logits = ((n + 1 - 2 * r)[:, :, None] * s[:, None, :] - abs_dev_sum(s, m)[:, None, :]) / tau
    return torch.softmax(logits.masked_fill(m[:, None, :] == 0, torch.finfo(s.dtype).min), -1)


class Picks:
    """An exact ranked selection held as indices: row r picks factor idx[:, r] where `exists` (B×rows); the
    one-hot matrix (`matrix()`, B×rows×D, rows past the item count 0) without building it. `take`/`put` are
    Y·v and sᵀY."""

    def __init__(self, idx: torch.Tensor, exists: torch.Tensor, d: int):
        self.idx, self.exists, self.d = idx, exists, d

    def take(self, v: torch.Tensor) -> torch.Tensor:  # B×D -> B×rows: the value of each row's pick
        return v.gather(-1, self.idx) * self.exists

    def put(self, s: torch.Tensor) -> torch.Tensor:  # B×rows -> B×D: each row's value at its pick
        v = s * self.exists  # in the wider dtype of the two (bf16 autocast: s bf16, exists fp32)
        return v.new_zeros(*v.shape[:-1], self.d).scatter_add(-1, self.idx, v)

    def argmax(self) -> torch.Tensor:
        return self.idx

    def matrix(self) -> torch.Tensor:
        return F.one_hot(self.idx, self.d).to(self.exists.dtype) * self.exists[..., None]


def sort_picks(s: torch.Tensor, mask: torch.Tensor, rows: int) -> Picks:
    """Exact descending sort of the masked-in items: the first `rows` picks."""
    order = torch.sort(s.masked_fill(~mask, -math.inf), stable=True, dim=-1, descending=True).indices[..., :rows]
    exists = (torch.arange(rows, device=s.device) < mask.sum(-1, keepdim=True)).to(s.dtype)
    return Picks(order, exists, s.shape[-1])


def sort_matrix(s: torch.Tensor, mask: torch.Tensor, rows: int) -> torch.Tensor:
    """Exact descending sort of the masked-in items as one-hot rows (B×rows×D); rows past the item count are 0."""
    return sort_picks(s, mask, rows).matrix()


class RelaxedHead:
    """A straight-through selection whose first rows are relaxed (`head`, B×R×D, NeuralSort's gradient) and whose
    other rows are exact picks only (`tail`, Picks): rows past every drawn size n_A are inactive, so their picks
    need no relaxation, but they are kept because act[r] = 1[n_A > r] passes the size's straight-through gradient
    to every row (Relation)."""

    def __init__(self, head: torch.Tensor, tail: Picks):
        self.head, self.tail, self.d = head, tail, tail.d

    def take(self, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([take(self.head, v), self.tail.take(v)], -1)

    def put(self, s: torch.Tensor) -> torch.Tensor:
        R = self.head.shape[-2]
        return put(self.head, s[..., :R]) + self.tail.put(s[..., R:])

    def argmax(self) -> torch.Tensor:
        return torch.cat([self.head.detach().argmax(-1), self.tail.idx], -1)


def indexed(Y) -> bool:
    """Whether a selection is held as an object with take/put/argmax (Picks, RelaxedHead), not a one-hot matrix."""
    return not torch.is_tensor(Y)


def take(Y, v: torch.Tensor) -> torch.Tensor:
    """Y·v: the value of v (B×D) at each row's pick (B×rows), Y a one-hot matrix, Picks or RelaxedHead."""
    return Y.take(v) if indexed(Y) else torch.einsum("brd,bd->br", Y, v)


def in_float64(Y):
    """A selection whose relaxed (dense) rows are float64, so that gradients reaching them sum in float64."""
    if isinstance(Y, RelaxedHead):
        return RelaxedHead(Y.head.double(), Y.tail)
    return Y if indexed(Y) else Y.double()


def put(Y, s: torch.Tensor) -> torch.Tensor:
    """sᵀY: row r's value s_r (B×rows) placed at its pick (B×D), Y a one-hot matrix, Picks or RelaxedHead."""
    return Y.put(s) if indexed(Y) else torch.einsum("br,brd->bd", s, Y)


def f64(*xs) -> list:
    """The arguments as float64 tensors on the device of the first tensor among them."""
    device = next((x.device for x in xs if torch.is_tensor(x)), None)
    return [torch.as_tensor(x, dtype=torch.float64, device=device) for x in xs]


def log_binom(n, k) -> torch.Tensor:
    """log C(n, k) elementwise in float64, -inf outside 0 <= k <= n."""
    n, k = f64(n, k)
    ok = (k >= 0) & (k <= n)
    n_ = n.clamp_min(0)
    k_ = torch.minimum(k.clamp_min(0), n_)
    val = torch.lgamma(n_ + 1) - torch.lgamma(k_ + 1) - torch.lgamma(n_ - k_ + 1)
    return torch.where(ok, val, torch.full_like(val, -math.inf))


def log_hypergeom(k, N, K, n) -> torch.Tensor:
    """log P(k) of the hypergeometric: k of the K marked items among n drawn without replacement from N."""
    k, N, K, n = f64(k, N, K, n)
    return log_binom(K, k) + log_binom(N - K, n - k) - log_binom(N, n)


def log_mvhg(counts, sizes) -> torch.Tensor:
    """Central multivariate hypergeometric log-pmf (mrVAE Def. 1): counts (last dim) drawn from classes of `sizes`."""
    counts, sizes = f64(counts, sizes)
    return log_binom(sizes, counts).sum(-1) - log_binom(sizes.sum(-1), counts.sum(-1))


def hypergeom_table(D: int, classes: int) -> torch.Tensor:
    """log HG(k; population m·D, D marked, d draws) for m = 1..classes, d = 0..D, k = 0..D (classes×(D+1)×(D+1),
    float64): every law the sequential form of Def. 1 needs, computed once."""
    ks = torch.arange(D + 1)
    return log_hypergeom(ks[None, None, :], (torch.arange(1, classes + 1) * D)[:, None, None], D, ks[None, :, None])


def log_size_prior(log_hg: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """log q(n_A = k | the sizes allocated before), k = 0..D (B×(D+1)), from log_hg (|A|×B×(D+1)): Def. 1 per
    modality j of A in its sequential form, HG(k; population Σ |S_B| over j's unallocated subspaces, |S_A| = D
    marked, j's factors left drawn). The |A| modalities' laws of the one shared n_A are pooled, normalised over k:
    "mean" (their geometric mean: Def. 1 exactly for M = 2) or "product" (docs/provenance.md, mrVAE)."""
    return torch.log_softmax(log_hg.mean(0) if pool == "mean" else log_hg.sum(0), -1)


def categorical_kl(logits: torch.Tensor, log_prior: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Σ_k r_k (log r_k - log q_k) over the allowed values (r = softmax(logits) is zero elsewhere)."""
    log_r = torch.log_softmax(logits.masked_fill(~allowed, -math.inf), -1)
    log_r, log_q = torch.where(allowed, log_r, 0.0), torch.where(allowed, log_prior, 0.0)
    return (log_r.exp() * allowed * (log_r - log_q)).sum(-1)


def kl_elem(q: Gaussian) -> torch.Tensor:
    """KL(q || N(0, 1)) per coordinate."""
    return 0.5 * (q.mu ** 2 + q.logvar.exp() - 1 - q.logvar)


def rank(w: torch.Tensor, free: torch.Tensor, rows: int, tau: float, sample: bool, relax: bool,
         dense: bool = False, noise: torch.Tensor = None, relaxed: int = None):
    """y_{j,A} (mrVAE Eq. 2, App. E.2): modality j's free factors ranked by (Gumbel-perturbed) scores w; row r is the
    r-th pick. relax: straight-through (exact sort forward and NeuralSort's gradient backward), a B×rows×D matrix;
    otherwise the exact picks as indices (Picks; dense: as the one-hot matrix, the reference the tests compare).
    noise: the Gumbel noise to use (default: fresh). relaxed (< rows): only the first `relaxed` rows get NeuralSort's
    gradient, the others are exact picks (a RelaxedHead; dense: one matrix of all rows)."""
    mask = free.detach() > 0.5
    s = w + (gumbel(w) if noise is None else noise) if sample else w
    picks = sort_picks(s, mask, rows)
    if not (relax and torch.is_grad_enabled()):
        return picks.matrix() if dense else picks
    R = rows if relaxed is None else min(relaxed, rows)
    Y = Picks(picks.idx[..., :R], picks.exists[..., :R], picks.d).matrix()
    soft = neuralsort(s, tau, mask, R)
    Y = Y + (soft - soft.detach()) * Y.sum(-1, keepdim=True)
    if R == rows:
        return Y
    tail = Picks(picks.idx[..., R:], picks.exists[..., R:], picks.d)
    return torch.cat([Y, tail.matrix()], -2) if dense else RelaxedHead(Y, tail)


def log_pl(w: torch.Tensor, free: torch.Tensor, Y: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """log of the Plackett-Luce probability, with scores w over the free factors, of the first n_A picks of Y (act[r]
    = 1[n_A > r]): the law of the Gumbel-perturbed sort (App. E.2). w = 0 gives the uniform law of the prior (Def. 2
    given the sizes: see docs/provenance.md, mrVAE)."""
    # shifted by the largest score among the free factors: a taken factor's score never enters the law and nothing
    # bounds it, so shifting by it underflowed the free factors' masses (a gap of ~69 reached the clamp below); a
    # taken factor's mass (0 forward; its gradient reaches `free`) is capped at e^80 where it would overflow.
    # All in float64: a later pick's normaliser holds only the factors still free then, which may all score far below
    # the shift (in float32 a spread of ~69 along the picks reached the floor again), and a relaxed pick's gradient
    # is the difference of two terms of size e^spread (its mass in Z, its share of `taken`): summed in float32 it lost
    # the score term already at a spread of 30
    dtype, w, free, Y = w.dtype, w.double(), free.double(), in_float64(Y)
    w_max = w.detach().masked_fill(free.detach() <= 0.5, -math.inf).max(-1, keepdim=True).values
    w_max = torch.where(w_max > -math.inf, w_max, 0.0)  # no free factor: no pick is active, any shift does
    e = (w - w_max).clamp_max(80.0).exp()
    picked = take(Y, e)  # mass of the r-th pick
    taken = put(Y, torch.ones_like(picked)) if indexed(Y) else Y.sum(-2)
    unpicked = ((free - taken) * e).sum(-1, keepdim=True)  # mass of the free factors never picked
    # normaliser of pick r: the mass of the factors still free then (picks r, r+1, ... and the unpicked ones)
    log_z = (picked.flip(-1).cumsum(-1).flip(-1) + unpicked).clamp_min(1e-300).log() + w_max
    return (act * (take(Y, w) - log_z)).sum(-1).to(dtype)


def log_pl_ratio(w: torch.Tensor, free: torch.Tensor, Y: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """log r(y_{j,A} | n_A, z) - log q(y_{j,A} | n_A): Plackett-Luce with scores w against the uniform one."""
    n_free = (free.detach() > 0.5).sum(-1, keepdim=True) - torch.arange(act.shape[-1], device=w.device)
    return log_pl(w, free, Y, act) + (act * n_free.clamp_min(1).log()).sum(-1)


def select(w: torch.Tensor, free: torch.Tensor, act: torch.Tensor, tau: float, sample: bool,
           with_kl: bool) -> tuple:
    """rank() then, if with_kl, the one-sample KL_y term log r(y | n, z) - log q(y | n) per row (App. A.1 Eq. 7)."""
    Y = rank(w, free, act.shape[1], tau, sample, relax=True, dense=True)
    return Y, (log_pl_ratio(w, free, Y, act) if with_kl else 0.0)


def linear_params(n: int, d_in: int, d_out: int) -> tuple:
    """n stacked fully-connected layers d_in -> d_out, initialised as nn.Linear."""
    bound = 1 / math.sqrt(d_in)
    return (nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound)),
            nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound)))


class SetNets(nn.Module):
    """G networks at once, each ReLU(FC(mean over its available units of ReLU(FC(z_src)))) (Eqs. 34-35, 37-38).

    Unit u has its own first layer, reads modality src[u]'s latent and feeds group[u]; averaging over the units
    whose modality is available is how the paper handles missing modalities (App. E.1). The first layers of the n
    units reading one modality sit side by side in one D×(n·H) matrix (w1: M×D×(n·H), units in their given order
    within a modality), so each modality's units are one matrix product with its latent: no per-unit copy of the
    latents forward nor a per-unit gradient backward. Every modality must feed the same number of units (mrVAE's
    networks do, by symmetry)."""

    def __init__(self, src: List[int], group: List[int], n_groups: int, d_in: int, hidden: int, d_out: int):
        super().__init__()
        M = max(src) + 1
        n = len(src) // M
        if any(src.count(m) != n for m in range(M)):
            raise ValueError(f"SetNets: every modality must feed the same number of units (got sources {src})")
        order = sorted(range(len(src)), key=lambda u: (src[u], u))  # units grouped by the modality they read
        if n == 1 and order != list(range(len(src))):  # the per-unit layout of old checkpoints would be ambiguous
            raise ValueError("SetNets: with one unit per modality, list the units in modality order")
        self.n, self.hidden, self.n_groups = n, hidden, n_groups
        w1, b1 = linear_params(len(src), d_in, hidden)  # drawn per unit in the given order: the same initial values
        w1 = w1.detach()[order].view(M, n, d_in, hidden).permute(0, 2, 1, 3).reshape(M, d_in, n * hidden)
        self.w1, self.b1 = nn.Parameter(w1.contiguous()), nn.Parameter(b1.detach()[order].reshape(M, n * hidden))
        self.w2, self.b2 = linear_params(n_groups, hidden, d_out)
        member = F.one_hot(torch.tensor([group[u] for u in order]), n_groups).T.to(torch.get_default_dtype())
        self.register_buffer("member", member.reshape(n_groups, M, n), persistent=False)  # G×M×n: unit (m, k) in g
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.sources = [sorted({src[u] for u in range(len(src)) if group[u] == g}) for g in range(n_groups)]

    def regroup(self, t: torch.Tensor) -> torch.Tensor:
        """A first-layer tensor in the per-unit layout of checkpoints written before the grouped one (w1 or its Adam
        moments U×D×H, b1 or its moments U×H; units in the given order) in the grouped layout (M×D×(n·H), M×(n·H));
        a tensor already grouped is returned as it is."""
        U, M = self.order.numel(), self.w1.shape[0]
        grouped = self.w1.shape if t.dim() == 3 else self.b1.shape
        if t.shape == grouped or t.shape[0] != U:
            return t
        t = t[self.order.to(t.device)]
        if t.dim() == 3:
            return t.view(M, self.n, t.shape[1], self.hidden).permute(0, 2, 1, 3).reshape(grouped)
        return t.reshape(grouped)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # per-unit checkpoints: the layouts differ in shape unless n = 1, where they coincide (units in modality order)
        for key in ("w1", "b1"):
            if prefix + key in state_dict:
                state_dict[prefix + key] = self.regroup(state_dict[prefix + key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z: torch.Tensor, avail: Sequence[bool]) -> tuple:
        """z: M×B×D, avail: M Python bools -> (G×B×d_out, G Python bools: the group has an available input).
        Availability is host data, so nothing is read back from the device (no host synchronisation)."""
        avail = [bool(a) for a in avail]
        w1, b1, member = self.w1, self.b1, self.member.to(z.dtype)
        if not all(avail):  # some modality missing (evaluation): its units drop out of the means
            mods = host_constant(self, ("available", tuple(avail)), z.device,
                                 lambda: torch.tensor([m for m, a in enumerate(avail) if a], dtype=torch.long))
            z, w1, b1, member = z.index_select(0, mods), w1.index_select(0, mods), b1.index_select(0, mods), \
                member.index_select(1, mods)
        h = torch.relu(torch.baddbmm(b1[:, None], z, w1))  # m×B×(n·H): each modality's n units in one product
        count = member.sum((1, 2))
        mean = torch.einsum("gmk,mbkh->gbh", member / count.clamp_min(1)[:, None, None],
                            h.view(h.shape[0], h.shape[1], self.n, self.hidden))
        covered = [any(avail[m] for m in ms) for ms in self.sources]
        return torch.relu(torch.einsum("gbh,gho->gbo", mean, self.w2) + self.b2[:, None]), covered


class CutSlots(Gaussian):
    """Slot posteriors of the first R picks of subspaces whose sizes could reach `full` rows: each sample draws
    the noise of all `full` rows and keeps the first R, so the random numbers (and every later draw) are those
    of the relation computed with all rows."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, full: int):
        super().__init__(mu, logvar)
        self.full = full

    def rsample(self) -> torch.Tensor:
        eps = randn_like(self.mu.new_empty(*self.mu.shape[:-1], self.full))[..., :self.mu.shape[-1]]
        return self.mu + eps * (0.5 * self.logvar).exp()

    def __getitem__(self, i) -> "CutSlots":
        return CutSlots(self.mu[i], self.logvar[i], self.full)


class RelationalPosterior(Posterior):
    """q(z | n, y, X_S) on the interface latent z = [z_1; ...; z_M] (B×(M·D)) for one inferred relation.

    Coordinate l of block j carries the slot of the subspace that factor l of z_j was assigned to; a slot
    shared by several modalities appears in each of their blocks with the same value. Slots are independent
    Gaussians, so `log_prob` is the density of the distinct slot values, read at each slot's first coordinate
    (the copies are deterministic)."""

    def __init__(self, slot_mu: torch.Tensor, slot_logvar: torch.Tensor, idx: torch.Tensor):
        self.slots, self.idx = Gaussian(slot_mu, slot_logvar), idx
        coord = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
        first = torch.full_like(slot_mu, idx.shape[1], dtype=torch.long).scatter_reduce(1, idx, coord, "amin")
        self.primary = first.gather(1, idx) == coord

    @property
    def mean(self) -> torch.Tensor:
        return self.slots.mu.gather(1, self.idx)

    mu = mean

    @property
    def logvar(self) -> torch.Tensor:
        return self.slots.logvar.gather(1, self.idx)

    def rsample(self) -> torch.Tensor:
        return self.slots.rsample().gather(1, self.idx)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.mean, self.logvar
        lp = -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / logvar.exp())
        return (lp * self.primary).sum(-1)


class Relation:
    """One inferred relation (n, y) and the subspace posteriors q(z | n, y, X) it induces, for B rows."""

    def __init__(self):
        # per shared subspace: (A, act B×R with act[r] = 1[n_A > r], {j: Y_jA B×R×D}, slot posteriors B×R)
        self.blocks: list = []
        self.free: torch.Tensor = None  # M×B×D: 1 on the factors left to each modality's private subspace
        self.single: Gaussian = None  # M×B×D posteriors of the private factors
        # per shared subspace: (one-hot n_A B×(D+1), allowed sizes B×(D+1), log q(n_A | earlier sizes) B×(D+1),
        # {j: B×D free factors of j before S_A took its picks}): what log r - log q of the relation needs
        self.structure: list = []
        self.kl_n, self.kl_y = 0.0, 0.0  # App. A.1 Eq. (7): KL(r || q) terms of the relation inferred by r
        self.log_q_n = 0.0  # log q(n) of the sizes drawn (Def. 1, sequential and normalised)
        self.stacked = None  # (picks, exists, act, free before) of every (A, j) pair, P×B×R each, when built at once
        # the size terms of every subspace stacked (one-hot n_A, allowed, log q(n_A | earlier)), #shared×B×(D+1)
        self.size_terms = None
        # every block's act and slot posteriors stacked (#shared×B×R; prior relations): the slots are drawn at once
        self.act, self.slots = None, None
        # (block of each pair, picks, exists) with the pairs grouped by modality (M×B×(n·R)): one scatter places all
        self.placement = None

    def log_ratio(self, size_logits: torch.Tensor, scores: torch.Tensor, pair_index: dict) -> tuple:
        """(log r(n | z) - log q(n), log r(y | n, z) - log q(y | n)) per row at this relation (n, y), r given by the
        outputs of the networks of Eqs. 33-38 (size_logits: #shared×B×(D+1), scores: #pairs×B×D)."""
        onehot, allowed, log_q = self.size_terms if self.size_terms is not None else \
            (torch.stack([st[i] for st in self.structure]) for i in range(3))
        log_r = torch.log_softmax(size_logits.masked_fill(~allowed, -math.inf), -1)
        lr_n = (onehot * torch.where(allowed, log_r - log_q, 0.0)).sum(-1).sum(0)
        pairs = [(a, j) for a, (A, _, _, _) in enumerate(self.blocks) for j in A]
        order = [pair_index[p] for p in pairs]
        w = scores if order == list(range(scores.shape[0])) else \
            scores.index_select(0, torch.tensor(order, device=scores.device))  # in pair order
        if self.stacked is not None:
            idx, exists, act, before = self.stacked
            return lr_n, log_pl_ratio(w, before, Picks(idx, exists, before.shape[-1]), act).sum(0)
        Ys = [self.blocks[a][2][j] for a, j in pairs]
        rows = {Y.idx.shape[-1] if isinstance(Y, Picks) else -1 for Y in Ys}
        if len(rows) == 1 and -1 not in rows:  # one batched Plackett-Luce term over every (A, j) pair
            Y = Picks(torch.stack([Y.idx for Y in Ys]), torch.stack([Y.exists for Y in Ys]), Ys[0].d)
            act = torch.stack([self.blocks[a][1] for a, _ in pairs])
            before = torch.stack([self.structure[a][3][j] for a, j in pairs])
            return lr_n, log_pl_ratio(w, before, Y, act).sum(0)
        lr_y = 0.0
        for k, ((a, j), Y) in enumerate(zip(pairs, Ys)):
            lr_y = lr_y + log_pl_ratio(w[k], self.structure[a][3][j], Y, self.blocks[a][1])
        return lr_n, lr_y

    def sizes(self) -> torch.Tensor:
        """B×(#shared) subspace sizes n_A."""
        if self.act is not None:
            return self.act.sum(-1).T
        return torch.stack([act.sum(-1) for _, act, _, _ in self.blocks], -1)

    def inputs(self, sample: bool = True) -> torch.Tensor:
        """M×B×D: per modality the decoder input, factor l of z_j carrying the slot it was assigned to (Eq. 26)."""
        single = self.single.rsample() if sample else self.single.mu
        u = self.free * single
        if self.slots is not None:  # every slot drawn at once; one draw per slot, shared by all modalities of A
            values = self.act * (self.slots.rsample() if sample else self.slots.mu)
            if self.placement is not None:  # every pair's slot values placed with one scatter
                block, idx, exists = self.placement
                M, B, width = idx.shape
                s = (values.index_select(0, block) * exists).view(M, -1, B, values.shape[-1])
                return u.scatter_add(-1, idx, s.transpose(1, 2).reshape(M, B, width))
            values = values.unbind(0)
        else:
            values = [act * (q.rsample() if sample else q.mu) for _, act, _, q in self.blocks]
        u = list(u.unbind(0))
        gathered = [([], []) for _ in u]  # per modality: the picks and slot values of its Picks selections
        for (_, _, Ys, _), s in zip(self.blocks, values):
            for j, Y in Ys.items():
                if isinstance(Y, Picks):
                    gathered[j][0].append(Y.idx)
                    gathered[j][1].append(s * Y.exists)
                else:  # a one-hot matrix or a RelaxedHead
                    u[j] = u[j] + put(Y, s)
        for j, (idx, vals) in enumerate(gathered):
            if idx:  # every selection of modality j placed at once
                u[j] = u[j] + u[j].new_zeros(u[j].shape).scatter_add(-1, torch.cat(idx, -1), torch.cat(vals, -1))
        return torch.stack(u)

    def kl(self) -> torch.Tensor:
        """Σ over the active slots of KL(q(slot) || N(0, 1)): the z-term of Eq. (4), closed form."""
        kl = (self.free * kl_elem(self.single)).sum(-1).sum(0)
        if self.slots is not None:
            return kl + (self.act * kl_elem(self.slots)).sum(-1).sum(0)
        for _, act, _, q in self.blocks:
            kl = kl + (act * kl_elem(q)).sum(-1)
        return kl

    def posterior(self) -> RelationalPosterior:
        M, (B, D) = len(self.free), self.free[0].shape
        idx = [torch.full((B, D + 1), -1, dtype=torch.long, device=self.free[0].device) for _ in range(M)]
        mus, logvars, offset = [], [], 0
        for _, act, Ys, q in self.blocks:
            R = act.shape[1]
            slot = offset + torch.arange(R, device=act.device).expand(B, R)
            for j, Y in Ys.items():
                pick = Y.argmax() if indexed(Y) else Y.detach().argmax(-1)
                pos = torch.where(act.detach() > 0.5, pick, D)  # inactive rows -> spare column D
                idx[j].scatter_(1, pos, slot)
            mus.append(q.mu)
            logvars.append(q.logvar)
            offset += R
        own = offset + torch.arange(M * D, device=idx[0].device).view(M, 1, D)
        coords = [torch.where(f.detach() > 0.5, own[j], idx[j][:, :D]) for j, f in enumerate(self.free)]
        mus.append(self.single.mu.transpose(0, 1).reshape(B, M * D))
        logvars.append(self.single.logvar.transpose(0, 1).reshape(B, M * D))
        idx = torch.cat(coords, 1)
        assert (idx >= 0).all(), "a factor was assigned to no subspace"
        return RelationalPosterior(torch.cat(mus, 1), torch.cat(logvars, 1), idx)


@METHODS.register("mrvae")
class MrVAE(MultimodalVAE):
    """mrVAE: per-modality latents whose factors are allocated to learned shared subspaces (mrVAE §3, Eq. 4).

    Model (M modalities, D = latent_dim factors per modality, the paper's |S_A| = min_j D_j = D):
    * Encoders give q(z_j | x_j). From z_j ~ q, r_ψ(n_A | z_A) (Eqs. 1, 33-35) is a categorical over
      0..D per subset A with |A| >= 2, sampled with straight-through Gumbel-softmax (App. E.1). The factors
      are allocated subspace by subspace, largest A first (ties in modality order), and the private S_{j}
      takes what is left. So that every modality's sizes sum to D_j (Def. 1), n_A is truncated to the
      factors that all modalities of A still have; r is thus sequential, r(n_A | z_A, earlier n).
    * y_{j,A} (Eqs. 2, 36-38): scores w_{j,A} = g_{ψ,A,j}(z_A) over z_j's factors, Gumbel-perturbed and
      sorted with straight-through NeuralSort (exact sort forward, relaxed gradient); the top n_A of the
      factors not yet taken form the ranked selection (a factor goes to exactly one subspace).
    * Aggregation, q(z | n, y, X): slot r of S_A is the product of experts of the Gaussians of the
      rank-r selected factor of every modality of A (no prior expert); private factors keep their own
      posterior. Modality j is decoded from its D factors, each carrying its slot (Eq. 26).
    * Priors: n_A ~ the central multivariate hypergeometric of Def. 1 for every modality of A (D draws
      from Σ_{A∋j} |S_A| items), in its sequential form (univariate hypergeometrics that telescope to the
      multivariate pmf); the |A| modalities' laws of the one n_A are pooled (option `size_prior`) and
      normalised over n_A. y: Def. 2's uniform categorical given the sizes, i.e. uniform Plackett-Luce over
      the ranked picks (the order is the slot alignment). z: N(0, I) per slot. docs/provenance.md (mrVAE)
      checks both against enumeration.
    * Loss, option `objective` (App. A.1): "q" (default; the paper: "We will focus on this second case",
      Eqs. 4 and 8): (n, y) ~ q(n, y), z ~ q(z | n, y, X), loss rec_w-weighted NLL + β·KL(q(z | n, y, X) ||
      N(0, I)) + log q(n, y) - log r(n, y | z), r reading the blocks of that z; no relaxation is needed (the
      prior has no parameters). "r" (the first case, Eq. 7, with App. E's relaxations): (n, y) ~ r(n, y | z)
      straight-through, loss NLL + β·KL_z + KL_n + KL_y, KL_n exact per subspace given the earlier sizes,
      KL_y the one-sample log PL_w(y) - log PL_0(y). β weighs only the z-term (Eq. 4: 1; the paper gives
      no β; `method.beta` defaults to 2.5 as for every method, suites/mrvae.yaml sets 1); the structure terms
      keep weight 1.

    Interface: z = [z_1; ...; z_M] (latent size M·D). For a subset S, subspaces that S covers (A ∩ S ≠ ∅)
    get n_A, y and slot values from the available modalities (the networks average over them, App. E.1);
    uncovered subspaces take n_A from the prior, a uniform y and N(0, 1) slots, and so do the private
    factors of modalities outside S. In eval mode the relation is the mode (posterior means in, no Gumbel
    noise; argmax sizes, the prior's mode and the lowest free factors where uncovered) and
    `encode_subsets` returns q(z | n̂, ŷ, X_S); in train mode it samples the relation from r. Both
    objectives infer a test input's relation with r from the unimodal latents (the paper does not say how
    a relation is chosen at test time; under "q", r was trained on relation-applied latents, not on these:
    docs/provenance.md, mrVAE). `sample_prior`
    draws a relation from the prior and N(0, 1) slots.

    Options (the paper gives no temperatures or widths; these are our defaults):
    * `objective` ("q"): above. `size_prior` ("mean"): the modalities' hypergeometrics of n_A pooled by
      their geometric mean (Def. 1 exactly when M = 2, where both are the same law) or "product".
    * `tau_n` (1.0), `tau_y` (1.0): Gumbel-softmax and NeuralSort temperatures (gradients only: the
      forward pass is exact, straight-through).
    * `anneal_rate` (0.0: no annealing, as the paper): τ = max(`tau_min`, τ_0·exp(-rate·step)), step =
      the training step being taken (from 1; in evaluation the steps trained), from a buffer saved with the model
      (Jang et al. 2016's schedule). `tau_min` (0.5).
    * `hidden` (128): width of the networks of Eqs. 34-35 and 37-38. As written there, they end in a ReLU;
      their outputs are used as the categorical's logits (c_A) and as the sorting scores (w_{j,A}).

    Exact selections are held as indices (`Picks`); `model.dense = True` computes them as one-hot matrices in
    a per-pair loop instead, the reference the tests hold the fast path to.

    Training sees only complete tuples (Eq. 4), so the subset averages of App. E.1 and the subset PoEs
    used for missing modalities are not trained explicitly (the paper does not say otherwise).
    """

    paper = "mrVAE (Sutter & Vogt, multimodal relational VAE), §3, Defs. 1-2, Eq. (4), App. E"
    # 2: objective q became the default and the size prior is normalised (pooled by geometric mean): a config
    # with the same options trains another model than before, so it gets another run id.
    id_version = 2
    options = {"objective": "q", "size_prior": "mean", "tau_n": 1.0, "tau_y": 1.0, "anneal_rate": 0.0, "tau_min": 0.5, "hidden": 128}
    option_rules = {"objective": {"choices": ("q", "r"), "note": "q: App. A.1's second case, Eqs. 4 and 8; r: the first "
                                                                 "case, Eq. 7"},
                    "size_prior": {"choices": ("mean", "product")},
                    # Gumbel-softmax temperatures (Jang et al. 2016) are > 0; the anneal rate never raises them
                    "tau_n": {"gt": 0}, "tau_y": {"gt": 0}, "tau_min": {"gt": 0}, "anneal_rate": {"ge": 0},
                    "hidden": {"ge": 1, "note": "the width of the networks of Eqs. 34-35 and 37-38"}}

    # 3 for objective r: its size logits' gradient now reaches every row, not only the relaxed ones (RelaxedHead),
    # and its slots draw noise for all D rows, so an objective r config trains another model than before.
    @classmethod
    def numerics_version(cls, options):
        return 3 if options.get("objective", cls.options["objective"]) == "r" else cls.id_version

    # Packable (mmbench/pack.py): the annealing's step counter is a buffer, so each run of a pack keeps its own.
    # Objective r reads each step's largest subspace size back from the device (the bound of its relaxed rows);
    # a vmapped pack reads the largest over its runs, and any bound at or above a run's own gives its numbers.

    def __init__(self, modalities, cfg, architecture):
        super().__init__(modalities, cfg, architecture)
        M, D, H = len(self.names), cfg.latent_dim, int(self.opt["hidden"])
        if M < 2:
            raise MMBenchError("mrvae needs at least two modalities; use a multimodal dataset")
        self.D = D
        self.latent_dim = M * D  # the interface latent: one D-block per modality
        # Shared subspaces in allocation order: largest first, then modality order.
        subsets = sorted(all_subsets(range(M)), key=len, reverse=True)
        self.shared = [A for A in subsets if len(A) > 1]
        pairs = [(a, j) for a, A in enumerate(self.shared) for j in A]
        self.pairs = pairs  # host copy of pair_block / pair_modality: loops over pairs read no device tensor
        self.pair_index = {p: u for u, p in enumerate(pairs)}
        triples = [(u, i) for u, (a, _) in enumerate(pairs) for i in self.shared[a]]
        self.size_net = SetNets([j for _, j in pairs], [a for a, _ in pairs], len(self.shared), D, H, D + 1)  # Eq. 35
        self.score_net = SetNets([i for _, i in triples], [u for u, _ in triples], len(pairs), D, H, D)  # Eq. 38
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps so far; checkpointed
        self.dense = False  # True: exact selections as one-hot matrices (the reference the tests compare with)
        # None: rows are cut to the largest size drawn (+1) where it pays: relate's relaxations (objective r's
        # training), relate_prior's picks on a CPU outside vmap; False: every row computed (the reference the tests
        # hold the cuts to: the same numbers and draws)
        self.cut_rows = None
        self.register_buffer("log_hg", hypergeom_table(D, 2 ** (M - 1)), persistent=False)
        left, pop_class = [2 ** (M - 1)] * M, []  # per modality: its subspaces not yet allocated, private included
        for A in self.shared:
            pop_class.append([left[j] - 1 for j in A] + [0] * (M - len(A)))
            for j in A:
                left[j] -= 1
        self.register_buffer("pop_class", torch.tensor(pop_class), persistent=False)
        self.register_buffer("member_of", torch.tensor([[int(j in A) for j in range(M)] for A in self.shared]),
                             persistent=False)  # #shared×M: 1 where modality j is in A
        # #shared×M: the modalities of each A, padded with M (a spare modality, see relate_prior)
        self.register_buffer("members", torch.tensor([list(A) + [M] * (M - len(A)) for A in self.shared]),
                             persistent=False)
        self.register_buffer("pair_block", torch.tensor([a for a, _ in pairs]), persistent=False)
        self.register_buffer("pair_modality", torch.tensor([j for _, j in pairs]), persistent=False)
        self.register_buffer("pair_by_modality", torch.tensor([[u for u, (_, i) in enumerate(pairs) if i == j]
                                                              for j in range(M)]), persistent=False)  # M×n pairs
        self.register_buffer("pair_mask", F.one_hot(self.pair_block, len(self.shared)).T.float(), persistent=False)
        self.register_buffer("shared_sizes", torch.tensor([len(A) for A in self.shared]), persistent=False)

    def temperatures(self) -> tuple:
        """(τ_n, τ_y): the options' numbers, or with `anneal_rate` > 0 max(τ_min, τ_0·exp(-rate·step)) as device
        tensors computed from the step buffer (no read back to the host, nothing for a captured step to specialise on)."""
        tau_n, tau_y, rate = float(self.opt["tau_n"]), float(self.opt["tau_y"]), float(self.opt["anneal_rate"])
        if rate == 0:
            return tau_n, tau_y
        step = self.step + 1 if self.training else self.step  # training: this step's number (counted after it)
        f = torch.exp(step.double() * -rate)
        lo = float(self.opt["tau_min"])
        return (f * tau_n).clamp_min(lo), (f * tau_y).clamp_min(lo)

    def relate(self, mu: torch.Tensor, logvar: torch.Tensor, avail: Sequence[bool], sample: bool,
               with_kl: bool = False, from_prior: bool = False) -> Relation:
        """Infer (n, y) from the available modalities (mu, logvar: M×B×D; the others' rows are ignored) and
        build q(z | n, y, X); `sample`: Gumbel noise and z ~ q(z_j | x_j) as network input (else the mode, means).
        from_prior: draw (n, y) from the prior q(n, y) of Defs. 1-2 instead (r is not used; no relaxation)."""
        if from_prior and sample and all(avail) and not self.dense:
            return self.relate_prior(mu, logvar)
        M, B, D = mu.shape
        tau_n, tau_y = self.temperatures()
        avail = [bool(a) for a in avail]  # host data: no device tensor is read for it
        covered = [False] * len(self.shared)
        # prior draws rank each modality's factors by one Gumbel draw (consecutive picks of one uniform permutation)
        y_noise = gumbel(mu.new_zeros(M, B, D)) if from_prior and sample else [None] * M
        # and the sizes by one Gumbel draw for every subspace, drawn at once as relate_prior does
        n_noise = gumbel(mu.new_zeros(len(self.shared), B, D + 1)) if from_prior and sample else None
        if any(avail) and not from_prior:
            z = Gaussian(mu, logvar).rsample() if sample else mu  # the z_A read by Eqs. 33-38
            size_logits, covered = self.size_net(z, avail)
            scores, _ = self.score_net(z, avail)
            # one view per subspace / pair: their backward is one stack, not a zero-filled copy per read
            size_logits, scores = size_logits.unbind(0), scores.unbind(0)
        rel = Relation()
        free = [mu.new_ones(B, D) for _ in range(M)]
        ks = torch.arange(D + 1, device=mu.device)
        for a, A in enumerate(self.shared):
            d_left = torch.stack([free[j].detach().sum(-1) for j in A])  # |A|×B factors each modality has left
            pop = self.pop_class[a][:len(A), None]  # j's population left[j] = (pop + 1)·D
            log_hg = self.log_hg[pop, d_left.round().long()]  # |A|×B×(D+1)
            log_prior = log_size_prior(log_hg, self.opt["size_prior"]).to(mu.dtype)  # Def. 1, sequential form
            allowed = ks <= d_left.min(0).values[:, None]
            logits = (size_logits[a] if covered[a] else log_prior).masked_fill(~allowed, -math.inf)
            if n_noise is None:
                onehot = gumbel_softmax(logits, tau_n, noise=sample)  # r(n_A | z_A), App. E.1
            else:
                onehot = gumbel_softmax(logits + n_noise[a], tau_n, noise=False)  # the prior's Gumbel-max draw
            if with_kl and covered[a]:
                rel.kl_n = rel.kl_n + categorical_kl(logits, log_prior, allowed)
            rel.log_q_n = rel.log_q_n + (onehot.detach() * torch.where(allowed, log_prior, 0.0)).sum(-1)
            n = (onehot * ks).sum(-1)
            # Every row is kept (D per subspace): act[r]'s straight-through gradient reaches every row, the inactive
            # ones through their exact picks and slots, and a sample of the slots then draws D numbers per subspace
            # whatever the sizes drawn, so no number or draw depends on the batch's other rows. Only the relaxation
            # (NeuralSort, B×R×D per pair; it exists for the gradient) is cut, up to the largest n_A drawn (+1), read
            # back from the device: a row's relaxation reaches the loss only through act[r], which is 0 past n_A.
            relaxing = covered[a] and torch.is_grad_enabled()
            R = min(D, largest(n.detach()) + 1) if relaxing and self.cut_rows is not False else D
            act = onehot.flip(-1).cumsum(-1).flip(-1)[:, 1:D + 1]  # act[r] = 1[n_A > r]
            Ys, before = {}, {}
            for j in A:
                w = scores[self.pair_index[(a, j)]] if covered[a] else torch.zeros_like(free[j])
                Ys[j] = rank(w, free[j], D, tau_y, sample, relax=covered[a], dense=self.dense, noise=y_noise[j],
                             relaxed=R)
                if with_kl and covered[a]:
                    rel.kl_y = rel.kl_y + log_pl_ratio(w, free[j], Ys[j], act)
                before[j] = free[j]
                free[j] = free[j] - put(Ys[j], act)
            rel.structure.append((onehot, allowed, log_prior, before))
            experts = [j for j in A if avail[j]]
            if experts:  # slot r = PoE of the rank-r selected factor of every available modality of A
                sel_mu = torch.stack([take(Ys[j], mu[j]) for j in experts])
                sel_lv = torch.stack([take(Ys[j], logvar[j]) for j in experts])
                q = product_of_experts(sel_mu, sel_lv, mu.new_ones(1, len(experts)), mu.new_zeros(1))[0]
            else:  # no input covers S_A: its slots come from the prior
                q = Gaussian(mu.new_zeros(B, D), mu.new_zeros(B, D))
            rel.blocks.append((A, act, Ys, q))
        if all(avail):
            rel.single = Gaussian(mu, logvar)
        else:  # the missing modalities' rows are zeroed
            rel.single = Gaussian(torch.stack([mu[j] if a else torch.zeros_like(mu[j]) for j, a in enumerate(avail)]),
                                  torch.stack([logvar[j] if a else torch.zeros_like(logvar[j]) for j, a in enumerate(avail)]))
        rel.free = torch.stack(free)
        if from_prior:  # every block has all D rows: its slots are drawn at once, as relate_prior's
            rel.act = torch.stack([act for _, act, _, _ in rel.blocks])
            rel.slots = CutSlots(torch.stack([q.mu for *_, q in rel.blocks]),
                                 torch.stack([q.logvar for *_, q in rel.blocks]), D)
        return rel

    def relate_prior(self, mu: torch.Tensor, logvar: torch.Tensor) -> Relation:
        """relate(from_prior=True, sample=True) with every modality available, vectorised: the same draws (same
        random numbers), with the selections of every (A, j) pair made at once from one permutation per modality."""
        M, B, D = mu.shape
        S = len(self.shared)
        y_noise = gumbel(mu.new_zeros(M, B, D))
        n_noise = gumbel(mu.new_zeros(S, B, D + 1))
        ks = torch.arange(D + 1, device=mu.device)
        left = torch.full((M, B), D, dtype=torch.long, device=mu.device)  # factors each modality has not yet given
        rel, left_before, sizes, log_q_all = Relation(), [], [], []
        for a, A in enumerate(self.shared):  # the sizes: sequential by nature (Def. 1's sequential form)
            members = self.members[a][:len(A)]
            d_left = left.index_select(0, members)  # |A|×B factors each modality of A has left
            # log q(n_A = k | earlier sizes) is -inf for every k above a member's d_left: no mask needed for the draw
            log_prior = log_size_prior(self.log_hg[self.pop_class[a][:len(A), None], d_left],
                                       self.opt["size_prior"]).to(mu.dtype)
            n = (log_prior + n_noise[a]).argmax(-1)  # n_A ~ q (Gumbel-max)
            left_before.append(left)
            left = left.addcmul(self.member_of[a][:, None], n, value=-1)  # (index_add loops over a pack's runs)
            sizes.append(n)
            log_q_all.append(log_prior)
        n = torch.stack(sizes)  # #shared×B
        log_q = torch.stack(log_q_all)
        left_before = torch.stack(left_before)  # #shared×M×B
        # the sizes r may take: up to the fewest factors a member has left (a spare modality M with all D left pads)
        most = torch.cat([left_before, left_before.new_full((S, 1, B), D)], 1).gather(
            1, self.members[..., None].expand(S, M, B)).min(1).values
        allowed = ks <= most[..., None]
        rel.size_terms = (F.one_hot(n, D + 1).to(mu.dtype), allowed, log_q)
        rel.log_q_n = log_q.gather(-1, n[..., None])[..., 0].sum(0)
        pa, pj = self.pair_block, self.pair_modality  # P pairs (A, j) in allocation order
        order = torch.sort(y_noise, stable=True, dim=-1, descending=True).indices  # M×B×D uniform permutations
        position = torch.empty_like(order).scatter(-1, order, torch.arange(D, device=mu.device).expand(M, B, D))
        offset = D - left_before[pa, pj]  # P×B: j's factors taken before S_A
        # Rows (picks) computed per pair: all D on a GPU (no host sync in the step); on a CPU only up to the
        # largest size drawn (+1), since the rows past every n_A are inactive and the CPU pays for every element.
        # Under vmap (a pack) each run would cut at its own size: no cut, as on a GPU.
        cut = mu.device.type == "cpu" and not vmapped(mu) if self.cut_rows is None else self.cut_rows
        R = min(D, int(n.max()) + 1) if cut else D
        r = torch.arange(R, device=mu.device)
        pos = offset[..., None] + r  # P×B×R: position of pick r of pair p in j's permutation
        exists = (pos < D).to(mu.dtype)
        idx = order[pj].gather(-1, pos.clamp(max=D - 1))
        rel.act = (r < n[..., None]).to(mu.dtype)  # #shared×B×R: act[r] = 1[n_A > r]
        act = rel.act.index_select(0, pa)
        before = (position[pj] >= offset[..., None]).to(mu.dtype)  # j's factors still free before S_A
        # mu[pj].gather(-1, idx) without the P×B×D copy of mu[pj] (nor its sort-based backward): one flat gather
        flat = ((pj[:, None, None] * B + torch.arange(B, device=mu.device)[:, None]) * D + idx).reshape(-1)
        sel_mu = mu.reshape(-1).gather(0, flat).view(idx.shape) * exists
        sel_lv = logvar.reshape(-1).gather(0, flat).view(idx.shape) * exists
        slots = product_of_experts(sel_mu, sel_lv, self.pair_mask.to(mu.dtype), mu.new_zeros(S))
        rel.slots = CutSlots(slots.mu, slots.logvar, D)  # R rows, drawn as D (the same numbers at any R)
        for p, (a, j) in enumerate(self.pairs):  # the order of pa, pj, from the host copy (no device read)
            if len(rel.blocks) == a:
                rel.blocks.append((self.shared[a], rel.act[a], {}, rel.slots[a]))
            rel.blocks[a][2][j] = Picks(idx[p], exists[p], D)
        rel.stacked = (idx, exists, act, before)
        # the pairs grouped by modality (M×n of them): each modality's picks side by side, for one scatter
        grouped = self.pair_by_modality.reshape(-1)
        width = grouped.numel() // M * R
        rel.placement = (pa.index_select(0, grouped),
                         idx.index_select(0, grouped).view(M, -1, B, R).transpose(1, 2).reshape(M, B, width),
                         exists.index_select(0, grouped))
        rel.free = (position >= (D - left)[..., None]).to(mu.dtype)
        rel.single = Gaussian(mu, logvar)
        return rel

    # ----- the interface -------------------------------------------------------------------
    def encode_subsets(self, x, subsets):
        for s in subsets:
            for n in s:
                if n not in self.names:
                    raise KeyError(f"modality {n!r} is not an input here; inputs: {self.names}")
        names = self.needed(subsets)
        mu_s, lv_s = self.unimodal(x, names)
        B = mu_s.shape[1]
        pos = [names.index(n) if n in names else None for n in self.names]
        zero = mu_s.new_zeros(B, self.D)
        mu = torch.stack([mu_s[p] if p is not None else zero for p in pos])
        logvar = torch.stack([lv_s[p] if p is not None else zero for p in pos])
        return [self.relate(mu, logvar, [n in s for n in self.names], sample=self.training).posterior()
                for s in subsets]

    def block(self, z, modality):
        """Modality j's D factors of the concatenated interface latent z = [z_1; ...; z_M]."""
        j = self.names.index(modality)
        return z[..., j * self.D:(j + 1) * self.D]

    def decode(self, z, modality):
        return super().decode(self.block(z, modality), modality)

    def rec_log_prob(self, z, x, modality):
        return super().rec_log_prob(self.block(z, modality), x, modality)

    def sample_prior(self, n):
        zero = next(self.parameters()).new_zeros(len(self.names), n, self.D)
        return self.relate(zero, zero, [False] * len(self.names), sample=True).posterior().rsample()

    def loss(self, x):
        mu, logvar = self.unimodal(x, self.names)
        everything = [True] * len(self.names)
        if self.opt["objective"] == "q":
            # App. A.1's second case (Eqs. 4, 8), the expectation under q(z, n, y | X) taken ancestrally as App. C.1
            # Eqs. (20)-(21) write it: (n, y) ~ q(n, y) (Defs. 1-2), z ~ q(z | n, y, X); r_ψ(n, y | z) reads that z.
            rel = self.relate(mu, logvar, everything, sample=True, from_prior=True)
            u = rel.inputs(sample=True)
            lr_n, lr_y = rel.log_ratio(self.size_net(u, everything)[0], self.score_net(u, everything)[0], self.pair_index)
            kl_n, kl_y = -lr_n, -lr_y  # log q(n, y) - log r(n, y | z): Eq. (4)'s third term, negated
        else:  # App. A.1's first case (Eq. 7) with App. E's relaxations: (n, y) ~ r(n, y | z), + KL(r || q)
            rel = self.relate(mu, logvar, everything, sample=True, with_kl=True)
            u = rel.inputs(sample=True)
            kl_n, kl_y = rel.kl_n, rel.kl_y
        # Eq. (26): each modality is decoded from its own factors only.
        nll = sum(-self.rec_weights[m] * self.likelihoods[m].log_prob(self.decoders[m](u[j]), x[m])
                  for j, m in enumerate(self.names))
        kl_z = rel.kl()
        loss = (nll + self.beta * kl_z + kl_n + kl_y).mean()  # Eq. (4), negated (β = 1 there)
        shared = (rel.sizes() * self.shared_sizes).sum(-1)
        tau_n, tau_y = self.temperatures()
        logs: Dict[str, float] = {
            "loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl_z.mean().detach(),
            "kl_n": torch.as_tensor(kl_n).detach().mean(),  # device tensors: no host sync in the step
            "kl_y": torch.as_tensor(kl_y).detach().mean(),
            "shared_fraction": (shared / (len(self.names) * self.D)).mean().detach(), "tau_n": tau_n, "tau_y": tau_y}
        if self.training:
            self.counted(x)
        return loss, logs

    def count_step(self, rows: int) -> None:
        self.step += 1
