"""The MoPoE authors' coherence classifiers: imported once (`mmbench classifiers import`), cached, selected
with `eval.classifiers: authors`.

An authors' set is a registered classifier architecture (mmbench/nets/authors_clf_*.py) that also names the
datasets it serves (`datasets`), the authors' file per modality (`files`) and the renaming of the authors'
modules onto mmbench's (`prefixes`: (authors' prefix, mmbench prefix) pairs). The import reads each file as a
state dict (the authors save `model.state_dict()`), checks it name by name and shape by shape against the
mmbench module — the first missing, unexpected or mis-shaped parameter is a one-line error naming the file —
loads it, measures its test accuracy (mean AP on multi-label data) on the prepared test split in eval mode,
and caches the converted state dicts under ``<data_root or $MMBENCH_CACHE>/classifiers-authors/<dataset>-<variant>-<digest>/``
(next to, never inside, mmbench's own ``classifiers/``), with the sha256 of every source file.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..data.base import (DataSplit, DatasetSpec, Modality, data_root_words, dataset_dir,
                         manifest_digest, read_manifest)
from ..data.download import file_digest
from ..errors import MMBenchError, brief
from ..registry import ARCHITECTURES
from ..results import atomic_json, atomic_write
from .cache import cache_root, read_cached_json, set_aside, valid_score, writable_folder
from .quality import accuracy, mean_ap


def authors_set(spec: DatasetSpec):
    """The registered authors' classifier architecture serving this dataset."""
    found = [arch for _, arch in ARCHITECTURES.items() if spec.registry_name in getattr(arch, "datasets", ())]
    if not found:
        served = sorted(d for _, a in ARCHITECTURES.items() for d in getattr(a, "datasets", ()))
        raise MMBenchError(f"no authors' classifiers are known for dataset {spec.registry_name}; "
                           f"they exist for: {', '.join(served)} (use eval.classifiers: mmbench)")
    return found[0]


CACHED = "cached_sha256"  # source.json's record of the cached <modality>.pt files' sha256


def cache_dir(spec: DatasetSpec, variant: str, data_root: Optional[Path]) -> Path:
    manifest = read_manifest(dataset_dir(spec.registry_name, variant, data_root))
    digest = manifest_digest(manifest) if manifest else "unprepared"
    return cache_root(data_root) / "classifiers-authors" / f"{spec.registry_name}-{variant}-{digest}"


def map_state_dict(state: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor],
                   prefixes: List[Tuple[str, str]], file: str) -> Dict[str, torch.Tensor]:
    """The authors' state dict renamed onto mmbench's module; refuses at the first mismatch, in target order."""
    out: Dict[str, torch.Tensor] = {}
    used = set()
    for key, value in target.items():
        pair = next(((a, m) for a, m in prefixes if key.startswith(m)), None)
        if pair is None:  # a programming error in the prefix table, not in the file
            raise MMBenchError(f"{file}: mmbench parameter {key} has no authors' name in the import table")
        src = pair[0] + key[len(pair[1]):]
        if src not in state:
            raise MMBenchError(f"{file}: parameter {src} is missing (expected shape {tuple(value.shape)}); "
                               f"is this the authors' classifier for this modality?")
        found = state[src]
        if not isinstance(found, torch.Tensor):
            raise MMBenchError(f"{file}: parameter {src} is not a tensor but {type(found).__name__}")
        if tuple(found.shape) != tuple(value.shape):
            raise MMBenchError(f"{file}: parameter {src} has shape {tuple(found.shape)}, expected "
                               f"{tuple(value.shape)}; is this the authors' classifier for this modality?")
        out[key] = found.to(value.dtype)
        used.add(src)
    extra = [k for k in state if k not in used]
    if extra:
        raise MMBenchError(f"{file}: unexpected parameter {extra[0]} ({len(extra)} in all) not in the authors' "
                           f"classifier layout; is this the authors' classifier for this modality?")
    return out


def _read_state(path: Path) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise MMBenchError(f"{path}: not a readable state dict ({brief(e, 120)}); "
                           f"the authors' files are torch.save(model.state_dict())") from None
    if not isinstance(state, dict):
        raise MMBenchError(f"{path}: holds a {type(state).__name__}, not a state dict; the authors' files are "
                           f"torch.save(model.state_dict())")
    return state


def find_file(arch, modality: Modality, source: Path) -> Path:
    candidates = [source / rel for rel in arch.files(modality)]
    for path in candidates:
        if path.is_file():
            return path
    raise MMBenchError(f"no authors' classifier for modality {modality.name} in {source}: looked for "
                       f"{', '.join(str(p.relative_to(source)) for p in candidates)}")


def load_file(arch, modality: Modality, n_classes: int, path: Path) -> torch.nn.Module:
    """One authors' file loaded into the mmbench module of that modality (checked name by name)."""
    clf = arch.classifier(modality, n_classes)
    mapped = map_state_dict(_read_state(path), clf.state_dict(), arch.prefixes(modality), str(path))
    clf.load_state_dict(mapped)
    return clf.eval()


def import_classifiers(spec: DatasetSpec, variant: str, test: DataSplit, source: Path,
                       data_root: Optional[Path]) -> Dict[str, float]:
    """Check and load every modality's file (all before writing anything), measure, cache; returns the scores."""
    arch = authors_set(spec)
    source = Path(source)
    if not source.is_dir():
        raise MMBenchError(f"--from {source}: not a directory; pass the folder holding the authors' classifier files")
    directory = writable_folder(cache_dir(spec, variant, data_root), "the authors' classifiers' cache")
    clfs, sources = {}, {}
    for mod in test.modalities:
        path = find_file(arch, mod, source)
        clfs[mod.name] = load_file(arch, mod, spec.n_classes, path)
        sources[mod.name] = {"file": str(path.resolve()),
                             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    score = mean_ap if spec.multilabel else accuracy
    accs = {m: score(c.to(device), test, m, device) for m, c in clfs.items()}
    cached = {}
    for m, c in clfs.items():
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in c.state_dict().items()}, buf)
        atomic_write(directory / f"{m}.pt", buf.getvalue())
        cached[m] = hashlib.sha256(buf.getvalue()).hexdigest()
    old = _read_json(directory / "accuracy.json", None)
    recorded = _read_json(directory / "source.json", None)
    kept = recorded.get(CACHED) if isinstance(recorded.get(CACHED), dict) else {}
    # the cached files' own sha256, checked by load_classifiers: a file replaced after its score was measured
    atomic_json(directory / "source.json", {**recorded, **sources, "architecture": arch.registry_name,
                                            CACHED: {**kept, **cached}})
    atomic_json(directory / "accuracy.json", {**old, **accs})
    return accs


def _read_json(path: Path, fix: Optional[str]) -> dict:
    """A cached JSON object ({} when there is none). A corrupt one is an error naming the file and `fix`, or with
    no fix (an import, which writes every entry again) set aside."""
    found, problem = read_cached_json(path)
    if problem is None:
        return found
    if fix is None:
        set_aside(path, problem, "importing anew")
        return {}
    raise MMBenchError(f"{path} {problem}; {fix}")


def import_command(spec: DatasetSpec, variant: str, data_root: Optional[Path]) -> str:
    """The `mmbench classifiers import` that fills the cache of this data root (cache_dir)."""
    return " ".join([f"mmbench classifiers import {spec.registry_name} --variant {variant} --from DIR",
                     *data_root_words(data_root)])


def _reimport(spec: DatasetSpec, variant: str, data_root: Optional[Path]) -> str:
    return (f"this cache of the imported authors' classifiers is corrupt: import them again with "
            f"`{import_command(spec, variant, data_root)}`")


def load_classifiers(spec: DatasetSpec, variant: str, modalities: List[Modality], data_root: Optional[Path]
                     ) -> Tuple[Dict[str, torch.nn.Module], Dict[str, float]]:
    """The imported classifiers of these modalities with their recorded test scores; refuses if not imported."""
    arch = authors_set(spec)
    directory = cache_dir(spec, variant, data_root)
    accs = _read_json(directory / "accuracy.json", _reimport(spec, variant, data_root))
    if not all(valid_score(v) for v in accs.values()):
        raise MMBenchError(f"{directory / 'accuracy.json'} holds scores that are not numbers; "
                           f"{_reimport(spec, variant, data_root)}")
    # imports before 2026-12-06 recorded no digest of the cached files: read as before
    sums = _read_json(directory / "source.json", _reimport(spec, variant, data_root)).get(CACHED, {})
    if not (isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())):
        raise MMBenchError(f"{directory / 'source.json'} records the cached files' sha256 ({CACHED}) as something "
                           f"other than a modality -> digest mapping; {_reimport(spec, variant, data_root)}")
    clfs = {}
    for mod in modalities:
        path = directory / f"{mod.name}.pt"
        if not path.exists() or mod.name not in accs:
            raise MMBenchError(f"the authors' classifier for {spec.registry_name} ({variant}) modality {mod.name} is "
                               f"not imported (for this prepared data); run `{import_command(spec, variant, data_root)}`, "
                               f"or use eval.classifiers: mmbench")
        if mod.name in sums and path.is_file() and file_digest(path, "sha256") != sums[mod.name]:
            raise MMBenchError(f"{path} is not the file imported (its sha256 is not the one {directory.name}/source.json "
                               f"records), so its recorded score is not its own; {_reimport(spec, variant, data_root)}")
        clf = arch.classifier(mod, spec.n_classes)
        try:
            clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - a damaged file raises anything from unpickling to a shape mismatch
            raise MMBenchError(f"{path} cannot be loaded ({brief(e)}); {_reimport(spec, variant, data_root)}") from None
        clfs[mod.name] = clf.eval()
    return clfs, {m: accs[m] for m in clfs}
