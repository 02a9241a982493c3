"""Packed runs: several runs of one experiment trained together in one process as one stacked model.

Runs that differ only in their seed and β (the seeds of a table, the values of a β sweep, the same method across
suites) share the dataset, variant, method, architecture and training settings, so their models have the same shapes.
A method reads β when its loss runs (MultimodalVAE.beta); the pack gives each run its own there (methods.base.use_beta:
looped, the run's β as the Python float it reads alone; vmapped, a tensor of the runs' β, in_dims 0).
A pack stacks their parameters on a leading run axis and evaluates the loss of all of them at once with
``torch.func.functional_call`` + ``torch.func.vmap`` (one batched kernel per layer instead of one per
run; on a CPU, and in bf16 on any device, it loops over views of the stacked parameters instead:
``StackedModel.vectorised_for``); the loss is summed over runs, and one Adam steps all stacked parameters. Adam is elementwise, so
each run's update is exactly its own, and the gradient of the sum with respect to one run's parameters
is that run's gradient.

Each run keeps everything an unpacked run has (mmbench/train.py): its initialisation (the model built
after ``torch.manual_seed(seed)``), its data order (epoch e shuffles with a generator seeded by
(seed, e)), its own random stream, its run directory, ``last.pt``/``best.pt`` in the unpacked format
(a packed run resumes unpacked and vice versa), its log and its ``metrics.json``. Its run id does not
change: packing is a schedule, not a setting.

Random streams: a method draws all its noise through ``methods.base.randn_like``/``randint``/
``exponential_like`` (and a pack's dropout through ``bernoulli``, _PackDropout). A packed
step first records which draws the loss makes (shapes and dtypes, once per batch shape, from a forward of
the first run as alone, in the loss's precision), then draws them for each
run from that run's own ``torch.Generator`` -- on the CPU started from the global generator's state
right after the run's model was built, i.e. the state an unpacked run draws from -- and feeds them into
the packed loss. The vmapped loss runs with ``vmap(randomness="error")``, so a draw that bypasses the
noise source fails loudly instead of sharing numbers between runs (looped, the trial sees such a draw
move the global stream). On the CPU a packed run therefore
draws exactly the numbers it draws alone and ends with the same weights and metrics to float tolerance
(tests/test_pack.py). On a GPU the per-run generators are CUDA generators seeded with the run's seed.

What is not packed (the run trains unpacked instead, with the reason in its log): methods with
``packable = False`` (none today; VGON's inner gradient step is a torch.func.grad, which vmap batches) and method
options a method's ``pack_refusal`` refuses (none today), architectures with instance norm or other dropouts than
nn.Dropout and nn.Dropout2d (those two the pack's template redraws per run through the noise source, _PackDropout;
BatchNorm's running statistics are buffers, stacked per run), datasets whose rows are redrawn per batch, and any pack whose first packed step does not reproduce each run's unpacked loss
(checked before training, on the first batch). Runs resumed at different epochs train in separate
packs, and so do runs resumed at different steps of one epoch. A run whose loss becomes non-finite stops at
the end of that epoch (its last checkpoint stays the previous epoch's) and leaves the pack; the others go on.
Packed runs checkpoint as unpacked ones do: every ``checkpoint_every`` epochs, every
``train.checkpoint_minutes`` mid-epoch (each run's next step, running log sums and random stream), and
after the current step when a stop is requested (train.request_stop, e.g. Slurm's pre-timeout signal);
a stop then raises train.TrainingInterrupted for the whole pack, and a re-run resumes every run of it.
With MMBENCH_COMPILE=1 (`mmbench run --compile`) on a GPU the packed loss is captured with
torch.compile(mode="reduce-overhead") (the vmapped fp32 loss only; a looped bf16 pack says so in its logs
and runs uncaptured); a compiler failure falls back to the uncaptured step, logged. With MMBENCH_PACK_CONV=bmm the
vmapped loss computes its convolutions as batched matmuls instead of vmap's grouped convolutions (mmbench/packconv.py).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .config import RunConfig
from .data.base import DataSplit, to_float
from .errors import MMBenchError, brief
from .methods.base import MultimodalVAE, NoiseSource, bernoulli, packed, use_beta, use_noise
from .registry import METHODS
from .results import Run, atomic_json
from . import kernels, packconv, train as train_mod
from .devices import device_of, out_of_memory, release_device_memory
from .train import ProgressFn, TrainingInterrupted, autocast, build_model, diverged, load_data

# Layers a pack cannot give each run its own of: instance norm (its running statistics), and dropout of other kinds
# than the two a pack redraws per run (_PackDropout). BatchNorm packs: its running statistics are buffers, stacked
# per run like any other, and updated in place by each run's forward (vmapped or looped).
NOT_VMAPPABLE = (nn.modules.instancenorm._InstanceNorm,)
PACKED_DROPOUTS = (nn.Dropout, nn.Dropout2d)


class _PackDropout(nn.Module):
    """nn.Dropout, or nn.Dropout2d on a 4-d input, in a pack's template: the mask F.dropout draws (bernoulli_(1 - p)
    on an empty tensor of the input's shape, (N, C, 1, 1) for Dropout2d, and dtype; divided by 1 - p; times the
    input), drawn through the noise source, so that each run takes it from its own generator: on the CPU the numbers
    the run draws alone (aten's CPU dropout and feature dropout compute exactly this). The runs alone keep
    nn.Dropout; only the pack's template has these (_swap_dropouts)."""

    def __init__(self, p: float, feature: bool):
        super().__init__()
        self.p, self.feature = float(p), feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        if self.feature and x.dim() != 4:
            raise MMBenchError(f"a packed Dropout2d needs a 4-d input (N, C, H, W), got {x.dim()}-d")
        keep = 1 - self.p
        noise = bernoulli((x.shape[0], x.shape[1], 1, 1) if self.feature else x.shape, keep, x.dtype, x.device)
        return x * (noise / keep)


def _swap_dropouts(module: nn.Module) -> int:
    """Replace every nn.Dropout and nn.Dropout2d below `module` by a _PackDropout; returns how many."""
    n = 0
    for name, child in module.named_children():
        if type(child) in PACKED_DROPOUTS:
            setattr(module, name, _PackDropout(child.p, type(child) is nn.Dropout2d))
            n += 1
        else:
            n += _swap_dropouts(child)
    return n


def pack_key(cfg: RunConfig) -> str:
    """Runs with equal keys can share a pack: everything that shapes training except the seed and β (a method reads
    β when its loss runs, MultimodalVAE.beta, and a pack gives each run its own: the values of a β sweep pack)."""
    d = cfg.to_dict()
    for k in ("seed", "tables", "eval"):
        d.pop(k)
    d["method"].pop("beta")
    return json.dumps(d, sort_keys=True, default=str)


def unpackable_reason(cfg: RunConfig) -> Optional[str]:
    """Why runs of this config cannot be packed (None: they can). Builds the model on the meta device."""
    cls = METHODS.get(cfg.method.name)
    if not getattr(cls, "packable", False):
        return f"method {cfg.method.name} is not packable ({cls.unpackable_why or 'packable = False'})"
    refusal = cls.pack_refusal(dict(cfg.method.options))  # e.g. a step schedule planned from the run's length
    if refusal:
        return f"method {cfg.method.name}: {refusal}"
    if hasattr(cls, "plan_steps") and getattr(cls.pack_refusal, "__func__", None) is MultimodalVAE.pack_refusal.__func__:
        return f"method {cfg.method.name} plans a step schedule (plan_steps) and does not say when it packs (pack_refusal)"
    model = _built_without_data(cfg)
    bad = sorted({type(m).__name__ for m in model.modules() if isinstance(m, NOT_VMAPPABLE)
                  or (isinstance(m, nn.modules.dropout._DropoutNd) and type(m) not in PACKED_DROPOUTS)})
    if bad:
        return f"architecture has {', '.join(bad)} layers (randomness/running statistics not per run under vmap)"
    return None


# ----- noise: recorded once per batch shape, then drawn per run and fed into the vmapped loss ---------
class _Recorder(NoiseSource):
    """Draws as the default source does, noting each draw's kind, shape, dtype and parameter."""

    def __init__(self):
        self.draws: List[Tuple] = []

    def randn_like(self, t):
        self.draws.append(("randn", tuple(t.shape), t.dtype, None))
        return super().randn_like(t)

    def randint(self, high, size, device=None):
        self.draws.append(("randint", tuple(size), torch.long, int(high)))
        return super().randint(high, size, device)

    def exponential_like(self, t):
        self.draws.append(("exponential", tuple(t.shape), t.dtype, None))
        return super().exponential_like(t)

    def bernoulli(self, shape, p, dtype, device):
        self.draws.append(("bernoulli", tuple(shape), dtype, float(p)))
        return super().bernoulli(shape, p, dtype, device)


class _Replay(NoiseSource):
    def __init__(self, noise: Sequence[torch.Tensor]):
        self.noise, self.i = list(noise), 0

    def _next(self, shape) -> torch.Tensor:
        if self.i >= len(self.noise):
            raise MMBenchError("packed loss drew more random numbers than recorded (its draws are not fixed by "
                               "the batch shape); train these runs with --pack 1")
        n = self.noise[self.i]
        self.i += 1
        if tuple(n.shape) != tuple(shape):
            raise MMBenchError(f"packed loss drew noise of shape {tuple(shape)} where {tuple(n.shape)} was "
                               f"recorded; train these runs with --pack 1")
        return n

    def randn_like(self, t):
        return self._next(t.shape).to(t.dtype)

    def randint(self, high, size, device=None):
        return self._next(size)

    def exponential_like(self, t):
        return self._next(t.shape).to(t.dtype)

    def bernoulli(self, shape, p, dtype, device):
        return self._next(shape).to(dtype)


def draw(draws: Sequence[Tuple], gens: Sequence[torch.Generator], device) -> List[torch.Tensor]:
    """Every recorded draw for every run from its own generator, stacked on the run axis. On the meta device
    (shapes only: mmbench/bench.py counts a step's operations there) empty tensors of those shapes."""
    if torch.device(device).type == "meta":
        return [torch.empty(len(gens), *shape, dtype=dtype, device=device) for _, shape, dtype, _ in draws]
    out = []
    for kind, shape, dtype, high in draws:
        if kind == "randn":
            per = [torch.randn(shape, generator=g, device=device, dtype=dtype) for g in gens]
        elif kind == "exponential":
            per = [torch.empty(shape, device=device, dtype=dtype).exponential_(generator=g) for g in gens]
        elif kind == "bernoulli":  # `high`: the probability of a 1
            per = [torch.empty(shape, device=device, dtype=dtype).bernoulli_(high, generator=g) for g in gens]
        else:
            per = [torch.randint(0, high, shape, generator=g, device=device) for g in gens]
        out.append(torch.stack(per))
    return out


class _LossOf(nn.Module):
    """functional_call calls forward; this forward is the method's loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.loss(x)


class _CountStepOf(nn.Module):
    """functional_call calls forward; this forward counts a training step (MultimodalVAE.count_step)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, rows: int) -> None:
        _hook(self.model, "count_step", rows)


def _hook(model: nn.Module, name: str, *args):
    """MultimodalVAE's hook `name` (count_step, host_step, noise_key) of a StackedModel's model; None for a module
    without it (the tests' toy losses)."""
    fn = getattr(model, name, None)
    return fn(*args) if fn is not None else None


def _as_tensors(logs: Dict[str, Any], like: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The logs as float64 device tensors, as a run alone sums them (train.py: a tensor's value in float64, a Python
    number as itself; float32 here rounded e.g. MM-VAMP's float64 α at 1e-8 in a packed run's history only); a
    Python number is filled in on the device (torch.full: the number is a kernel argument), not copied from a host
    tensor (a blocking copy: on a GPU the host would wait every step)."""
    return {k: (v.detach().double() if torch.is_tensor(v)
                else torch.full((), float(v), dtype=torch.float64, device=like.device)) for k, v in logs.items()}


def vectorised_on(device) -> bool:
    """Whether a pack's loss is vmapped over its runs (one batched kernel per layer) or looped run by run over
    views of the stacked parameters. vmap turns each convolution into a grouped one, which oneDNN runs slower
    on a CPU than R separate ones (`mmbench bench steps --pack 3` at batch 256, latent 512 on 2 cores: MoPoE
    0.68× the unpacked run-steps/s), so a CPU loops; MMBENCH_PACK_MODE=vmap|loop overrides (the tests run both)."""
    return (kernels.choice("MMBENCH_PACK_MODE") or kernels.default_pack_mode(torch.device(device).type)) == "vmap"


def vmaps_at(precision: str) -> bool:
    """Whether a pack that vmaps (vectorised_on) does so at this precision. bf16 loops: under vmap, autocast misses
    the operations a batching rule rewrites (a convolution becomes a grouped one below autocast's conv2d, so it runs
    in fp32; a Linear with a weight shared by the runs likewise), so a vmapped bf16 pack would not compute what its
    runs compute alone (tests/test_pack.py)."""
    return precision == "fp32"


class StackedModel:
    """R models of one architecture as stacked parameters, with one loss over all runs (vmapped on a GPU in
    fp32, looped over parameter views on a CPU and in bf16: `vectorised_for`) and one Adam."""

    def __init__(self, template: nn.Module, states: Sequence[Dict[str, torch.Tensor]],
                 opt_states: Sequence[Optional[Dict]], lr: float, device, betas: Optional[Sequence[float]] = None):
        self.template = _LossOf(template).to(device)
        self.dropouts = _swap_dropouts(self.template)  # each run's dropout masks from its own generator
        # each run's β where any is not the template's (a β sweep, or what is left of one after a run left the pack:
        # _shrink): the looped loss gives run r the Python float its run alone reads, the vmapped one a 0-dim float64
        # tensor (a weight derived from β, β² or β·M, is computed in double as alone, then meets fp32 as alone);
        # None: every run reads the template's own
        own_beta = float(getattr(template, "beta", math.nan))
        self.betas = ([float(b) for b in betas] if betas is not None and any(float(b) != own_beta for b in betas)
                      else None)
        self.extra = (torch.tensor(self.betas, dtype=torch.float64, device=device),) if self.betas else ()
        self.device = device
        pnames = [n for n, _ in template.named_parameters()]
        bnames = [n for n, _ in template.named_buffers()]
        self.pnames, self.bnames = pnames, bnames
        self.params = {f"model.{n}": torch.stack([s[n].to(device) for s in states]).requires_grad_(True)
                       for n in pnames}
        own = dict(template.named_buffers())  # non-persistent buffers are not in a state_dict: the template's
        self.buffers = {f"model.{n}": torch.stack([s.get(n, own[n]).to(device) for s in states]) for n in bnames}
        self.opt = train_mod.new_adam(list(self.params.values()), lr)
        started = [o is not None and bool(o["state"]) for o in opt_states]
        if all(started):
            train_mod.load_adam_state(self.opt, _stack_opt(opt_states))
        elif any(started):
            raise MMBenchError("a pack mixes runs whose optimiser has stepped with runs whose has not; "
                               "pack only runs resumed at the same epoch")
        self._draws: Dict[Tuple, List[Tuple]] = {}
        # the template the vmapped loss calls: MMBENCH_PACK_CONV=bmm swaps its convolutions for batched matmuls
        # (mmbench/packconv.py); the looped loss and each run's loss alone keep PyTorch's
        self.conv = packconv.conv_mode()
        self.vtemplate, self.matmul_convs = (packconv.matmul_convs(self.template) if self.conv == "bmm"
                                             else (self.template, 0))
        self._replay = torch.func.vmap(self.vmapped_fn(), in_dims=self.in_dims(0), randomness="error")
        self._replay_shared_x = torch.func.vmap(self.vmapped_fn(), in_dims=self.in_dims(None), randomness="error")
        self.vectorised = vectorised_on(device)

    def compile(self, captured_replay: Optional[Callable] = None) -> None:
        """Capture the packed training loss: `captured_replay` (train.captured of it), or torch.compile mode
        "reduce-overhead" (CUDA graphs; GPU only)."""
        self._eager = self._replay
        self._replay = captured_replay or torch.compile(self._replay, mode="reduce-overhead")

    def step_taken(self, rows: int) -> None:
        """A packed training step of `rows` tuples per run is done, its update too (MultimodalVAE.step_taken for a
        pack): every run's step counters advance (MultimodalVAE.count_step, in place on the stacked buffers swapped
        in), then the template's host-side count (host_step)."""
        torch.func.functional_call(_CountStepOf(self.template.model), self.buffers, (rows,))
        self.host_step()

    def host_step(self) -> None:
        """The template's host-side count advances (MultimodalVAE.host_step), the vmapped copy's too
        (MMBENCH_PACK_CONV=bmm)."""
        _hook(self.template.model, "host_step")
        if self.vtemplate is not self.template:
            _hook(self.vtemplate.model, "host_step")

    @property
    def captured(self) -> bool:
        return hasattr(self, "_eager")

    def uncompile(self) -> None:
        if self.captured:
            self._replay = self._eager
            del self._eager

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def set_training(self, on: bool) -> None:
        """train() or eval() the template and the vmapped template (a copy under MMBENCH_PACK_CONV=bmm)."""
        self.template.train(on)
        self.vtemplate.train(on)

    def vmapped_fn(self):
        """One run's loss as the vmapped pack computes it (from the noise given, and the run's β where the pack's
        runs differ in it: the argument after the noise, `extra`)."""
        return self._fn("replay", self.vtemplate)

    def in_dims(self, x_dim: Optional[int]) -> Tuple:
        """vmap's in_dims for (params, buffers, x, noise, *extra): the batch x stacked per run (0) or shared (None)."""
        return (0, 0, x_dim, 0) + (0,) * len(self.extra)

    def beta(self, r: int) -> Optional[float]:
        """Run r's β where the pack's runs differ in it (else None: every run reads the template's own)."""
        return None if self.betas is None else self.betas[r]

    def _fn(self, noise_mode, template: Optional[nn.Module] = None):
        template = self.template if template is None else template

        def f(params, buffers, x, noise, beta=None):
            source = _Recorder() if noise_mode == "record" else _Replay(noise)
            with use_noise(source), packed(), (use_beta(beta) if beta is not None else contextlib.nullcontext()):
                loss, logs = torch.func.functional_call(template, (params, buffers), (x,))
            if noise_mode == "record":
                self._recorded = source.draws
            return loss, _as_tensors(logs, loss)
        return f

    def draws_for(self, x, x_dim, training: bool, precision: str = "fp32") -> List[Tuple]:
        """The loss's random draws for this batch shape (one run's shapes and dtypes), recorded once by a throwaway
        forward of the first run as it runs alone, in the loss's precision: under bf16 autocast a draw shaped like
        a bf16 activation is drawn in bf16, as alone (a CPU's bf16 normals are not always its fp32 ones rounded)."""
        key = (tuple((k, tuple(v.shape)) for k, v in sorted(x.items())), x_dim, training, precision,
               _hook(self.template.model, "noise_key"))  # e.g. SMVAE's stage: stage 2 draws in more networks
        if key not in self._draws:
            first = {k: v[0] for k, v in self.params.items()}
            with torch.no_grad(), autocast(precision, self.device):
                self._fn("record")(first, {k: v[0] for k, v in self.fresh_buffers().items()},
                                   {k: v[0] for k, v in x.items()} if x_dim == 0 else x, [], self.beta(0))
            self._draws[key] = self._recorded
        return self._draws[key]

    def vectorised_for(self, precision: str) -> bool:
        """Whether the loss is vmapped at this precision (`vmaps_at`)."""
        return self.vectorised and vmaps_at(precision)

    def loss(self, x, gens, x_dim: Optional[int] = 0, precision: str = "fp32"):
        """Per-run losses (R) and logs (each R), every run drawing its noise from its own generator."""
        noise = draw(self.draws_for(x, x_dim, self.template.training, precision), gens, self.device)
        with autocast(precision, self.device):
            if not self.vectorised_for(precision):
                return self._looped(x, x_dim, noise)
            f = self._replay if x_dim == 0 else self._replay_shared_x
            return f(self.params, self.buffers, x, noise, *self.extra)

    def loss_backward(self, x, gens, precision: str = "fp32"):
        """A training step's per-run losses and logs (x stacked per run) and the gradients of their sum in the stacked
        parameters' `.grad` (cleared before). Vmapped, as `loss` then one backward. Looped, run by run: each run's loss
        from detached views of its parameters and its backward before the next run's loss, its gradients copied into
        its slice of the stacked ones. The runs share no operation, so these are the bits of the summed loss's
        backward in fp32 (tests/test_pack.py); but only one run's activations are held at a time (summed first, a
        looped pack of R held R runs': about 3.6 GB each for MM-VAMP's translated-PolyMNIST ResNets at batch 256 on a
        CPU, 22 GB for a pack of 12). Under bf16 autocast a weight a run's loss uses twice is cast once, its uses'
        gradients summed in bf16, as in the run trained alone (the parameters are leaves there too; through the
        summed backward's unbound views each use was cast apart and summed in fp32)."""
        if self.vectorised_for(precision):
            losses, logs = self.loss(x, gens, 0, precision)
            losses.sum().backward()
            return losses, logs
        noise = draw(self.draws_for(x, 0, self.template.training, precision), gens, self.device)
        fn = self._fn("replay")
        grads: Dict[str, torch.Tensor] = {}
        losses, logs = [], []
        for r in range(self.size):
            own = {k: v[r].detach().requires_grad_(v.requires_grad) for k, v in self.params.items()}
            with autocast(precision, self.device):
                loss, log = fn(own, {k: v[r] for k, v in self.buffers.items()}, {k: v[r] for k, v in x.items()},
                               [n[r] for n in noise], self.beta(r))
            loss.backward()
            for k, p in own.items():
                if p.grad is not None:  # a parameter no run's loss reaches keeps no gradient, as summed (Adam skips it)
                    if k not in grads:  # (not setdefault: its default would be made, and zeroed, every time)
                        grads[k] = torch.zeros_like(self.params[k])
                    grads[k][r] = p.grad
            losses.append(loss.detach())
            logs.append({k: v.detach() for k, v in log.items()})
        for k, g in grads.items():
            self.params[k].grad = g
        return torch.stack(losses), {k: torch.stack([lg[k] for lg in logs]) for k in logs[0]}

    def _looped(self, x, x_dim, noise, buffers: Optional[Dict[str, torch.Tensor]] = None):
        """The vmapped loss's result computed run by run: views of the stacked tensors (unbind: the backward
        is one stack per parameter), each run's batch and noise, the losses and logs stacked. `buffers`: the
        stacked buffers to use (default the pack's own, which a loss may update in place)."""
        fn = self._fn("replay")
        params = {k: v.unbind(0) for k, v in self.params.items()}
        buffers = {k: v.unbind(0) for k, v in (self.buffers if buffers is None else buffers).items()}
        out = [fn({k: v[r] for k, v in params.items()}, {k: v[r] for k, v in buffers.items()},
                  {k: v[r] for k, v in x.items()} if x_dim == 0 else x, [n[r] for n in noise], self.beta(r))
               for r in range(self.size)]
        return (torch.stack([o[0] for o in out]),
                {k: torch.stack([o[1][k] for o in out]) for k in out[0][1]})

    def fresh_buffers(self) -> Dict[str, torch.Tensor]:
        """Copies of the stacked buffers, for a loss computed outside training (recording the draws, the trial):
        a loss that updates buffers in place (BatchNorm's statistics) then leaves the runs' own untouched."""
        return {k: v.clone() for k, v in self.buffers.items()}

    def unpacked_loss(self, r: int, x_r, noise_r, buffers: Optional[Dict[str, torch.Tensor]] = None):
        """Run r's loss computed alone (no vmap), from given noise: the reference of the packability trial.
        `buffers`: the stacked buffers to read run r's from (default the pack's own)."""
        params = {k: v[r] for k, v in self.params.items()}
        buffers = {k: v[r] for k, v in (self.buffers if buffers is None else buffers).items()}
        with use_noise(_Replay(noise_r)), packed(), use_beta(self.beta(r)) if self.betas else contextlib.nullcontext():
            loss, _ = torch.func.functional_call(self.template, (params, buffers), (x_r,))
        return loss

    def run_bytes(self) -> int:
        """Bytes of one run's copy (`state`): its weights, buffers and Adam moments."""
        per = sum(v[0].numel() * v.element_size() for v in [*self.params.values(), *self.buffers.values()])
        return per + sum(v[0].numel() * v.element_size() for st in self.opt.state.values() for v in st.values()
                         if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == self.size)

    def state(self, r: int) -> Tuple[Dict[str, torch.Tensor], Dict]:
        """Run r's model state_dict and Adam state_dict, in the unpacked trainer's format."""
        sd = {}
        for n, _ in self.template.model.state_dict(keep_vars=True).items():
            src = self.params.get(f"model.{n}", self.buffers.get(f"model.{n}"))
            sd[n] = src[r].detach().clone()
        packed = self.opt.state_dict()
        st = {i: {k: (v[r].clone() if k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") else v.clone())
                  for k, v in s.items()} for i, s in packed["state"].items()}
        return sd, {"state": st, "param_groups": copy.deepcopy(packed["param_groups"])}


def _stack_opt(opt_states: Sequence[Dict]) -> Dict:
    first = opt_states[0]
    state = {}
    for i, s in first["state"].items():
        state[i] = {k: (torch.stack([o["state"][i][k] for o in opt_states])
                        if k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") else v) for k, v in s.items()}
    return {"state": state, "param_groups": copy.deepcopy(first["param_groups"])}


# ----- training ------------------------------------------------------------------------------------------
class _Member:
    def __init__(self, run: Run, device):
        self.run, self.cfg = run, run.cfg
        torch.manual_seed(self.cfg.seed)
        model = build_model(self.cfg)  # the run's initialisation, exactly as train.train draws it
        cpu_state = torch.get_rng_state()  # the global stream an unpacked run's noise continues from
        self.model_state = model.state_dict()
        self.opt_state = None
        self.state = {"epoch": 0, "history": [], "best_test_loss": math.inf}
        self.gen = torch.Generator(device=device)
        if torch.device(device).type == "cpu":
            self.gen.set_state(cpu_state)
        else:
            self.gen.manual_seed(self.cfg.seed)
        self.cpu_rng = cpu_state
        train_mod.clear_killed_writes(run)
        last = run.ckpt_dir / "last.pt"
        if last.exists() or last.is_symlink():  # a link to nowhere: read_checkpoint names it
            ck = train_mod.read_checkpoint(last, run=run)
            self.model_state, self.opt_state, self.state = ck["model"], ck["optimizer"], ck["state"]
            self.cpu_rng = ck["rng"]
            if torch.device(device).type == "cpu":
                self.gen.set_state(ck["rng"])
            elif "rng_device" in ck:
                self.gen.set_state(ck["rng_device"])
            run.log(f"{train_mod.resumed_from(last, self.state)} (packed)")
            train_mod.adopt_later_best(run, self.state)
        self.error: Optional[str] = None
        self.writer = None  # train.tensorboard's writer, opened once the run trains packed (_train_group)

    def rng_state(self) -> Dict[str, torch.Tensor]:
        if self.gen.device.type == "cpu":
            return {"rng": self.gen.get_state()}
        return {"rng": self.cpu_rng, "rng_device": self.gen.get_state()}

    def save_last(self, model_sd: Dict, opt_sd: Dict) -> None:
        """last.pt in the unpacked trainer's format: weights, Adam, training state, random stream."""
        train_mod.CHECKPOINTS.save(self.run.ckpt_dir / "last.pt", {"model": model_sd, "optimizer": opt_sd,
                                                                   "state": self.state, **self.rng_state(),
                                                                   "run_id": self.run.id}, owned=True)


def _split_batch(split: DataSplit, idx: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Rows idx (any shape, on the data's device) of every modality, as floats shaped idx.shape + a row's float shape
    (a text row's is one-hot: one more dimension than its stored character indices)."""
    out = {}
    for m in split.modalities:
        rows = to_float(m, split.rows(m.name, idx.reshape(-1)))
        out[m.name] = rows.reshape(*idx.shape, *rows.shape[1:])
    return out


def trial(sm: StackedModel, x: Dict[str, torch.Tensor], gens: Sequence[torch.Generator]) -> Optional[str]:
    """Check on one batch that each run's packed loss equals its loss computed alone (same noise);
    returns why not, or None. The runs' generators are not advanced."""
    copies = []
    for g in gens:
        c = torch.Generator(device=g.device)
        c.set_state(g.get_state())
        copies.append(c)
    try:
        with torch.no_grad():
            draws = sm.draws_for(x, 0, sm.template.training)
            noise = draw(draws, copies, sm.device)
            if sm.vectorised:  # vmapped, as fp32 training computes it (a draw bypassing the noise source fails here)
                packed, _ = torch.func.vmap(sm.vmapped_fn(), in_dims=sm.in_dims(0), randomness="error")(
                    sm.params, sm.fresh_buffers(), x, noise, *sm.extra)
            else:  # looped: a draw bypassing the source moves the global streams (and takes other numbers than alone)
                streams = train_mod.rng_states(sm.device)
                packed, _ = sm._looped(x, 0, noise, sm.fresh_buffers())
                if any(a is not None and not torch.equal(a, b) for a, b in zip(streams, train_mod.rng_states(sm.device))):
                    return ("the packed loss draws random numbers outside the noise source (methods/base.py randn_like, "
                            "randint, exponential_like): every run would take them from one shared stream")
            before = sm.fresh_buffers()  # each run's buffers as training will start from them
            alone = torch.stack([sm.unpacked_loss(r, {k: v[r] for k, v in x.items()}, [n[r] for n in noise], before)
                                 for r in range(sm.size)])
    except Exception as e:  # any failure to batch the loss means: train unpacked
        if out_of_memory(e):  # but a pack too large for the device is split (_train_or_split), not unpacked
            raise
        how = "under vmap" if sm.vectorised else "looped over the runs"
        return f"the packed loss fails {how} ({brief(e, 200)})"
    if not torch.allclose(packed, alone, rtol=1e-4, atol=1e-4):
        return f"the packed loss differs from the runs' own losses ({packed.tolist()} vs {alone.tolist()})"
    return None


@train_mod.keeps_matmul_precision
@train_mod.settles_checkpoints
def train_pack(runs: Sequence[Run], data_root: Optional[Path] = None, progress: Optional[ProgressFn] = None,
               stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
    """Train (or resume) runs of one pack key together; returns {run id: summary dict or error string}.

    Runs whose method/architecture cannot be packed, or whose pack fails the trial, train unpacked
    (mmbench/train.py), with the reason in their logs. `stop_after_epoch` simulates an interruption.
    """
    from .train import train as train_alone

    progress = progress or (lambda *a: None)
    keys = {pack_key(r.cfg) for r in runs}
    if len(keys) != 1:
        raise MMBenchError("train_pack: the runs differ in more than their seed and β; pack only runs of one experiment")
    results: Dict[str, Any] = {}

    def alone(rs, reason):
        for r in rs:
            if len(rs) > 1 or reason:
                r.log(f"training unpacked: {reason}")
            try:
                results[r.id] = train_alone(r, data_root, progress, stop_after_epoch=stop_after_epoch)
            except TrainingInterrupted:  # a stop request ends the whole pack: every run resumes on re-run
                raise
            except MMBenchError as e:
                r.log(f"error: {e}")
                results[r.id] = str(e)
            except Exception as e:  # e.g. a run alone out of memory: its own error, not a pack's to split on
                with contextlib.suppress(AttributeError):
                    e.trained_alone = True  # (_train_or_split)
                raise

    reason = unpackable_reason(runs[0].cfg)
    if reason or len(runs) == 1:
        alone(list(runs), reason)
        return results
    device = device_of()
    members = []
    for r in runs:
        try:
            members.append(_Member(r, device))
        except MMBenchError as e:  # an unreadable checkpoint: this run fails, saying why; the others train
            r.log(f"error: {e}")
            results[r.id] = str(e)
    layout = _layout(runs[0].cfg)  # the tensors a pack stacks: a checkpoint in another layout resumes unpacked
    odd = [m for m in members if {k: tuple(v.shape) for k, v in m.model_state.items()} != layout]
    members = [m for m in members if m not in odd]
    by_point: Dict[Tuple[int, int], List[_Member]] = {}  # runs resumed at the same epoch and step train together
    for m in odd:
        alone([m.run], "its checkpoint holds the weights in another layout (an earlier version's); resumed unpacked")
    for m in members:
        by_point.setdefault((m.state["epoch"], m.state.get("step", 0)), []).append(m)
    for _, group in sorted(by_point.items()):
        if len(group) == 1:
            alone([group[0].run], "")
            continue
        results.update(_train_or_split(group, data_root, progress, stop_after_epoch, alone))
    return results


def _train_or_split(members: List[_Member], data_root, progress, stop_after_epoch, alone) -> Dict[str, Any]:
    """_train_group; a pack that runs out of device memory is split in two halves, each resumed from its runs'
    checkpoints (or started again where a run has none) as a pack of its own (train_pack), down to runs alone. A run
    that diverged in the failed pack keeps its error; a run trained alone that runs out of memory fails as before."""
    device = device_of()
    try:
        results = _train_group(members, data_root, progress, stop_after_epoch, alone)
        release_device_memory(device)  # a GPU's: the pack's stacked model (a reference cycle), before the next's
        return results
    except Exception as e:  # noqa: BLE001 - only a pack running out of memory is handled here
        if not out_of_memory(e) or getattr(e, "trained_alone", False):
            raise
        why = brief(e, 160)
    # Out of the except clause: its traceback held the failed pack's tensors.
    size = len(members)
    results = {m.run.id: m.error for m in members if m.error}  # diverged before the error: it left the pack then
    for m in members:
        if m.writer is not None:
            m.writer.close()
        m.model_state = m.opt_state = None  # host copies a pack not yet stacked held; the halves read checkpoints
    members = [m for m in members if not m.error]
    # a captured step's CUDA graphs hold their memory pool until reset (the halves compile anew anyway: other shapes)
    release_device_memory(device, compiled=kernels.choice("MMBENCH_COMPILE") == "1", on_cpu_too=True)
    train_mod.CHECKPOINTS.wait()  # the checkpoints the halves resume from, on disk
    half = (len(members) + 1) // 2
    for part in (members[:half], members[half:]):
        for m in part:
            m.run.log(f"the pack of {size} ran out of device memory ({why}); split in two: "
                      f"this run resumes from its last checkpoint (or its start) in a pack of {len(part)}")
        results.update(train_pack([m.run for m in part], data_root, progress, stop_after_epoch))
        release_device_memory(device, on_cpu_too=True)  # the first half's pack, before the second half stacks
    return results


def _built_without_data(cfg: RunConfig) -> nn.Module:
    """The run's model for its structure only: on the meta device where it can be (no memory, no initialisation),
    else built for real; either way the global random stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return build_model(cfg)
        except Exception:  # noqa: BLE001 - a constructor that needs real tensors: build it for real
            return build_model(cfg)


def _layout(cfg: RunConfig) -> Dict[str, Tuple[int, ...]]:
    """The shape of every tensor of the model's state."""
    return {k: tuple(v.shape) for k, v in _built_without_data(cfg).state_dict().items()}


def _train_group(members: List[_Member], data_root, progress, stop_after_epoch, alone) -> Dict[str, Any]:
    cfg = members[0].cfg
    device = device_of()
    train_split, test_split = load_data(cfg, data_root)
    if train_split.redraw:
        alone([m.run for m in members], f"the dataset redraws {', '.join(train_split.redraw)} per batch")
        return {}
    data = train_mod.data_identity(cfg, data_root)
    other = []
    for m in members:
        try:
            train_mod.check_data(m.state, data, m.run.ckpt_dir / "last.pt")
        except MMBenchError:
            other.append(m.run.id)
    if other:  # each alone, where train.train names the copy it was trained on
        alone([m.run for m in members], f"run(s) {', '.join(other)} were trained on another prepared copy of the data")
        return {}
    E, B = cfg.train.epochs, cfg.train.batch_size
    loss_split = test_split.subset(cfg.train.max_test, seed=cfg.data_seed + 1).to(device)
    train_split = train_split.to(device)
    n_batches = max(len(train_split) // B, 1)
    if members[0].state.get("step", 0) >= n_batches:  # grouped by (epoch, step): every run's checkpoint is another's
        failed = {}
        for m in members:
            try:
                train_mod.check_plan(m.state, cfg, m.run.ckpt_dir / "last.pt", n_batches)
            except MMBenchError as e:
                m.run.log(f"error: {e}")
                failed[m.run.id] = str(e)
        return failed
    torch.manual_seed(cfg.seed)
    template = build_model(cfg).to(device)
    host_states = {repr(template.host_state(m.model_state)) for m in members}
    if len(host_states) > 1:  # e.g. step counts that differ at one resume point (a step once counted twice)
        alone([m.run for m in members], f"their host-side training states differ ({', '.join(sorted(host_states))})")
        return {}
    # Host-side state the runs share (a step count a schedule reads: SMVAE two_stage) from their common resume point,
    # and the run's length, as train.train plans it; the loss reads each run's own parameters and buffers (not strict:
    # an older checkpoint may lack a buffer added since, which StackedModel takes from the template).
    template.load_state_dict(members[0].model_state, strict=False)
    if hasattr(template, "plan_steps"):
        template.plan_steps(E * n_batches)
    template.train()
    sm = StackedModel(template, [m.model_state for m in members], [m.opt_state for m in members],
                      cfg.train.lr, device, betas=[m.cfg.method.beta for m in members])
    for m in members:  # stacked now: each run's own copy would be held for nothing (a pack of ResNets: 0.75 GB a run)
        m.model_state = m.opt_state = None
    first = members[0].state["epoch"]
    # A mid-epoch checkpoint holds each run's next step of that epoch and the running sums of its logs.
    first_step = [m.state.pop("step", 0) for m in members][0]  # train_pack grouped them by (epoch, step)
    saved_sums = [m.state.pop("sums", {}) for m in members]
    sums: Dict[str, torch.Tensor] = {
        k: torch.stack([torch.as_tensor(s[k], dtype=torch.float64) for s in saved_sums]).to(device)
        for k in saved_sums[0]} if first_step else {}
    every_s = cfg.train.checkpoint_minutes * 60 if cfg.train.checkpoint_minutes else None
    saved_at = time.monotonic()

    def perms(ms, epoch):
        return torch.stack([torch.randperm(len(train_split), generator=torch.Generator().manual_seed(
            m.cfg.seed * 100_003 + epoch)) for m in ms]).to(device)

    notes = train_mod.setup_notes(cfg.train.precision, device)  # before the trial: it checks the kernels that train
    why = trial(sm, _split_batch(train_split, perms(members, first)[:, :B]), [m.gen for m in members])
    if why:
        sm = None  # the refused pack's stacked weights, not held while its runs train alone
        release_device_memory(device, on_cpu_too=True)
        alone([m.run for m in members], why)
        return {}
    replay = train_mod.captured(sm._replay, device)  # `mmbench run --compile`, as unpacked runs decide it
    if replay is not None and not sm.vectorised_for(cfg.train.precision):
        for m in members:  # only the vmapped loss is captured
            m.run.log(f"a {cfg.train.precision} pack loops over its runs; its step is not captured (--compile)")
        replay = None
    capture = replay is not None
    if capture:
        sm.compile(replay)
    matmul_convs = sm.matmul_convs if sm.vectorised_for(cfg.train.precision) else 0  # MMBENCH_PACK_CONV=bmm at work
    if first < E:  # the code and kernels that train what is left, as train.train records them
        here = kernels.effective(torch.device(device).type, pack_mode_applies=vmaps_at(cfg.train.precision),
                                 captured=capture, matmul_convs=bool(matmul_convs))
        for m in members:
            train_mod.note_code(m.state, here, step=first_step)
    ids = ", ".join(m.run.id for m in members)
    for m in members:
        m.run.log(f"packed with {len(members) - 1} other run(s) on {device}: {ids}")
        if capture:  # as the unpacked trainer says it (train.py); a compiler failure is logged too
            m.run.log(f"packed training step captured with torch.compile on {device} (mmbench run --compile)")
        for line in notes:
            m.run.log(line)
        if matmul_convs:
            m.run.log(f"the pack's {matmul_convs} convolutions computed as batched matmuls (MMBENCH_PACK_CONV=bmm)")
        m.writer = train_mod.tensorboard_writer(m.run)  # train.tensorboard, as the unpacked trainer writes it
    results: Dict[str, Any] = {}
    t0 = time.monotonic()
    live = list(members)
    speed = train_mod.Throughput()
    held_buffers: List[torch.Tensor] = []  # the stacked buffers before a captured step, in case it fails
    for epoch in range(first, E):
        speed.start()
        P = perms(live, epoch)
        if epoch > first:
            sums = {}
        finite = torch.ones(len(live), dtype=torch.bool, device=device)
        for b in range(first_step if epoch == first else 0, n_batches):
            idx = P[:, b * B:(b + 1) * B]  # R×B (fewer rows where the split is smaller than B)
            x = _split_batch(train_split, idx)
            if sm.captured:  # if torch.compile fails (a first capture or a recompile), go on uncaptured, saying so
                states = [m.gen.get_state() for m in live]
                train_mod.copy_into(held_buffers, list(sm.buffers.values()))
                try:
                    losses, logs = sm.loss(x, [m.gen for m in live], 0, cfg.train.precision)
                except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                    if out_of_memory(e):  # not the compiler's: the pack splits, each half captured (_train_or_split)
                        raise
                    train_mod.copy_into(list(sm.buffers.values()), held_buffers)  # the statistics it moved
                    for m, st in zip(live, states):
                        m.gen.set_state(st)
                        m.run.log(f"torch.compile failed ({brief(e)}); training uncaptured")
                    sm.uncompile()
                    losses, logs = sm.loss(x, [m.gen for m in live], 0, cfg.train.precision)
                sm.opt.zero_grad(set_to_none=True)
                losses.sum().backward()
            else:  # uncaptured: vmapped, or looped (a CPU's way) holding one run's activations at a time
                sm.opt.zero_grad(set_to_none=True)
                losses, logs = sm.loss_backward(x, [m.gen for m in live], cfg.train.precision)
            finite &= torch.isfinite(losses.detach())
            sm.opt.step()
            sm.step_taken(idx.shape[1])  # once per packed step, after the update, as train.train counts a run
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double()
            progress(f"train epoch {epoch + 1}/{E} (pack of {len(live)})", epoch * n_batches + b + 1, E * n_batches)
            due = every_s is not None and time.monotonic() - saved_at >= every_s
            if (train_mod.stop_requested() is not None or due) and b + 1 < n_batches:
                ok = finite.tolist()
                train_mod.CHECKPOINTS.wait()
                for r, m in enumerate(live):
                    if not ok[r]:  # a diverged model is never checkpointed; it leaves the pack at the epoch's end
                        continue
                    m.state.update(step=b + 1, sums={k: v[r].clone() for k, v in sums.items()})
                    train_mod.CHECKPOINTS.make_room(sm.run_bytes())  # bounded, as at an epoch's end
                    m.save_last(*sm.state(r))
                    del m.state["step"], m.state["sums"]
                saved_at = time.monotonic()
                if train_mod.stop_requested() is not None:
                    _stopped(live, f"at epoch {epoch + 1}, step {b + 1} of {n_batches}", ok)
        ok = finite.tolist()  # the epoch's one read-back
        speed.stop((n_batches - (first_step if epoch == first else 0)) * B * len(live))
        tl = _test_losses(sm, loss_split, B, [m.cfg.seed for m in live], device, cfg.train.precision)
        ok = [o and math.isfinite(t) for o, t in zip(ok, tl)]  # a last step may leave non-finite weights
        means = {k: (v / n_batches).tolist() for k, v in sums.items()}
        keep = []
        stop = train_mod.stop_requested() is not None  # read once: every run saves for a stop, or none stops
        train_mod.CHECKPOINTS.wait()  # the previous epoch's files (written while this epoch trained)
        for r, m in enumerate(live):
            if not ok[r]:
                m.error = diverged(epoch)
                m.run.log(f"error: {m.error}")
                results[m.run.id] = m.error
                continue
            keep.append(r)
            record = {"epoch": epoch + 1, **{f"train_{k}": v[r] for k, v in means.items()}, "test_loss": tl[r]}
            m.state["history"].append(record)
            m.state["epoch"] = epoch + 1
            if m.writer is not None:
                for k, v in record.items():
                    if k != "epoch":
                        m.writer.add_scalar(k, v, epoch + 1)
                m.writer.flush()
            m.run.log(train_mod.epoch_line(record, speed, len(live)))
            train_mod.CHECKPOINTS.make_room(sm.run_bytes())  # the copies of earlier runs written first, past a bound
            model_sd, opt_sd = sm.state(r)
            if tl[r] < m.state["best_test_loss"]:
                m.state["best_test_loss"] = tl[r]
                train_mod.CHECKPOINTS.save(m.run.ckpt_dir / "best.pt", {"model": model_sd, "epoch": epoch + 1,
                                                                        "test_loss": tl[r], "run_id": m.run.id}, owned=True)
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == E or stop:
                m.save_last(model_sd, opt_sd)
                saved_at = time.monotonic()
        if len(keep) < len(live):
            live = [live[r] for r in keep]
            if not live:
                break
            captured_before = sm.captured  # a captured pack stays captured (a new capture: new shapes)
            sm = _shrink(sm, keep, template, cfg, device)
            release_device_memory(device, on_cpu_too=True)  # the larger pack just dropped (a reference cycle)
            if captured_before:  # its steps fall back to uncaptured if the compiler fails, as the pack's do
                sm.compile(train_mod.captured(sm._replay, device))
        if stop and epoch + 1 < E:
            _stopped(live, f"after epoch {epoch + 1}", [True] * len(live))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    for m in members:
        if m.writer is not None:
            m.writer.close()
    for m in live:
        atomic_json(m.run.dir / train_mod.HISTORY, m.state["history"])  # the report's training curves
        results[m.run.id] = {"epochs": m.state["epoch"], "train_seconds": time.monotonic() - t0,
                             "tuples_per_second": speed.rate(),  # the pack's: all its runs' tuples
                             "history": m.state["history"], "best_test_loss": m.state["best_test_loss"],
                             "packed_with": len(members), "trained_with": m.state.get("code", [])}
    return results


def _stopped(live: List[_Member], where: str, ok: List[bool]) -> None:
    """A stop was requested: every run of the pack has its checkpoint; say so in each log and end the pack."""
    why = train_mod.stop_requested()
    train_mod.clear_stop()
    train_mod.CHECKPOINTS.wait()  # stopped means checkpointed
    for r, m in enumerate(live):
        m.run.log(f"stopped ({why}) {where} (packed)" + ("; checkpoint " + str(m.run.ckpt_dir / "last.pt")
                                                        if ok[r] else "; diverged, not checkpointed"))
    raise TrainingInterrupted(f"pack of {len(live)} stopped ({why}) {where}; re-run the same command to resume "
                              f"every run of it from its checkpoint")


def _shrink(sm: StackedModel, keep: List[int], template, cfg, device) -> StackedModel:
    """The pack without the runs that left it (their slices of parameters and Adam state dropped)."""
    states = [sm.state(r) for r in keep]
    return StackedModel(template, [s[0] for s in states], [s[1] for s in states], cfg.train.lr, device,
                        betas=None if sm.betas is None else [sm.betas[r] for r in keep])


@torch.no_grad()
def _test_losses(sm: StackedModel, test: DataSplit, batch_size: int, seeds: Sequence[int], device,
                 precision: str) -> List[float]:
    """train.test_loss for every run of the pack: each run's noise from a generator seeded with its seed."""
    sm.set_training(False)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    total = torch.zeros(len(seeds), dtype=torch.float64, device=device)
    n = 0
    for start in range(0, len(test), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(test)), device=device)
        losses, _ = sm.loss(_split_batch(test, idx), gens, None, precision)
        total += losses.detach().double() * len(idx)
        n += len(idx)
    sm.set_training(True)
    return (total / max(n, 1)).tolist()


def execute_pack(runs: Sequence[Run], data_root: Optional[Path] = None,
                 progress: Optional[ProgressFn] = None, who: str = "worker") -> Dict[str, Optional[str]]:
    """The whole life of a pack: train the runs together, then evaluate each; {run id: None or error}.

    A run whose lock another process holds (a second `mmbench run` of the suite, local or on Slurm) is left
    out of the pack and waited for afterwards (evaluate.execute_when_free): it is then done, or resumed
    here. A stop request (train.TrainingInterrupted) propagates after every run of the pack checkpointed."""
    from contextlib import ExitStack

    from .evaluate import evaluate, execute_when_free, trained_provenance
    from .results import RunLockedError

    out: Dict[str, Optional[str]] = {}
    waiting: List[Run] = []

    def record(r: Run, work: Callable[[], Any]) -> None:  # a run's result: None, or its error (logged)
        try:
            work()
            out[r.id] = None
        except TrainingInterrupted:
            raise
        except MMBenchError as e:
            r.log(f"error: {e}")
            out[r.id] = str(e)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory in one run's evaluation: the pack's others go on
            import traceback

            r.log(f"error: {brief(e, 300)}\n{traceback.format_exc()}")
            out[r.id] = brief(e, 300)

    with ExitStack() as stack:
        mine = []
        for r in runs:
            try:
                stack.enter_context(r.lock())
                mine.append(r)
            except RunLockedError:
                r.log(f"{who}: run locked by another process; left out of the pack, waited for afterwards")
                waiting.append(r)
        status = {r.id: r.status() for r in mine}
        todo = [r for r in mine if status[r.id] not in ("done", "rescore")]
        waiting += [r for r in mine if status[r.id] == "rescore"]  # re-scored alone (evaluate.execute), no training
        for r in todo:
            r.init()
            r.log(f"run {r.id} on {device_of()} (pack of {len(todo)})")
        t0 = time.monotonic()
        try:
            summaries = train_pack(todo, data_root, progress) if todo else {}
        except TrainingInterrupted:
            raise
        except Exception as e:  # a pack-wide failure (e.g. a checkpoint write that failed): each run's log says it
            for r in todo:
                r.log(f"error: {e if isinstance(e, MMBenchError) else brief(e, 300)} (the pack's training stopped)")
            raise
        for r in todo:
            s = summaries.get(r.id)
            if not isinstance(s, dict):
                out[r.id] = s or "not trained"
                continue
            prov = trained_provenance({"packed_with": 1, **s}, t0)
            record(r, lambda r=r, prov=prov: (evaluate(r, data_root, progress, provenance=prov), r.log("done")))
    for r in waiting:
        record(r, lambda r=r: execute_when_free(r, data_root, progress, who=who))
    return out
