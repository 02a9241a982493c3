"""Coherence classifiers: one per modality, trained by mmbench on the train split, cached, used in eval mode.

Cached under ``<data_root or $MMBENCH_CACHE>/classifiers/<dataset>-<variant>-<dataset digest>-e<epochs>/`` with their
test accuracies (accuracy.json) and the sha256 of each file they were measured on (sha256.json, with the cache's
name): a file that is not the one measured (replaced, copied in from another cache) is measured again; a classifier below ``eval.classifier_min_accuracy`` makes coherence refuse.
Multi-label datasets (``spec.multilabel``, CelebA's 40 attributes) train one logit per attribute with
BCE-with-logits (not the MMVM code's cross-entropy on sigmoid outputs, mmvmvae clfs/celeba_clf.py) and record the
test *mean average precision* instead of accuracy, held to ``eval.classifier_min_ap``.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..config import EvalConfig
from ..data.base import (DataSplit, DatasetSpec, dataset_dir, manifest_digest, read_manifest,
                         to_float)
from ..data.download import file_digest
from ..devices import device_of, devices_of_rng
from ..errors import MMBenchError, brief
from ..files import SHARED_TEMP_AGE_S, cache_lock, remove_abandoned_temps, stderr_note
from ..registry import ARCHITECTURES
from ..results import atomic_json, atomic_write
from .authors_classifiers import load_classifiers
from .cache import cache_folder, cache_root, read_cached_json, set_aside, valid_score, writable_folder
from .quality import accuracy, mean_ap  # noqa: F401 (the classifiers' test quality, also imported from here)


_WHAT = "the coherence classifiers' cache"


def cache_dir(spec: DatasetSpec, variant: str, epochs: int, data_root: Optional[Path]) -> Path:
    manifest = read_manifest(dataset_dir(spec.registry_name, variant, data_root))
    digest = manifest_digest(manifest) if manifest else "unprepared"
    root = cache_root(data_root)
    # the batch size names the directory where it is not the default (rats: 128), so no cache trained otherwise serves
    batch = "" if spec.classifier_batch_size == DatasetSpec.classifier_batch_size else f"-b{spec.classifier_batch_size}"
    # a build that redraws rows per training batch (mnist-svhn-text's text_start=per_epoch) has the arrays, so the
    # digest, of the build that does not, but its classifiers train on other rows: a cache of its own
    redrawn = "-redrawn" if manifest and spec.redraws(manifest, "train") else ""
    return root / "classifiers" / (f"{spec.registry_name}-{variant}-{digest}-e{epochs}{batch}{redrawn}-"
                                   f"{spec.classifier_for(variant)}")


def build(spec: DatasetSpec, modality, variant: str) -> torch.nn.Module:
    return ARCHITECTURES.get(spec.classifier_for(variant)).classifier(modality, spec.n_classes)


def train_one(spec: DatasetSpec, variant: str, split: DataSplit, name: str, epochs: int, device,
              progress: Callable[[str, int, int], None], seed: int = 0, lr: float = 1e-3) -> torch.nn.Module:
    """One modality's classifier, trained from `seed` on its own random stream at the dataset's classifier batch size
    (DatasetSpec.classifier_batch_size): the caller's global RNG state is as before (a metric that trains a missing
    classifier draws the same samples as with a warm cache)."""

    with torch.random.fork_rng(devices=devices_of_rng(device)):
        return _train_one(spec, variant, split, name, epochs, device, progress, seed, spec.classifier_batch_size, lr)


@torch.enable_grad()  # may be called lazily from inside a no-grad metric
def _train_one(spec, variant, split, name, epochs, device, progress, seed, batch_size, lr) -> torch.nn.Module:
    torch.manual_seed(seed)
    mod = next(m for m in split.modalities if m.name == name)
    clf = build(spec, mod, variant).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)

    n_batches = max(len(split) // batch_size, 1)
    clf.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for b in range(n_batches):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            x = to_float(mod, split.rows(name, idx)).to(device)
            y = split.labels[idx].to(device)
            # Multi-hot attributes: independent Bernoullis per attribute; else one class per row.
            out = clf(x)
            loss = F.binary_cross_entropy_with_logits(out, y.float()) if spec.multilabel else F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            progress(f"classifier {name}", epoch * n_batches + b + 1, epochs * n_batches)
    return clf.eval()


def get_classifiers(spec: DatasetSpec, variant: str, train: DataSplit, test: DataSplit, cfg: EvalConfig,
                    data_root: Optional[Path], progress: Callable[[str, int, int], None],
                    check: bool = True, whole: Optional[Callable[[], DataSplit]] = None
                    ) -> Tuple[Dict[str, torch.nn.Module], Dict[str, float]]:
    """Load the cached classifiers, training the missing ones (on `whole()`, the whole training split, where `train`
    is a run's train.max_train subset: the cache is shared by runs of any subset); refuse any below the floor.
    With ``eval.classifiers: authors`` the MoPoE authors' imported ones instead (metrics/authors_classifiers.py).
    The global RNG state is left as it was (building a network draws its initial weights; training reseeds), so a
    metric that asks for the classifiers draws the same samples whether they were cached, trained or imported."""

    with torch.random.fork_rng(devices=devices_of_rng(device_of())):
        return _get_classifiers(spec, variant, train, test, cfg, data_root, progress, check, whole)


def _get_classifiers(spec, variant, train, test, cfg, data_root, progress, check, whole=None):
    if cfg.classifiers == "authors":
        clfs, accs = load_classifiers(spec, variant, train.modalities, data_root)
        if check:
            _check_floor(spec, cfg, accs)
        return clfs, accs

    directory = cache_folder(cache_dir(spec, variant, cfg.classifier_epochs, data_root), _WHAT)
    if not directory.is_dir():
        writable_folder(directory, _WHAT)  # before the training, not after it
        directory.mkdir(parents=True, exist_ok=True)
    # one process at a time fills the cache (two `mmbench run` at once, Slurm jobs starting together): the second waits,
    # then loads what the first trained; a cache this process cannot lock (a shared copy, read-only, all trained) is
    # read without the lock
    with cache_lock(directory, f"waiting for another mmbench process filling {directory} (training coherence "
                               f"classifiers?)"):
        clfs, accs = _load_or_train(spec, variant, train, test, cfg, directory, progress, whole)
    if check:
        _check_floor(spec, cfg, accs)
    return clfs, accs


def _load_or_train(spec, variant, train, test, cfg, directory, progress, whole=None):
    device = device_of()
    source: Optional[DataSplit] = None  # the split classifiers train on, loaded at the first one not cached
    remove_abandoned_temps(directory, min_age_s=SHARED_TEMP_AGE_S, say=stderr_note)  # a classifier's writer, killed
    acc_path = directory / "accuracy.json"
    accs = _cached_scores(acc_path)
    sums_path = directory / "sha256.json"
    sums = _cached_digests(sums_path, directory.name)
    clfs = {}
    for mod in train.modalities:
        path = directory / f"{mod.name}.pt"
        clf = _cached_classifier(spec, mod, variant, path)
        if clf is None:
            writable_folder(directory, _WHAT)  # before the training, not after it
            if source is None:
                source = whole() if whole is not None else train
            clf = train_one(spec, variant, source, mod.name, cfg.classifier_epochs, device, progress)
            accs.pop(mod.name, None)
            buf = io.BytesIO()
            torch.save(clf.state_dict(), buf)
            atomic_write(path, buf.getvalue())
        digest = file_digest(path, "sha256")
        if mod.name in accs and sums.get(mod.name) != digest:  # replaced since measured, or a cache from before
            print(f"note: {path} is not the file its score in {acc_path.name} was measured on (no or another sha256 "
                  f"in {sums_path.name}); measuring the classifier again", file=sys.stderr)
            accs.pop(mod.name)
        if mod.name not in accs:  # trained now, or its score was lost with a corrupt accuracy.json
            writable_folder(directory, _WHAT)
            accs[mod.name] = (mean_ap if spec.multilabel else accuracy)(clf.to(device), test, mod.name, device)
            atomic_json(acc_path, accs)
            sums[mod.name] = digest
            atomic_json(sums_path, {"cache": directory.name, "sha256": sums})
        clfs[mod.name] = clf.eval()
    return clfs, {m: accs[m] for m in clfs}


def _cached_scores(path: Path) -> Dict[str, float]:
    """The cached test scores by modality ({} when none); a corrupt accuracy.json is set aside (`set_aside`), and
    the scores of the cached classifiers are measured again."""
    accs, problem = read_cached_json(path)
    if problem is None and not all(valid_score(v) for v in accs.values()):
        problem = "is not a modality -> score object (finite numbers in [0, 1])"
    if problem is not None:
        set_aside(path, problem, "measuring the classifiers again")
        return {}
    return accs


def _cached_digests(path: Path, cache: str) -> Dict[str, str]:
    """The sha256 by modality of the classifier files the cached scores were measured on ({} when none, when the
    file is corrupt (set aside) or when it belongs to another cache directory, copied in: all are measured again)."""
    found, problem = read_cached_json(path)
    if problem is None and found and not (found.get("cache") == cache and isinstance(found.get("sha256"), dict)
                                          and all(isinstance(v, str) for v in found["sha256"].values())):
        problem = f"is not the digest record of this cache ({cache})"
    if problem is not None:
        set_aside(path, problem, "measuring the classifiers again")
        return {}
    return dict(found.get("sha256", {}))


def _cached_classifier(spec: DatasetSpec, mod, variant: str, path: Path) -> Optional[torch.nn.Module]:
    """The cached classifier of one modality; None when there is none, or when the file cannot be read or does not
    fit the classifier (it is set aside and trained again)."""
    if not path.exists():
        return None
    clf = build(spec, mod, variant)
    try:
        clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - a damaged file raises anything from unpickling to a shape mismatch
        set_aside(path, f"is corrupt ({brief(e)})", "training the classifier again")
        return None
    return clf


def _check_floor(spec: DatasetSpec, cfg: EvalConfig, accs: Dict[str, float]) -> None:
    field, floor = (("classifier_min_ap", cfg.classifier_min_ap) if spec.multilabel
                    else ("classifier_min_accuracy", cfg.classifier_min_accuracy))
    low = {m: a for m, a in accs.items() if a < floor}
    if low:
        worst = ", ".join(f"{m} {a:.3f}" for m, a in sorted(low.items()))
        fix = ("check the imported files (mmbench classifiers import)" if cfg.classifiers == "authors"
               else "train them longer (eval.classifier_epochs)")
        raise MMBenchError(f"{cfg.classifiers} coherence classifiers below eval.{field}={floor}: {worst}; "
                           f"{fix} or lower the floor")
