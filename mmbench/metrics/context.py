"""What a metric sees: the model (interface only), the data splits, the eval config, classifiers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import torch

from ..config import EvalConfig
from ..data.base import DataSplit, DatasetSpec
from ..methods.base import MultimodalVAE


@dataclass
class EvalContext:
    model: MultimodalVAE
    spec: DatasetSpec
    variant: str
    train: DataSplit
    test: DataSplit  # already capped to eval.test_samples
    test_full: DataSplit  # the whole test split (classifier accuracy is measured on it)
    cfg: EvalConfig
    device: torch.device
    data_root: Optional[Path] = None
    progress: Callable[[str, int, int], None] = lambda *a: None
    out_dir: Optional[Path] = None  # where metrics may write arrays for the report's figures (run/artifacts)
    extra: Dict[str, object] = field(default_factory=dict)  # side outputs (e.g. classifier accuracies)
    _classifiers: Optional[Dict[str, torch.nn.Module]] = None

    def batches(self, split: DataSplit) -> Iterator[tuple]:
        bs = self.cfg.batch_size
        for start in range(0, len(split), bs):
            idx = torch.arange(start, min(start + bs, len(split)))
            yield idx, split.batch(idx, self.device)

    def classifiers(self) -> Dict[str, torch.nn.Module]:
        if self._classifiers is None:
            from .classifiers import get_classifiers

            clfs, acc = get_classifiers(self.spec, self.variant, self.train, self.test_full, self.cfg,
                                        self.data_root, self.progress)
            # Test accuracy per modality; on multi-label datasets the test mean AP (metrics/classifiers.py).
            self.extra["classifier_ap" if self.spec.multilabel else "classifier_accuracy"] = acc
            self.extra["classifier_set"] = self.cfg.classifiers
            self.extra["classifier_dropout"] = self.cfg.classifier_dropout
            # as_authors: the MoPoE code never calls .eval() on its classifiers, so dropout stays active.
            self._classifiers = {m: c.to(self.device).train(self.cfg.classifier_dropout == "as_authors")
                                 for m, c in clfs.items()}
        return self._classifiers
