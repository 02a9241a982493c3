"""A coherence classifier's quality on a split: accuracy, or mean average precision for multi-label data.

Used by mmbench's own classifiers (metrics/classifiers.py) and by the authors' imported ones
(metrics/authors_classifiers.py); imports nothing else from metrics/ but precision.py, so neither imports the other.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.base import DataSplit, to_float
from .precision import average_precisions


@torch.no_grad()
def accuracy(clf: torch.nn.Module, split: DataSplit, name: str, device, batch_size: int = 512) -> float:
    clf.eval()
    correct = 0
    mod = next(m for m in split.modalities if m.name == name)

    for start in range(0, len(split), batch_size):
        x = to_float(mod, split.x[name][start:start + batch_size]).to(device)
        correct += (clf(x).argmax(1).cpu() == split.labels[start:start + batch_size]).sum().item()
    return correct / max(len(split), 1)


@torch.no_grad()
def mean_ap(clf: torch.nn.Module, split: DataSplit, name: str, device, batch_size: int = 512) -> float:
    """Multi-label quality: AP per attribute of the classifier's scores, averaged over the attributes with a
    positive test row (0 when none has one, so the floor refuses)."""
    clf.eval()
    mod = next(m for m in split.modalities if m.name == name)
    scores = [clf(to_float(mod, split.x[name][s:s + batch_size]).to(device)).cpu()
              for s in range(0, len(split), batch_size)]
    ap = average_precisions(split.labels.numpy(), torch.cat(scores).numpy())
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0
