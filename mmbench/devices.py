"""Which device a process computes on, and which random streams a fork of its RNG must save: shared by training,
packing, evaluation and the coherence classifiers (kept out of train.py so that metrics need not import it)."""
from __future__ import annotations

import torch


def device_of() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def devices_of_rng(device) -> list:
    """fork_rng's devices for a run on `device`: torch.manual_seed reseeds the GPU's stream too, so a fork that
    reseeds must save and restore it where the run draws from it."""
    return [torch.device(device)] if torch.device(device).type == "cuda" else []
