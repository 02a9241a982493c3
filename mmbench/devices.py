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


def rng_states(device) -> tuple:
    """The global random streams a run's noise comes from: the CPU's, and the GPU's when it trains on one."""
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None)


def set_rng_states(states: tuple, device) -> None:
    torch.set_rng_state(states[0].cpu())
    if states[1] is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(states[1].cpu(), device)
