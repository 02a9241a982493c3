"""Average precision on multi-label datasets (bimodal CelebA; MoPoE Table 5, App. E.3; MM-VAMP Fig. 4, App. B.3).

* ``latent_ap``: per subset S, one logistic regression per attribute on the posterior means of
  ``eval.lr_train_samples`` training tuples (``EvalContext.regression_tuples``, as ``latent_classification``), scored on the test
  tuples; which subsets are scored and whose means each regression is fitted on follow
  ``eval.lr_protocol`` as in ``latent_classification`` (``smvae``: fitted on the full set's means); AP per attribute (``latent_ap/<S>/<attribute>``), their mean (``latent_ap/<S>``; the tables'
  "mean average precision over all attributes") and the mean by number of inputs (``latent_ap_by_n/<n>``).
  ``eval.ap_scores`` picks what the AP ranks: ``hard`` (default) the regressions' 0/1 predictions --
  the MoPoE code (eval_metrics/representation.py test_clf_lr_all_subsets) and the MMVM code (mmvmvae
  utils/eval.py eval_clf_lr_celeba) call ``average_precision_score`` on
  ``clf.predict``, so the papers' tables most plausibly hold hard-prediction APs (MoPoE Table 5's
  0.30-0.40 are also in the range such APs take: between the base rate and the precision at the 0/1
  threshold); ``proba`` the predicted probabilities, the usual (threshold-free) AP.
* ``coherence_ap``: for every subset S and modality m, z ~ q(z | X_S) once per test tuple, x̂_m =
  decode(z, m), AP of m's attribute classifier's sigmoid scores against the tuple's true attributes
  (``coherence_ap/<S>-><m>``, per attribute ``coherence_ap/<S>-><m>/<attribute>``, and
  ``coherence_ap_by_n/<n>`` over targets outside S). Both codes score coherence on classifier scores.

AP over the test split is computed two ways, from the same scores:
* over all test tuples at once (``latent_ap/...``, ``coherence_ap/...``): the MMVM code (utils/eval.py
  eval_clf_lr_celeba) pools the whole split;
* as the MoPoE code does (``latent_ap_batchmean/<S>``, ``coherence_ap_batchmean/<S>-><m>``): per attribute,
  the mean of its APs on the test split shuffled into batches of 256 with the last partial batch dropped
  (celeba/experiment.py eval_label and mean_eval_metric over the DataLoader(shuffle=True, drop_last=True) of
  eval_metrics/representation.py test_clf_lr_all_subsets and eval_metrics/coherence.py test_generation;
  job_celeba: batch_size 256), then the mean over attributes. Per-batch APs of rare attributes are noisy and
  AP is not additive, so the two differ. A batch without a positive of an attribute has no AP there (the
  authors' scikit-learn 0.20 returns NaN, which makes that attribute's mean NaN; scikit-learn >= 1.1 returns
  0): it is left out of that attribute's mean, and ``ap_batchmean_empty`` counts such (batch, attribute)
  cells over the attributes scored (0: the authors' computation exactly). ``ap_batchmean_batches`` is the
  number of batches; with fewer than 256 test tuples there is none and the batch-mean keys are absent.
An attribute with no positive test tuple has no AP: it is left out of the means and its per-attribute key is
absent; ``ap_attributes_scored`` says how many attributes the means cover (40 on the full CelebA test split).
An attribute constant in the regression's training tuples gets that constant as its score (the only
prediction the data supports).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from ..data.base import dataset_dir, prepare_command, read_manifest
from ..errors import MMBenchError
from ..methods.base import evaluable_subsets, subset_key
from ..registry import METRICS
from .batched import classify, row_chunk
from .context import EvalContext
from .latent import by_size, encode_means, fit_regression, one_blas_thread, protocol_subsets, stopped_at_cap
from .precision import average_precisions, grouped_average_precisions


def require_multilabel(ctx: EvalContext, metric: str, single_label_metric: str) -> None:
    if not ctx.spec.multilabel:
        raise MMBenchError(f"{metric} scores multi-label datasets; {ctx.spec.registry_name} has one label per tuple: "
                           f"use {single_label_metric} in eval.metrics")


def attribute_names(ctx: EvalContext) -> List[str]:
    """The label names the prepared dataset's manifest stores under "attributes"."""
    manifest = read_manifest(dataset_dir(ctx.spec.registry_name, ctx.variant, ctx.data_root)) or {}
    names = manifest.get("attributes")
    n = int(ctx.test.labels.shape[1])
    if not names or len(names) != n:  # rebuilt as it was built (celeba: from its --source DIR, not by --force alone)
        rebuild = (prepare_command(manifest, ctx.data_root) if manifest
                   else f"{ctx.spec.prepare_hint(ctx.variant, ctx.data_root)} --force")
        raise MMBenchError(f"the prepared {ctx.spec.registry_name} manifest lists no {n} attribute names; rebuild it "
                           f"with `{rebuild}`")
    return list(names)


def attributes_scored(ctx: EvalContext, y: np.ndarray) -> float:
    """How many attributes have a positive test tuple (the ones the means cover); refuses when none has."""
    n = int(y.any(0).sum())
    if n == 0:
        raise MMBenchError(f"none of the {len(y)} test tuples has a positive attribute, so no AP is defined; "
                           f"evaluate on more test tuples (eval.test_samples)")
    return float(n)


def summarise(prefix: str, ap: np.ndarray, names: List[str]) -> Dict[str, float]:
    """`<prefix>` = mean over scored attributes, `<prefix>/<name>` per scored attribute."""
    out = {prefix: float(np.nanmean(ap))}
    out.update({f"{prefix}/{n}": float(v) for n, v in zip(names, ap) if np.isfinite(v)})
    return out


MOPOE_AP_BATCH = 256  # the test batches MoPoE's CelebA APs are averaged over (job_celeba: --batch_size=256)


def ap_batches(ctx: EvalContext) -> np.ndarray:
    """The test rows of each batch MoPoE averages APs over (batches × 256): a seeded shuffle of the test split,
    the last partial batch dropped (the authors' DataLoader(shuffle=True, drop_last=True)). The same batches
    for latent_ap and coherence_ap, other ones for each run seed (the authors reshuffle at every evaluation)."""
    n = len(ctx.test) // MOPOE_AP_BATCH * MOPOE_AP_BATCH
    order = np.random.default_rng(2 + ctx.run_seed).permutation(len(ctx.test))
    return order[:n].reshape(-1, MOPOE_AP_BATCH)


def batch_mean(y: np.ndarray, scores: np.ndarray, batches: np.ndarray) -> float:
    """MoPoE's AP over a split: per attribute, the mean of its per-batch APs (a batch without a positive of it
    left out), then the mean over the attributes that have one; NaN where none has."""
    per_batch = grouped_average_precisions(y[batches], scores[batches])  # batches × attributes
    scored = np.isfinite(per_batch)
    counts = scored.sum(0)
    if not counts.any():
        return float("nan")
    return float((np.where(scored, per_batch, 0.0).sum(0)[counts > 0] / counts[counts > 0]).mean())


def batch_means(ctx: EvalContext, y: np.ndarray) -> Tuple[Dict[str, float], Callable[[str, np.ndarray], Dict[str, float]]]:
    """MoPoE's batch-mean APs over the test labels `y`: the counts (ap_batchmean_batches; ap_batchmean_empty, the
    (batch, attribute) cells without a positive, over the attributes with a positive in the split) and
    `add(key, scores)` -> {key: batch-mean AP}, empty with fewer than 256 test tuples."""
    batches = ap_batches(ctx)
    positive = np.asarray(y) > 0  # as grouped_average_precisions reads labels
    empty = (~positive[batches].any(1))[:, positive.any(0)].sum() if len(batches) else 0
    counts = {"ap_batchmean_batches": float(len(batches)), "ap_batchmean_empty": float(empty)}

    def add(key: str, scores: np.ndarray) -> Dict[str, float]:
        value = batch_mean(y, scores, batches) if len(batches) else float("nan")
        return {key: value} if np.isfinite(value) else {}
    return counts, add


def fit_attribute(z_train: np.ndarray, y_train: np.ndarray, hard: bool, standardize: bool,
                  protocol: str) -> Tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """One attribute's logistic regression (sklearn defaults, as MoPoE App. B, fitted as eval.lr_protocol's code:
    latent.fit_regression): a function from test latents to scores, and whether the fit stopped at its iteration
    cap unconverged."""
    if y_train.min() == y_train.max():  # one class in the training tuples: the constant prediction
        return (lambda z: np.full(len(z), float(y_train[0]))), False
    with one_blas_thread():
        clf = fit_regression(z_train, y_train, standardize, protocol)

    def scores(z: np.ndarray) -> np.ndarray:
        with one_blas_thread():
            return clf.predict(z).astype(float) if hard else clf.predict_proba(z)[:, 1]
    return scores, stopped_at_cap(clf)


@METRICS.register("latent_ap")
def latent_ap(ctx: EvalContext) -> Dict[str, float]:
    """Mean and per-attribute AP of per-attribute logistic regressions on posterior means, per subset (`latent_ap/<S>`)."""
    require_multilabel(ctx, "latent_ap", "latent_classification")
    names = attribute_names(ctx)
    subsets, fit_on = protocol_subsets(ctx)  # eval.lr_protocol, as latent_classification
    fit_subsets = list(dict.fromkeys(fit_on.values()))
    train = ctx.regression_tuples()  # the same tuples as latent_classification
    ctx.progress("latent AP: encoding", 0, 2)
    z_train = dict(zip(fit_subsets, encode_means(ctx, train, fit_subsets)))
    ctx.progress("latent AP: encoding", 1, 2)
    z_test = encode_means(ctx, ctx.test, subsets)
    y_train, y_test = train.labels.numpy(), ctx.test.labels.numpy()
    out: Dict[str, float] = {"ap_attributes_scored": attributes_scored(ctx, y_test)}
    hard = ctx.cfg.ap_scores == "hard"
    counts, batch_mean_of = batch_means(ctx, y_test)
    out.update(counts)
    means = {}
    fitted = {}  # per fitting subset, one regression per attribute
    for k, s in enumerate(subsets):
        if fit_on[s] not in fitted:
            fitted[fit_on[s]] = [fit_attribute(z_train[fit_on[s]], y_train[:, a], hard, ctx.cfg.lr_standardize,
                                               ctx.cfg.lr_protocol) for a in range(len(names))]
        scores = np.stack([f(z_test[k]) for f, _ in fitted[fit_on[s]]], 1)
        ap = average_precisions(y_test, scores)
        out.update(summarise(f"latent_ap/{subset_key(s)}", ap, names))
        out.update(batch_mean_of(f"latent_ap_batchmean/{subset_key(s)}", scores))
        means[subset_key(s)] = out[f"latent_ap/{subset_key(s)}"]
        ctx.progress("latent AP: fitting", k + 1, len(subsets))
    out.update(by_size(means, subsets, "latent_ap_by_n"))
    out["latent_lr_unconverged"] = float(sum(capped for fs in fitted.values() for _, capped in fs))
    return out


@METRICS.register("coherence_ap")
@torch.no_grad()
def coherence_ap(ctx: EvalContext) -> Dict[str, float]:
    """AP of the attribute classifiers on conditional generations, every (subset -> modality) (`coherence_ap/<S>-><m>`)."""
    require_multilabel(ctx, "coherence_ap", "coherence")
    names = attribute_names(ctx)
    model, mods = ctx.model, ctx.model.names
    y = ctx.test.labels.numpy()
    out: Dict[str, float] = {"ap_attributes_scored": attributes_scored(ctx, y)}
    clfs = ctx.classifiers()
    subsets = evaluable_subsets(model)
    K = len(subsets)
    chunk = row_chunk(ctx.device)
    scores: List[List[List[np.ndarray]]] = [[[] for _ in mods] for _ in subsets]
    n_batches = (len(ctx.test) + ctx.cfg.batch_size - 1) // ctx.cfg.batch_size
    for b, (idx, x) in enumerate(ctx.batches(ctx.test)):
        z = torch.cat([q.rsample() for q in ctx.posteriors(x, subsets)])  # (K·B)×D, one draw per tuple
        for j, m in enumerate(mods):
            s = torch.sigmoid(classify(clfs[m], lambda part: model.decode(part, m), z, len(idx), chunk))
            s = s.view(K, len(idx), -1).cpu().numpy()
            for k in range(K):
                scores[k][j].append(s[k])
        ctx.progress("coherence AP: conditional", b + 1, n_batches)
    counts, batch_mean_of = batch_means(ctx, y)
    out.update(counts)
    for k, s in enumerate(subsets):
        for j, m in enumerate(mods):
            generated = np.concatenate(scores[k][j])
            out.update(summarise(f"coherence_ap/{subset_key(s)}->{m}", average_precisions(y, generated), names))
            out.update(batch_mean_of(f"coherence_ap_batchmean/{subset_key(s)}->{m}", generated))
    for n in range(1, len(mods)):
        vals = [out[f"coherence_ap/{subset_key(s)}->{m}"] for s in subsets if len(s) == n for m in mods if m not in s]
        if vals:
            out[f"coherence_ap_by_n/{n}"] = float(np.mean(vals))
    return out
