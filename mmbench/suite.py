"""YAML suites: which experiments reproduce which paper tables, at which tier.

    name: quickstart
    description: ...
    defaults: {train: {...}, method: {...}, eval: {...}}      # RunConfig fields for every run
    slurm: {partition: gpu, gpus_per_job: 1, mem: 32G, time: 240}  # optional, for --executor slurm
    tiers:                                                      # selected with --tier (default: full)
      full: {}
      smoke: {seeds: 1, train: {epochs: 1}}                     # `seeds: N` keeps the first N seeds
      quick: {train: {epochs: 10},                              # a tier's method_overrides: for one method
              method_overrides: {mmvamp: {method: {options: {alpha_anneal_steps: 6000}}}}}
    experiments:
      - name: polydigits-vanilla
        reproduces: ["MoPoE Table 3"]                           # paper tables/figures this entry serves
        dataset: polydigits
        variant: vanilla
        methods: [mopoe, mvae, mmvae]
        seeds: [0, 1, 2]
        metrics: [latent_classification, coherence]
        overrides: {method: {beta: 2.5}}                        # for every method of the entry
        method_overrides: {mvae: {train: {lr: 5.0e-4}}}         # for one method
        slurm: {time: 600}                                      # optional, over the suite's slurm block

A run's settings: defaults <- overrides <- method_overrides <- sweep point <- tier <- the tier's
method_overrides <- --set. Every error names the
file, the entry and the field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


from . import yamlio
from .config import RunConfig, build_run_config, check_path, deep_merge, from_dict
from .errors import ConfigError, MMBenchError

TIERS = ("full", "quick", "smoke")


@dataclass
class Experiment:
    name: str = ""
    reproduces: List[str] = field(default_factory=list)
    dataset: str = ""
    variant: Optional[str] = None
    methods: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0])
    metrics: Optional[List[str]] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    method_overrides: Dict[str, Any] = field(default_factory=dict)
    # Dotted config path -> values; one run per combination (e.g. {method.beta: [0.5, 1, 2.5]}).
    sweep: Dict[str, List[Any]] = field(default_factory=dict)
    # Slurm options of this experiment's jobs (mmbench/slurm.py SlurmOptions), over the suite's `slurm:`.
    slurm: Dict[str, Any] = field(default_factory=dict)

    def sweep_points(self) -> List[Dict[str, Any]]:
        """Every combination of the sweep's values as a nested override dict ([{}] without a sweep)."""
        import itertools

        keys = list(self.sweep)
        points = []
        for values in itertools.product(*(self.sweep[k] for k in keys)):
            point: Dict[str, Any] = {}
            for k, v in zip(keys, values):
                node = point
                *parents, leaf = k.split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = v
            points.append(point)
        return points


@dataclass
class Suite:
    name: str = ""
    description: str = ""
    defaults: Dict[str, Any] = field(default_factory=dict)
    tiers: Dict[str, Any] = field(default_factory=dict)
    experiments: List[Experiment] = field(default_factory=list)
    path: str = ""
    slurm: Dict[str, Any] = field(default_factory=dict)  # Slurm options of every job (--executor slurm)

    def runs(self, tier: str = "full", overrides: Optional[Dict[str, Any]] = None,
             only: Optional[List[str]] = None) -> List[RunConfig]:
        """Every run of the suite at `tier` (of the experiments named in `only`, if given), validated.
        Errors name file, entry and field."""
        return [c for c, _ in self.runs_with_experiments(tier, overrides, only)]

    def runs_with_experiments(self, tier: str = "full", overrides: Optional[Dict[str, Any]] = None,
                              only: Optional[List[str]] = None) -> List[tuple]:
        """`runs`, each paired with the experiment it comes from."""
        if tier not in TIERS:
            raise ConfigError(f"{self.path}: --tier", f"{tier!r} is not a tier; choose one of: {', '.join(TIERS)}")
        if overrides:  # a bad --set value is the command line's, not the suite file's
            try:
                from_dict(RunConfig, overrides)
            except ConfigError as e:
                raise ConfigError(f"--set {e.where}", e.problem) from None
        names = [e.name for e in self.experiments]
        for n in only or []:
            if n not in names:
                raise ConfigError(f"{self.path}: --only", f"no experiment {n!r}; the suite has: {', '.join(names)}")
        # --set seed was dropped; dataset, method.name, tables replaced every experiment's (a --set variant or
        # eval.metrics is a wanted override, e.g. --only rats --set variant=simulated)
        refuse_set_by_fields(overrides, f"{self.path}: --set ", "choose experiments with --only, or edit the suite",
                             allow=("variant", "eval.metrics"))
        tier_cfg = dict(self.tiers.get(tier) or {})
        keep_seeds = tier_cfg.pop("seeds", None)
        tier_methods = tier_cfg.pop("method_overrides", None) or {}  # per method, over the tier's overrides
        out = []
        for i, exp in enumerate(self.experiments):
            if only and exp.name not in only:
                continue
            seeds = exp.seeds[:keep_seeds] if keep_seeds else exp.seeds
            for method in exp.methods:
                where = f"{self.path}: experiments[{i}] ({exp.name}, {method})"
                d = deep_merge(self.defaults, {"dataset": exp.dataset, "variant": exp.variant,
                                               "tables": list(exp.reproduces)})
                if exp.metrics is not None:
                    d = deep_merge(d, {"eval": {"metrics": exp.metrics}})
                d = deep_merge(d, exp.overrides)
                d = deep_merge(d, exp.method_overrides.get(method) or {})
                d = deep_merge(d, {"method": {"name": method}})
                for point in exp.sweep_points():
                    p = deep_merge(deep_merge(d, point), tier_cfg)
                    p = deep_merge(p, tier_methods.get(method) or {})
                    p = deep_merge(p, overrides or {})
                    for seed in seeds:
                        try:
                            out.append((build_run_config(deep_merge(p, {"seed": seed}), where), exp))
                        except ConfigError as e:
                            raise _blame_set(e, where, overrides, f"{exp.name}, {method}") from None
        return out


def _blame_set(e: ConfigError, where: str, overrides: Optional[Dict[str, Any]], run: str) -> ConfigError:
    """A run's config error `e` at `where`, as the command line's when --set gave the field it names (e.g. a
    --set eval.metrics=[nosuch] that validation refuses), else `e`: the fix is then on the command line."""
    field = e.where[len(where) + 1:] if e.where.startswith(where + ".") else ""
    path = re.sub(r"\[\d+\]", "", field)
    parts = path.split(".")
    if overrides and field and any(_gives(overrides, ".".join(parts[:n])) for n in range(1, len(parts) + 1)):
        return ConfigError(f"--set {field} (for {run})", e.problem)
    return e


# run settings an experiment names in its own fields (a sweep over them would silently replace those)
SET_BY_FIELDS = {"dataset": "dataset", "variant": "variant", "seed": "seeds", "method.name": "methods",
                 "tables": "reproduces", "eval.metrics": "metrics"}


def refuse_set_by_fields(d: Optional[Dict[str, Any]], prefix: str, fix: str, allow: tuple = ()) -> None:
    """Refuse a block of settings that gives one an experiment's own field sets: merged over it, it would replace
    that field for every run (dataset, method.name, tables), or be dropped in silence (seed; variant under an
    experiment without one). The error names `prefix` + the setting."""
    for key, by in SET_BY_FIELDS.items():
        if key not in allow and _gives(d or {}, key):
            raise ConfigError(prefix + key, f"is set by each experiment's `{by}`; {fix}")


def _gives(d: Dict[str, Any], dotted: str) -> bool:
    """Whether nested dict `d` gives the setting 'a.b.c'."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p)
        if not isinstance(d, dict):
            return False
    return isinstance(d, dict) and leaf in d


def _check_block(block: Any, where: str) -> None:
    """A method's overrides: a mapping of run settings (or empty); a ConfigError at `where` if not."""
    if block is not None and not isinstance(block, dict):
        raise ConfigError(where, f"must be a mapping of run settings (e.g. {{method: {{beta: 1.0}}}}), got {block!r}")


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.exists():
        raise MMBenchError(f"suite file {path} does not exist; see `mmbench list suites`")
    if not path.is_file():
        raise MMBenchError(f"suite {path} is not a file; give a suite YAML file, e.g. suites/quickstart.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MMBenchError(f"suite file {path} is not UTF-8 text (byte {e.start}); give a suite YAML file") from None
    raw = yamlio.load(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "a suite must be a mapping with at least `name` and `experiments`")
    allowed = ("name", "description", "defaults", "tiers", "experiments", "slurm")
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{path}: {key}", f"unknown top-level key; allowed: {', '.join(allowed)}")
    for key in ("name", "experiments"):
        if key not in raw:
            raise ConfigError(f"{path}: {key}", "missing; a suite needs `name` and `experiments`")
    if not isinstance(raw["name"], str) or not raw["name"].strip():  # it names the suite in reports and Slurm jobs
        raise ConfigError(f"{path}: name", f"must be a non-empty string, got {raw['name']!r}")
    exps = raw.get("experiments")
    if not isinstance(exps, list) or not exps:
        raise ConfigError(f"{path}: experiments", "must be a non-empty list of experiments")
    parsed = []
    for i, e in enumerate(exps):
        where = f"{path}: experiments[{i}]"
        exp = from_dict(Experiment, e, where)
        for req in ("name", "dataset", "methods"):
            if not getattr(exp, req):
                raise ConfigError(f"{where}.{req}", "missing; every experiment needs name, dataset and methods")
        if not exp.name.strip() or "," in exp.name:  # --only takes a comma-separated list of names
            raise ConfigError(f"{where}.name", f"must be a non-blank name without commas (--only a,b selects "
                              f"experiments by it), got {exp.name!r}")
        if not exp.seeds:  # would make no runs, and say nothing
            raise ConfigError(f"{where}.seeds", "must be a non-empty list of seeds, e.g. [0, 1, 2]")
        for key in ("methods", "seeds"):  # a repeated one would list the same run twice
            values = getattr(exp, key)
            if len({repr(x) for x in values}) < len(values):
                raise ConfigError(f"{where}.{key}", f"repeats a value ({values}); list each once")
        for m in exp.method_overrides:
            if m not in exp.methods:
                raise ConfigError(f"{where}.method_overrides.{m}", f"not one of this experiment's methods: {', '.join(exp.methods)}")
            _check_block(exp.method_overrides[m], f"{where}.method_overrides.{m}")
            refuse_set_by_fields(exp.method_overrides[m], f"{where}.method_overrides.{m}.", "set it there")
        refuse_set_by_fields(exp.overrides, f"{where}.overrides.", "set it there")
        for k, v in exp.sweep.items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{where}.sweep.{k}", "must be a non-empty list of values")
            if k in SET_BY_FIELDS:
                raise ConfigError(f"{where}.sweep.{k}", f"is set by the experiment's `{SET_BY_FIELDS[k]}`; list the "
                                  f"values there (or write one experiment per value)")
            check_path(k, f"{where}.sweep.{k}")
            above = [a for a in exp.sweep if isinstance(a, str) and k.startswith(a + ".")]
            if above:  # a key under a swept mapping setting (method.options.x and method.options.x.y)
                raise ConfigError(f"{where}.sweep.{k}", f"lies under {above[0]}, which the sweep sets too; sweep one of them")
            if len({repr(x) for x in v}) < len(v):
                raise ConfigError(f"{where}.sweep.{k}", f"repeats a value ({v}); each value is one run per seed")
        if any(exp.name == p.name for p in parsed):
            raise ConfigError(f"{where}.name", f"{exp.name!r} names an earlier experiment too; names select "
                              f"experiments (--only), so each must be unique")
        parsed.append(exp)
    tiers = raw.get("tiers") or {}
    if not isinstance(tiers, dict):
        raise ConfigError(f"{path}: tiers", "must be a mapping of tier name to overrides")
    every_method = sorted({m for e in parsed for m in e.methods})
    for t in tiers:
        if t not in TIERS:
            raise ConfigError(f"{path}: tiers.{t}", f"unknown tier; choose from: {', '.join(TIERS)}")
        if not isinstance(tiers[t] or {}, dict):
            raise ConfigError(f"{path}: tiers.{t}", "must be a mapping of overrides (e.g. {train: {epochs: 10}})")
        keep = (tiers[t] or {}).get("seeds")
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise ConfigError(f"{path}: tiers.{t}.seeds", f"must be a positive integer (keeps the first N seeds of "
                              f"each experiment), got {keep!r}")
        per_method = (tiers[t] or {}).get("method_overrides") or {}
        if not isinstance(per_method, dict):
            raise ConfigError(f"{path}: tiers.{t}.method_overrides", "must be a mapping of method name to overrides")
        for m in per_method:
            if m not in every_method:
                raise ConfigError(f"{path}: tiers.{t}.method_overrides.{m}",
                                  f"not a method of any experiment: {', '.join(every_method)}")
            _check_block(per_method[m], f"{path}: tiers.{t}.method_overrides.{m}")
            refuse_set_by_fields(per_method[m], f"{path}: tiers.{t}.method_overrides.{m}.",
                                 "a tier changes how runs train and are scored, not which runs a suite has")
        refuse_set_by_fields(tiers[t], f"{path}: tiers.{t}.",
                             "a tier changes how runs train and are scored, not which runs a suite has (`seeds: N` "
                             "keeps each experiment's first N seeds)")
    if not isinstance(raw.get("defaults") or {}, dict):
        raise ConfigError(f"{path}: defaults", "must be a mapping of run settings (e.g. {train: {epochs: 10}})")
    # eval.metrics is a default (an experiment's `metrics` replaces it); the others would be replaced or dropped
    refuse_set_by_fields(raw.get("defaults"), f"{path}: defaults.", "set it in each experiment",
                         allow=("eval.metrics",))
    from .slurm import resolve_options

    resolve_options([(raw.get("slurm") or {}, f"{path}: slurm")])  # option names and types, checked now
    for i, exp in enumerate(parsed):
        resolve_options([(exp.slurm, f"{path}: experiments[{i}].slurm")])
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{path}: description", f"must be a string, got {description!r}")
    suite = Suite(name=str(raw["name"]), description=description or "",
                  defaults=raw.get("defaults") or {}, tiers=tiers, experiments=parsed, path=str(path),
                  slurm=raw.get("slurm") or {})
    for t in TIERS:  # validate every tier now, so a typo fails at load time, not hours into a run
        suite.runs(t)
    return suite


def suites_dir() -> Path:
    """The suites shipped with the project (the repository's `suites/` folder), else ./suites."""
    here = Path(__file__).resolve().parent.parent / "suites"
    return here if here.exists() else Path("suites")


def train_samples(cfg: RunConfig, data_root: Optional[Path] = None) -> Optional[int]:
    """Training tuples one run processes in all (epochs × used train split), or None if the dataset
    is not prepared yet (its size is read from the manifest, never assumed)."""
    from .data.base import dataset_dir, read_manifest
    from .registry import DATASETS

    variant = DATASETS.get(cfg.dataset)().check_variant(cfg.variant)
    manifest = read_manifest(dataset_dir(cfg.dataset, variant, data_root))
    n = ((manifest or {}).get("counts") or {}).get("train")
    return None if n is None else _tuples_trained(cfg, n)


def _tuples_trained(cfg: RunConfig, train_split: int) -> int:
    """Training tuples a run processes over its epochs from a train split of `train_split` (capped by max_train)."""
    return cfg.train.epochs * min(int(train_split), cfg.train.max_train or int(train_split))


def train_tuples(cfg: RunConfig, data_root: Optional[Path] = None) -> Tuple[Optional[int], bool]:
    """(training tuples one run processes in all, whether that count is the prepared copy's): from the manifest
    where the dataset is prepared, else from the size its default recipe builds (`DatasetSpec.expected_counts`),
    else (None, False). For projections only; a run's own numbers read the manifest (`train_samples`)."""
    from .registry import DATASETS

    n = train_samples(cfg, data_root)
    if n is not None:
        return n, True
    spec = DATASETS.get(cfg.dataset)()
    expected = (spec.expected_counts(spec.check_variant(cfg.variant)) or {}).get("train")
    return (None if expected is None else _tuples_trained(cfg, expected)), False


# what a run's training cost per tuple is looked up by (seconds_per_sample): its step shapes (projection.step_key;
# seeds, epochs and β do not change a step's time)
ESTIMATE_BASIS = "dataset, variant, modalities, architecture, method and its options, batch, latent size, precision"


def seconds_per_sample(runs_dir: Optional[Path], data_root: Optional[Path] = None) -> Dict[tuple, float]:
    """Measured training cost of finished runs, seconds per training tuple, by projection.step_key (the median over
    runs); the basis of `mmbench run --dry-run`'s time estimates. Read from the steps' own
    throughput (provenance `train_tuples_per_second`; a pack's is all its runs', so a suite's sum stays this
    machine's time), not from the run's wall time, whose fixed costs would scale up with the tuples: a smoke run's
    would project the full run 10-30 times too long. Runs recorded before that field use their wall time; a run whose
    last process trained no epoch (the field is null, its wall time that process's fraction of a second) gives none."""
    import statistics

    from .projection import step_key
    from .results import load_runs

    seen: Dict[tuple, List[float]] = {}
    for r in load_runs(runs_dir):
        cfg, prov = r["config"], r["provenance"]
        rate = prov.get("train_tuples_per_second")
        if isinstance(rate, (int, float)) and rate > 0:
            cost = 1.0 / rate
        elif "train_tuples_per_second" in prov:
            continue  # recorded, but the process that finished the run timed no epoch (resumed with none left to train)
        else:  # recorded before that field: the wall time
            n = train_samples(cfg, data_root)
            if not n or not prov.get("train_seconds"):
                continue
            cost = prov["train_seconds"] / n
        seen.setdefault(step_key(cfg), []).append(cost)
    return {k: statistics.median(v) for k, v in seen.items()}


_PARAMETERS: Dict[str, Optional[int]] = {}  # parameter counts by model (dataset, variant, modalities, method, architecture)


def checkpoint_bytes(cfg: RunConfig) -> Optional[int]:
    """About what one run's checkpoints take on disk: last.pt holds the fp32 weights and Adam's two moments, best.pt
    the weights, 4 bytes × 4 per parameter (a PolyMNIST MoPoE: 14.1 M parameters, last.pt 169 MB, best.pt 56 MB). The
    model is built on the meta device: no memory, no initialisation (None where it cannot be built there)."""
    import json

    import torch

    from .train import build_model

    d = cfg.to_dict()
    key = json.dumps([d["dataset"], d["variant"], d.get("modalities"), d["method"], cfg.architecture_name()],
                     sort_keys=True, default=str)
    if key not in _PARAMETERS:
        try:
            with torch.device("meta"):
                _PARAMETERS[key] = sum(p.numel() for p in build_model(cfg).parameters())
        except Exception:  # noqa: BLE001 - a model that cannot be built there (an operation meta tensors lack): unsized
            _PARAMETERS[key] = None
    return None if _PARAMETERS[key] is None else 16 * _PARAMETERS[key]


def human_bytes(n: float) -> str:
    """Bytes as a person reads them: MB below 1 GB, then GB (powers of 1000, as disks are sold)."""
    return f"{n / 1e6:,.0f} MB" if n < 1e9 else f"{n / 1e9:,.1f} GB"


def free_bytes(folder: Path) -> int:
    """Free space for this user on the file system `folder` is (or will be made) on."""
    import shutil

    here = next(p for p in [Path(folder).resolve(), *Path(folder).resolve().parents] if p.exists())
    return shutil.disk_usage(here).free


def human_seconds(s: float) -> str:
    """Seconds as a person reads them: s below 2 min, min below 2 h, h below 4 days, then days (with the hours)."""
    if s >= 4 * 86400:
        return f"{s / 86400:,.0f} days ({s / 3600:,.0f} h)"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
