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


def out_of_memory(e: BaseException) -> bool:
    """A device allocation that failed: torch's OutOfMemoryError, a CUDA (or ROCm HIP) error saying "out of memory",
    or a CUDA library's allocation failure (cuBLAS', cuDNN's, cuSOLVER's `..._STATUS_ALLOC_FAILED`). The host's
    MemoryError is not one: the kernel's out-of-memory killer answers it, not a smaller pack."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e) if isinstance(e, RuntimeError) else ""
    return (("CUDA" in text or "HIP" in text) and "out of memory" in text) or "_STATUS_ALLOC_FAILED" in text


def release_device_memory(dev, compiled: bool = False, on_cpu_too: bool = False) -> None:
    """After a stacked model or pack is dropped: a pack (its StackedModel's vmapped closures) and VGON's inner-ELBO
    module are reference cycles, whose memory is free only once Python's collector has run (it runs on Python
    allocations, not on tensors'), so the next model would meet the last one's memory; then a GPU allocator's cache is
    emptied. `compiled`: a captured step dropped too, whose CUDA graphs keep their memory pool until the compiler's
    caches are reset. `on_cpu_too`: collected on a CPU as well (a dropped pack of 12 ResNets holds ~9 GB there)."""
    if compiled:
        torch._dynamo.reset()
    cuda = torch.device(dev).type == "cuda"
    if cuda or on_cpu_too:
        import gc

        gc.collect()
    if cuda:
        torch.cuda.empty_cache()
