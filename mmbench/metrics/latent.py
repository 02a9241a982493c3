"""Latent linear classification (MoPoE §4, App. B): logistic regression on posterior means, every subset."""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..errors import MMBenchError
from ..methods.base import evaluable_subsets, subset_key
from ..registry import METRICS
from .context import EvalContext
from .logistic020 import LogisticRegression020


# lbfgs's iteration cap per eval.lr_protocol, as each authors' code: 1000 (MoPoE eval_metrics/representation.py
# train_clf_lr_all_subsets; SMVAE has no code and follows MoPoE's protocol), 10000 (mmvmvae utils/eval.py
# train_clf_lr_PM, train_clf_lr_celeba; mmvampvae's rats evaluation likewise).
LR_MAX_ITER = {"mopoe": 1000, "smvae": 1000, "mmvamp": 10000}
# Which scikit-learn fits the regressions, per eval.lr_protocol, as each authors' code: MoPoE's environment.yml pins
# 0.20.0, whose lbfgs minimises the *summed* log-loss and stops at a projected gradient of 1e-4 or scipy's default
# relative reduction; scikit-learn >= 1.4 (mmvmvae's and mmvampvae's environment.yml pin 1.4.0; mmbench's is newer)
# minimises the *mean* (scikit-learn PR #26721) and stops elsewhere (on weakly separable 512-d means, up to 6 points
# of accuracy apart; docs/provenance.md). "0.20": metrics/logistic020.py, 0.20's objective and call; "current":
# sklearn's LogisticRegression, as the MM-VAMP code. SMVAE has no code and follows MoPoE's protocol.
LR_SKLEARN = {"mopoe": "0.20", "smvae": "0.20", "mmvamp": "current"}


def fit_regression(z: np.ndarray, y: np.ndarray, standardize: bool, protocol: str):
    """`regression` fitted on (z, y) as eval.lr_protocol's authors' code fits it (LR_MAX_ITER, LR_SKLEARN), on float64
    features: both pinned versions fit lbfgs in float64 whatever the input (0.20.0 and 1.4.0 `LogisticRegression.fit`:
    `_dtype = np.float64` for lbfgs), where today's keeps float32 means in float32 (docs/provenance.md)."""
    return regression(standardize, LR_MAX_ITER[protocol], LR_SKLEARN[protocol]).fit(np.asarray(z, dtype=np.float64), y)


def regression(standardize: bool, max_iter: int, sklearn: str = "current"):
    """MoPoE App. B: sklearn's LogisticRegression with its defaults (lbfgs, C = 1, tol 1e-4), `max_iter` (LR_MAX_ITER),
    as scikit-learn `sklearn` ("0.20": metrics/logistic020.py; "current": the installed one) fits it. With
    `standardize` (eval.lr_standardize, not in the papers) on standardised features: C = 1 regularises
    small-scale latents (an early-training posterior's means) towards chance; standardising first measures
    linear separability independently of the latent's scale."""
    if sklearn == "0.20":  # (needs no scikit-learn at all)
        return LogisticRegression020(max_iter=max_iter, standardize=standardize)
    # (imported here: scikit-learn costs every mmbench process ~1 s at start-up, most of which never fit one)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(max_iter=max_iter, random_state=0)
    return make_pipeline(StandardScaler(), clf) if standardize else clf


def stopped_at_cap(fitted) -> bool:
    """Whether a fitted regression (or its pipeline's last step) ran out of iterations before lbfgs converged:
    counted into `latent_lr_unconverged`, so a number from an unconverged fit is visible, not silent."""
    clf = fitted[-1] if hasattr(fitted, "steps") else fitted
    return int(np.max(clf.n_iter_)) >= clf.max_iter


def one_blas_thread():
    """Context for fitting and applying the regressions: numpy/scipy's BLAS on one thread. Their products (500 ×
    512 latents) are too small to share: on 2 cores a fit ran several times faster on one thread (docs/metrics.md,
    "Evaluation wall time"), and the coefficients no longer depend on the machine's core count (they differ in
    the last bits otherwise)."""
    return threadpool_limits(limits=1, user_api="blas")


@torch.no_grad()
def encode_means(ctx: EvalContext, split, subsets) -> List[np.ndarray]:
    """Posterior means (eval.mixture_representation) of every subset for every row of `split` (all subsets
    per batch in one call)."""
    out: List[List[np.ndarray]] = [[] for _ in subsets]
    for _, x in ctx.batches(split):
        for k, q in enumerate(ctx.posteriors(x, subsets)):
            out[k].append(q.mean.cpu().numpy())
    return [np.concatenate(o) for o in out]


def by_size(values: Dict[str, float], subsets, prefix: str) -> Dict[str, float]:
    """Mean over subsets of each size n (MoPoE Fig. 3): key `<prefix>/<n>`."""
    out = {}
    for n in sorted({len(s) for s in subsets}):
        vals = [values[subset_key(s)] for s in subsets if len(s) == n and subset_key(s) in values]
        if vals:
            out[f"{prefix}/{n}"] = float(np.mean(vals))
    return out


def protocol_subsets(ctx: EvalContext):
    """eval.lr_protocol's (scored subsets, fitting subset of each): "mopoe" (MoPoE App. B) fits each subset's own
    regression; "smvae" (SMVAE §5: "training a linear classifier under inference from all modalities and
    predicting by it from the representation inferred from subsets") fits on the full set for every subset;
    "mmvamp" (MM-VAMP App. B.2.2) scores the unimodal subsets, each fitted on its own."""
    protocol = ctx.cfg.lr_protocol
    subsets = evaluable_subsets(ctx.model)
    if protocol == "mmvamp":
        subsets = [s for s in subsets if len(s) == 1]
    full = tuple(ctx.model.names)
    return subsets, {s: (full if protocol == "smvae" else s) for s in subsets}


@METRICS.register("latent_classification")
def latent_classification(ctx: EvalContext) -> Dict[str, float]:
    """Accuracy of a logistic regression on posterior means, per subset (`latent_acc/<subset>`, `latent_acc_by_n/<n>`).

    eval.lr_protocol: "mopoe" (MoPoE App. B: one regression per subset, fitted on that subset's
    representations), "smvae" (SMVAE §5: one regression fitted on the all-modality representations,
    evaluated on every subset's), "mmvamp" (MM-VAMP App. B.2.2: unimodal subsets only; the suites pair
    it with eval.lr_train_samples = 10000).
    """
    if ctx.spec.multilabel:
        raise MMBenchError(f"latent_classification scores one label per tuple; {ctx.spec.registry_name} has multi-label "
                           f"attributes: use latent_ap in eval.metrics")
    protocol = ctx.cfg.lr_protocol
    subsets, fit_on = protocol_subsets(ctx)
    # eval.lr_train_samples training tuples (seeded by the run's seed, without replacement), whole (capped) test set.
    train = ctx.regression_tuples()
    fit_subsets = list(dict.fromkeys(fit_on.values()))
    ctx.progress("latent classification: encoding", 0, 2)
    z_train = dict(zip(fit_subsets, encode_means(ctx, train, fit_subsets)))
    ctx.progress("latent classification: encoding", 1, 2)
    z_test = dict(zip(subsets, encode_means(ctx, ctx.test, subsets)))
    y_train, y_test = train.labels.numpy(), ctx.test.labels.numpy()

    def fit(z: np.ndarray):
        return fit_regression(z, y_train, ctx.cfg.lr_standardize, protocol)

    acc = {}
    with one_blas_thread():
        fitted = {}  # one regression per fitting subset (under "smvae" the full set's serves every subset)
        for k, s in enumerate(subsets):
            if fit_on[s] not in fitted:
                fitted[fit_on[s]] = fit(z_train[fit_on[s]])
            acc[subset_key(s)] = float((fitted[fit_on[s]].predict(z_test[s]) == y_test).mean())
            ctx.progress("latent classification: fitting", k + 1, len(subsets))
        out = {f"latent_acc/{k}": v for k, v in acc.items()}
        if protocol == "mmvamp" and len(subsets) > 1:
            # One classifier on every modality's representations pooled together (MM-VAMP rats, shared latent space).
            zs = [z_train[s] for s in subsets]
            pooled = fit_regression(np.concatenate(zs), np.tile(y_train, len(zs)), ctx.cfg.lr_standardize, protocol)
            pred = pooled.predict(np.concatenate([z_test[s] for s in subsets]))
            out["latent_acc/pooled"] = float((pred == np.tile(y_test, len(subsets))).mean())
            fitted["pooled"] = pooled
        out["latent_lr_unconverged"] = float(sum(stopped_at_cap(f) for f in fitted.values()))
    out.update(by_size(acc, subsets, "latent_acc_by_n"))
    return out
