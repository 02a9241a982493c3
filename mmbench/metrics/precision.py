"""Average precision per label column: shared by the classifiers' quality check and the AP metrics (a leaf
module, so metrics/classifiers.py, context.py and average_precision.py import each other without a cycle)."""
from __future__ import annotations

import numpy as np


def average_precisions(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP of every column (N×A labels and scores); NaN where a column has no positive."""
    return grouped_average_precisions(np.asarray(y)[None], np.asarray(scores)[None])[0]


def grouped_average_precisions(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP of every group and column (G×N×A labels and scores -> G×A), as sklearn's average_precision_score:
    Σ_k (R_k − R_{k−1}) P_k over the distinct scores k in descending order (tied scores are one threshold);
    NaN where a group's column has no positive."""
    y, s = np.asarray(y) > 0, np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 3:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must both be G×N×A")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if s.shape[1] == 0:  # no rows: no positive anywhere
        return np.full((s.shape[0], s.shape[2]), np.nan)
    order = np.argsort(-s, axis=1, kind="stable")
    s, y = np.take_along_axis(s, order, 1), np.take_along_axis(y, order, 1)
    tps = np.cumsum(y, axis=1, dtype=np.float64)
    positives = tps[:, -1:, :]
    last = np.ones(s.shape, dtype=bool)  # the last row of each run of tied scores: one point of the curve
    last[:, :-1] = s[:, 1:] != s[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tps / positives
    precision = tps / np.arange(1, s.shape[1] + 1, dtype=np.float64)[None, :, None]
    at_points = np.where(last, recall, 0.0)  # recall only grows, so the running max is the previous point's
    before = np.concatenate([np.zeros_like(at_points[:, :1]), np.maximum.accumulate(at_points, axis=1)[:, :-1]], 1)
    ap = np.where(last, (recall - before) * precision, 0.0).sum(1)
    ap[positives[:, 0, :] == 0] = np.nan
    return ap
