"""`mmbench bench steps`: training-step time of every method on PolyMNIST-shaped batches.

Each measurement builds the method on M modalities of 3×28×28 with the PolyMNIST CNN, draws one
fixed random batch, runs warm-up steps, then times full optimiser steps (loss, backward, Adam
update) and reports the median. Used for the step-time table of docs/methods.md and for how the
cost grows with the number of modalities.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .data.base import Modality
from .methods.base import MethodConfig
from .registry import METHODS


def step_time(method: str, n_modalities: int = 5, batch_size: int = 256, latent_dim: int = 512, steps: int = 5,
              warmup: int = 1, architecture: str = "polymnist_cnn", seed: int = 0,
              device: str = "cpu") -> Dict[str, float]:
    """Median seconds per training step (and the spread) of one method, on `device` (cpu or cuda)."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(seed)
    mods = [Modality(f"m{i}", (3, 28, 28)) for i in range(n_modalities)]
    model = METHODS.get(method)(mods, MethodConfig(method, latent_dim=latent_dim, beta=1.0), architecture).to(dev)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    x = {m.name: torch.rand(batch_size, 3, 28, 28, generator=g).to(dev) for m in mods}
    times: List[float] = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        loss, _ = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def step_table(methods: Sequence[str], scaling_methods: Sequence[str], modalities: Sequence[int], batch_size: int,
               latent_dim: int, steps: int, progress: Optional[Callable[[str], None]] = None,
               device: str = "cpu") -> Dict[str, list]:
    """Rows for every method at M = max(modalities), and for `scaling_methods` at every M."""
    say = progress or (lambda s: None)
    top = max(modalities)
    rows, scaling = [], []
    for m in methods:
        say(f"{m}, M={top}")
        r = step_time(m, top, batch_size, latent_dim, steps, device=device)
        rows.append({"method": m, "M": top, **r})
    for m in scaling_methods:
        for n in modalities:
            say(f"{m}, M={n}")
            r = step_time(m, n, batch_size, latent_dim, steps, device=device)
            scaling.append({"method": m, "M": n, **r})
    return {"methods": rows, "scaling": scaling}
