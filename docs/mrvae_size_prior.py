"""The table of docs/provenance.md (mrVAE, prior on n): how close each way of pooling the modalities' Def. 1 laws
of the shared sizes n_A comes to Def. 1, by enumeration. Run: python docs/mrvae_size_prior.py (scipy, numpy)."""
import itertools

import numpy as np
from scipy import stats


def shared_subsets(M):  # the model's allocation order: largest first, then modality order
    subsets = sorted((c for r in range(1, M + 1) for c in itertools.combinations(range(M), r)), key=len, reverse=True)
    return [A for A in subsets if len(A) > 1]


def valid(M, D, shared):
    for n in itertools.product(range(D + 1), repeat=len(shared)):
        if all(sum(k for k, A in zip(n, shared) if j in A) <= D for j in range(M)):
            yield n


def sequential(M, D, shared, n, pool):
    used, pop, p = [0] * M, [D * (sum(j in A for A in shared) + 1) for j in range(M)], 1.0
    for a, A in enumerate(shared):
        lf = np.array([sum(stats.hypergeom.logpmf(k, pop[j], D, D - used[j]) for j in A) for k in range(D + 1)])
        lf = lf / len(A) if pool == "mean" else lf
        f = np.exp(lf - lf.max())
        p *= f[n[a]] / f.sum()
        for j in A:
            used[j], pop[j] = used[j] + n[a], pop[j] - D
    return p


def global_product(M, D, shared, n):
    p = 1.0
    for j in range(M):
        c = [k for k, A in zip(n, shared) if j in A]
        c.append(D - sum(c))
        p *= stats.multivariate_hypergeom.pmf(c, [D] * len(c), D)
    return p


def worst_tv(M, D, shared, ns, P):
    worst = 0.0
    for j in range(M):
        marg = {}
        for n, p in zip(ns, P):
            c = tuple(k for k, A in zip(n, shared) if j in A)
            marg[c] = marg.get(c, 0.0) + p
        k = len(next(iter(marg)))
        tv = 0.5 * sum(abs(marg.get(c, 0.0) - stats.multivariate_hypergeom.pmf(list(c) + [D - sum(c)], [D] * (k + 1), D))
                       for c in itertools.product(range(D + 1), repeat=k) if sum(c) <= D)
        worst = max(worst, tv)
    return worst


if __name__ == "__main__":
    print("M D | worst TV to Def. 1: mean / product / global | E[n_A]/D under mean | 1/2^(M-1)")
    for M, D in [(2, 3), (3, 3), (3, 4), (4, 3)]:
        shared = shared_subsets(M)
        ns = list(valid(M, D, shared))
        mean = np.array([sequential(M, D, shared, n, "mean") for n in ns])
        prod = np.array([sequential(M, D, shared, n, "product") for n in ns])
        glob = np.array([global_product(M, D, shared, n) for n in ns])
        glob /= glob.sum()
        e = [(mean * np.array([n[a] for n in ns])).sum() / D for a in range(len(shared))]
        tvs = " / ".join(f"{worst_tv(M, D, shared, ns, P):.3f}" for P in (mean, prod, glob))
        print(f"{M} {D} | {tvs} | {min(e):.3f}-{max(e):.3f} | {1 / 2 ** (M - 1)}")
