"""Training: Adam over in-memory tensors, seeded, checkpointed every epoch, resumable.

Determinism: the parameters are initialised after ``torch.manual_seed(seed)``; epoch e shuffles
with a generator seeded by (seed, e); the global RNG state (used by reparameterised samples) is
saved in every checkpoint, so an interrupted and resumed run ends with the same weights as an
uninterrupted one on the CPU. With ``train.checkpoint_minutes`` a checkpoint is also taken mid-epoch
(the step reached and the epoch's running sums with it), and a resume continues at that step of the
same permutation; `request_stop` (e.g. from a Slurm signal handler) makes the loop save such a
checkpoint after the current step and raise `TrainingInterrupted`.

Speed: the training split is moved to the device once (uint8) and batches are gathered there; the step
never reads a value back to the host: the logged losses are summed on the device and read once per
epoch, and a non-finite loss is noticed at the end of its epoch (the run then fails before writing that
epoch's checkpoints, so nothing saved holds a diverged model). `train.precision: bf16` computes the loss
under bfloat16 autocast. Runs of one experiment can also train together as one stacked model
(mmbench/pack.py), with results equal to these.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .config import RunConfig
from .data.base import DataSplit, load_split
from .devices import device_of, devices_of_rng, out_of_memory, release_device_memory, rng_states, set_rng_states
from .errors import MMBenchError, brief, shorten
from .files import SHARED_TEMP_AGE_S, remove_abandoned_temps
from .methods.base import MultimodalVAE, trainer_counts
from .registry import DATASETS, METHODS
from . import kernels, results as results_mod
from .results import Run, atomic_json, atomic_write

ProgressFn = Callable[[str, int, int], None]


def diverged(epoch: int) -> str:
    """The error of a run whose loss turned non-finite in (0-based) `epoch` (plain and packed training)."""
    return f"training diverged (a non-finite loss) in epoch {epoch + 1}; lower train.lr or check the data"
HISTORY = "history.json"  # the per-epoch losses of a run, next to metrics.json (read by the report's training curves)


def tensorboard_writer(run: Run):
    """A SummaryWriter into <run>/tensorboard when `train.tensorboard` is true, else None."""
    if not run.cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MMBenchError("train.tensorboard: true needs the tensorboard package; install it with "
                           "`pip install 'mmbench[tensorboard]'` or set train.tensorboard: false") from None
    return SummaryWriter(log_dir=str(run.dir / "tensorboard"))

_stop_reason: list = []  # set by request_stop (safe to call from a signal handler), read between steps


class TrainingInterrupted(MMBenchError):
    """Training stopped on request after saving a resumable checkpoint."""


def request_stop(reason: str = "stop requested") -> None:
    """Ask a running `train` to checkpoint after its current optimiser step and raise TrainingInterrupted."""
    _stop_reason.append(reason)


def clear_stop() -> None:
    _stop_reason.clear()


def stop_requested() -> Optional[str]:
    """The reason of the first pending stop request (request_stop), or None."""
    return _stop_reason[0] if _stop_reason else None


def run_modalities(cfg: RunConfig) -> list:
    """The dataset's modalities this run uses (`modalities` selects and orders them; None: all)."""
    spec = DATASETS.get(cfg.dataset)()
    mods = spec.modalities(spec.check_variant(cfg.variant))
    if cfg.modalities is None:
        return mods
    by_name = {m.name: m for m in mods}
    unknown = [n for n in cfg.modalities if n not in by_name]
    if unknown or not cfg.modalities or len(set(cfg.modalities)) != len(cfg.modalities):
        raise MMBenchError(f"modalities: {cfg.modalities} must be distinct names of {cfg.dataset}'s modalities: "
                           f"{', '.join(by_name)}")
    return [by_name[n] for n in cfg.modalities]


def build_model(cfg: RunConfig) -> MultimodalVAE:
    return METHODS.get(cfg.method.name)(run_modalities(cfg), cfg.method, cfg.architecture_name())


def load_data(cfg: RunConfig, data_root: Optional[Path] = None):
    spec = DATASETS.get(cfg.dataset)()
    names = [m.name for m in run_modalities(cfg)] if cfg.modalities is not None else None
    train = load_split(spec, cfg.variant, "train", data_root).select(names)
    test = load_split(spec, cfg.variant, "test", data_root).select(names)
    return train.subset(cfg.train.max_train, seed=cfg.data_seed), test


def note_code(state: Dict, kernel_choices: Dict[str, str], step: Optional[int] = None) -> None:
    """Record in the training state (saved with every checkpoint) the code that trains from here: the git commit
    and version, and the kernel choices that take effect (kernels.effective) where there are any, with the epoch and
    step it took over at (`step`: the state's own where not given); a run resumed under other code or other choices
    lists both. The trainers call it only where epochs are left to train. Evaluation copies the list into
    provenance.json as `trained_with` (its own `git_commit` is the evaluating code's)."""
    from . import __version__

    code = state.setdefault("code", [])
    here = {"git_commit": results_mod.git_commit(), "mmbench_version": __version__}
    if kernel_choices:
        here["kernels"] = dict(kernel_choices)
    if not code or {k: v for k, v in code[-1].items() if k not in ("from_epoch", "from_step")} != here:
        code.append({**here, "from_epoch": state["epoch"], "from_step": state.get("step", 0) if step is None else step})


def data_identity(cfg: RunConfig, data_root: Optional[Path] = None) -> Optional[Dict]:
    """The prepared copy a run's data come from, as a checkpoint records it: dataset, variant, content digest, build
    seed and the manifest's options; None where none is prepared."""
    from .data.base import dataset_dir, manifest_digest, read_manifest

    variant = DATASETS.get(cfg.dataset)().check_variant(cfg.variant)
    manifest = read_manifest(dataset_dir(cfg.dataset, variant, data_root))
    if manifest is None:
        return None
    return {"dataset": cfg.dataset, "variant": variant, "digest": manifest_digest(manifest),
            "seed": manifest.get("seed", 0), "options": manifest.get("options") or {}}


def _build_of(data: Dict) -> Dict:
    """A recorded copy's build as this mmbench tells builds apart (data.base.built_by: options at their default, or
    unread by the variant, are none), so a record outlives changes to what counts."""
    from .data.base import built_by

    return built_by(DATASETS.get(data["dataset"]), data.get("options") or {}, data["variant"])


def check_data(state: Dict, identity: Optional[Dict], checkpoint: Path, record: bool = True) -> None:
    """Refuse to go on from a checkpoint trained on another prepared copy than the one there now (a `prepare --force`
    with other options in between would otherwise train or score a model on data it was not trained on, under the
    same run id): other arrays (digest) or a build that trains otherwise with the same arrays (mnist-svhn-text's
    text_start). `record`: note the copy in a state that names none yet (a fresh run, or one trained before mmbench
    recorded it), as training does; an evaluation only checks."""
    from .data.base import prepare_command

    had = state.get("data")
    if isinstance(had, dict) and identity is not None and (
            had.get("digest") != identity["digest"] or _build_of(had) != _build_of(identity)):
        def said(d):
            build = results_mod.data_build({"dataset_build": {"seed": d.get("seed"), "options": d.get("options")}},
                                           DATASETS.get(d["dataset"]), d["variant"])
            return f"digest {d.get('digest')}" + (f", built with {build}" if build else ", built by default")

        again = prepare_command({"dataset": had["dataset"], "variant": had["variant"], "seed": had.get("seed", 0),
                                 "options": _build_of(had)})
        start_over = f", or delete {checkpoint.parent} to train the run from the start on these data" if record else ""
        raise MMBenchError(f"{checkpoint} was trained on {had['dataset']} ({had['variant']}) {said(had)}, but the "
                           f"prepared copy is now {said(identity)}: prepare the copy it was trained on again "
                           f"(`{again}`, with the files it was built from){start_over}")
    if record and identity is not None:
        state["data"] = identity


MISFIT = ("it was written by another configuration or mmbench version: move it away to train this run from the "
          "start, or evaluate the run it belongs to")


def load_weights(model: torch.nn.Module, weights: Dict, path: Path) -> None:
    """A checkpoint's model weights into `model`; weights of another method, architecture or size are an error naming
    the checkpoint, which stays as it is."""
    own = model.state_dict()
    cast = next((k for k, w in weights.items() if k in own and torch.is_tensor(w) and own[k].is_floating_point()
                 and w.dtype != own[k].dtype), None)
    if cast is not None:  # load_state_dict would cast it without a word (integers: the weights rounded)
        raise MMBenchError(f"checkpoint {path} does not fit this run's model ({cast} is {weights[cast].dtype}, the "
                           f"model's {own[cast].dtype}); {MISFIT}")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        # torch: "Error(s) in loading state_dict for X:" then one line per problem (size mismatch, missing keys...)
        detail = next((ln.strip(" .\t") for ln in str(e).splitlines()[1:] if ln.strip()), None)
        raise MMBenchError(f"checkpoint {path} does not fit this run's model "
                           f"({shorten(detail, 200) if detail else brief(e, 200)}); {MISFIT}") from None
    bad = [k for k, w in weights.items() if torch.is_tensor(w) and w.is_floating_point() and not torch.isfinite(w).all()]
    if bad:  # mmbench never checkpoints a diverged model (train.diverged), so this one was written elsewhere
        raise MMBenchError(f"checkpoint {path} holds non-finite weights ({bad[0]}{' and others' if len(bad) > 1 else ''}"
                           f"): a diverged model; move or delete the folder {path.parent} to train this run again")


def restore(model: MultimodalVAE, opt: torch.optim.Optimizer, ck: Dict, path: Path) -> None:
    """Load a checkpoint's model and optimiser state. Adam's moments saved for a parameter whose layout changed
    since (a module with `regroup`, e.g. mrVAE's SetNets) are converted as the parameter is; any other mismatch is
    an error naming the checkpoint (Adam itself would only fail at its next step)."""
    load_weights(model, ck["model"], path)
    try:
        load_adam_state(opt, ck["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise MMBenchError(f"checkpoint {path}: its optimiser state does not fit this run's model ({brief(e, 200)}); "
                           f"{MISFIT}") from None
    for group in opt.param_groups:  # Adam would fail at its first step on a setting that is not a number
        betas = group.get("betas")
        bad = next((k for k in ("lr", "eps", "weight_decay") if not _number(group.get(k))), None) or (
            None if isinstance(betas, (tuple, list)) and len(betas) == 2 and all(map(_number, betas)) else "betas")
        if bad:
            raise MMBenchError(f"checkpoint {path}: its optimiser state sets {bad} to {group.get(bad)!r}, not the "
                               f"number(s) Adam takes; {MISFIT}")
    for name, p in model.named_parameters():
        for key, v in opt.state.get(p, {}).items():
            if not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape:
                continue
            owner = model.get_submodule(name.rpartition(".")[0])
            v = owner.regroup(v) if hasattr(owner, "regroup") else v
            if v.shape != p.shape:
                raise MMBenchError(f"{path}: the optimiser state {key!r} of {name} has shape {tuple(v.shape)}, the "
                                   f"parameter {tuple(p.shape)}; {MISFIT}")
            opt.state[p][key] = v


def _number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (torch.is_tensor(v) and v.numel() == 1
                                                                         and v.is_floating_point())


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def resume_problem(ck: Dict) -> Optional[str]:
    """What keeps a training checkpoint (last.pt: weights, optimiser, random streams and the training state that
    `train` saves) from being resumed or evaluated; None when nothing does."""
    if not isinstance(ck.get("optimizer"), dict):
        return "holds no optimiser state"
    if not (torch.is_tensor(ck.get("rng")) and ck["rng"].dtype == torch.uint8):
        return "holds no random-number state (rng)"
    if ck["rng"].shape != torch.get_rng_state().shape:  # torch.set_rng_state would fail on the resume
        return f"holds a random-number state of {ck['rng'].numel()} bytes, not the {torch.get_rng_state().numel()} of one"
    if "rng_device" in ck and not (torch.is_tensor(ck["rng_device"]) and ck["rng_device"].dtype == torch.uint8):
        return "holds a GPU random-number state (rng_device) that is not one"
    state = ck.get("state")
    if not isinstance(state, dict):
        return "holds no training state (its 'state' entry)"
    if not _whole(state.get("epoch")):
        return f"records epoch {state.get('epoch')!r}, not a whole number of epochs"
    if "step" in state and not _whole(state["step"]):
        return f"records step {state['step']!r}, not a whole number of steps"
    if not isinstance(state.get("history"), list) or not isinstance(state.get("best_test_loss"), (int, float)):
        return "has a training state without its history or best test loss"
    best = state["best_test_loss"]  # +inf until a test loss is measured; NaN would never be beaten (best.pt frozen)
    if isinstance(best, bool) or (isinstance(best, float) and (math.isnan(best) or best == -math.inf)):
        return f"records a best test loss of {best!r}, not a test loss or +inf (none measured yet)"
    if not all(isinstance(h, dict) for h in state["history"]):
        return "has a training history whose entries are not the per-epoch records mmbench writes"
    if "sums" in state and not isinstance(state["sums"], dict):
        return "records the running sums of a mid-epoch checkpoint ('sums') as something other than a mapping"
    if "code" in state and not (isinstance(state["code"], list) and all(isinstance(c, dict) for c in state["code"])):
        return "records the code that trained it ('code') as something other than a list of mappings"
    return None


def check_plan(state: Dict, cfg: RunConfig, path: Path, n_batches: Optional[int] = None) -> None:
    """A checkpoint's training state beyond the run's plan (an epoch after `train.epochs`, or with `n_batches`, a
    mid-epoch step at or after the epoch's last) was written by another run (epochs and the data's size are part of
    the run id): an error naming it, not a run reported as trained for other epochs, or an epoch of no steps."""
    if state["epoch"] > cfg.train.epochs:
        raise MMBenchError(f"checkpoint {path} records epoch {state['epoch']}, beyond this run's train.epochs "
                           f"{cfg.train.epochs}; {MISFIT}")
    if n_batches is not None and state.get("step", 0) >= n_batches:
        raise MMBenchError(f"checkpoint {path} records step {state['step']} of an epoch of {n_batches} steps; {MISFIT}")


def clear_killed_writes(run: Run) -> None:
    """Before a run trains: remove the temporary files that a process killed outright while writing left in the run's
    folder and its checkpoints folder, e.g. half a 169 MB last.pt (files.remove_abandoned_temps: those no writer
    holds). Called under the run's lock, once this process' own checkpoints are written (settles_checkpoints has
    waited for them, unless a Ctrl-C cut that wait short: waited for here)."""
    CHECKPOINTS.wait()
    # checkpoints: only the run lock's holder writes them; the run's folder: `mmbench slurm`'s slurm.json too
    for folder, min_age_s in ((run.dir, SHARED_TEMP_AGE_S), (run.ckpt_dir, 0.0)):
        remove_abandoned_temps(folder, min_age_s=min_age_s, say=run.log)


def adopt_later_best(run: Run, state: Dict) -> None:
    """On a resume, a best.pt saved after the epoch last.pt holds (a run stopped between the two writes, or
    checkpoint_every > 1) already replaced the best weights up to that epoch, so it is kept, and its test loss
    becomes the one the retrained epochs must beat; else the record (last.pt's best) and the file would disagree. On
    the CPU the retrained epochs repeat the lost ones exactly; on a GPU they may differ by float rounding."""
    best = run.ckpt_dir / "best.pt"
    if not best.exists():
        return
    ck = read_checkpoint(best, resumable=False, mmap=True, run=run)  # its records: the weights stay on disk
    if not _whole(ck.get("epoch", 0)) or not isinstance(ck.get("test_loss", math.inf), (int, float)) \
            or isinstance(ck.get("test_loss"), bool):
        raise MMBenchError(f"checkpoint {best} records epoch {ck.get('epoch')!r} and test loss {ck.get('test_loss')!r}, "
                           f"not the whole number and number mmbench writes; move or delete the folder {best.parent} "
                           f"to train this run again from the start")
    if ck.get("epoch", 0) > state["epoch"] and ck.get("test_loss", math.inf) < state["best_test_loss"]:
        state["best_test_loss"] = ck["test_loss"]
        run.log(f"kept {best} of epoch {ck['epoch']} (after the resumed epoch {state['epoch']}): its test loss "
                f"{ck['test_loss']:.4f} is the best the retrained epochs must beat")


def read_checkpoint(path: Path, device="cpu", resumable: bool = True, mmap: bool = False,
                    run: Optional[Run] = None) -> Dict:
    """A checkpoint file's contents; one that cannot be read (truncated, overwritten, not a checkpoint) or, with
    `resumable` (last.pt), lacks what a resume or an evaluation reads (`resume_problem`) is an error naming the file
    and the fix, and stays on disk (it is never replaced without the user's say). `mmap`: the tensors mapped from
    the file, not read (a check of the file's structure and records, e.g. before an export: a checkpoint cut short
    still fails, its zip directory being at its end)."""
    CHECKPOINTS.wait()  # a checkpoint this process is still writing is read whole
    try:
        ck = torch.load(path, map_location=device, weights_only=False, mmap=mmap)
        if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict):
            raise ValueError("no model weights in it")
    except Exception as e:  # noqa: BLE001 - unpickling raises anything
        # the whole folder: train rebuilds best.pt only while it trains, so a last.pt left beside would keep the run
        # "trained" without it
        raise MMBenchError(f"checkpoint {path} cannot be read ({brief(e)}); move or delete the folder {path.parent} "
                           f"to train this run again from the start") from None
    problem = resume_problem(ck) if resumable else None
    if problem:
        raise MMBenchError(f"checkpoint {path} {problem}; {MISFIT}")
    if run is not None:  # the run reading it: its own checkpoint (and, for last.pt, within its plan)
        owner = ck.get("run_id")  # written since 2026-12-05; a checkpoint from before names no run
        if owner is not None and owner != run.id:  # e.g. copied from another seed's folder
            raise MMBenchError(f"checkpoint {path} was written by run {owner}, not {run.id}; {MISFIT}")
        if resumable:
            check_plan(ck["state"], run.cfg, path)
    return ck


def cudnn_autotune(device) -> Optional[str]:
    """cuDNN's benchmark mode (convolution algorithms chosen by timing each on the first call of a shape, instead of
    by heuristics) where `mmbench run --cudnn-benchmark` asks (MMBENCH_CUDNN_BENCHMARK=1) and the run is on a GPU:
    switched on, and the line the run's log gets (the run id does not change: the same experiment, other kernels);
    None otherwise. The provenance of an evaluation in the same process records the flag (results.py,
    "determinism"); the log is the record of which sessions trained with it."""
    if kernels.choice("MMBENCH_CUDNN_BENCHMARK") != "1" or torch.device(device).type != "cuda":
        return None
    torch.backends.cudnn.benchmark = True
    return (f"cuDNN benchmark mode on {device} (mmbench run --cudnn-benchmark): convolution algorithms chosen by "
            f"timing, so float rounding may differ from another process's")


def adam_options() -> Dict[str, Optional[bool]]:
    """Which of PyTorch's Adam implementations the trainers use (MMBENCH_ADAM): `default`, PyTorch's choice for the
    device (a loop over the tensors on a CPU, multi-tensor foreach kernels on a GPU), or `fused` (one kernel for all
    parameters). The same update to float rounding (docs/gpu-runs/kernel_choices.py checks that before timing both);
    not a run setting (a run id names the experiment, not its kernels): a run's log names a non-default choice."""
    mode = kernels.choice("MMBENCH_ADAM") or "default"
    return {"foreach": None, "fused": True if mode == "fused" else None}


def new_adam(params, lr: float) -> torch.optim.Adam:
    """The trainers' optimiser: Adam (MoPoE's and every paper's) in the implementation MMBENCH_ADAM chooses."""
    return torch.optim.Adam(params, lr=lr, **adam_options())


def load_adam_state(opt: torch.optim.Optimizer, sd: Dict) -> None:
    """opt.load_state_dict(sd) in this process's implementation: Adam takes foreach/fused from the saved groups (a
    checkpoint of a fused run would make every resume of it fused) and places its step counters by them (fused: on
    the parameters' device; otherwise on the host, where a step counter on a GPU would be read back every step)."""
    impl = adam_options()
    state = {i: {k: (v.cpu() if k == "step" and torch.is_tensor(v) and not impl["fused"] else v) for k, v in st.items()}
             for i, st in sd["state"].items()}
    opt.load_state_dict({**sd, "state": state, "param_groups": [{**g, **impl} for g in sd["param_groups"]]})


def adam_note() -> Optional[str]:
    """The line a run's log gets when its Adam is not PyTorch's default implementation."""
    if adam_options()["fused"]:
        return "Adam fused (MMBENCH_ADAM=fused): one kernel for all parameters, the default's update to float rounding"
    return None


def matmul_tf32(device) -> Optional[str]:
    """MMBENCH_MATMUL_TF32=1 on a GPU: float32 matrix products in TF32 (tensor cores), as cuDNN already runs the
    convolutions by PyTorch's default; switched on, and the line the run's log gets (on a CPU, which has no TF32, a
    line saying it has no effect). Unset or 0: PyTorch's default, fp32 matmuls. Like MMBENCH_ADAM a kernel choice,
    not a run setting (same run id); with MMBENCH_PACK_CONV=bmm it puts a pack's convolutions, computed as matmuls
    there, back in TF32. The trainers restore the flag when they end (`keeps_matmul_precision`): an evaluation's
    matmuls are fp32 (its convolutions are TF32 on a GPU by PyTorch's default, trained with this or not)."""
    if kernels.choice("MMBENCH_MATMUL_TF32") != "1":
        return None
    if torch.device(device).type != "cuda":
        return f"MMBENCH_MATMUL_TF32=1 has no effect on {device} (TF32 is a GPU's): matmuls in fp32"
    torch.backends.cuda.matmul.allow_tf32 = True
    return (f"float32 matmuls in TF32 on {device} (MMBENCH_MATMUL_TF32=1), as cuDNN's convolutions are by default: "
            f"the training's float rounding differs from an fp32-matmul run's; its evaluation is fp32")


def keeps_matmul_precision(trainer: Callable) -> Callable:
    """A trainer after which the process's matmul precision is what it was before (MMBENCH_MATMUL_TF32 holds for the
    training only: an evaluation in the same worker computes its matmuls as an evaluation alone). Written back only
    where the training changed it: PyTorch refuses to read a precision set through its newer API
    (torch.set_float32_matmul_precision) once the legacy flag has been written."""
    @functools.wraps(trainer)
    def wrapped(*args, **kwargs):
        before = torch.backends.cuda.matmul.allow_tf32
        try:
            return trainer(*args, **kwargs)
        finally:
            if torch.backends.cuda.matmul.allow_tf32 != before:
                torch.backends.cuda.matmul.allow_tf32 = before
    return wrapped


def setup_notes(precision: str, device) -> List[str]:
    """Switch on what the process asks for the training (cuDNN benchmark mode, TF32 matmuls) and return the lines
    every run's log gets about how it computes here: bf16 without bfloat16 instructions, cuDNN benchmark mode, TF32
    matmuls, a non-default Adam. Called once per trainer (plain or packed), so both logs say the same."""
    lines = (slow_bf16_note(precision, device, "training (train.precision)"), cudnn_autotune(device),
             matmul_tf32(device), adam_note())
    return [line for line in lines if line]


def captured(fn: Callable, device) -> Optional[Callable]:
    """`fn` (a training loss) captured as `mmbench run --compile` asks (MMBENCH_COMPILE=1), or None: on a GPU,
    torch.compile mode "reduce-overhead" (CUDA graphs) with the random operations left to the eager kernels
    (inductor's fallback_random), so a run draws the numbers it draws uncaptured; MMBENCH_COMPILE_BACKEND names
    another backend, on any device (the tests trace with "aot_eager" on the CPU)."""
    backend = os.environ.get("MMBENCH_COMPILE_BACKEND")
    if kernels.choice("MMBENCH_COMPILE") != "1" or (torch.device(device).type != "cuda" and not backend):
        return None
    if backend:
        return torch.compile(fn, backend=backend)
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(fn, mode="reduce-overhead")


def resumed_from(last: Path, state: Dict) -> str:
    """The log line of a run resumed from checkpoint `last`: its epoch, and its step where it stopped mid-epoch."""
    at = f", step {state['step']}" if state.get("step") else ""
    return f"resumed from {last} at epoch {state['epoch']}{at}"


def copy_into(dst: List[torch.Tensor], src: List[torch.Tensor]) -> List[torch.Tensor]:
    """`src` copied into the tensors of `dst` (one fused copy on a GPU: torch._foreach_copy_), which are made anew
    where they do not match `src` (the first call, a pack that lost runs); returns `dst`."""
    if len(dst) != len(src) or any(d.shape != t.shape or d.dtype != t.dtype or d.device != t.device
                                   for d, t in zip(dst, src)):
        dst[:] = [t.detach().clone() for t in src]
    elif src:
        with torch.no_grad():
            torch._foreach_copy_(dst, src)
    return dst


class StepState:
    """What a training loss may change besides its result, taken before a captured step that could fail after it ran
    and put back if it did: the random streams and the checkpointed buffers a loss moves (BatchNorm statistics; the
    step counters are advanced after the step, count_step).
    The buffers' owners are looked up once; each step copies the buffers into the same tensors (copy_into)."""

    def __init__(self, model: torch.nn.Module, device):
        params = {n for n, _ in model.named_parameters()}
        kept = [n for n in model.state_dict() if n not in params]
        self.model, self.device = model, device
        self.owners = [(n, model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in kept]
        self.held: List[torch.Tensor] = []

    def take(self) -> tuple:
        copy_into(self.held, [getattr(m, a) for _, m, a in self.owners])
        return rng_states(self.device), self.held

    def restore(self, taken: tuple) -> None:
        """Back to `taken`: the buffers loaded as a checkpoint's are (a host copy of a counter follows them)."""
        set_rng_states(taken[0], self.device)
        self.model.load_state_dict({n: t for (n, _, _), t in zip(self.owners, taken[1])}, strict=False)


def rng_checkpoint(device) -> Dict[str, torch.Tensor]:
    """The streams as a checkpoint holds them ("rng": CPU; "rng_device": the GPU's, as pack.py writes it too)."""
    cpu, gpu = rng_states(device)
    return {"rng": cpu} if gpu is None else {"rng": cpu, "rng_device": gpu}


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """The loss's precision context: fp32 = none; bf16 = torch.autocast to bfloat16 on the run's device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic instructions (AVX512-BF16 or AMX-BF16). Without them bf16 is
    converted to and from fp32 around fp32 arithmetic (AVX-512) or run by generic kernels (AVX2): slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: oneDNN's own probe (which also says yes for plain AVX-512)
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def slow_bf16_note(precision: str, device, what: str) -> Optional[str]:
    """A line for the run's log where bf16 is asked of a CPU without bfloat16 instructions: it computes what was
    asked, but slower than fp32 (bf16 decoders 12x slower on an AVX2-only CPU: docs/metrics.md, "On a CPU without
    bfloat16 instructions")."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_has_bf16():
        return None
    return (f"note: {what} in bf16 on a CPU without bfloat16 instructions (avx512_bf16, amx_bf16; torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}): it runs slower than fp32 here")


@torch.no_grad()
def test_loss(model: MultimodalVAE, test: DataSplit, batch_size: int, seed: int, device,
              precision: str = "fp32") -> float:
    """Mean training objective on the test split, with a fixed RNG so epochs are comparable."""
    model.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    with torch.random.fork_rng(devices=devices_of_rng(device)):  # the training streams continue untouched
        torch.manual_seed(seed)
        for start in range(0, len(test), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(test)))
            with autocast(precision, device):
                loss, _ = model.loss(test.batch(idx, device))
            total += loss.detach().double() * len(idx)
            n += len(idx)
    model.train()
    return float(total) / max(n, 1)


def _save(path: Path, state: Dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def _host_copy(obj, owned: bool):
    """`obj` with every tensor copied to host memory (detached) and every container rebuilt, so that training may go
    on changing the originals; tensors already on the host are shared where `owned` (the caller made them for this)."""
    if torch.is_tensor(obj):
        t = obj.detach()
        return t.to("cpu") if t.device.type != "cpu" else (t if owned else t.clone())
    if isinstance(obj, dict):
        return {k: _host_copy(v, owned) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v, owned) for v in obj)
    return copy.deepcopy(obj)


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in `obj` (dicts, lists and tuples searched)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class _CheckpointWriter:
    """Checkpoints written off the training path: `save` copies the state to host memory at once, and one background
    thread serialises and writes the files in the order given (atomic_write: each whole or not at all, synced unless
    MMBENCH_FSYNC=0), while the device trains on. A PolyMNIST run's last.pt is 169 MB: serialising, writing and
    syncing it took 0.5-0.95 s on this project's CPU machine (2026-12-04), per run and epoch, time a GPU would sit
    idle; handing it over takes 0.08 s. `wait` returns once every file handed over is on disk and raises the first
    failed write's error, naming the file. The trainers wait before reading a checkpoint, before an epoch's saves
    (so at most one epoch's checkpoints are held in memory), before a stop and on every exit (settles_checkpoints);
    the thread finishes its files before the process exits. The copies waiting to be written are bounded
    (`held_cap`, an eighth of the machine's memory): `make_room` before a copy, and `save` itself, wait for the oldest
    files while more is held (a pack of 12 MM-VAMP ResNets held 9 GB of epoch-end copies on a 24 GB CPU machine)."""

    def __init__(self):
        self._pool = None
        self._pending: List = []  # (path, future, bytes held)

    @staticmethod
    def held_cap() -> int:
        try:
            return max(2 ** 30, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8)
        except (ValueError, OSError, AttributeError):  # a platform that does not say
            return 2 ** 32

    def make_room(self, nbytes: int) -> None:
        """Wait for the oldest files until a copy of `nbytes` more fits under held_cap (or nothing is pending)."""
        cap = self.held_cap()
        while self._pending and sum(p[2] for p in self._pending) + nbytes > cap:
            self._settle(1)

    def save(self, path: Path, state: Dict, owned: bool = False) -> None:
        from concurrent.futures import ThreadPoolExecutor

        nbytes = _tensor_bytes(state)
        if not owned:  # (an owned state is the caller's copy, made after its make_room)
            self.make_room(nbytes)
        snapshot = _host_copy(state, owned)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmbench-checkpoints")
        self._pending.append((Path(path), self._pool.submit(_save, Path(path), snapshot), nbytes))

    def wait(self) -> None:
        self._settle(len(self._pending))

    def _settle(self, n: int) -> None:
        """Wait for the `n` oldest files; raise the first failed write's error."""
        failed = None
        for _ in range(n):  # a file leaves the list once written: a wait cut short (Ctrl-C) leaves the rest to the next
            path, future, _ = self._pending[0]
            e = future.exception()
            self._pending.pop(0)
            if e is not None and failed is None:
                failed = (path, e)
        if failed:
            raise MMBenchError(f"writing checkpoint {failed[0]} failed ({brief(failed[1])}); the run's previous "
                               f"checkpoint is left as it was: free space or fix the folder, then re-run to resume")

    def _forget(self) -> None:
        """In a forked child: the parent's writer thread is not there, so the child starts its own."""
        self._pool, self._pending = None, []


CHECKPOINTS = _CheckpointWriter()
os.register_at_fork(after_in_child=CHECKPOINTS._forget)


def settles_checkpoints(trainer: Callable) -> Callable:
    """A trainer that, however it ends (a return, a divergence, an interruption, any error), returns or raises only
    once the checkpoints it handed over are on disk; a failed write is its error when nothing else failed."""
    @functools.wraps(trainer)
    def wrapped(*args, **kwargs):
        try:
            out = trainer(*args, **kwargs)
        except BaseException:
            try:
                CHECKPOINTS.wait()
            except MMBenchError:
                pass  # the trainer's own error is the one to report; the previous checkpoint stays
            raise
        CHECKPOINTS.wait()
        return out
    return wrapped


@keeps_matmul_precision
@settles_checkpoints
def train(run: Run, data_root: Optional[Path] = None, progress: Optional[ProgressFn] = None,
          stop_after_epoch: Optional[int] = None) -> Dict[str, float]:
    """Train (or resume) the run's model; returns a summary. `stop_after_epoch` simulates an interruption."""
    cfg = run.cfg
    progress = progress or (lambda *a: None)
    device = device_of()
    train_split, test_split = load_data(cfg, data_root)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = new_adam(model.parameters(), cfg.train.lr)
    state = {"epoch": 0, "history": [], "best_test_loss": math.inf}
    clear_killed_writes(run)
    last = run.ckpt_dir / "last.pt"
    if last.exists() or last.is_symlink():  # a link to nowhere is an unreadable checkpoint, not none (read_checkpoint)
        ck = read_checkpoint(last, device, run=run)
        restore(model, opt, ck, last)
        set_rng_states((ck["rng"], ck.get("rng_device")), device)  # a GPU run continues its GPU stream too
        state = ck["state"]
        run.log(resumed_from(last, state))
        adopt_later_best(run, state)
    check_data(state, data_identity(cfg, data_root), last)
    writer = tensorboard_writer(run)
    E, B = cfg.train.epochs, cfg.train.batch_size
    loss_split = test_split.subset(cfg.train.max_test, seed=cfg.data_seed + 1).to(device)  # per-epoch test loss
    train_split = train_split.to(device)
    n_batches = max(len(train_split) // B, 1)
    check_plan(state, cfg, last, n_batches)
    if hasattr(model, "plan_steps"):  # methods with a step schedule (smvae two_stage) learn the run's length
        model.plan_steps(E * n_batches)
    t0 = time.monotonic()
    every_s = cfg.train.checkpoint_minutes * 60 if cfg.train.checkpoint_minutes else None
    saved_at = time.monotonic()

    def save_last() -> None:
        CHECKPOINTS.save(last, {"model": model.state_dict(), "optimizer": opt.state_dict(), **rng_checkpoint(device),
                                "state": state, "run_id": run.id})

    model.train()
    for line in setup_notes(cfg.train.precision, device):
        run.log(line)
    loss_fn = captured(model.loss, device)  # None: uncaptured (the default)
    if loss_fn is not None:
        run.log(f"training step captured with torch.compile on {device} (mmbench run --compile)")
        guard = StepState(model, device)
    if state["epoch"] < E:  # the code and kernels that train what is left (a trained run's record stays as it is)
        note_code(state, kernels.effective(torch.device(device).type, captured=loss_fn is not None))
    speed = Throughput()
    for epoch in range(state["epoch"], E):
        speed.start()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(train_split), generator=g).to(device)
        # A mid-epoch checkpoint holds the next step of this epoch and the running sums of its logs.
        first, sums = state.pop("step", 0), state.pop("sums", {})
        finite = torch.ones((), dtype=torch.bool, device=device)  # read at the end of the epoch (and before a save)
        for b in range(first, n_batches):  # drop_last, as the authors' loaders
            idx = perm[b * B:(b + 1) * B]
            x = train_split.batch(idx, device)
            with autocast(cfg.train.precision, device), trainer_counts():  # counted below, not inside the loss
                if loss_fn is None:
                    loss, logs = model.loss(x)
                else:  # captured; if torch.compile fails, go on uncaptured from the state before, saying so
                    before = guard.take()
                    try:
                        loss, logs = loss_fn(x)
                    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                        guard.restore(before)
                        loss_fn = None
                        if out_of_memory(e):  # the CUDA graphs' memory pool, given back before the eager step
                            release_device_memory(device, compiled=True)
                        run.log(f"the captured step ran out of device memory ({brief(e)}); training uncaptured"
                                if out_of_memory(e) else f"torch.compile failed ({brief(e)}); training uncaptured")
                        loss, logs = model.loss(x)
            finite &= torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.step_taken(len(idx))  # the step counted (rows: a split smaller than B gives fewer), after the update
            # and outside a captured loss (count_step), as the packed trainer counts it
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + (v.detach().double() if torch.is_tensor(v) else v)
            progress(f"train epoch {epoch + 1}/{E}", epoch * n_batches + b + 1, E * n_batches)
            due = every_s is not None and time.monotonic() - saved_at >= every_s
            if (_stop_reason or due) and b + 1 < n_batches:
                if not bool(finite):  # a diverged model is never checkpointed
                    raise MMBenchError(diverged(epoch))
                state.update(step=b + 1, sums=dict(sums))
                CHECKPOINTS.wait()
                save_last()
                del state["step"], state["sums"]
                saved_at = time.monotonic()
                if _stop_reason:
                    why = _stop_reason[0]
                    clear_stop()
                    CHECKPOINTS.wait()  # stopped means checkpointed
                    run.log(f"stopped ({why}) at epoch {epoch + 1}, step {b + 1} of {n_batches}; checkpoint {last}")
                    raise TrainingInterrupted(f"run {run.id} stopped ({why}) at epoch {epoch + 1}, step {b + 1}; "
                                              f"re-run the same command to resume from {last}")
        if not bool(finite):
            raise MMBenchError(diverged(epoch))
        speed.stop((n_batches - first) * B)
        tl = test_loss(model, loss_split, B, cfg.seed, device, cfg.train.precision)
        if not math.isfinite(tl):  # finite training losses, but the epoch's last step left non-finite weights
            raise MMBenchError(diverged(epoch))
        record = {"epoch": epoch + 1, **{f"train_{k}": float(v) / n_batches for k, v in sums.items()},
                  "test_loss": tl}
        state["history"].append(record)
        state["epoch"] = epoch + 1
        if writer is not None:
            for k, v in record.items():
                if k != "epoch":
                    writer.add_scalar(k, v, epoch + 1)
            writer.flush()
        run.log(epoch_line(record, speed))
        CHECKPOINTS.wait()  # the previous epoch's files (written while this epoch trained)
        if tl < state["best_test_loss"]:
            state["best_test_loss"] = tl
            CHECKPOINTS.save(run.ckpt_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch + 1, "test_loss": tl,
                                                     "run_id": run.id})
        stop = bool(_stop_reason)  # read once: a stop always follows a save
        if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == E or stop:
            save_last()
            saved_at = time.monotonic()
        if stop and epoch + 1 < E:
            why = _stop_reason[0]
            clear_stop()
            CHECKPOINTS.wait()
            run.log(f"stopped ({why}) after epoch {epoch + 1}; checkpoint {last}")
            raise TrainingInterrupted(f"run {run.id} stopped ({why}) after epoch {epoch + 1}; "
                                      f"re-run the same command to resume from {last}")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if writer is not None:
        writer.close()
    atomic_json(run.dir / HISTORY, state["history"])
    return {"epochs": state["epoch"], "train_seconds": time.monotonic() - t0, "tuples_per_second": speed.rate(),
            "history": state["history"],
            "best_test_loss": state["best_test_loss"], "trained_with": state.get("code", [])}


def epoch_line(record: Dict[str, Any], speed: "Throughput", runs: int = 1) -> str:
    """A run's log line for an epoch: its history record, then the tuples its process trained in that epoch and the
    seconds they took (a pack's: all its `runs`' tuples), and the process's steady rate so far (Throughput.rate, what
    provenance records at the end), which docs/gpu-runs/fig3_pace.py reads where a run stopped before its provenance."""
    tuples, seconds = speed.epochs[-1]
    rate = speed.rate()
    return ("epoch " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            + f"; trained {tuples} tuples in {seconds:.6g} s; steady " + (f"{rate:.6g}" if rate else "n/a")
            + " tuples/s" + (f" (a pack of {runs})" if runs > 1 else ""))


class Throughput:
    """Training tuples per second of this process's steps (a pack: all its runs' tuples), over its whole epochs
    after the first (which pays allocation and warm-up; with one epoch, that one): the basis of `mmbench run
    --dry-run`'s estimates, free of the run's fixed costs (start-up, test losses, evaluation)."""

    def __init__(self) -> None:
        self.epochs: List[Tuple[int, float]] = []  # (tuples, seconds) of each epoch
        self.t = 0.0  # when the current epoch started

    def start(self) -> None:
        self.t = time.perf_counter()  # monotonic: a clock set back mid-epoch cannot make a duration negative

    def stop(self, tuples: int) -> None:  # call after the epoch's read-back, so the device's work is done
        self.epochs.append((tuples, time.perf_counter() - self.t))

    def rate(self) -> Optional[float]:
        use = self.epochs[1:] or self.epochs
        seconds = sum(dt for _, dt in use)
        return sum(n for n, _ in use) / seconds if use and seconds > 0 else None


def load_trained(run: Run, device=None, data: Optional[Dict] = None) -> MultimodalVAE:
    """The model chosen by `train.select` (last epoch or lowest test loss), in eval mode; `data`: the prepared copy
    (data_identity) it is to be evaluated on, refused where the training recorded another."""
    cfg = run.cfg
    last = run.ckpt_dir / "last.pt"
    if not last.exists() and not last.is_symlink():  # a link to nowhere: read_checkpoint names it
        if run.metrics_path.exists() or any(run.dir.glob("metrics.*json*")):
            raise MMBenchError(f"run {run.id} has results but no checkpoint to evaluate again (a bundle exported without "
                               f"--checkpoints holds none); import it from one made with `mmbench export --checkpoints`, "
                               f"or delete {run.dir} to train it from the start")
        twin = run.trained_twin()
        if twin is not None:
            raise MMBenchError(f"no checkpoint {last}: run {twin.name} is trained with the same settings but other eval "
                               f"settings, and eval settings are part of the run id; train this run (`mmbench train` or "
                               f"`mmbench run`), or evaluate with {twin.name}'s eval settings")
        raise MMBenchError(f"no checkpoint {last}; train the run first (`mmbench train` or `mmbench run`)")
    ck = read_checkpoint(last, device or "cpu", run=run)
    check_data(ck["state"], data, last, record=False)
    if ck["state"]["epoch"] < cfg.train.epochs:
        raise MMBenchError(f"run {run.id} stopped at epoch {ck['state']['epoch']} of {cfg.train.epochs}; "
                           f"resume it with `mmbench train` or `mmbench run`")
    path = last
    if cfg.train.select == "best_test_loss":
        path = run.ckpt_dir / "best.pt"
        best = ck["state"]["best_test_loss"]
        ck = read_checkpoint(path, device or "cpu", resumable=False, run=run)
        if ck.get("test_loss") != best:  # saved by another trajectory than the one last.pt records
            raise MMBenchError(f"{path} holds the weights of a test loss of {ck.get('test_loss')}, but {last} records "
                               f"a best of {best}: it is not this training's best; delete {run.ckpt_dir} and train the "
                               f"run again")
    model = build_model(cfg).to(device or "cpu")
    load_weights(model, ck["model"], path)
    model.eval()
    return model
