"""`mmbench bench steps`: training-step time of every method on PolyMNIST-shaped batches, or at a suite's step shapes.

Each measurement builds the method on M modalities of 3×28×28 with the PolyMNIST CNN, draws one
fixed random batch, runs warm-up steps, then times full optimiser steps (loss, backward, Adam
update) and reports the median. Used for the step-time table of docs/methods.md and for how the
cost grows with the number of modalities.

`pack_step_time` times a packed step of R runs (mmbench/pack.py: stacked parameters, vmapped loss, one
Adam; each run its own batch and noise) and reports run-steps per second, R / (seconds per packed step);
an unpacked step does 1 / (seconds per step).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .data.base import Modality
from .devices import release_device_memory
from .errors import MMBenchError, brief
from .methods.base import MethodConfig, trainer_counts
from .projection import KEY_COLUMNS, key_label, step_key
from .registry import METHODS


def _autocast(precision: str, dev):
    from .train import autocast

    return autocast(precision, dev)


MAX_SIZE = 2 ** 20  # the largest --batch-size and --latent-dim bench steps accepts
MAX_MODALITIES = 16  # and --modalities: 65,535 subsets


def check_counts(steps: int, batch_size: int, latent_dim: int, modalities: Sequence[int]) -> None:
    """Refuse a count `mmbench bench steps` cannot time with (--steps 0 would time nothing), naming its option."""
    for option, n in (("--steps", steps), ("--batch-size", batch_size), ("--latent-dim", latent_dim)):
        if n < 1:
            raise MMBenchError(f"{option} {n}: must be at least 1")
    for option, n in (("--batch-size", batch_size), ("--latent-dim", latent_dim)):  # torch's sizes overflow first
        if n > MAX_SIZE:
            raise MMBenchError(f"{option} {n}: at most {MAX_SIZE:,} (a tensor of that size fits no device)")
    if not modalities or min(modalities) < 1:
        raise MMBenchError(f"--modalities {','.join(map(str, modalities))}: numbers of modalities must be at least 1")
    if max(modalities) > MAX_MODALITIES:  # MoPoE's 2^M - 1 subsets: M = 30 would be a billion
        raise MMBenchError(f"--modalities {','.join(map(str, modalities))}: at most {MAX_MODALITIES} (the subset "
                           f"methods' 2^M - 1 subsets)")


def _timed(step: Callable[[], None], warmup: int, steps: int, dev: torch.device, params) -> Dict[str, float]:
    """Median, min and max seconds of `steps` calls of `step` after `warmup` (synchronised on a GPU)."""
    if steps < 1 or warmup < 0:
        raise MMBenchError(f"{steps} timed steps after {warmup} warm-up steps: time at least 1 step, after 0 or "
                           f"more warm-up steps")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":  # the step's peak from here: what is held (weights, Adam, batch) and its activations,
        release_device_memory(dev)  # not what earlier rows' models (reference cycles) left allocated
        torch.cuda.reset_peak_memory_stats(dev)
    times: List[float] = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
           "params_m": sum(p.numel() for p in params) / 1e6, "run_steps_per_s": 1.0 / statistics.median(times)}
    if dev.type == "cuda":  # GiB PyTorch's allocator held at most (not the CUDA context): whether a larger pack fits
        out["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


# ----- where a step's time goes (`mmbench bench steps --profile DIR`) ---------------------------------------
PROFILED_STEPS = 3


def busy_seconds(intervals: Iterable[Tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time a device ran at least one kernel (kernels that overlap,
    on several streams, count once)."""
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def kernel_seconds(events, steps: int) -> float:
    """Seconds per step during which the GPU ran a kernel (or a copy), from torch.profiler's events (their
    time_range in microseconds; the device's events are those of DeviceType.CUDA). The GPU copies of annotated
    ranges (Adam's `Optimizer.step`, a compiled graph's call) are device events too, spanning from their first
    kernel to their last with the gaps between: they are left out, as torch's own device totals leave them."""
    from torch.autograd import DeviceType

    kernels = [(e.time_range.start, e.time_range.end) for e in events
               if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    if not kernels:  # CUPTI gave no kernel trace: say so rather than report an idle device
        raise MMBenchError("--profile: torch.profiler recorded no GPU kernels (is CUPTI available to torch?); "
                           "time without --profile")
    return busy_seconds(kernels) / 1e6 / steps


def profile_step(step: Callable[[], None], dev: torch.device, steps: int = PROFILED_STEPS) -> Tuple[Optional[float], str]:
    """`steps` calls of a warm `step` under torch.profiler: (on a GPU, the seconds per step during which its
    kernels kept the device busy, else None; the operator table, the 30 operators and kernels with the most self
    time on the device (GPU) or on the host (CPU))."""
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    if not cuda:  # kineto's "gpuGetDeviceCount failed" on a machine without a GPU; on one its messages stay
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    kernel_s = kernel_seconds(prof.events(), steps) if cuda else None
    table = prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=30, max_name_column_width=100)
    return kernel_s, table


def _profiled(result: Dict[str, float], step: Callable[[], None], dev: torch.device, path: Optional[Path],
              what: str) -> Dict[str, float]:
    """`result` (a timing by _timed) with, when `path` is given, the step profiled into that file: kernel_ms (device
    busy milliseconds per step; GPU only) and kernel_share (that time over the timed median: well below 1, the device
    waits on the host -- launches, Python, synchronisation -- and packing or capture pay; near 1, the kernels
    themselves bound the step)."""
    if path is None:
        return result
    try:
        kernel_s, table = profile_step(step, dev)
    except Exception as e:  # noqa: BLE001 - a diagnostic: the timing measured above stands without it
        Path(path).write_text(f"{what}: timed median {result['median_s'] * 1e3:.2f} ms per step; profiling failed: "
                              f"{brief(e)}\n", encoding="utf-8")
        return {**result, "kernel_ms": float("nan"), "kernel_share": float("nan")}
    share = kernel_s / result["median_s"] if kernel_s is not None else None
    busy = (f"device busy {kernel_s * 1e3:.2f} ms per step (union of its kernels' intervals), "
            f"{share:.0%} of the timed median" if kernel_s is not None else "no device kernels (a CPU): host times only")
    Path(path).write_text(f"{what}: timed median {result['median_s'] * 1e3:.2f} ms per step; {busy}; "
                          f"profiled over {PROFILED_STEPS} steps after the timed ones (torch.profiler, "
                          f"torch {torch.__version__}).\n\n{table}\n", encoding="utf-8")
    return {**result, "kernel_ms": kernel_s * 1e3 if kernel_s is not None else float("nan"),
            "kernel_share": share if share is not None else float("nan")}


def _profile_file(profile: Optional[Path], name: str) -> Optional[Path]:
    return None if profile is None else Path(profile) / f"{name}.txt"


def _adam(params, dev: torch.device) -> torch.optim.Adam:
    """Adam as the trainers make it (train.new_adam: MMBENCH_ADAM); on meta, where op counts stand for a GPU's
    launches, the multi-tensor kernels a GPU gets by default (fused Adam has no meta kernel: with MMBENCH_ADAM=fused
    the counts keep foreach's ~10 operations per step where a GPU issues one)."""
    from .train import new_adam

    return torch.optim.Adam(params, lr=1e-4, foreach=True) if dev.type == "meta" else new_adam(params, 1e-4)


def method_step(method: str, n_modalities: int = 5, batch_size: int = 256, latent_dim: int = 512,
                architecture: str = "polymnist_cnn", seed: int = 0, device: str = "cpu", precision: str = "fp32",
                compile: bool = False) -> tuple:
    """(one training step of `method` as a function: loss, backward, Adam update; its parameters) on one fixed
    random PolyMNIST-shaped batch on `device`."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(n_modalities)]
    model = METHODS.get(method)(mods, MethodConfig(method, latent_dim=latent_dim, beta=1.0), architecture).to(dev)
    model.train()
    opt = _adam(model.parameters(), dev)
    g = torch.Generator().manual_seed(seed)
    x = {m.name: torch.rand(batch_size, 3, 28, 28, generator=g).to(dev) for m in mods}
    return _optimiser_step(model, opt, x, precision, dev, compile), list(model.parameters())


def _optimiser_step(model, opt, x: Dict[str, torch.Tensor], precision: str, dev: torch.device,
                    compile: bool) -> Callable[[], None]:
    """One training step of `model` on the batch `x` as a function: its loss (under autocast at `precision`;
    `compile`: captured with torch.compile mode reduce-overhead), backward, the optimiser's update, the step
    counted after it (as train.train counts)."""
    loss_fn = torch.compile(model.loss, mode="reduce-overhead") if compile else model.loss
    rows = next(iter(x.values())).shape[0]

    def step() -> None:
        with _autocast(precision, dev), trainer_counts():
            loss, _ = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.step_taken(rows)

    return step


def step_time(method: str, n_modalities: int = 5, batch_size: int = 256, latent_dim: int = 512, steps: int = 5,
              warmup: int = 1, architecture: str = "polymnist_cnn", seed: int = 0,
              device: str = "cpu", precision: str = "fp32", compile: bool = False,
              profile_to: Optional[Path] = None) -> Dict[str, float]:
    """Median seconds per training step (and the spread) of one method, on `device` (cpu or cuda).
    `compile`: the loss captured with torch.compile(mode="reduce-overhead") (CUDA graphs; GPU only); its first
    steps compile and record, so at least 3 warm-up steps are run. `profile_to`: also profile the step into this
    file (_profiled)."""
    if compile and torch.device(device).type != "cuda":
        raise MMBenchError("--compile captures CUDA graphs; it needs --device cuda")
    step, params = method_step(method, n_modalities, batch_size, latent_dim, architecture, seed, device, precision,
                               compile)
    r = _timed(step, max(warmup, 3) if compile else warmup, steps, torch.device(device), params)
    return _profiled(r, step, torch.device(device), profile_to, f"{method}, unpacked" + (", captured" if compile else ""))


def floor_step(n_modalities: int = 5, batch_size: int = 256, latent_dim: int = 512,
               architecture: str = "polymnist_cnn", seed: int = 0, device: str = "cpu",
               precision: str = "fp32") -> tuple:
    """(the bare-network floor of a step as a function, its parameters): each modality's encoder on its batch, one
    reparameterised z per modality, each decoder on its z, a squared-error + KL loss, backward, Adam -- the
    arithmetic every method's step contains, without any method's aggregation; in `precision` as method_step."""
    from .registry import ARCHITECTURES

    dev = torch.device(device)
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(n_modalities)]
    arch = ARCHITECTURES.get(architecture)
    nets = torch.nn.ModuleList([torch.nn.ModuleList([arch.encoder(m, latent_dim), arch.decoder(m, latent_dim)])
                                for m in mods]).to(dev)
    nets.train()
    opt = _adam(nets.parameters(), dev)
    g = torch.Generator().manual_seed(seed)
    x = [torch.rand(batch_size, 3, 28, 28, generator=g).to(dev) for _ in mods]

    def step() -> None:
        loss = 0.0
        with _autocast(precision, dev):
            for (enc, dec), xm in zip(nets, x):
                mu, logvar = enc(xm)
                z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
                loss = loss + (dec(z) - xm).pow(2).sum() + 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, list(nets.parameters())


def floor_step_time(n_modalities: int = 5, batch_size: int = 256, latent_dim: int = 512, steps: int = 5,
                    warmup: int = 1, architecture: str = "polymnist_cnn", seed: int = 0,
                    device: str = "cpu", precision: str = "fp32", profile_to: Optional[Path] = None) -> Dict[str, float]:
    """Seconds per step of floor_step. A method's step / this (same precision) = its overhead."""
    step, params = floor_step(n_modalities, batch_size, latent_dim, architecture, seed, device, precision)
    return _profiled(_timed(step, warmup, steps, torch.device(device), params), step, torch.device(device),
                     profile_to, "bare networks (floor)")


# operations that launch no kernel: views, and allocations without a fill
_NO_KERNEL = {"view", "_unsafe_view", "unsqueeze", "squeeze", "expand", "permute", "t", "transpose", "slice",
              "select", "alias", "as_strided", "detach", "unbind", "split", "split_with_sizes", "chunk", "narrow",
              "diagonal", "view_as_real", "view_as_complex", "unfold", "lift_fresh", "_reshape_alias", "reshape",
              "flatten", "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"}


def device_ops(step: Callable[[], None], warmup: int = 2) -> int:
    """The tensor operations one call of `step` runs on the device, views and bare allocations excluded: on a GPU
    each launches at least one kernel, so where launches bound the step (small networks) this is its cost. `step`
    must be built on the `meta` device (mmbench.bench.method_step(device="meta")): shapes without data, so nothing
    is computed, and the count is the GPU's (data-dependent row cuts that only the CPU makes, e.g. mrVAE's, are not made on meta).
    Operations on host tensors alone (an optimiser's step counter) are not counted. `warmup` calls run first (lazy
    state: Adam's moments, constants built once per run)."""
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.__name__.split(".")[0] not in _NO_KERNEL and any(
                    isinstance(t, torch.Tensor) and t.device.type == "meta"
                    for t in pytree.tree_leaves((args, kwargs, out))):
                self.n += 1
            return out

    for _ in range(warmup):
        step()
    counter = Count()
    with counter:
        step()
    return counter.n


def _build(cls, mods, mcfg: MethodConfig, architecture: str, dev: torch.device):
    """A model of the method; for the meta device built there (no initialisation, no memory: a pack of 15 large
    models costs nothing when only its operations are counted)."""
    if dev.type == "meta":
        with torch.device("meta"):
            return cls(mods, mcfg, architecture)
    return cls(mods, mcfg, architecture)


def pack_step(method: str, pack: int, n_modalities: int = 5, batch_size: int = 256, latent_dim: int = 512,
              architecture: str = "polymnist_cnn", device: str = "cpu", precision: str = "fp32",
              compile: bool = False) -> tuple:
    """(one packed training step of `pack` runs (seeds 0..pack-1) as a function, the stacked parameters), each run
    on its own fixed random batch. On `meta` (counting operations) the pack is vmapped as on a GPU."""
    dev = torch.device(device)
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(n_modalities)]
    mcfg = MethodConfig(method, latent_dim=latent_dim, beta=1.0)
    cls = METHODS.get(method)
    if not cls.packable:
        raise MMBenchError(f"method {method} is not packable ({cls.unpackable_why or 'packable = False'})")
    states = []
    for s in range(pack):
        torch.manual_seed(s)
        states.append(_build(cls, mods, mcfg, architecture, dev).state_dict())
    template = _build(cls, mods, mcfg, architecture, dev).to(dev)
    template.train()
    g = torch.Generator().manual_seed(0)
    x = {m.name: torch.rand(pack, batch_size, 3, 28, 28, generator=g).to(dev) for m in mods}
    return _stacked_step(template, states, range(pack), 1e-4, x, precision, dev, compile)


def _stacked_step(template, states: Sequence[Dict], seeds: Sequence[int], lr: float, x: Dict[str, torch.Tensor],
                  precision: str, dev: torch.device, compile: bool) -> tuple:
    """(one packed training step as a function, the stacked parameters): the runs' `states` stacked over
    `template` (pack.StackedModel), each run drawing its noise from a generator seeded by its seed in `seeds` and
    taking its own batch from `x` (leading axis: the runs); one loss summed over them, backward, one Adam.
    `compile`: the packed loss captured (a vmapped fp32 pack only)."""
    from .pack import StackedModel

    sm = StackedModel(template, states, [None] * len(states), lr, dev)
    if dev.type == "meta":
        sm.opt = _adam(list(sm.params.values()), dev)
    if compile:
        if not sm.vectorised_for(precision):
            raise MMBenchError(f"this pack loops over its runs ({precision} on {dev.type}; pack.StackedModel."
                               f"vectorised_for): only a vmapped fp32 pack is captured; drop --compile or use fp32")
        sm.compile()
    # meta has no generators: pack.draw gives it empty noise of the recorded shapes
    gens = [None if dev.type == "meta" else torch.Generator(device=dev).manual_seed(s) for s in seeds]

    rows = next(iter(x.values())).shape[1]

    def step() -> None:  # as pack._train_group trains
        sm.opt.zero_grad(set_to_none=True)
        if sm.captured:
            sm.loss(x, gens, 0, precision)[0].sum().backward()
        else:
            sm.loss_backward(x, gens, precision)
        sm.opt.step()
        sm.step_taken(rows)

    return step, list(sm.params.values())


def pack_step_time(method: str, pack: int, n_modalities: int = 5, batch_size: int = 256, latent_dim: int = 512,
                   steps: int = 5, warmup: int = 2, architecture: str = "polymnist_cnn", device: str = "cpu",
                   precision: str = "fp32", compile: bool = False, profile_to: Optional[Path] = None) -> Dict[str, float]:
    """Median seconds per packed step of `pack` runs (seeds 0..pack-1) and the run-steps per second.
    `compile`: capture the packed loss with torch.compile(mode="reduce-overhead") (CUDA graphs; GPU only).
    `profile_to`: also profile the step into this file (_profiled)."""
    if compile and torch.device(device).type != "cuda":
        raise MMBenchError("--compile captures CUDA graphs; it needs --device cuda")
    step, params = pack_step(method, pack, n_modalities, batch_size, latent_dim, architecture, device, precision,
                             compile)
    r = _timed(step, warmup, steps, torch.device(device), params)
    r = _profiled(r, step, torch.device(device), profile_to, f"{method}, pack of {pack}" + (", captured" if compile else ""))
    return {"pack": pack, "median_s": r["median_s"], "min_s": r["min_s"], "max_s": r["max_s"],
            "run_steps_per_s": pack / r["median_s"],
            **{k: r[k] for k in ("kernel_ms", "kernel_share", "peak_gib") if k in r}}


def pack_table(methods: Sequence[str], packs: Sequence[int], batch_size: int, latent_dim: int, steps: int,
               progress: Optional[Callable[[str], None]] = None, device: str = "cpu", precision: str = "fp32",
               compile: bool = False, n_modalities: int = 5, profile: Optional[Path] = None) -> List[dict]:
    """Run-steps per second of every method unpacked (pack 1, the plain trainer's step) and at each pack size, with
    the device operations per run-step (device_ops of the uncaptured fp32 step, divided by the pack size). With
    `compile` each pack size is timed uncaptured and then captured, one row each, so that the gain of capture is
    measured within one call (across calls the same step varied up to 1.65x on one H200, docs/gpu-runs/). `profile`:
    a folder; each row's step is also profiled into a file there (_profiled: `<method>-unpacked.txt`,
    `<method>-pack<N>[-captured].txt`) and the rows get kernel_ms and kernel_share."""
    check_counts(steps, batch_size, latent_dim, [n_modalities])
    say = progress or (lambda s: None)
    rows = []
    for m in methods:
        say(f"{m} unpacked")
        r = step_time(m, n_modalities, batch_size, latent_dim, steps, device=device, precision=precision,
                      profile_to=_profile_file(profile, f"{m}-unpacked"))
        ops = device_ops(method_step(m, n_modalities, batch_size, latent_dim, device="meta")[0])
        rows.append({"method": m, "pack": 1, "mode": "unpacked", "median_s": r["median_s"],
                     "run_steps_per_s": r["run_steps_per_s"], "ops_per_run_step": ops, **_kernel_cols(r, profile),
                     **_memory_col(r, device)})
        for n in packs:
            for captured in ([False, True] if compile else [False]):
                say(f"{m} pack {n}" + (" captured" if captured else ""))
                try:
                    r = pack_step_time(m, n, n_modalities, batch_size, latent_dim, steps, device=device,
                                       precision=precision, compile=captured,
                                       profile_to=_profile_file(profile, f"{m}-pack{n}" + ("-captured" if captured else "")))
                    ops = device_ops(pack_step(m, n, n_modalities, batch_size, latent_dim, device="meta")[0]) / n
                    rows.append({"method": m, "pack": n, "mode": "packed" + (" (compiled)" if captured else ""),
                                 "median_s": r["median_s"], "run_steps_per_s": r["run_steps_per_s"],
                                 "ops_per_run_step": ops, **_kernel_cols(r, profile), **_memory_col(r, device)})
                except (MMBenchError, RuntimeError) as e:  # not packable, or out of memory: a row saying so
                    rows.append({"method": m, "pack": n, "mode": "n/a" + (" (compiled)" if captured else "") + ": "
                                 + brief(e, 80).replace("|", "/"),
                                 "median_s": float("nan"), "run_steps_per_s": float("nan")})
                finally:
                    release_device_memory(torch.device(device), compiled=captured)
    return rows


def _memory_col(r: Dict[str, float], device: str) -> Dict[str, float]:
    """A GPU row's peak_gib (the step's peak allocation, _timed); nothing on a CPU, whose allocator keeps no peak."""
    return {"peak_gib": r.get("peak_gib", float("nan"))} if torch.device(device).type == "cuda" else {}


def _kernel_cols(r: Dict[str, float], profile: Optional[Path]) -> Dict[str, float]:
    """A profiled row's kernel_ms and kernel_share (nan on a CPU); nothing when not profiling."""
    return {} if profile is None else {k: r.get(k, float("nan")) for k in ("kernel_ms", "kernel_share")}


def step_table(methods: Sequence[str], scaling_methods: Sequence[str], modalities: Sequence[int], batch_size: int,
               latent_dim: int, steps: int, progress: Optional[Callable[[str], None]] = None,
               device: str = "cpu", precision: str = "fp32", compile: bool = False,
               profile: Optional[Path] = None) -> Dict[str, list]:
    """Rows for every method at M = max(modalities), and for `scaling_methods` at every M. `compile`: each method's
    loss captured (step_time); a method that cannot be captured gets a row saying why (the floor is not captured).
    `profile`: a folder; each method's step and the floor's are also profiled into a file there (`<method>.txt`,
    `floor.txt`; _profiled), the scaling rows not."""
    check_counts(steps, batch_size, latent_dim, modalities)
    say = progress or (lambda s: None)
    top = max(modalities)
    rows, scaling = [], []
    say(f"bare networks, M={top}")
    floor = floor_step_time(top, batch_size, latent_dim, steps, warmup=2, device=device, precision=precision,
                            profile_to=_profile_file(profile, "floor"))
    for m in methods:
        say(f"{m}, M={top}")
        try:
            r = step_time(m, top, batch_size, latent_dim, steps, warmup=2, device=device, precision=precision,
                          compile=compile, profile_to=_profile_file(profile, m + ("-captured" if compile else "")))
        except Exception as e:  # noqa: BLE001 - only with compile: a method the compiler cannot capture
            if not compile:
                raise
            rows.append({"method": f"{m} (not captured: {brief(e, 60)})", "M": top})
            continue
        rows.append({"method": m + (" (captured)" if compile else ""), "M": top, **r,
                     "x_floor": r["median_s"] / floor["median_s"],
                     "ops": device_ops(method_step(m, top, batch_size, latent_dim, device="meta")[0])})
    rows.append({"method": "(bare networks: floor)", "M": top, **floor, "x_floor": 1.0,
                 "ops": device_ops(floor_step(top, batch_size, latent_dim, device="meta")[0])})
    for m in scaling_methods:
        for n in modalities:
            say(f"{m}, M={n}")
            try:
                r = step_time(m, n, batch_size, latent_dim, steps, device=device, precision=precision,
                              compile=compile)
            except Exception as e:  # noqa: BLE001 - only with compile, as above
                if not compile:
                    raise
                scaling.append({"method": f"{m} (not captured: {brief(e, 60)})", "M": n, "median_s": float("nan")})
                continue
            scaling.append({"method": m, "M": n, **r})
    return {"methods": rows, "scaling": scaling}


# ----- steps at a suite's own shapes (`mmbench bench steps --suite SUITE`) -----------------------------------
def synthetic_batch(modalities: Sequence[Modality], batch_size: int, generator: torch.Generator,
                    lead: Tuple[int, ...] = ()) -> Dict[str, torch.Tensor]:
    """A random batch as the trainers take it: each modality drawn as prepared data stores it (image bytes, text
    character indices, spike counts) and converted by data.base.to_float; `lead`: leading axes (a pack's runs)."""
    from .data.base import to_float

    out = {}
    for m in modalities:
        if m.kind == "text":  # stored: one character index per position; to_float one-hots them over the alphabet
            raw = torch.randint(0, m.shape[-1], (*lead, batch_size, *m.shape[:-1]), generator=generator)
        else:  # images 0..255, spikes a few per 10-ms bin
            raw = torch.randint(0, 256 if m.kind == "image" else 4, (*lead, batch_size, *m.shape), generator=generator,
                                dtype=torch.uint8)
        out[m.name] = to_float(m, raw)
    return out


def _run_model(cfg, dev: torch.device):
    """The run's model as its trainer builds it (train.build_model, seeded by the run's seed), in training mode; a
    method with a step schedule is told of a run far longer than the timed steps (its schedule's first stage)."""
    from .train import build_model

    torch.manual_seed(cfg.seed)
    if dev.type == "meta":
        with torch.device("meta"):
            model = build_model(cfg)
    else:
        model = build_model(cfg).to(dev)
    model.train()
    if hasattr(model, "plan_steps"):
        model.plan_steps(10 ** 9)
    return model


def config_step(cfg, device: str = "cpu", compile: bool = False) -> tuple:
    """(one training step of run `cfg` as a function, its parameters): its model, Adam, precision and batch size on
    one fixed random batch of its dataset's shapes (synthetic_batch). `compile`: the loss captured as by
    `mmbench run --compile` (torch.compile mode reduce-overhead)."""
    from .train import run_modalities

    dev = torch.device(device)
    model = _run_model(cfg, dev)
    opt = _adam(model.parameters(), dev)
    x = {k: v.to(dev) for k, v in synthetic_batch(run_modalities(cfg), cfg.train.batch_size,
                                                 torch.Generator().manual_seed(cfg.seed)).items()}
    return _optimiser_step(model, opt, x, cfg.train.precision, dev, compile), list(model.parameters())


def config_pack_step(cfg, pack: int, device: str = "cpu", compile: bool = False) -> tuple:
    """(one packed step of `pack` runs of `cfg` (seeds cfg.seed, cfg.seed + 1, ...) as a function, the stacked
    parameters), each run on its own random batch of the dataset's shapes, as `mmbench run` packs them."""
    from .pack import unpackable_reason
    from .train import run_modalities

    why = unpackable_reason(cfg)
    if why:
        raise MMBenchError(f"not packed: {why}")
    dev = torch.device(device)
    seeds = [cfg.seed + s for s in range(pack)]
    states = [_run_model(replace(cfg, seed=s), dev).state_dict() for s in seeds]
    x = {k: v.to(dev) for k, v in synthetic_batch(run_modalities(cfg), cfg.train.batch_size,
                                                 torch.Generator().manual_seed(cfg.seed), (pack,)).items()}
    return _stacked_step(_run_model(cfg, dev), states, seeds, cfg.train.lr, x, cfg.train.precision, dev, compile)


def suite_step_rows(configs: Sequence, packs: Sequence[int], steps: int, device: str = "cpu", compile: bool = False,
                    progress: Optional[Callable[[str], None]] = None, time_limit: Optional[float] = None) -> List[dict]:
    """Run-steps per second at every step shape (step_key) among `configs`, in the order first met: unpacked, and
    packed at each size in `packs` up to the largest pack those runs form (runs that differ only in their seed and β,
    pack.pack_key); with `compile` each also captured, one row each. A shape that cannot be packed, or a pack that
    does not fit, gets a row saying why. `time_limit` (seconds): no shape but the first is started after it;
    each shape not measured gets a row saying so. Each row names its shape (KEY_COLUMNS) and how many of the runs have it."""
    from collections import Counter

    from .pack import pack_key

    if steps < 1:
        raise MMBenchError(f"--steps {steps}: must be at least 1")
    say = progress or (lambda s: None)
    shapes: Dict[Tuple[str, ...], List] = {}
    for c in configs:
        shapes.setdefault(step_key(c), []).append(c)
    start, rows = time.perf_counter(), []
    dev = torch.device(device)
    for n_shape, (key, cs) in enumerate(shapes.items()):
        head = {**dict(zip(KEY_COLUMNS, key)), "runs": len(cs)}
        if time_limit is not None and n_shape and time.perf_counter() - start > time_limit:  # the first always runs
            rows.append({**head, "pack": 1, "mode": f"not measured: --time-limit {time_limit:g} s reached",
                         "median_s": float("nan"), "run_steps_per_s": float("nan")})
            continue
        largest = max(Counter(pack_key(c) for c in cs).values())
        cfg = cs[0]
        timings = [(1, False)] + ([(1, True)] if compile else [])
        timings += [(n, cap) for n in packs if 1 < n <= largest for cap in ([False, True] if compile else [False])]
        for n, cap in timings:
            label = ("unpacked" if n == 1 else "packed") + (" (compiled)" if cap else "")
            say(f"shape {n_shape + 1}/{len(shapes)}: {key_label(key)}, {label}" + (f" {n}" if n > 1 else ""))
            try:
                step, params = config_step(cfg, device, cap) if n == 1 else config_pack_step(cfg, n, device, cap)
                r = _timed(step, 3 if cap else 2, steps, dev, params)
                rows.append({**head, "pack": n, "mode": label, "median_s": r["median_s"],
                             "run_steps_per_s": n / r["median_s"], **_memory_col(r, device)})
            except (MMBenchError, RuntimeError) as e:  # not packable, or out of memory: a row saying so
                why = str(e) if isinstance(e, MMBenchError) else brief(e, 80)
                rows.append({**head, "pack": n, "mode": "n/a" + (" (compiled)" if cap else "") + ": "
                             + why.replace("|", "/"),
                             "median_s": float("nan"), "run_steps_per_s": float("nan")})
                if "not packed" in str(e):
                    break  # no other pack size of this shape packs either
            finally:
                step = params = None
                release_device_memory(dev, compiled=cap)
    return rows
