"""Average precision per label column: shared by the classifiers' quality check and the AP metrics (a leaf
module, so metrics/classifiers.py, context.py and average_precision.py import each other without a cycle)."""
from __future__ import annotations

import numpy as np


def average_precisions(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP of every column (N×A labels and scores); NaN where a column has no positive."""
    from sklearn.metrics import average_precision_score  # (here: a start-up cost most processes never need)

    out = np.full(y.shape[1], np.nan)
    for a in range(y.shape[1]):
        if y[:, a].any():
            out[a] = average_precision_score(y[:, a], scores[:, a])
    return out
