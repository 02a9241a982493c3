"""What every dataset shares: modality specs, the on-disk store (arrays + manifest), loading.

A prepared dataset is a directory ``<data_root>/<name>/<variant>/`` holding one ``.npy`` array per
(split, key) -- uint8 images, int64 labels -- and ``manifest.json`` with the recipe version, seed,
counts, sources and the sha256 of every array. Builds happen in a temporary sibling directory that
is renamed into place only when complete, so an interrupted prepare never looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import MMBenchError, brief
from .download import file_digest
from ..files import env_folder, folder_lock, temp_beside

MANIFEST = "manifest.json"


def default_data_root() -> Path:
    return env_folder("MMBENCH_DATA", "data")


@dataclass(frozen=True)
class Modality:
    """One modality: its tensor shape, kind (image/text/spikes), likelihood and reconstruction weight."""

    name: str
    shape: tuple
    kind: str = "image"
    likelihood: str = "laplace"
    rec_weight: float = 1.0  # MoPoE <dataset>/experiment.py set_rec_weights
    alphabet: str = ""  # text: the characters the stored indices point into (previews decode with it)


class DatasetSpec:
    """Base class of a registered dataset. Subclasses set the class attributes and `build`."""

    registry_name: ClassVar[str]
    variants: ClassVar[Sequence[str]] = ("default",)
    recipe_version: ClassVar[int] = 1
    # per-variant recipe versions where a fix touched one variant only (other variants keep their prepared data)
    variant_recipe_versions: ClassVar[Dict[str, int]] = {}
    n_classes: ClassVar[int] = 10
    # True: labels are N×n_classes multi-hot attributes (CelebA), scored by average precision
    # (latent_ap, coherence_ap), classifiers trained with BCE-with-logits; False: one class index per row.
    multilabel: ClassVar[bool] = False
    default_architecture: ClassVar[str] = ""
    classifier_architecture: ClassVar[str] = ""
    classifier_batch_size: ClassVar[int] = 256  # the coherence classifiers' training batch (metrics/classifiers.py)
    option_names: ClassVar[Dict[str, str]] = {}  # prepare options this dataset accepts -> help
    location_options: ClassVar[Sequence[str]] = ()  # options that say where files are, not what is built
    # the value each option takes when it is not given: given at it, it builds the same arrays, so the build's identity
    # (its manifest's "options") leaves it out and a copy built without it serves a `prepare` that names it
    option_defaults: ClassVar[Dict[str, Any]] = {}
    needs: ClassVar[Dict[str, str]] = {}  # variant -> what a first `mmbench prepare` of it must be given

    def recipe_version_of(self, variant: str) -> int:
        """The recipe version this mmbench builds `variant` with (a copy of another version is refused)."""
        return self.variant_recipe_versions.get(variant, self.recipe_version)

    def check_options(self, variant: str, options: Dict[str, Any]) -> None:
        """Refuse option values (and combinations) this dataset cannot build, naming the option and what is allowed:
        `prepare` asks before comparing them with a copy already there (whose refusal would say to pass --force)."""

    @classmethod
    def inert_options(cls, variant: str) -> Sequence[str]:
        """Options `variant`'s build does not read (not part of its identity: built_by)."""
        return ()

    def changed_inputs(self, manifest: Dict[str, Any], options: Dict[str, Any]) -> Optional[str]:
        """What differs between the input files a prepared copy was built from (its manifest) and those `options`
        point at now (location options are not part of a copy's identity, their content is); None when nothing."""
        return None

    def prepare_hint(self, variant: str, data_root: Optional[Path] = None) -> str:
        """The command that prepares `variant` here for the first time, with what it cannot do without (and the data
        root it was looked for in, where that is not the default: data_root_words)."""
        need = self.needs.get(variant)
        return " ".join([f"mmbench prepare {self.registry_name} --variant {variant}", *([need] if need else []),
                         *data_root_words(data_root)])

    def modalities(self, variant: str) -> List[Modality]:
        raise NotImplementedError

    def expected_counts(self, variant: str) -> Optional[Dict[str, int]]:
        """The split sizes `mmbench prepare` builds of `variant` with its default options, where the sources' checked
        files fix them; None where only a build tells (`run --dry-run` then waits for the prepared manifest)."""
        return None

    def classifier_for(self, variant: str) -> str:
        """The coherence classifier architecture of a variant (default: `classifier_architecture`)."""
        return self.classifier_architecture

    def build(self, out: "ArrayWriter", variant: str, seed: int, options: Dict[str, Any],
              progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
        """Write every array of the dataset through `out`; return extra manifest fields. `options` were checked
        (check_options) by `prepare`, its one caller."""
        raise NotImplementedError

    def redraws(self, manifest: Dict[str, Any], split: str) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Per modality, a function re-drawing the random part of stored rows each time they are batched
        (e.g. a text's start position); none by default."""
        return {}

    def check_variant(self, variant: Optional[str]) -> str:
        variant = variant or self.variants[0]
        if variant not in self.variants:
            raise MMBenchError(
                f"dataset {self.registry_name!r} has no variant {variant!r}; choose one of: {', '.join(self.variants)}")
        return variant


class ArrayWriter:
    """Collects the arrays of a build into a temporary directory."""

    def __init__(self, directory: Path, raw_root: Path):
        self.dir = directory
        self.raw_root = raw_root  # downloads and raw files: <data_root>/raw/
        self.arrays: Dict[str, Dict[str, Any]] = {}

    def write(self, key: str, array: np.ndarray) -> None:
        path = self.dir / f"{key}.npy"
        try:
            np.save(path, np.ascontiguousarray(array))
        except OSError as e:  # numpy's short write names no file (and no errno): a full disk, a quota
            raise build_write_error(path, e) from None
        self.arrays[key] = {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": file_digest(path, "sha256")}


def build_write_error(path: Path, e: OSError) -> MMBenchError:
    """A build's file that could not be written (a full disk, a quota, a size limit): one line naming it; `prepare`
    removes the unfinished build, and a prepared copy already there stays as it was."""
    return MMBenchError(f"writing {path.name} of the build failed ({brief(e)}); the unfinished build is removed and "
                        f"any prepared copy is left as it was: free space in {path.parent.parent} (a full disk or a "
                        f"quota?) and run the command again")


def data_root_words(data_root: Optional[Path]) -> List[str]:
    """`--data-root DIR` for a `mmbench prepare` suggested about data under `data_root` (absolute, so it holds from
    any working directory); none where that is the root a command uses without the option ($MMBENCH_DATA or ./data).
    Without it the suggested build would go to the default root and leave the data the message is about as it was."""
    import shlex

    if data_root is None:
        return []
    root = Path(data_root).expanduser().resolve()
    return [] if root == default_data_root().expanduser().resolve() else ["--data-root", shlex.quote(str(root))]


def dataset_dir(name: str, variant: str, data_root: Optional[Path] = None) -> Path:
    return Path(data_root or default_data_root()) / name / variant


def read_manifest(directory: Path) -> Optional[Dict[str, Any]]:
    """The manifest of the prepared dataset in `directory` (``<data_root>/<name>/<variant>``), None when there is
    none. One that cannot be read or lacks the fields every manifest has is an error naming the rebuild."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problem = f"is unreadable ({type(e).__name__}: {e})"
    else:
        problem = _manifest_problem(manifest)
        if problem is None:
            return manifest
    raise MMBenchError(f"{MANIFEST} of {directory} {problem}; rebuild the dataset with "
                       f"`{_first_prepare(directory)} --force`")


def _first_prepare(directory: Path) -> str:
    """The `mmbench prepare` of the dataset in `directory` (``<data_root>/<name>/<variant>``) when no manifest tells
    how it was built: with what a first build of it needs (e.g. --source DIR) and its data root."""
    from ..registry import DATASETS

    name, variant, root = directory.parent.name, directory.name, directory.parent.parent
    try:
        return DATASETS.get(name)().prepare_hint(variant, root)
    except MMBenchError:  # not a registered dataset: the bare command
        return " ".join([f"mmbench prepare {name} --variant {variant}", *data_root_words(root)])


def whole_option(options: Dict[str, Any], name: str, default: int, least: Optional[int] = None) -> int:
    """A `-o NAME=N` prepare option as an int: "two", 1.5 and true are refused by name (int(1.5) would be 1), as is
    a value below `least`."""
    value = options.get(name, default)
    try:
        n = int(str(value))
    except ValueError:
        n = None
    if n is None or (least is not None and n < least):
        raise MMBenchError(f"option {name}={value!r} is not allowed; give a whole number"
                           f"{f' >= {least}' if least is not None else ''} (-o {name}=N)")
    return n


FLAGS = {"rebuild": "--rebuild"}  # prepare options that are CLI flags; the others are `-o KEY=VALUE`
LOCATION_FLAGS = ("source", "backgrounds")  # location options that are CLI flags (--source DIR); the others, `-o`


def prepare_command(manifest: Dict[str, Any], data_root: Optional[Path] = None) -> str:
    """The `mmbench prepare ... --force` that rebuilds the dataset of `manifest` as it was built: its seed, its
    options and where its files came from (`locations`; a manifest written before that field names none), in
    `data_root` (--data-root where that is not the default root: data_root_words)."""
    import shlex

    parts = ["mmbench prepare", manifest["dataset"], "--variant", manifest["variant"]]
    if manifest.get("seed", 0) != 0:
        parts += ["--seed", str(manifest["seed"])]
    options = sorted((manifest.get("options") or {}).items())
    flags = [(key, value) for key, value in options if key in FLAGS and value is True]
    parts += [FLAGS[key] for key, _ in flags]
    for key, value in (o for o in options if o not in flags):
        text = ("true" if value else "false") if isinstance(value, bool) else value
        parts += ["-o", shlex.quote(f"{key}={text}")]
    for key, where in sorted((manifest.get("locations") or {}).items()):
        parts += ([f"--{key}", shlex.quote(str(where))] if key in LOCATION_FLAGS
                  else ["-o", shlex.quote(f"{key}={where}")])  # rats' trial_info: no `--trial_info` flag
    return " ".join(parts + data_root_words(data_root) + ["--force"])


def _manifest_problem(manifest: Any) -> Optional[str]:
    """What makes a parsed manifest unusable (None: nothing): the fields `verify` and the loaders read."""
    if not isinstance(manifest, dict):
        return f"is corrupt (a JSON {type(manifest).__name__}, not an object)"
    missing = [k for k in ("dataset", "variant", "arrays") if k not in manifest]
    if missing:
        return f"is corrupt (no {', '.join(missing)})"
    arrays = manifest["arrays"]
    if not isinstance(arrays, dict) or not all(
            isinstance(meta, dict) and {"shape", "dtype", "sha256"} <= meta.keys() for meta in arrays.values()):
        return "is corrupt (its arrays are not listed with shape, dtype and sha256)"
    return None


def _arrays_content(manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest's `arrays` entries without their build-time file stamps (`stat`)."""
    return {k: {f: x for f, x in meta.items() if f != "stat"} for k, meta in manifest["arrays"].items()}


def manifest_digest(manifest: Dict[str, Any]) -> str:
    """A short content digest of a prepared dataset (from its array checksums, shapes and dtypes; not the build's
    file stamps, so the same data prepared twice has one digest)."""
    h = hashlib.sha256(json.dumps(_arrays_content(manifest), sort_keys=True).encode())
    return h.hexdigest()[:16]


def file_stamp(path: Path) -> List[int]:
    """[size, mtime_ns, ctime_ns]: any write to the file changes its ctime, and unlike the mtime the ctime
    cannot be set back (os.utime itself moves it), so an edit that keeps the size and restores the mtime
    still changes the stamp."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def manifest_checksum(manifest: Dict[str, Any]) -> str:
    """sha256 of the manifest's content, without the file stamps (a copy of the dataset has new ones)."""
    body = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "stamps")}
    body["arrays"] = _arrays_content(manifest)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _npy_header(path: Path) -> tuple:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return list(shape), str(dtype)


def verify(directory: Path, manifest: Dict[str, Any], full: bool = False) -> None:
    """Refuse a dataset whose manifest was edited or whose arrays no longer match it.

    Always checked: the manifest against its own checksum (`manifest_sha256`), that every array exists,
    and each array's shape and dtype (read from its .npy header). The sha256 of an array is recomputed
    when `full` is set or its stamp (size, mtime, ctime; `file_stamp`) differs from the one recorded;
    the stamp changes with any write to the file, even one that keeps the size and restores the mtime.
    After a full check of a copy (new stamps, same content) the stamps are recorded in the manifest's
    top-level `stamps` (the `arrays` entries, and so `manifest_digest`, stay as built), so the next load
    takes the fast path again.
    """
    fix = f"rebuild it with `{prepare_command(manifest, directory.parent.parent)}`"
    recorded = manifest.get("manifest_sha256")
    if recorded is not None and recorded != manifest_checksum(manifest):
        raise MMBenchError(f"{directory / MANIFEST} was edited (it no longer matches its own checksum); {fix}")
    refreshed = False
    stamps = manifest.setdefault("stamps", {})
    for key, meta in manifest["arrays"].items():
        path = directory / f"{key}.npy"
        if not path.exists():
            raise MMBenchError(f"prepared dataset {directory} is missing {path.name}; {fix}")
        try:
            shape, dtype = _npy_header(path)
        except ValueError as e:
            raise MMBenchError(f"{path} is not a readable .npy array ({e}); {fix}") from None
        if shape != meta["shape"] or dtype != meta["dtype"]:
            raise MMBenchError(f"{path} holds a {dtype} array of shape {shape}, the manifest says {meta['dtype']} "
                               f"{meta['shape']}; {fix}")
        stamp = file_stamp(path)
        known = stamps.get(key, meta.get("stat"))
        if full or recorded is None or known != stamp:
            actual = file_digest(path, "sha256")
            if actual != meta["sha256"]:
                raise MMBenchError(
                    f"{path} does not match its manifest (sha256 {actual[:12]}…, expected {meta['sha256'][:12]}…); {fix}")
            if known != stamp:
                refreshed = True
                stamps[key] = stamp
    if refreshed or recorded is None:  # verified in full: record the stamps (and the checksum of older manifests)
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        try:
            _write_manifest(directory, manifest)
        except OSError:  # a read-only copy: verified, just not faster next time
            pass


def _write_manifest(directory: Path, manifest: Dict[str, Any]) -> None:
    fd, tmp = temp_beside(directory / MANIFEST)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, directory / MANIFEST)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def prepare(spec: DatasetSpec, variant: Optional[str], seed: int = 0, data_root: Optional[Path] = None,
            force: bool = False, options: Optional[Dict[str, Any]] = None,
            progress: Optional[Callable[[str, int, int], None]] = None) -> Path:
    """Build the dataset unless an identical, verified one is already there. Idempotent."""
    variant = spec.check_variant(variant)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    # a folder given relative (`-o trial_info=tables`) recorded absolute, so the rebuild advice runs from anywhere
    options = {k: str(Path(v).expanduser().resolve()) if k in spec.location_options and isinstance(v, (str, Path))
               else v for k, v in options.items()}
    for key in options:
        if key not in spec.option_names:
            allowed = ", ".join(spec.option_names) or "(none)"
            raise MMBenchError(f"dataset {spec.registry_name} has no prepare option {key!r}; allowed: {allowed}")
    spec.check_options(variant, options)
    identity = built_by(spec, options, variant)
    target = dataset_dir(spec.registry_name, variant, data_root)
    version = spec.recipe_version_of(variant)
    if not force and _prepared_as_asked(spec, target, seed, version, identity, options):  # --force rebuilds whatever
        return target                                                                       # is there, a corrupt manifest too
    target.parent.mkdir(parents=True, exist_ok=True)
    # one build at a time in a dataset's folder: a second process waits, then finds the copy the first one built
    with folder_lock(target.parent, f"waiting for another process building a dataset in {target.parent} (another "
                                    f"`mmbench prepare` or `mmbench run`)"):
        # another process (a second `mmbench run` of the same data) may have built it while this one waited
        if not force and _prepared_as_asked(spec, target, seed, version, identity, options):
            return target
        _remove_stale_builds(target.parent)
        _build(spec, variant, seed, options, identity, version, target, data_root, progress)
    return target


def built_by(spec: DatasetSpec, options: Dict[str, Any], variant: Optional[str] = None) -> Dict[str, Any]:
    """The options that decide what is built (a build's identity): not those saying where files are, nor one given at
    its default (`-o test_partition=1` builds what no option builds), nor one `variant`'s build does not read
    (inert_options: `--rebuild` of PolyMNIST's extended variant, always rebuilt)."""
    inert = spec.inert_options(variant) if variant is not None else ()
    return {k: v for k, v in options.items() if k not in spec.location_options and k not in inert
            and not (k in spec.option_defaults and str(v) == str(spec.option_defaults[k]))}


def _prepared_as_asked(spec: DatasetSpec, target: Path, seed: int, version: int, identity: Dict[str, Any],
                       options: Dict[str, Any]) -> bool:
    """True when `target` holds a verified build of these settings; False when nothing is prepared there; an error
    naming what differs when another build is (or when its input files changed)."""
    existing = read_manifest(target)
    if existing is None:
        return False
    same = (existing.get("seed") == seed and existing.get("recipe_version") == version
            and built_by(spec, existing.get("options") or {}, existing.get("variant")) == identity)
    changed = spec.changed_inputs(existing, options) if same else None
    if changed:
        raise MMBenchError(f"{target} was built from other input files: {changed}; pass --force to rebuild it "
                           f"from these, or leave the option out to use it as it is")
    if same:
        verify(target, existing)
        return True
    recipe = ("" if existing.get("recipe_version") == version else
              f", recipe version {existing.get('recipe_version')} where this mmbench builds {version}")
    raise MMBenchError(
        f"{target} was prepared with other settings (seed {existing.get('seed')}, options {existing.get('options')}"
        f"{recipe}); pass --force to rebuild it with seed {seed} and options {identity}")


def _remove_stale_builds(folder: Path) -> None:
    """Remove what builds killed outright (SIGKILL, a lost node: no `finally` ran) left in a dataset's folder: their
    unfinished .<variant>.building-* folders and a prepared copy a --force rebuild had moved aside (.<variant>.old-*).
    Only called under the folder's lock (prepare), which every build holds from start to end, so none of them is still in use."""
    for p in folder.iterdir():
        if p.name.startswith(".") and (".building-" in p.name or ".old-" in p.name) and p.is_dir() \
                and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _build(spec: DatasetSpec, variant: str, seed: int, options: Dict[str, Any], identity: Dict[str, Any],
           version: int, target: Path, data_root: Optional[Path], progress) -> None:
    """Build into a temporary sibling of `target` and rename it into place (moving a copy already there aside only
    once the new one is complete)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}.building-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        writer = ArrayWriter(tmp, Path(data_root or default_data_root()) / "raw")
        t0 = time.monotonic()
        extra = spec.build(writer, variant, seed, options, progress or (lambda *a: None))
        for key, meta in writer.arrays.items():
            meta["stat"] = file_stamp(tmp / f"{key}.npy")
        manifest = {
            "dataset": spec.registry_name, "variant": variant, "recipe_version": version,
            "seed": seed, "options": identity, "build_seconds": round(time.monotonic() - t0, 2),
            "locations": {k: v for k, v in options.items() if k in spec.location_options},
            "modalities": [m.name for m in spec.modalities(variant)], "arrays": writer.arrays, **extra,
        }
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        try:
            with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
        except OSError as e:
            raise build_write_error(tmp / MANIFEST, e) from None
        if target.exists():  # --force: move the old copy aside only once the new one is complete
            old = target.with_name(f".{variant}.old-{os.getpid()}")
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:  # put the prepared copy back where it was
                if not target.exists():
                    old.rename(target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Indexed:
    """Rows of a base tensor chosen by an index: paired datasets (MNIST-SVHN-Text) store each source
    image once, plus the pairing, instead of every repeated copy."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor):
        self.base, self.index = base, index

    def __getitem__(self, idx) -> torch.Tensor:
        return self.base[self.index[idx]]

    def __len__(self) -> int:
        return len(self.index)

    def take(self, idx: torch.Tensor) -> "Indexed":
        return Indexed(self.base, self.index[idx])


@dataclass
class DataSplit:
    """One split of a prepared dataset held in memory as uint8/int64 tensors."""

    modalities: List[Modality]
    x: Dict[str, torch.Tensor]
    labels: torch.Tensor
    extra_labels: Dict[str, torch.Tensor] = field(default_factory=dict)
    # modality -> function applied to the stored rows of every batch (DatasetSpec.redraws), drawing from
    # torch's global generator, which training seeds
    redraw: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def names(self) -> List[str]:
        return [m.name for m in self.modalities]

    def rows(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        """The stored rows of one modality, with its redraw applied (idx: a tensor, array or list of rows)."""
        v = self.x[name]
        base = v.base if isinstance(v, Indexed) else v
        x = v[torch.as_tensor(idx, device=base.device)]
        return self.redraw[name](x) if name in self.redraw else x

    def batch(self, idx: torch.Tensor, device: Any = "cpu") -> Dict[str, torch.Tensor]:
        """Float tensors for the given rows: images in [0, 1] (converted on `device`: 4x less to copy)."""
        return {m.name: to_float(m, self.rows(m.name, idx).to(device)) for m in self.modalities}

    def to(self, device: Any) -> "DataSplit":
        """The same rows held on `device` (still uint8/int64), so batches are gathered there without a
        host copy per step. Modalities with a redraw stay where they are (the redraw draws on the CPU)."""
        def move(name, v):
            if name in self.redraw:
                return v
            return Indexed(v.base.to(device), v.index.to(device)) if isinstance(v, Indexed) else v.to(device)

        return DataSplit(self.modalities, {k: move(k, v) for k, v in self.x.items()}, self.labels,
                         self.extra_labels, self.redraw)

    def select(self, names: Optional[Sequence[str]]) -> "DataSplit":
        """The same rows with only the named modalities (all when names is None)."""
        if names is None:
            return self
        mods = {m.name: m for m in self.modalities}
        return DataSplit([mods[n] for n in names], {n: self.x[n] for n in names}, self.labels, self.extra_labels,
                         {n: f for n, f in self.redraw.items() if n in names})

    def subset(self, n: Optional[int], seed: int = 0, keep_order: bool = True) -> "DataSplit":
        """The first `n` rows of a seeded permutation (all rows when n is None or larger: the split itself, or with
        keep_order=False all rows in that permutation's order)."""
        if (n is None or n >= len(self)) and keep_order:
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        x = {k: v.take(idx) if isinstance(v, Indexed) else v[idx] for k, v in self.x.items()}
        return DataSplit(self.modalities, x, self.labels[idx],
                         {k: v[idx] for k, v in self.extra_labels.items()}, self.redraw)


def to_float(modality: Modality, x: torch.Tensor) -> torch.Tensor:
    """Images: uint8 -> [0, 1]; text: character indices -> one-hot over the alphabet (last dim);
    spikes: uint8 counts per 10-ms bin -> count / 10 (spikes per ms, the rat deposit's unit and model input)."""
    if modality.kind == "image":
        return x.float().div_(255.0)
    if modality.kind == "text":
        return torch.nn.functional.one_hot(x.long(), modality.shape[-1]).float()
    if modality.kind == "spikes":
        return x.float().div_(10.0)
    return x.float()


def load_split(spec: DatasetSpec, variant: Optional[str], split: str, data_root: Optional[Path] = None) -> DataSplit:
    variant = spec.check_variant(variant)
    directory = dataset_dir(spec.registry_name, variant, data_root)
    manifest = read_manifest(directory)
    if manifest is None:
        raise MMBenchError(
            f"dataset {spec.registry_name} ({variant}) is not prepared under {directory.parent.parent}; "
            f"run `{spec.prepare_hint(variant, data_root)}`")
    version = spec.recipe_version_of(variant)
    if manifest.get("recipe_version") != version:  # built by an mmbench with another recipe
        raise MMBenchError(f"{directory} was built by recipe version {manifest.get('recipe_version')} of "
                           f"{spec.registry_name} ({variant}); this mmbench builds version {version}: rebuild it "
                           f"with `{prepare_command(manifest, data_root)}`")
    verify(directory, manifest)
    mods = spec.modalities(variant)
    if f"{split}_labels" not in manifest["arrays"]:
        splits = sorted(k[:-len("_labels")] for k in manifest["arrays"] if k.endswith("_labels"))
        raise MMBenchError(f"dataset {spec.registry_name} has no split {split!r}; choose one of: {', '.join(splits)}")
    def array(key: str) -> torch.Tensor:
        return torch.from_numpy(np.load(directory / f"{key}.npy"))

    x = {m.name: (Indexed(array(f"{split}_base_{m.name}"), array(f"{split}_index_{m.name}").long())
                  if f"{split}_index_{m.name}" in manifest["arrays"] else array(f"{split}_{m.name}")) for m in mods}
    labels = array(f"{split}_labels").long()
    extra = {}
    prefix = f"{split}_extra_"
    for key in manifest["arrays"]:
        if key.startswith(prefix):
            extra[key[len(prefix):]] = array(key).long()
    return DataSplit(mods, x, labels, extra, spec.redraws(manifest, split))


def decode_text(codes: torch.Tensor, alphabet: str) -> str:
    return "".join(alphabet[int(c)] for c in codes)


def save_preview(split: DataSplit, path: Path, n: int = 10) -> Path:
    """A PNG grid of `n` random tuples: one row per modality (text rendered as text), one column per tuple."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = split.subset(n, seed=0)  # a seeded sample, not the first (class-sorted) rows
    n = len(split)
    mods = split.modalities
    fig, axes = plt.subplots(len(mods), n, figsize=(1.1 * n, 1.2 * len(mods)), squeeze=False)
    for r, m in enumerate(mods):
        data = split.x[m.name][:]
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if m.kind == "image":
                img = data[c].float().div(255).permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            elif m.kind == "spikes":  # neurons × bins raster of spike counts
                ax.imshow(data[c].numpy(), aspect="auto", cmap="gray_r", vmin=0, interpolation="nearest")
            else:
                text = repr(decode_text(data[c], m.alphabet))[1:-1].replace(" ", "·")  # show where the word sits
                long = len(text) > 24  # CelebA's 256-character field: a wrapped block, padding trimmed
                if long:
                    text = textwrap.fill(text.strip("*"), 16) or "(no attribute)"
                ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=3.5 if long else 6, family="monospace")
            if c == 0:
                ax.set_ylabel(m.name, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
