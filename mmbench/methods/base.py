"""The one model interface every method implements and every metric, trainer and report uses.

A method is a ``MultimodalVAE``:

* ``encode_subsets(x, subsets)`` -> one posterior q(z | X_S) per subset S (the only inference call);
  ``encode(x, subset)`` is the single-subset shorthand;
* ``decode(z, modality)`` -> the likelihood's mean for that modality;
* ``loss(x)`` -> (scalar training loss, dict of logged 0-d tensors, detached: the trainer reads them once
  per epoch, so a step never waits for the device);
* ``sample_prior(n)`` -> latents for unconditional generation.

Posteriors are ``Gaussian`` or uniform ``Mixture`` objects with ``mean``, ``rsample()``,
``log_prob(z)`` and ``represent(how)``: what metrics evaluate for a posterior (``eval.mixture_representation``,
``eval.ll_proposal``). A Gaussian is its own representation; a mixture is either itself ("mean" /
"mixture": its mean is the average of the component means, samples and densities are the mixture's) or,
"component", per row the one component the contiguous-block rule assigns it (the MMVAE authors'
evaluation: MoPoE ``utils/BaseMMVae.py moe_fusion`` -> ``utils/utils.py mixture_component_selection``).
Every random draw of a method goes through ``randn_like``/``randint`` below, i.e. the
current noise source: torch's global generator by default, or a packed trainer's per-run streams
(mmbench/pack.py), so a run packed with others draws exactly the numbers it draws alone. The shared machinery
here computes the unimodal Gaussian experts once and the products of experts of *all* requested subsets in one
batched tensor operation.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..config import EXPONENT_AS_TEXT, with_point  # the config fields' wording, for the options too
from ..config import MethodConfig  # noqa: F401 - the methods' hyperparameters, imported from here by the methods
from ..data.base import Modality
from ..errors import ConfigError, MMBenchError, show_value
from ..likelihoods import likelihood_name
from ..registry import ARCHITECTURES, LIKELIHOODS

Subset = Tuple[str, ...]
LOG_2PI = math.log(2 * math.pi)


class NoiseSource:
    """Where the methods' random numbers come from. The default draws from torch's global generator."""

    def randn_like(self, t: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(t)

    def randint(self, high: int, size: Tuple[int, ...], device: Any = None) -> torch.Tensor:
        return torch.randint(0, high, size, device=device)

    def exponential_like(self, t: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(t).exponential_()

    def bernoulli(self, shape: Tuple[int, ...], p: float, dtype: torch.dtype, device: Any) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(p)


_NOISE: List[NoiseSource] = [NoiseSource()]
_PACKED: List[bool] = []
_TRAINER_COUNTS: List[bool] = []
_BETA: List[Any] = []


class _Pushed:
    """Context manager: `value` on top of `stack` inside the block (the settings a loss reads while it runs)."""

    def __init__(self, stack: List[Any], value: Any):
        self.stack, self.value = stack, value

    def __enter__(self) -> Any:
        self.stack.append(self.value)
        return self.value

    def __exit__(self, *exc) -> None:
        self.stack.pop()


class use_noise(_Pushed):
    """Context manager: draw the methods' noise from `source` inside the block (mmbench/pack.py)."""

    def __init__(self, source: NoiseSource):
        super().__init__(_NOISE, source)


class packed(_Pushed):
    """Context manager: inside the block a loss runs as one run of a pack (mmbench/pack.py), with the run's own
    buffers swapped in (functional_call); a host-side step count is the pack's template's to keep (counts_in_loss)."""

    def __init__(self):
        super().__init__(_PACKED, True)


class trainer_counts(_Pushed):
    """Context manager: inside the block the trainer calls the model's `step_taken` (count_step, host_step) after
    each training step, so a loss leaves its step counters alone: a captured step then reads no changing host number and
    updates no counter it reads (MultimodalVAE.count_step; train.train)."""

    def __init__(self):
        super().__init__(_TRAINER_COUNTS, True)


def counts_in_loss() -> bool:
    """Whether a training loss advances its step counters itself (MultimodalVAE.counted): alone, outside a trainer
    that does (a pack's trainer, `trainer_counts`)."""
    return not _PACKED and not _TRAINER_COUNTS


class use_beta(_Pushed):
    """Context manager: inside the block a model's `beta` reads `value` instead of its own cfg.beta. A pack whose
    runs differ in β (the values of a β sweep, mmbench/pack.py) computes each run's loss inside it: looped, with the
    run's β as the same Python float its run alone reads; vmapped, with a 0-dim tensor of each run's β."""

    def __init__(self, value: Any):
        super().__init__(_BETA, value)


def randn_like(t: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like `t`, from the current noise source."""
    return _NOISE[-1].randn_like(t)


def randint(high: int, size: Tuple[int, ...], device: Any = None) -> torch.Tensor:
    """Uniform integers in [0, high), from the current noise source."""
    return _NOISE[-1].randint(high, tuple(size), device)


def exponential_like(t: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise shaped like `t`, from the current noise source."""
    return _NOISE[-1].exponential_like(t)


def bernoulli(shape: Sequence[int], p: float, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """0/1 noise of `shape` and `dtype`, 1 with probability p, drawn as F.dropout draws its mask (bernoulli_ on an
    empty tensor), from the current noise source (a pack's dropout: mmbench/pack.py)."""
    return _NOISE[-1].bernoulli(tuple(shape), p, dtype, device)


def all_subsets(names: Sequence[str]) -> List[Subset]:
    """Every non-empty subset, by size then in modality order (MoPoE: 2^M - 1 of them)."""
    return [tuple(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


def evaluable_subsets(model: "MultimodalVAE") -> List[Subset]:
    """The subsets metrics evaluate: every non-empty subset the method can encode (`supports`)."""
    return [s for s in all_subsets(model.names) if model.supports(s)]


def subset_key(subset: Sequence[str]) -> str:
    return "+".join(subset)


class Posterior:
    """What every posterior shares: `represent(how)` -- what metrics evaluate (eval.mixture_representation,
    eval.ll_proposal). Anything that is not a mixture is its own representation."""

    def represent(self, how: str) -> "Posterior":
        check_representation(how)
        return self


class Gaussian(Posterior):
    """Diagonal Gaussian; leading dims are free (e.g. K×B×D for K subsets)."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu, self.logvar = mu, logvar

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def rsample(self) -> torch.Tensor:
        return self.mu + randn_like(self.mu) * (0.5 * self.logvar).exp()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 / self.logvar.exp()).sum(-1)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)), closed form, summed over the last dim."""
        return 0.5 * (self.mu ** 2 + self.logvar.exp() - 1 - self.logvar).sum(-1)

    def __getitem__(self, i) -> "Gaussian":
        return Gaussian(self.mu[i], self.logvar[i])


class Mixture(Posterior):
    """Uniform mixture of K Gaussians stacked on dim 0 (K×B×D)."""

    def __init__(self, components: Gaussian):
        self.components = components

    @property
    def mean(self) -> torch.Tensor:
        return self.components.mu.mean(0)

    def rsample(self) -> torch.Tensor:
        K, B = self.components.mu.shape[:2]
        k = randint(K, (B,), self.components.mu.device)
        return self.components[k, torch.arange(B, device=k.device)].rsample()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        lp = self.components.log_prob(z.unsqueeze(0))  # K×B
        return torch.logsumexp(lp, 0) - math.log(lp.shape[0])

    def selected_component(self) -> Gaussian:
        """B×D: row b's component by the contiguous-block rule of training (`stratified_components`), as the
        MoPoE authors' `moe_fusion` fuses a subset at evaluation (MoPoE utils/utils.py mixture_component_selection)."""
        K, B = self.components.mu.shape[:2]
        k = stratified_components(B, K, self.components.mu.device)
        return self.components[k, torch.arange(B, device=k.device)]

    def represent(self, how: str):
        """"component": the selected component (a Gaussian); "mean"/"mixture": the mixture itself."""
        check_representation(how)
        return self.selected_component() if how == "component" else self


REPRESENTATIONS = ("mean", "mixture", "component")


def check_representation(how: str) -> None:
    if how not in REPRESENTATIONS:
        raise ValueError(f"posterior representation {how!r} is not one of {', '.join(REPRESENTATIONS)}")


def host_constant(owner: nn.Module, key: tuple, device: Any, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A tensor computed from host data alone (subset masks, prior-expert flags, index lists), built by `build` on
    the host once per key and device and kept on `owner`: a step then neither copies host data to the device (on a
    GPU that waits for every queued kernel) nor launches a kernel per element (tests/test_no_host_sync.py)."""
    if torch.compiler.is_compiling():  # traced into a captured step: a constant of the graph, never a stored
        return build().to(device)  # graph output (CUDA graphs overwrite those on the next replay)
    cache = owner.__dict__.setdefault("_host_constants", {})
    k = (key, str(torch.device(device) if device is not None else "cpu"))
    if k not in cache:
        cache[k] = build().to(device)
    return cache[k]


def product_of_experts(mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor,
                       prior_expert: torch.Tensor) -> Gaussian:
    """Products of Gaussian experts for K subsets at once (MoPoE Def. 1.1 and Eq. 8; MoPoE
    divergence_measures/mm_div.py poe, utils/BaseMMVae.py poe_fusion).

    mu, logvar: M×B×D unimodal experts; mask: K×M (1 where the modality is in the subset);
    prior_expert: K (1 where a N(0, I) expert joins the product). Returns a K×B×D Gaussian.
    """
    # 1 / (var + 1e-8), computed as exp(-log(var + 1e-8)): finite with finite gradients for any logvar
    # (1 / (exp(logvar) + eps) overflows to inf/inf = NaN gradients once logvar > 88).
    precision = torch.exp(-torch.logaddexp(logvar, torch.full_like(logvar, math.log(1e-8))))
    mask = mask.to(mu.dtype)
    prec = torch.einsum("km,mbd->kbd", mask, precision) + prior_expert.to(mu.dtype)[:, None, None]
    weighted = torch.einsum("km,mbd->kbd", mask, precision * mu)
    return Gaussian(weighted / prec, -torch.log(prec))


def stratified_components(batch: int, k: int, device: Any = None) -> torch.Tensor:
    """Mixture component of each row: contiguous blocks of floor(B/K) rows, the last takes the rest -- all
    rows when B < K (MoPoE utils/utils.py mixture_component_selection, uniform weights)."""
    size = batch // k
    if size == 0:
        return torch.full((batch,), k - 1, dtype=torch.long, device=device)
    comp = torch.arange(batch, device=device) // size
    return comp.clamp(max=k - 1)


def resolve_rec_weights(modalities: Sequence[Modality], override: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """Per-modality reconstruction weights: the dataset's, replaced by `method.rec_weights` where it names one."""
    names = [m.name for m in modalities]
    override = override or {}
    for k, v in override.items():
        if k not in names:
            raise MMBenchError(f"method.rec_weights names {k!r}, which is not a modality of this run; "
                               f"use some of: {', '.join(names)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise MMBenchError(f"method.rec_weights.{k} is {v!r}; give a number > 0")
    return {m.name: float(override.get(m.name, m.rec_weight)) for m in modalities}


# ----- method options: what a value may be (checked by config.validate at load time and by the constructor) -----
# A method's `option_rules` maps an option name to a dict of constraints beyond its default's type:
#   choices: the allowed strings (a trailing `note` explains them); ge/gt/le/lt: bounds on a number;
#   type: float or int, for an option whose default is None (null then means `null`, e.g. "use β").
# The type itself comes from the default: str -> a string, float -> a finite number (an integer too),
# int -> an integer (not true/false), bool -> true/false, dict -> a mapping of modality names to numbers.
_TYPE_NAMES = {str: "a string", float: "a number", int: "an integer", bool: "true/false"}


def _option_problem(value: Any, default: Any, rule: Dict[str, Any], modalities: Optional[Sequence[str]]) -> Optional[str]:
    """What is wrong with one option's `value` (None: nothing), given its `default` and its method's `rule`."""
    note = f" ({rule['note']})" if rule.get("note") else ""
    if value is None and default is None:
        return None  # null: the method's documented default behaviour
    if isinstance(default, dict):
        if not isinstance(value, dict):
            return f"expected a mapping of modality names to numbers, got {show_value(value)}"
        unknown = [str(k) for k in value if modalities is not None and k not in modalities]
        if unknown:
            return f"names {', '.join(unknown)}, not modalities of this run; use some of: {', '.join(modalities)}"
        return None  # the values: one by one, by check_options
    tp = rule.get("type", type(default))
    want = _TYPE_NAMES[tp] + (f" or null (null: {rule['null']})" if default is None else "")
    if tp is float:
        if isinstance(value, str) and EXPONENT_AS_TEXT.match(value.strip()):  # YAML 1.1 reads 1e-3 as text
            return f"expected a number, got {value!r} (text to YAML); write {with_point(value.strip())}"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        return f"expected {want}, got {show_value(value)}"
    if "choices" in rule and value not in rule["choices"]:
        return f"{value!r} is not allowed; choose one of: {', '.join(rule['choices'])}{note}"
    bounds = [(op, rule[op]) for op in ("gt", "ge", "lt", "le") if op in rule]
    fails = {"gt": lambda b: not value > b, "ge": lambda b: not value >= b, "lt": lambda b: not value < b,
             "le": lambda b: not value <= b}
    if any(fails[op](b) for op, b in bounds):
        signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        if len(bounds) == 2:
            (op1, lo), (op2, hi) = bounds
            allowed = f"in {'(' if op1 == 'gt' else '['}{lo:g}, {hi:g}{')' if op2 == 'lt' else ']'}"
        else:
            allowed = f"{signs[bounds[0][0]]} {bounds[0][1]:g}"
        return f"must be {'an integer' if tp is int else 'a number'} {allowed}, got {value!r}{note}"
    return None


def _yaml_text(value: Any) -> str:
    """A default as a suite would write it: null, true/false, 2.0, 0.6667, {img: 1.0, text: 5.0}."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


class MultimodalVAE(nn.Module):
    """Base class: per-modality encoders/decoders from a registered architecture, and the interface."""

    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    options: ClassVar[Dict[str, Any]] = {}  # allowed option names -> defaults
    # Constraints on the options' values beyond their defaults' types (see `_option_problem`): the one place
    # config.validate (at load time) and the constructor check them.
    option_rules: ClassVar[Dict[str, Dict[str, Any]]] = {}

    @classmethod
    def check_options(cls, options: Dict[str, Any], modalities: Optional[Sequence[str]] = None) -> None:
        """Check the options a config gives (`cfg.options`, as written: nothing is converted) against this method:
        names, types (those of the defaults), choices and ranges; `modalities`, the run's modality names, for an
        option keyed by modality (None: not checked). A ConfigError naming method.options.<name> if one is bad."""
        if not isinstance(options, dict):
            raise ConfigError("method.options", f"expected a mapping, got {show_value(options)}")
        for name, value in options.items():
            if name not in cls.options:
                raise ConfigError(f"method.options.{name}", f"not an option of {getattr(cls, 'registry_name', cls.__name__)}; "
                                  f"allowed: {', '.join(cls.options) or '(none)'}")
            default, rule = cls.options[name], cls.option_rules.get(name, {})
            problem = _option_problem(value, default, rule, modalities)
            if problem:
                raise ConfigError(f"method.options.{name}", problem)
            for k, v in value.items() if isinstance(default, dict) else ():  # a mapping's numbers (style_betas)
                problem = _option_problem(v, 1.0, rule, None)
                if problem:
                    raise ConfigError(f"method.options.{name}.{k}", problem)
        cls.check_option_combination(options)

    @classmethod
    def options_summary(cls) -> str:
        """The options with their defaults and what else each may be, from `options` and `option_rules` (what
        `mmbench list methods` shows), e.g. "objective=q (q|r), tau_n=1.0 (> 0)"; "" for a method with none."""
        signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        parts = []
        for name, default in cls.options.items():
            rule = cls.option_rules.get(name, {})
            allowed = "|".join(rule["choices"]) if "choices" in rule else ", ".join(
                f"{signs[op]} {rule[op]:g}" for op in ("gt", "ge", "lt", "le") if op in rule)
            parts.append(f"{name}={_yaml_text(default)}" + (f" ({allowed})" if allowed else ""))
        return ", ".join(parts)

    @classmethod
    def check_option_combination(cls, options: Dict[str, Any]) -> None:
        """Hook: refuse options that are each valid but not together (ConfigError); nothing by default."""

    # Whether the packed trainer (mmbench/pack.py) may train several runs of this method as one vmapped,
    # stacked model. False for methods whose loss vmap cannot batch or that keep Python-side state between steps
    # which differs between runs and which one shared template module cannot keep per run (keep it in a buffer
    # instead, as mrVAE's and MM-VAMP's step counters); such runs train unpacked, saying why (`unpackable_why`).
    # Python-side state that every run of a pack shares (a step count: a pack's runs start at one resume point) the
    # template keeps, loaded from the runs' checkpoint and advanced once per packed step (`host_step`).
    packable: ClassVar[bool] = True
    unpackable_why: ClassVar[str] = ""
    # Why runs with these method options cannot be packed (None: they can), for a packable method some of
    # whose options need what a pack cannot give (e.g. a value read back from the device inside the loss).
    @classmethod
    def pack_refusal(cls, options: Dict[str, Any]) -> Optional[str]:
        return None

    def count_step(self, rows: int) -> None:
        """Hook: a training step of `rows` tuples is done; advance the step-counter buffers a schedule reads
        (MM-VAMP's α, mrVAE's temperatures), in place and elementwise: a pack calls it once with its runs' stacked
        buffers swapped in. Both trainers call it after the optimiser's update, outside the captured loss: a
        captured loss that read a buffer and updated it in place can give its backward the updated value (AOT
        autograd may recompute the read there, pytorch/pytorch PR #197039), i.e. wrong gradients, silently. A
        training loss outside the trainers calls it itself (`counted`). Nothing by default."""

    def host_step(self) -> None:
        """Hook: a training step is done; advance what the model counts on the host (SMVAE's two-stage step count).
        Both trainers call it once per step (a pack on its template, for all its runs); a training loss outside them
        calls it itself (`counted`). Nothing by default."""

    def step_taken(self, rows: int) -> None:
        """A training step of `rows` tuples is done: its counter buffers advance (count_step), then its host-side
        count (host_step). train.train and bench call it after the update; a pack's twin is StackedModel.step_taken."""
        self.count_step(rows)
        self.host_step()

    def counted(self, x: Dict[str, torch.Tensor]) -> None:
        """The end of a training loss on batch `x`: the step is counted here (step_taken) unless a trainer counts it
        after the update (counts_in_loss)."""
        if counts_in_loss():
            self.step_taken(next(iter(x.values())).shape[0])

    def host_state(self, state_dict: Dict[str, Any]) -> Any:
        """Hook: the host-side state a run with this state_dict resumes with that a pack's template holds for all its
        runs (their step count, for a schedule that reads it); runs whose differ do not pack. None by default."""
        return None

    def noise_key(self) -> Any:
        """Hook: what besides the batch's shapes decides which random numbers a training loss draws (a pack records
        them once per key); None by default."""
        return None

    # True when each modality has its own latent (independent VAEs, MM-VAMP): a subset's posterior then only
    # serves conditional generation, metrics/reconstruction.py reconstructs every modality from its own
    # posterior, and metrics/loglik.py (one latent shared by all modalities) refuses.
    own_latent_per_modality: ClassVar[bool] = False
    # True when encoding runs the decoders (VGON's gradient step, SMVAE Eq. 9): eval.precision bf16, which
    # promises fp32 posteriors and bf16 decoder passes only, is then refused (metrics/batched.py for_eval).
    encodes_through_decoders: ClassVar[bool] = False
    # Raised when a method's defaults or numerics change what an existing config computes: a version other
    # than 1 enters the run id (config.RunConfig.run_id), so runs made before are not taken for new ones.
    id_version: ClassVar[int] = 1

    @classmethod
    def numerics_version(cls, options: dict) -> int:
        """The version that enters the run id of a config with these options: `id_version`, unless a method's
        numerics changed for some options only (mrVAE's objective r)."""
        return cls.id_version

    def __init__(self, modalities: Sequence[Modality], cfg: MethodConfig, architecture: str):
        super().__init__()
        self.modalities = list(modalities)
        self.names = [m.name for m in self.modalities]
        self.check_options(cfg.options, self.names)  # as config.validate did (a model built without a RunConfig too)
        self.cfg = cfg
        self.latent_dim = cfg.latent_dim
        self.beta = cfg.beta  # read back through the `beta` property (a packed β sweep's value inside `use_beta`)
        arch = ARCHITECTURES.get(architecture)
        self.encoders = nn.ModuleDict({m.name: arch.encoder(m, cfg.latent_dim) for m in self.modalities})
        self.decoders = nn.ModuleDict({m.name: arch.decoder(m, cfg.latent_dim) for m in self.modalities})
        self.likelihoods = {m.name: LIKELIHOODS.get(likelihood_name(m, cfg.image_likelihood)) for m in self.modalities}
        self.rec_weights = resolve_rec_weights(self.modalities, cfg.rec_weights)
        self.opt = {**self.options, **cfg.options}

    @property
    def beta(self) -> Any:
        """β, the weight of the KL terms: cfg.beta, or inside `use_beta` the packed run's. A loss reads it here
        when it runs (never copied at construction), so a pack of a β sweep's runs gives each run its own."""
        return _BETA[-1] if _BETA else self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = value

    # ----- the interface -------------------------------------------------------------------
    def encode_subsets(self, x: Dict[str, torch.Tensor], subsets: Sequence[Subset]) -> list:
        raise NotImplementedError

    def supports(self, subset: Sequence[str]) -> bool:
        """Whether the method infers a posterior from this subset alone (all of them, unless a method
        such as a joint-encoder VAE needs every modality); metrics skip unsupported subsets."""
        return True

    def encode(self, x: Dict[str, torch.Tensor], subset: Sequence[str]):
        return self.encode_subsets(x, [tuple(subset)])[0]

    def decode(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        return self.likelihoods[modality].mean(self.decoders[modality](z))

    def loss(self, x: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def sample_prior(self, n: int) -> torch.Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, device=device)

    # ----- shared helpers -----------------------------------------------------------------
    def unimodal(self, x: Dict[str, torch.Tensor], names: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stacked unimodal experts (len(names)×B×D mu and logvar)."""
        out = [self.encoders[n](x[n]) for n in names]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    def subset_mask(self, subsets: Sequence[Subset], names: Sequence[str], device: Any = None) -> torch.Tensor:
        """K×M float mask: 1 where modality names[m] is in subsets[k] (built and checked once per run)."""
        def build() -> torch.Tensor:
            for s in subsets:
                for n in s:
                    if n not in names:
                        raise KeyError(f"modality {n!r} is not an input here; inputs: {list(names)}")
            rows = [[float(n in s) for n in names] for s in subsets]
            return torch.tensor(rows, dtype=torch.get_default_dtype()).reshape(len(subsets), len(names))

        return host_constant(self, ("subset_mask", tuple(map(tuple, subsets)), tuple(names)), device, build)

    def needed(self, subsets: Sequence[Subset]) -> List[str]:
        """Modalities that some subset uses, in model order (so only those are encoded)."""
        used = set().union(*map(set, subsets)) if subsets else set()
        return [n for n in self.names if n in used]

    def rec_log_prob(self, z: torch.Tensor, x: Dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        """log p(x_m | z) per sample."""
        return self.likelihoods[modality].log_prob(self.decoders[modality](z), x[modality])

    def weighted_nll(self, z: torch.Tensor, x: Dict[str, torch.Tensor],
                     modalities: Optional[Sequence[str]] = None, weighted: bool = True) -> torch.Tensor:
        """Σ_m w_m (-log p(x_m | z)) per sample (w_m = rec_weight, MoPoE <dataset>/experiment.py set_rec_weights)."""
        total = 0.0
        for m in modalities or self.names:
            w = self.rec_weights[m] if weighted else 1.0
            total = total - w * self.rec_log_prob(z, x, m)
        return total


def unimodal_mixtures(model: "MultimodalVAE", x, subsets) -> list:
    """q(z | X_S) = uniform mixture of the unimodal posteriors q_m(z | x_m), m in S; one modality: its own q_m."""
    names = model.needed(subsets)
    mu, logvar = model.unimodal(x, names)
    pos = {n: i for i, n in enumerate(names)}
    out = []
    for s in subsets:
        idx = [pos[n] for n in s]
        comp = Gaussian(mu[idx], logvar[idx])
        out.append(comp[0] if len(idx) == 1 else Mixture(comp))
    return out


class PoEMixin:
    """Subset posteriors as products of experts, all subsets in one batched operation."""

    def prior_expert(self, subset: Subset) -> bool:
        raise NotImplementedError

    def poe(self, mu: torch.Tensor, logvar: torch.Tensor, names: Sequence[str],
            subsets: Sequence[Subset]) -> Gaussian:
        mask = self.subset_mask(subsets, names, mu.device)
        flags = [float(self.prior_expert(s)) for s in subsets]
        prior = host_constant(self, ("prior_expert", tuple(flags)), mu.device, lambda: torch.tensor(flags))
        return product_of_experts(mu, logvar, mask, prior)

    def encode_subsets(self, x, subsets):
        names = self.needed(subsets)
        mu, logvar = self.unimodal(x, names)
        g = self.poe(mu, logvar, names, subsets)
        return [g[k] for k in range(len(subsets))]
