"""Typed run configuration, built from plain dicts (YAML) with validation that names the field.

A run is fully described by a ``RunConfig``; its hash (minus the bookkeeping field ``tables``)
names the run's results directory, so identical settings share one run across suites.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from .errors import ConfigError, show_value


@dataclass
class MethodConfig:
    """Hyperparameters of a method. `options` holds method-specific settings."""

    name: str = "mopoe"
    latent_dim: int = 512
    beta: float = 2.5
    architecture: Optional[str] = None  # None: the dataset's default
    image_likelihood: Optional[str] = None  # None: the dataset's (Laplace, scale 0.75, for every image modality)
    options: Dict[str, Any] = field(default_factory=dict)
    # Reconstruction weights {modality: w} replacing the dataset's (`Modality.rec_weight`) for the modalities
    # named; None: the dataset's. Suites set them where a paper or code scales the likelihoods differently
    # (e.g. SMVAE §5 on CelebA, mmvmvae's CelebA); docs/provenance.md.
    rec_weights: Optional[Dict[str, float]] = None


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always checkpoints)
    select: str = "last"  # model selection for evaluation: "last" or "best_test_loss" (mrVAE)
    max_train: Optional[int] = None  # use a seeded subset of the train split (None: all of it)
    max_test: Optional[int] = None  # test tuples of the per-epoch test loss, a seeded subset (None: all of them)
    tensorboard: bool = False  # also write the per-epoch losses as TensorBoard events (needs the `tensorboard` extra)
    # Also checkpoint mid-epoch every this many minutes of training (None: only at epoch ends); a resume
    # continues at the saved step with the same data order and RNG state (train.py).
    checkpoint_minutes: Optional[float] = None
    # Arithmetic of the loss: fp32, or bf16 = torch.autocast to bfloat16 (parameters and Adam stay fp32)
    precision: str = "fp32"


@dataclass
class EvalConfig:
    metrics: List[str] = field(default_factory=lambda: ["latent_classification", "coherence"])
    lr_train_samples: int = 500  # MoPoE protocol: logistic regression on 500 training encodings
    lr_protocol: str = "mopoe"  # latent classification protocol: mopoe | smvae | mmvamp (metrics/latent.py)
    lr_standardize: bool = False  # standardise latent features before the regression (not in the papers)
    test_samples: Optional[int] = None  # cap on test tuples used by every metric (None: all)
    joint_samples: int = 1000  # prior samples for joint coherence
    batch_size: int = 256
    classifier_epochs: int = 10
    classifier_min_accuracy: float = 0.9  # coherence refuses classifiers below this test accuracy
    # Multi-label datasets (CelebA): coherence_ap refuses attribute classifiers below this test mean AP.
    classifier_min_ap: float = 0.5
    # Which coherence classifiers score generated samples: "mmbench" (trained and cached by mmbench) or
    # "authors" (the MoPoE authors' distributed ones, after `mmbench classifiers import`); and whether their
    # dropout is "off" (eval mode) or active "as_authors" (the MoPoE code never calls .eval() on them, so its
    # coherence runs with dropout, and batch norm on batch statistics). Neither is part of the run id.
    classifiers: str = "mmbench"
    classifier_dropout: str = "off"
    # latent_ap scores: "hard" = AP of the regressions' 0/1 predictions (the MoPoE and MMVM code, so the
    # papers' tables), "proba" = AP of their predicted probabilities (the usual AP); metrics/average_precision.py.
    ap_scores: str = "hard"
    # FID (metrics/fid.py): test tuples / prior samples per FID (MoPoE's num_samples_fid), Inception batch,
    # the weights file (None: torch hub cache; a location, not hashed into run ids) and the input subsets.
    fid_samples: int = 10000
    fid_batch_size: int = 128
    fid_weights: Optional[str] = None
    fid_subsets: str = "all"
    ll_samples: int = 15  # importance samples per test log-likelihood (MoPoE App. B; metrics/loglik.py)
    # What metrics read from a mixture posterior q(z | X_S) (MMVAE's |S| >= 2, methods/base.py `represent`):
    # "mean" = the mixture's mean (the average of the unimodal means) and samples of the whole mixture;
    # "component" = per test row the one unimodal component the contiguous-block rule selects, its mean and
    # samples (the authors' evaluation: MoPoE utils/BaseMMVae.py moe_fusion). Posteriors that are one
    # Gaussian (MoPoE, MVAE, ...) are unaffected.
    mixture_representation: str = "mean"
    # Importance-sampling proposal of loglik for a mixture posterior: "mixture" = the whole mixture (sampled
    # and divided by the mixture density); "component" = the selected component's Gaussian (the authors').
    ll_proposal: str = "mixture"
    # Arithmetic of the VAE's decoder passes in evaluation (metrics/batched.py): fp32, or bf16 = a bfloat16 copy
    # of each decoder (encoders, sampling, densities and sums stay fp32). Like `classifiers`, a choice over the
    # same trained model: recorded with the metrics, not part of the run id.
    precision: str = "fp32"


@dataclass
class RunConfig:
    dataset: str = "polydigits"
    variant: Optional[str] = None
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    data_seed: int = 0  # draws the run's subsets of the data (train.max_train, train.max_test), not the data's build
    # Use only these modalities of the dataset, in this order (None: all); e.g. 3 of PolyMNIST's 5 for
    # MM-VAMP App. B.2, or M = 2..5 for SMVAE Fig. 2.
    modalities: Optional[List[str]] = None
    tables: List[str] = field(default_factory=list)  # paper tables/figures this run serves (not hashed)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def architecture_name(self) -> Optional[str]:
        """The architecture the run builds: method.architecture, else its dataset's default (None for an unknown
        dataset, which validation refuses)."""
        from .registry import DATASETS

        if self.method.architecture is not None or self.dataset not in DATASETS:
            return self.method.architecture
        return DATASETS.get(self.dataset).default_architecture

    def run_id(self) -> str:
        d = self.to_dict()
        d.pop("tables")
        d["eval"].pop("fid_weights", None)  # where the (sha256-checked) weights live, not what is computed
        # Which classifiers score coherence is an evaluation choice over the same trained model: kept in the
        # metrics' provenance and the classifier cache key, not in the run id.
        d["eval"].pop("classifiers", None)
        d["eval"].pop("classifier_dropout", None)
        d["eval"].pop("precision", None)  # likewise the decoders' arithmetic in evaluation
        _drop_added_defaults(d, dataclasses.asdict(RunConfig()), FIELDS_V1)
        from .registry import ARCHITECTURES, METHODS

        version = METHODS.get(self.method.name).numerics_version(self.method.options) \
            if self.method.name in METHODS else 1
        if version != 1:  # the method's numerics changed since run ids were first made (methods/base.py)
            d["method_version"] = version
        arch = self.architecture_name()
        arch_version = getattr(ARCHITECTURES.get(arch), "id_version", 1) if arch and arch in ARCHITECTURES else 1
        if arch_version != 1:  # likewise an architecture's (e.g. nets/rats.py's log σ head)
            d["architecture_version"] = arch_version
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.dataset}-{self.variant or 'default'}-{self.method.name}-s{self.seed}-{digest}"


# Field constraints beyond the type: (check, "what is allowed").
CHOICES = {
    ("TrainConfig", "select"): ("last", "best_test_loss"),
    ("TrainConfig", "precision"): ("fp32", "bf16"),
    ("EvalConfig", "ap_scores"): ("hard", "proba"),
    ("EvalConfig", "lr_protocol"): ("mopoe", "smvae", "mmvamp"),
    ("EvalConfig", "fid_subsets"): ("all", "unimodal", "unimodal_and_full", "none"),
    ("EvalConfig", "mixture_representation"): ("mean", "component"),
    ("EvalConfig", "ll_proposal"): ("mixture", "component"),
    ("EvalConfig", "classifiers"): ("mmbench", "authors"),
    ("EvalConfig", "classifier_dropout"): ("off", "as_authors"),
    ("EvalConfig", "precision"): ("fp32", "bf16"),
}
POSITIVE = {"epochs", "batch_size", "lr", "checkpoint_every", "checkpoint_minutes", "latent_dim", "lr_train_samples", "joint_samples",
            "classifier_epochs", "max_train", "max_test", "test_samples", "fid_samples", "fid_batch_size", "ll_samples"}
# Seeds go to numpy (data preparation: 0 <= seed < 2**32), torch and sklearn; a negative or huge one would fail
# there, after the runs were planned.
SEEDS = {"seed", "data_seed"}
NONNEGATIVE = {"beta"}  # β = 0 is a plain autoencoder's objective, a legitimate end of a β sweep
# The fields run ids were first computed from. A field added later is left out of the id while it is at
# its default, so adding a setting never orphans finished runs (changing a default would, on purpose).
FIELDS_V1 = {
    "dataset": None, "variant": None, "seed": None, "data_seed": None,
    "method": {"name", "latent_dim", "beta", "architecture", "image_likelihood", "options"},
    "train": {"epochs", "batch_size", "lr", "checkpoint_every", "select", "max_train"},
    "eval": {"metrics", "lr_train_samples", "lr_standardize", "test_samples", "joint_samples", "batch_size",
             "classifier_epochs", "classifier_min_accuracy"},
}


def _drop_added_defaults(d: Dict[str, Any], defaults: Dict[str, Any], v1: Dict[str, Any]) -> None:
    for key in list(d):
        if key not in v1:
            if d[key] == defaults.get(key):
                del d[key]
        elif isinstance(v1[key], set):
            for sub in list(d[key]):
                if sub not in v1[key] and d[key][sub] == defaults[key].get(sub):
                    del d[key][sub]


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + " or null"
    if origin in (list, List):
        return "a list of " + _type_name(typing.get_args(tp)[0]).replace("an ", "").replace("a ", "") + "s"
    if origin in (dict, Dict):
        return "a mapping"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if value is None:  # merged over a block of settings, `train:` left empty would reset it to the defaults
            raise ConfigError(where, f"expected a mapping of {tp.__name__} fields, got None; give the settings "
                              f"(e.g. {{{_EXAMPLE.get(tp.__name__, 'KEY: VALUE')}}}) or drop the key")
        return from_dict(tp, value, where)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(where, f"expected {_type_name(tp)}, got {show_value(value)}")
        return [_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {show_value(value)}")
        return dict(value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(value, str) and EXPONENT_AS_TEXT.match(value.strip()):  # YAML 1.1 reads 1e-3 as text
            raise ConfigError(where, f"expected a number, got {value!r} (text to YAML, whose numbers with an exponent need "
                              f"a decimal point and a signed exponent); write {with_point(value.strip())}")
        value = float(value) + 0.0 if ok else value  # + 0.0: -0.0 is 0.0 (one run id); any other value is unchanged
        if ok and not math.isfinite(value):  # YAML's .inf / .nan: a run would train on NaN and report garbage
            raise ConfigError(where, f"must be a finite number, got {value!r}")
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(where, f"expected {_type_name(tp)}, got {show_value(value)}")
    return value


# A number with an exponent that PyYAML (YAML 1.1) reads as a string: 1e-3 (no decimal point), 1.0e3 (no sign
# after the e). YAML 1.2 and Python read a float; YAML 1.1 wants 1.0e-3, 1.0e+3.
EXPONENT_AS_TEXT = re.compile(r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
_EXAMPLE = {"MethodConfig": "beta: 2.5", "TrainConfig": "epochs: 10", "EvalConfig": "metrics: [coherence]"}


def with_point(text: str) -> str:
    """'1e-3' -> '1.0e-3', '1.5e3' -> '1.5e+3': the number written as YAML 1.1 reads a float."""
    mantissa, exp = re.split("[eE]", text, maxsplit=1)
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exp if exp[0] in '+-' else '+' + exp}"


def _field_type(cls: type, key: Any, where: str) -> Any:
    """The type of dataclass `cls`'s field `key`; a ConfigError at `where` if it has none of that name."""
    names = [f.name for f in dataclasses.fields(cls)]
    if key not in names:
        raise ConfigError(where, f"unknown field; allowed: {', '.join(names)}")
    return _type_hints(cls)[key]


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> Dict[str, Any]:
    """typing.get_type_hints of a config dataclass, once per class: resolving them took half of `mmbench report`'s
    time over 900 runs (42,000 calls, 11 of 22 s profiled)."""
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys and ill-typed values by name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping of {cls.__name__} fields, got {show_value(data)}")
    kwargs = {}
    for key, value in data.items():
        sub = f"{where}.{key}" if where else str(key)
        value = _coerce(value, _field_type(cls, key, sub), sub)
        allowed = CHOICES.get((cls.__name__, key))
        if allowed and value not in allowed:
            raise ConfigError(sub, f"{value!r} is not allowed; choose one of: {', '.join(allowed)}")
        if key in POSITIVE and value is not None and value <= 0:
            raise ConfigError(sub, f"must be > 0, got {value!r}")
        if key in NONNEGATIVE and value is not None and value < 0:
            raise ConfigError(sub, f"must be >= 0, got {value!r}")
        if key in SEEDS and cls.__name__ == "RunConfig" and not 0 <= value < 2 ** 32:
            raise ConfigError(sub, f"must be an integer from 0 to {2 ** 32 - 1} (a seed of numpy and torch), got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def deep_merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (update or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'method': {'beta': 1}} -> {'method.beta': 1} (the paths a `where` filter names)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def same_setting(actual: Any, wanted: Any) -> bool:
    """Whether a run's setting is the one a filter or budget names (numbers to rounding, a list as a tuple)."""
    if isinstance(actual, bool) != isinstance(wanted, bool):  # a flag set True is not the number 1
        return False
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and isinstance(actual, (int, float)):
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return actual == wanted or (isinstance(actual, tuple) and isinstance(wanted, list)
                                and actual == setting_key(wanted))


def setting_key(value: Any) -> Any:
    """A setting as a dict key: a list-valued one (e.g. `modalities`) as a tuple."""
    if isinstance(value, list):
        return tuple(setting_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, setting_key(v)) for k, v in value.items()))
    return value


def _put(out: Dict[str, Any], key: str, value: Any) -> None:
    """out[a][b][c] = value for key 'a.b.c'."""
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(key, f"{p} is given both a value and settings below it; give one of them")
    node[parts[-1]] = value


def parse_overrides(items: List[str], option: str = "--set") -> Dict[str, Any]:
    """`train.epochs=3 method.beta=2.5` -> nested dict (values parsed as YAML scalars); `option` names where the
    items came from in errors."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{option} {item}", "expected KEY=VALUE, e.g. "
                              + ("train.epochs=3" if option == "--set" else "mnist_source=test-halves"))
        key, raw = item.split("=", 1)
        if not key.strip() or any(not part for part in key.split(".")):
            raise ConfigError(f"{option} {item}", "the KEY before = is empty or has an empty part; expected KEY=VALUE, "
                              "e.g. " + ("train.epochs=3" if option == "--set" else "mnist_source=test-halves"))
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _put(out, key, value)
    return out


def check_settings(settings: Any, where: str) -> None:
    """That `settings` maps dotted config paths to values a run's config can hold (e.g. {method.beta: 2.5}), checked
    as `--set` is (from_dict); a ConfigError at `where` names the first that is not."""
    if not isinstance(settings, dict):
        raise ConfigError(where, "must be a mapping of dotted config paths to values, e.g. {method.beta: 2.5}")
    nested: Dict[str, Any] = {}
    for key, value in settings.items():
        _put(nested, str(key), value)
    from_dict(RunConfig, nested, where)


def check_path(path: Any, where: str) -> None:
    """That `path` (e.g. 'method.beta') names one setting of a run's config; a ConfigError at `where` if not (a
    key under a mapping field, e.g. method.options.schedule, is not checked)."""
    if not isinstance(path, str) or not path:
        raise ConfigError(where, f"must be a dotted config path, e.g. method.beta; got {path!r}")
    tp: Any = RunConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        if typing.get_origin(tp) in (dict, Dict):
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(where, f"{path!r}: {'.'.join(parts[:i])} is one setting, it has no fields")
        tp = _field_type(tp, part, f"{where} {'.'.join(parts[:i + 1])!r}")
        if typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (dict, Dict):
        raise ConfigError(where, f"{path!r} is a section of settings; name one of them, e.g. {path}.KEY")


def validate(cfg: RunConfig, where: str = "") -> RunConfig:
    """Check names against the registries and method options against the method."""
    from .registry import ARCHITECTURES, DATASETS, LIKELIHOODS, METHODS, METRICS

    pre = f"{where}." if where else ""
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"{pre}dataset", f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS.names())}")
    spec = DATASETS.get(cfg.dataset)()
    if cfg.variant is not None and cfg.variant not in spec.variants:
        raise ConfigError(f"{pre}variant", f"{cfg.variant!r} is not a variant of {cfg.dataset}; choose one of: {', '.join(spec.variants)}")
    cfg.variant = cfg.variant or spec.variants[0]  # resolved, so the run id names it
    if cfg.method.name not in METHODS:
        raise ConfigError(f"{pre}method.name", f"unknown method {cfg.method.name!r}; choose one of: {', '.join(METHODS.names())}")
    vae_nets = [n for n, a in ARCHITECTURES.items() if hasattr(a, "encoder") and hasattr(a, "decoder")]
    if cfg.method.architecture is not None and cfg.method.architecture not in ARCHITECTURES:
        raise ConfigError(f"{pre}method.architecture", f"unknown architecture {cfg.method.architecture!r}; choose one of: {', '.join(vae_nets)}")
    if cfg.method.architecture is not None and cfg.method.architecture not in vae_nets:  # e.g. a coherence classifier
        raise ConfigError(f"{pre}method.architecture", f"{cfg.method.architecture!r} has no VAE encoder and decoder (a "
                          f"classifier's layers); choose one of: {', '.join(vae_nets)}")
    if cfg.method.image_likelihood is not None and cfg.method.image_likelihood not in LIKELIHOODS:
        raise ConfigError(f"{pre}method.image_likelihood", f"unknown likelihood {cfg.method.image_likelihood!r}; choose one of: {', '.join(LIKELIHOODS.names())}")
    for i, m in enumerate(cfg.eval.metrics):
        if m not in METRICS:
            raise ConfigError(f"{pre}eval.metrics[{i}]", f"unknown metric {m!r}; choose one of: {', '.join(METRICS.names())}")
        # Accuracy metrics need one label per tuple, AP metrics multi-hot attributes: refuse before training.
        swap = MULTILABEL_COUNTERPART if spec.multilabel else {v: k for k, v in MULTILABEL_COUNTERPART.items()}
        if m in swap:
            kind = "multi-label" if spec.multilabel else "single-label"
            raise ConfigError(f"{pre}eval.metrics[{i}]", f"{m} does not apply to the {kind} dataset {cfg.dataset}; "
                              f"use {swap[m]}")
        if m == "loglik":  # a likelihood without its constant (the rats' sse) gives no log-likelihood: refuse now
            from .likelihoods import likelihood_name  # the model's own choice (methods/base.py)

            unnormalised = [mod.name for mod in spec.modalities(cfg.variant) if not getattr(
                LIKELIHOODS.get(likelihood_name(mod, cfg.method.image_likelihood)), "normalised", True)]
            if unnormalised:
                raise ConfigError(f"{pre}eval.metrics[{i}]", f"loglik needs normalised likelihoods; the {cfg.dataset} modalities "
                                  f"{', '.join(unnormalised)} use one without its constant; use reconstruction")
    if not 0 <= cfg.eval.classifier_min_accuracy <= 1:
        raise ConfigError(f"{pre}eval.classifier_min_accuracy", "must be between 0 and 1")
    if not 0 <= cfg.eval.classifier_min_ap <= 1:
        raise ConfigError(f"{pre}eval.classifier_min_ap", "must be between 0 and 1")
    if cfg.eval.precision == "bf16" and getattr(METHODS.get(cfg.method.name), "encodes_through_decoders", False):
        raise ConfigError(f"{pre}eval.precision", f"bf16 is not allowed for method {cfg.method.name}: it encodes "
                          f"through its decoders, so bf16 would change its posteriors too; use fp32")
    if cfg.eval.classifiers == "authors" and not any(
            spec.registry_name in getattr(a, "datasets", ()) for _, a in ARCHITECTURES.items()):
        raise ConfigError(f"{pre}eval.classifiers", f"the MoPoE authors distribute no classifiers for {cfg.dataset}; "
                          f"use mmbench")
    if cfg.modalities is not None:
        names = [m.name for m in spec.modalities(cfg.variant)]
        bad = [n for n in cfg.modalities if n not in names]
        if bad or not cfg.modalities or len(set(cfg.modalities)) != len(cfg.modalities):
            raise ConfigError(f"{pre}modalities", f"must be distinct modality names of {cfg.dataset}: {', '.join(names)}"
                              + (f"; got {bad[0]!r}" if bad else ""))
    try:  # names, types, choices and ranges, as the method's constructor checks them (methods/base.py)
        METHODS.get(cfg.method.name).check_options(cfg.method.options, cfg.modalities or [
            m.name for m in spec.modalities(cfg.variant)])
    except ConfigError as e:
        raise ConfigError(f"{pre}{e.where}", e.problem) from None
    if cfg.method.rec_weights is not None:
        names = cfg.modalities or [m.name for m in spec.modalities(cfg.variant)]
        for k, v in cfg.method.rec_weights.items():
            if k not in names:
                raise ConfigError(f"{pre}method.rec_weights.{k}", f"not a modality of this run; use some of: {', '.join(names)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ConfigError(f"{pre}method.rec_weights.{k}", f"expected a finite number > 0, got {v!r}")
        # floats, as from_dict makes a float field: {m0: 1} is the run {m0: 1.0} made (one run id)
        cfg.method.rec_weights = {k: float(v) for k, v in cfg.method.rec_weights.items()}
    return cfg


# Single-label metric -> its counterpart on multi-label data (CelebA's attributes).
MULTILABEL_COUNTERPART = {"latent_classification": "latent_ap", "coherence": "coherence_ap"}


def build_run_config(data: Dict[str, Any], where: str = "") -> RunConfig:
    from .registry import DATASETS

    cfg = from_dict(RunConfig, data, where)
    given = data.get("eval") if isinstance(data.get("eval"), dict) else {}
    if "metrics" not in given and cfg.dataset in DATASETS and DATASETS.get(cfg.dataset).multilabel:
        cfg.eval.metrics = [MULTILABEL_COUNTERPART.get(m, m) for m in cfg.eval.metrics]  # the default's counterparts
    return validate(cfg, where)
