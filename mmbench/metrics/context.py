"""What a metric sees: the model (interface only), the data splits, the eval config, classifiers."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch

from ..config import EvalConfig
from ..data.base import DataSplit, DatasetSpec
from ..devices import devices_of_rng, rng_states, set_rng_states
from ..methods.base import MultimodalVAE
from .batched import for_eval
from .classifiers import get_classifiers


def state_digest(modules: Dict[str, torch.nn.Module]) -> str:
    """sha256 of the modules' parameters and buffers (names, shapes, dtypes, bytes), in name order."""
    h = hashlib.sha256()
    for name in sorted(modules):
        for key, t in sorted(modules[name].state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}.{key}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class OwnStream(torch.nn.Module):
    """A classifier whose random draws (its dropout under eval.classifier_dropout: as_authors) come from a stream of
    its own, `streams[0]` (shared by a run's classifiers, seeded once: own_streams), not the evaluation's: scoring
    with dropout left the later metrics' samples other than with it (every loglik key moved), a setting outside the
    run id."""

    def __init__(self, clf: torch.nn.Module, streams: List[tuple], device: torch.device):
        super().__init__()
        self.clf, self.streams, self.device = clf, streams, torch.device(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=devices_of_rng(self.device)):
            set_rng_states(self.streams[0], self.device)
            out = self.clf(x)
            self.streams[0] = rng_states(self.device)
        return out


def own_streams(seed: int, device: torch.device) -> List[tuple]:
    """The classifiers' random streams (devices.rng_states: the CPU's and, on a GPU, the device's) seeded with `seed`,
    in a list their OwnStream wrappers share and advance."""
    with torch.random.fork_rng(devices=devices_of_rng(device)):
        torch.manual_seed(seed)
        return [rng_states(device)]


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
    # What the numbers were computed with, beyond the run's config (-> provenance.json): the coherence
    # classifiers' set and digest, the FID weights' sha256.
    provenance: Dict[str, object] = field(default_factory=dict)
    _classifiers: Optional[Dict[str, torch.nn.Module]] = None
    run_seed: int = 0  # the evaluated run's seed (the regressions' training tuples differ between seeds)
    # The whole training split (the run's modalities), loaded only when a coherence classifier is not cached: they
    # train on it, as `mmbench run` trains them beforehand, not on the run's train.max_train subset, which their
    # cache key leaves out (None: `train`)
    classifier_train: Optional[Callable[[], DataSplit]] = None

    def regression_tuples(self) -> DataSplit:
        """The eval.lr_train_samples training tuples the latent regressions are fitted on: a seeded sample that
        differs between run seeds (the MoPoE code draws its 500 rows afresh at each evaluation, so the papers'
        spread over seeds includes this sampling), the same for every method at one seed (paired comparisons)."""
        return self.train.subset(self.cfg.lr_train_samples, seed=1 + self.run_seed)

    def batches(self, split: DataSplit) -> Iterator[tuple]:
        bs = self.cfg.batch_size
        for start in range(0, len(split), bs):
            idx = torch.arange(start, min(start + bs, len(split)))
            yield idx, split.batch(idx, self.device)

    def posteriors(self, x: Dict[str, torch.Tensor], subsets) -> list:
        """q(z | X_S) of every subset as the metrics evaluate it (eval.mixture_representation; methods/base.py)."""
        return [q.represent(self.cfg.mixture_representation) for q in self.model.encode_subsets(x, subsets)]

    def classifiers(self) -> Dict[str, torch.nn.Module]:
        if self._classifiers is None:
            clfs, acc = get_classifiers(self.spec, self.variant, self.train, self.test_full, self.cfg, self.data_root,
                                        self.progress, whole=self.classifier_train)
            # Test accuracy per modality; on multi-label datasets the test mean AP (metrics/classifiers.py).
            self.extra["classifier_ap" if self.spec.multilabel else "classifier_accuracy"] = acc
            self.extra["classifier_set"] = self.cfg.classifiers
            self.extra["classifier_dropout"] = self.cfg.classifier_dropout
            self.provenance["classifiers"] = {"set": self.cfg.classifiers, "dropout": self.cfg.classifier_dropout,
                                              "architecture": self.spec.classifier_for(self.variant)
                                              if self.cfg.classifiers == "mmbench" else "authors",
                                              "epochs": self.cfg.classifier_epochs, "digest": state_digest(clfs)}
            # as_authors: the MoPoE code never calls .eval() on its classifiers, so dropout stays active, drawing
            # from the classifiers' own stream (seeded from the run's seed, apart from evaluation's seed + 1)
            active = self.cfg.classifier_dropout == "as_authors"
            streams = own_streams(self.run_seed + 2, self.device) if active else []
            self._classifiers = {m: (OwnStream(c, streams, self.device) if active else c).train(active)
                                 for m, c in ((m, for_eval(c.to(self.device), self.device)) for m, c in clfs.items())}
        return self._classifiers
