"""Training: Adam over in-memory tensors, seeded, checkpointed every epoch, resumable.

Determinism: the parameters are initialised after ``torch.manual_seed(seed)``; epoch e shuffles
with a generator seeded by (seed, e); the global RNG state (used by reparameterised samples) is
saved in every checkpoint, so an interrupted and resumed run ends with the same weights as an
uninterrupted one on the CPU.

Speed: the training split is moved to the device once (uint8) and batches are gathered there; the step
never reads a value back to the host: the logged losses are summed on the device and read once per
epoch, and a non-finite loss is noticed at the end of its epoch (the run then fails before writing that
epoch's checkpoints, so nothing saved holds a diverged model). `train.precision: bf16` computes the loss
under bfloat16 autocast. Runs of one experiment can also train together as one stacked model
(mmbench/pack.py), with results equal to these.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from .config import RunConfig
from .data.base import DataSplit, load_split
from .errors import MMBenchError
from .methods.base import MultimodalVAE
from .registry import DATASETS, METHODS
from .results import Run, atomic_write

ProgressFn = Callable[[str, int, int], None]


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
    spec = DATASETS.get(cfg.dataset)()
    arch = cfg.method.architecture or spec.default_architecture
    return METHODS.get(cfg.method.name)(run_modalities(cfg), cfg.method, arch)


def load_data(cfg: RunConfig, data_root: Optional[Path] = None):
    spec = DATASETS.get(cfg.dataset)()
    names = [m.name for m in run_modalities(cfg)] if cfg.modalities is not None else None
    train = load_split(spec, cfg.variant, "train", data_root).select(names)
    test = load_split(spec, cfg.variant, "test", data_root).select(names)
    return train.subset(cfg.train.max_train, seed=cfg.data_seed), test


def device_of() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """The loss's precision context: fp32 = none; bf16 = torch.autocast to bfloat16 on the run's device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@torch.no_grad()
def test_loss(model: MultimodalVAE, test: DataSplit, batch_size: int, seed: int, device,
              precision: str = "fp32") -> float:
    """Mean training objective on the test split, with a fixed RNG so epochs are comparable."""
    model.eval()
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    with torch.random.fork_rng(devices=[]):
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


def train(run: Run, data_root: Optional[Path] = None, progress: Optional[ProgressFn] = None,
          stop_after_epoch: Optional[int] = None) -> Dict[str, float]:
    """Train (or resume) the run's model; returns a summary. `stop_after_epoch` simulates an interruption."""
    cfg = run.cfg
    progress = progress or (lambda *a: None)
    device = device_of()
    train_split, test_split = load_data(cfg, data_root)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    state = {"epoch": 0, "history": [], "best_test_loss": math.inf}
    last = run.ckpt_dir / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        state = ck["state"]
        run.log(f"resumed from {last} at epoch {state['epoch']}")
    E, B = cfg.train.epochs, cfg.train.batch_size
    loss_split = test_split.subset(cfg.train.max_test, seed=cfg.data_seed + 1).to(device)  # per-epoch test loss
    train_split = train_split.to(device)
    n_batches = max(len(train_split) // B, 1)
    if hasattr(model, "plan_steps"):  # methods with a step schedule (smvae two_stage) learn the run's length
        model.plan_steps(E * n_batches)
    t0 = time.time()
    model.train()
    for epoch in range(state["epoch"], E):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(train_split), generator=g).to(device)
        sums: Dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=device)  # read once, at the end of the epoch
        for b in range(n_batches):  # drop_last, as the authors' loaders
            idx = perm[b * B:(b + 1) * B]
            with autocast(cfg.train.precision, device):
                loss, logs = model.loss(train_split.batch(idx, device))
            finite &= torch.isfinite(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + (v.detach().double() if torch.is_tensor(v) else v)
            progress(f"train epoch {epoch + 1}/{E}", epoch * n_batches + b + 1, E * n_batches)
        if not bool(finite):
            raise MMBenchError(f"training diverged (a non-finite loss) in epoch {epoch + 1}; "
                               f"lower train.lr or check the data")
        tl = test_loss(model, loss_split, B, cfg.seed, device, cfg.train.precision)
        record = {"epoch": epoch + 1, **{f"train_{k}": float(v) / n_batches for k, v in sums.items()},
                  "test_loss": tl}
        state["history"].append(record)
        state["epoch"] = epoch + 1
        run.log("epoch " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if tl < state["best_test_loss"]:
            state["best_test_loss"] = tl
            _save(run.ckpt_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch + 1, "test_loss": tl})
        if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == E:
            _save(last, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                         "state": state})
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return {"epochs": state["epoch"], "train_seconds": time.time() - t0, "history": state["history"],
            "best_test_loss": state["best_test_loss"]}


def load_trained(run: Run, device=None) -> MultimodalVAE:
    """The model chosen by `train.select` (last epoch or lowest test loss), in eval mode."""
    cfg = run.cfg
    last = run.ckpt_dir / "last.pt"
    if not last.exists():
        raise MMBenchError(f"no checkpoint {last}; train the run first (`mmbench train` or `mmbench run`)")
    ck = torch.load(last, map_location=device or "cpu", weights_only=False)
    if ck["state"]["epoch"] < cfg.train.epochs:
        raise MMBenchError(f"run {run.id} stopped at epoch {ck['state']['epoch']} of {cfg.train.epochs}; "
                           f"resume it with `mmbench train` or `mmbench run`")
    if cfg.train.select == "best_test_loss":
        ck = torch.load(run.ckpt_dir / "best.pt", map_location=device or "cpu", weights_only=False)
    model = build_model(cfg).to(device or "cpu")
    model.load_state_dict(ck["model"])
    model.eval()
    return model
