"""metrics/quality.py, the quality of a dataset's coherence and attribute classifiers, on known answers: accuracy counted
over every row of every batch, mean average precision over the attributes with a positive."""
import numpy as np
import torch

from mmbench.data.base import DataSplit, Modality
from mmbench.metrics.quality import accuracy, mean_ap

VEC = [Modality("v", (4,), kind="vector")]


def test_classifier_accuracy_counts_correct_rows_over_every_batch():
    # quality.accuracy: the fraction of rows whose argmax class is the label, 23 of 30 here, over batches of 7
    # rows (the last one partial)
    y = torch.arange(30) % 4
    pred = y.clone()
    pred[[0, 3, 8, 14, 15, 22, 29]] = (pred[[0, 3, 8, 14, 15, 22, 29]] + 1) % 4
    split = DataSplit(VEC, {"v": torch.nn.functional.one_hot(pred, 4).float()}, y)
    assert accuracy(torch.nn.Identity(), split, "v", torch.device("cpu"), batch_size=7) == 23 / 30


def test_classifier_mean_ap_averages_the_attributes_with_a_positive():
    # quality.mean_ap: per-attribute AP (sklearn's step-wise precision-recall sum) over batches, mean over the
    # attributes that have a positive row; by hand: attribute 0 ranks its positives 1st and 3rd -> (1 + 2/3) / 2
    scores = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.8, 0.4, 0.2, 0.0], [0.7, 0.3, 0.3, 0.0], [0.1, 0.2, 0.4, 0.0]])
    labels = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
    split = DataSplit(VEC, {"v": scores}, labels)
    want = np.mean([(1 + 2 / 3) / 2, 1.0, 1.0])  # attribute 3 has no positive: left out
    assert np.isclose(mean_ap(torch.nn.Identity(), split, "v", torch.device("cpu"), batch_size=3), want, rtol=1e-12)
